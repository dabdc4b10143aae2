"""The op roles: what each op type is to the quantizer, shared by QAT and post-training
quantization (docs/placement.md).

Each entry says how an op type is treated inside the quantized range (input_nodes ..
output_nodes): compute ops and their data / weight inputs, bias, activation, pass-through,
float and shape ops, data inputs, fusions, the input method, parameter / variable / read ops.
:mod:`decent_q.layers` declares the layer forms from these roles; :mod:`decent_q.plan` places
FixNeurons with both.
"""

import collections

from decent_q.ops import Mode

# A compute layer: the op, which input is data and which is the weight, the weight's FixNeuron
# mode, and the output-channel axis of the weight (used by batch-norm folding and CLE).
ComputeOp = collections.namedtuple("ComputeOp", "data_index weight_index mode out_axis in_axis")

COMPUTE_OPS = {
    # NHWC conv, weights [kh, kw, in, out]
    "Conv2D": ComputeOp(0, 1, Mode.WEIGHT, 3, 2),
    # depthwise weights [kh, kw, in, multiplier]; channel = in * multiplier, folded on axis 2
    "DepthwiseConv2dNative": ComputeOp(0, 1, Mode.DW_WEIGHT, 2, 2),
    # conv2d_transpose: inputs (output_shape, filter [kh, kw, out, in], data)
    "Conv2DBackpropInput": ComputeOp(2, 1, Mode.WEIGHT, 2, 3),
    # Dense: weights [in, out]
    "MatMul": ComputeOp(0, 1, Mode.WEIGHT, 1, 0),
}

# Ops that add a per-channel bias after a compute op.
BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})

# Single-op activations that end a compute layer (LeakyRelu's multi-op forms: layers.py).
ACTIVATION_OPS = frozenset({"Relu", "Relu6", "LeakyRelu"})

# Ops whose output is quantized when all their data inputs are quantized.
PASS_THROUGH_OPS = frozenset({
    "AvgPool",          # quantized after the simulate_dpu scaling, if any
    "MaxPool",
    "Mean",             # global average pooling when simulate_dpu is off
    "Pad", "MirrorPad",
    "Concat", "ConcatV2",
    "Squeeze", "Reshape", "ExpandDims", "Flatten",
    "Relu", "Relu6", "LeakyRelu",
    "Add", "AddV2", "AddN",  # residual connections
    "BiasAdd",          # x * scale + offset: a batch norm with no compute op before it
    "Mul",              # AvgPool / hard-sigmoid DPU scaling and elementwise products
    "Maximum", "Minimum",
    "ResizeBilinear", "ResizeNearestNeighbor",
    "DepthToSpace", "SpaceToDepth",
    "StridedSlice", "Slice", "Transpose",
})

# Inputs of pass-through ops that carry data; the others are shapes, axes or paddings and never
# decide whether an op is quantized. Ops not listed: every input is data.
DATA_INPUTS = {
    "Reshape": (0,), "ExpandDims": (0,), "Squeeze": (0,), "Mean": (0,), "Pad": (0,),
    "MirrorPad": (0,), "ResizeBilinear": (0,), "ResizeNearestNeighbor": (0,),
    "StridedSlice": (0,), "Slice": (0,), "Transpose": (0,), "Tile": (0,),
    "Concat": slice(1, None), "ConcatV2": slice(0, -1),
}

# The axis input of a concatenation (its other inputs are data; a constant one is quantized for
# the concat alone).
CONCAT_AXIS_INPUT = {"Concat": 0, "ConcatV2": -1}


def data_inputs(op_type, inputs):
    """The inputs of an op of `op_type` that carry data (DATA_INPUTS)."""
    kept = DATA_INPUTS.get(op_type)
    if kept is None:
        return list(inputs)
    if isinstance(kept, slice):
        return list(inputs)[kept]
    return [inputs[i] for i in kept if i < len(inputs)]


# Ops quantized once, after their only consumer (the follower), instead of twice:
# (op types, follower types, condition). Conditions: "always"; "follower_scales": the
# follower's other input is a parameter (AvgPool * the DPU factor); "scale_offset": op is
# x * parameter and the follower adds a parameter (a batch norm with no compute op before it).
FUSIONS = (
    (frozenset({"Add", "AddV2", "AddN"}), frozenset({"Relu", "Relu6"}), "always"),
    (frozenset({"AvgPool", "Mean"}), frozenset({"Mul"}), "follower_scales"),
    (frozenset({"Mul"}), BIAS_OPS, "scale_offset"),
)

# The method the graph's input nodes get, whatever nodes_method or method say (non-overflow,
# as in the original).
INPUT_METHOD = 0

# Ops that pass values through unchanged in position: quantizing their output would repeat the
# input's FixNeuron; positions are propagated through them instead (align_concat walks them).
SHAPE_ONLY_OPS = frozenset({"Reshape", "ExpandDims", "Squeeze", "Flatten", "Identity"})

# Never quantized, even with quantized inputs (outputs stay float, as the DPU does them on CPU
# or the guide says so).
FLOAT_OPS = frozenset({
    "Softmax", "LogSoftmax",    # guide 4.2.2.4 note 3: softmax output is not quantized
    "Sigmoid", "Tanh", "Exp",   # unless replaced (hard-sigmoid)
    "ArgMax", "Cast", "TopKV2", "NonMaxSuppressionV3",
})

# Ops that read a tensor's shape: they and what is computed only from them are integer shape
# arithmetic, never quantized and not worth a warning.
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})

# Batch norm ops folded into the preceding compute op.
BATCH_NORM_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
                            "BatchNormWithGlobalNormalization"})

# Variables (ref and resource), and the ops that read one: a weight read through them is named
# after the variable in nodes_bit / nodes_method, and QAT looks through them for parameters.
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})
READ_OPS = frozenset({"Identity", "ReadVariableOp"})

# Ops that hold or read parameters (never activations).
PARAMETER_OPS = frozenset({"Const", "ReadVariableOp"}) | VARIABLE_OPS
