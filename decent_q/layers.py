"""Every layer form decent_q recognises, declared once (see docs/placement.md).

The planner, the quantized-model reader, deploy, simulate_dpu, both batch-norm folds and CLE
match these declarations (:mod:`decent_q.graph.pattern`) on a frozen GraphDef or a live graph;
op roles come from :mod:`decent_q.registry`. A compute layer, matched backwards from its last
op::

    input --[SpaceToBatchND]--> compute(input, weight) --[BatchToSpaceND]--> [bias op(b)]
          --> [activation]
    compute    = Conv2D | DepthwiseConv2dNative | Conv2DBackpropInput | MatMul
    bias op    = BiasAdd | Add | AddV2 (either input order)
    activation = Relu | Relu6 | LeakyRelu | Maximum(Mul(alpha, x), x)
               | Sub(Relu(x), Mul(alpha, Relu(Neg(x))))            (Keras' LeakyReLU)

The atrous wrapper (SpaceToBatchND -> conv -> BatchToSpaceND) is one form: both or neither.
Every op after the compute op is read only by the layer's next op. Batch norms and DPU
functions are declared below the layers.
"""

import collections
import dataclasses
import math
from typing import Optional, Tuple

import tensorflow as tf

from decent_q import registry
from decent_q.graph import pattern as pt
from decent_q.graph.utils import node_name, tensor_name

# -- compute layers ------------------------------------------------------------------------------


def compute(data):
    """The compute ops of registry.COMPUTE_OPS with `data` on their data input."""
    return pt.OneOf(*(pt.Op(op, {spec.data_index: data, spec.weight_index: pt.Weight("weight")},
                            name="compute")
                      for op, spec in registry.COMPUTE_OPS.items()))


ATROUS = pt.Op("BatchToSpaceND", {0: compute(pt.Op("SpaceToBatchND", {0: pt.Tensor("input")},
                                                   name="space_to_batch"))},
               name="batch_to_space")
CORE = pt.OneOf(ATROUS, compute(pt.Data("input")))


def bias(inner):
    """`inner` + a per-channel parameter."""
    return pt.Op(registry.BIAS_OPS, [inner, pt.Param("bias")], name="bias_op", commutative=True)


BIASED = pt.OneOf(bias(CORE), CORE)

ActivationForm = collections.namedtuple("ActivationForm", "name pattern order kind")


def _single_op(x):
    return pt.Op(registry.ACTIVATION_OPS, [x], name="act")


def _leaky_max(x):
    mul = pt.Op("Mul", [pt.Param("alpha"), pt.Bind("x", x)], name="mul", commutative=True)
    return pt.Op("Maximum", [mul, pt.Ref("x")], name="act", commutative=True)


def _leaky_keras(x):
    neg = pt.Op("Relu", [pt.Op("Neg", [pt.Ref("x")], name="neg")], name="relu2")
    return pt.Op("Sub", [pt.Op("Relu", [pt.Bind("x", x)], name="relu"),
                         pt.Op("Mul", [pt.Tensor("alpha"), neg], name="mul", commutative=True)],
                 name="act")


# kind None: the op type of "act" (Relu, Relu6, LeakyRelu with its alpha attribute).
ACTIVATIONS = (
    ActivationForm("single_op", _single_op, ("act",), None),
    ActivationForm("leaky_relu_maximum", _leaky_max, ("mul", "act"), "LeakyRelu"),
    ActivationForm("leaky_relu_keras", _leaky_keras, ("relu", "neg", "relu2", "mul", "act"),
                   "LeakyRelu"),
)


@dataclasses.dataclass(frozen=True)
class Activation:
    kind: str                   # 'Relu', 'Relu6' or 'LeakyRelu'
    nodes: Tuple[str, ...]      # in the declared order; the last one outputs the activation
    alpha: Optional[str]        # the tensor holding a multi-op LeakyRelu's alpha, else None


@dataclasses.dataclass(frozen=True)
class LayerMatch:
    """A matched compute layer; ``nodes``: [SpaceToBatchND], compute, [BatchToSpaceND],
    [bias op], activation nodes."""
    compute: str
    op: str
    nodes: Tuple[str, ...]
    input: str                  # the tensor entering the layer (in front of SpaceToBatchND)
    weight: str
    bias: Optional[str]
    activation: Optional[Activation]
    space_to_batch: Optional[str]

    @property
    def last(self):
        return self.nodes[-1]


def _activation(found, form, graph_view):
    if form is None:
        return None
    nodes = tuple(found[name] for name in form.order)
    kind = form.kind or graph_view.op_type(found["act"])
    return Activation(kind, nodes, found.get("alpha"))


def _layer(found, form, graph_view):
    act = _activation(found, form, graph_view)
    body = [found.get("space_to_batch"), found["compute"], found.get("batch_to_space"),
            found.get("bias_op")]
    nodes = tuple(n for n in body if n) + (act.nodes if act else ())
    return LayerMatch(found["compute"], graph_view.op_type(found["compute"]), nodes,
                      found["input"], found["weight"], found.get("bias"), act,
                      found.get("space_to_batch"))


def _forward(graph_view, name, depth):
    """Ops reachable from op `name` through at most `depth` data edges, nearest first."""
    seen, frontier, found = {name}, [name], [name]
    for _ in range(depth):
        nxt = []
        for op in frontier:
            for user in graph_view.consumers(f"{op}:0"):
                if user not in seen:
                    seen.add(user)
                    nxt.append(user)
        found += nxt
        frontier = nxt
    return found


def match_layer(graph, compute_op, context=None):
    """The longest layer form (module docstring) whose compute op is `compute_op`, or None.

    `context` (a pattern.Context) says which tensors are parameters and which ops may take
    part (the planner: the quantized range; the quantized-model reader: constants behind
    FixNeurons)."""
    graph_view = pt.view(graph)
    best = None
    for end in _forward(graph_view, compute_op, depth=6):
        for form in ACTIVATIONS + (None,):
            found = _first_closed(form.pattern(BIASED) if form else BIASED, end, graph_view,
                                  context, compute_op)
            if found is not None:
                layer = _layer(found, form, graph_view)
                if best is None or len(layer.nodes) > len(best.nodes):
                    best = layer
    return best


def _first_closed(pattern, end, graph_view, context, compute_op):
    for found in pt.matches(pattern, end, graph_view, context):
        after = set(found.ops) - {found.get("space_to_batch")}
        if found["compute"] == compute_op and found.closed(graph_view, after):
            return found
    return None


def match_activation(graph, tensor, context=None):
    """The activation that reads `tensor` (its only reader, apart from a multi-op form's own
    ops), or None."""
    graph_view = pt.view(graph)
    best = None
    for end in _forward(graph_view, node_name(tensor), depth=5)[1:]:
        for form in ACTIVATIONS:
            for found in pt.matches(form.pattern(pt.Tensor("x_in")), end, graph_view, context):
                ops = set(found.ops)
                if found["x_in"] != tensor_name(tensor) or not found.closed(graph_view) or \
                        not set(graph_view.consumers(tensor)) <= ops:
                    continue
                act = _activation(found, form, graph_view)
                if best is None or len(act.nodes) > len(best.nodes):
                    best = act
                break
    return best


# -- scaling per channel ---------------------------------------------------------------------------

def transpose_b(op):
    """Whether a MatMul (a NodeDef or a tf.Operation) reads its weights transposed."""
    node = getattr(op, "node_def", op)
    return node.op == "MatMul" and "transpose_b" in node.attr and node.attr["transpose_b"].b


def _out_axis(op, transpose_b):
    return 0 if (op == "MatMul" and transpose_b) else registry.COMPUTE_OPS[op].out_axis


def channel_shape(op, weights_shape, transpose_b=False):
    """The shape a per-output-channel vector takes to multiply the weights of compute op `op`
    (registry.COMPUTE_OPS out axes; a depthwise channel is in * multiplier on axes 2, 3)."""
    if op == "DepthwiseConv2dNative":
        return [int(weights_shape[2]), int(weights_shape[3])]
    axis = _out_axis(op, transpose_b)
    shape = [1] * len(weights_shape)
    shape[axis] = -1
    return shape[axis:]


def out_channels(op, weights_shape, transpose_b=False):
    """The number of output channels of compute op `op` with weights of `weights_shape`."""
    if op == "DepthwiseConv2dNative":
        return int(weights_shape[2]) * int(weights_shape[3])
    return int(weights_shape[_out_axis(op, transpose_b)])


def in_channel_shape(op, weights_shape, transpose_b=False):
    """The shape a per-input-channel vector takes to multiply the weights of compute op `op`
    (registry.COMPUTE_OPS in axes; a depthwise input channel i is W[:, :, i, :])."""
    axis = 1 if (op == "MatMul" and transpose_b) else registry.COMPUTE_OPS[op].in_axis
    shape = [1] * len(weights_shape)
    shape[axis] = -1
    return shape[axis:]


# -- batch norms ------------------------------------------------------------------------------------
# Each form captures "batch_norm" (its last op, whose output is the normalised tensor) and "x"
# (the tensor normalised). Fused ops read their statistics and epsilon by input / attribute;
# the other forms capture what they have.

FUSED_BATCH_NORM = pt.Op(("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"),
                         {0: pt.Tensor("x"), 1: pt.Tensor("gamma"), 2: pt.Tensor("beta"),
                          3: pt.Tensor("mean"), 4: pt.Tensor("variance")}, name="batch_norm")
GLOBAL_BATCH_NORM = pt.Op("BatchNormWithGlobalNormalization",
                          {0: pt.Tensor("x"), 1: pt.Tensor("mean"), 2: pt.Tensor("variance"),
                           3: pt.Tensor("beta"), 4: pt.Tensor("gamma")}, name="batch_norm")
# x * scale + offset with constant scale and offset: any unfused batch norm after constant
# folding (PTQ), or one written by hand.
SCALE_OFFSET_BATCH_NORM = pt.Op(
    ("Add", "AddV2"), [pt.Op("Mul", [pt.Tensor("x"), pt.Param("scale")], name="mul",
                             commutative=True), pt.Param("offset")],
    name="batch_norm", commutative=True)


def _inverse_std(gamma):
    rsqrt = pt.Op("Rsqrt", [pt.Op(("Add", "AddV2"), [pt.Tensor("variance"),
                                                     pt.Param("epsilon")], name="add_epsilon",
                                  commutative=True)], name="rsqrt")
    if not gamma:
        return rsqrt
    return pt.Op("Mul", [rsqrt, pt.Tensor("gamma")], name="inverse_std", commutative=True)


def _nn_batch_normalization(gamma, beta):
    """tf.nn.batch_normalization's ops (Keras and slim unfused batch norms, live graphs):
    x * inv + (beta - mean * inv), or x * inv + (-mean) * inv without beta,
    inv = rsqrt(variance + eps) [* gamma]."""
    inv = pt.Bind("inv", _inverse_std(gamma))
    if beta:
        mean_inv = pt.Op("Mul", [pt.Tensor("mean"), pt.Ref("inv")], name="mean_inv",
                         commutative=True)
        offset = pt.Op("Sub", [pt.Tensor("beta"), mean_inv], name="offset")
    else:
        offset = pt.Op("Mul", [pt.Op("Neg", [pt.Tensor("mean")], name="neg_mean"),
                               pt.Ref("inv")], name="offset", commutative=True)
    return pt.Op(("Add", "AddV2"), [pt.Op("Mul", [pt.Tensor("x"), inv], name="mul",
                                          commutative=True), offset],
                 name="batch_norm", commutative=True)


BatchNormForm = collections.namedtuple("BatchNormForm", "name pattern")

BATCH_NORMS = (
    BatchNormForm("fused", FUSED_BATCH_NORM),
    BatchNormForm("global_normalization", GLOBAL_BATCH_NORM),
    BatchNormForm("nn_batch_normalization", pt.OneOf(
        *(_nn_batch_normalization(gamma, beta) for gamma in (True, False)
          for beta in (True, False)))),
    BatchNormForm("scale_offset", SCALE_OFFSET_BATCH_NORM),
)


def match_batch_norm(graph, op_name, context=None, forms=None):
    """(form name, pattern.Match) of the batch norm whose last op is `op_name`, or None.

    `forms`: the names of the forms to try (default all, in BATCH_NORMS order)."""
    return _match_form(BATCH_NORMS, graph, op_name, context, forms)


def _match_form(declared, graph, op_name, context, forms):
    """(form name, first pattern.Match) of the first of the `declared` forms (named `forms`,
    default all) that matches at `op_name`, or None."""
    graph_view = pt.view(graph)
    for form in declared:
        if forms is not None and form.name not in forms:
            continue
        found = pt.match(form.pattern, op_name, graph_view, context)
        if found is not None:
            return form.name, found
    return None


# -- DPU functions ----------------------------------------------------------------------------------
# The hard sigmoid relu6(x + 3) / 6, which the DPU computes as relu6(x + 3) * 2731 / 16384 (see
# decent_q.transforms.simulate_dpu). Its constants are part of each form: a Const op holding one
# value within 1e-6 (relative) of 3, 1/6 or 6. Captures "op" (the Mul by 1/6 or the RealDiv by 6,
# the form's last op), "scale" (its Const op), "relu6", "add", "three" (the Const 3) and "x";
# the gated forms also "gate" (the Mul by "y"). A hard swish is the gated form with y = x; the
# DPU scales the 1/6 the same whatever y is, so y is left free (keras' hard_sigmoid, slope 0.2,
# is another function and not declared).

def _scalar(value, name):
    """A Const op holding one element close to `value`."""
    def where(graph_view, op_name):
        attr = graph_view.attr(op_name, "value")
        array = None if attr is None else tf.make_ndarray(attr.tensor)
        return array is not None and array.size == 1 and \
            math.isclose(float(array.reshape(-1)[0]), value, rel_tol=1e-6)
    return pt.Op("Const", name=name, where=where)


def _relu6_plus_3():
    add = pt.Op(("Add", "AddV2"), [pt.Tensor("x"), _scalar(3.0, "three")], name="add",
                commutative=True)
    return pt.Op("Relu6", [add], name="relu6")


def _times_sixth(inner):
    return pt.Op("Mul", [inner, _scalar(1.0 / 6.0, "scale")], name="op", commutative=True)


def _over_six(inner):
    return pt.Op("RealDiv", [inner, _scalar(6.0, "scale")], name="op")


def _gated(inner):
    return pt.Op("Mul", [pt.Tensor("y"), inner], name="gate", commutative=True)


HardSigmoidForm = collections.namedtuple("HardSigmoidForm", "name pattern")

HARD_SIGMOIDS = (
    HardSigmoidForm("mul", _times_sixth(_relu6_plus_3())),              # Relu6(x + 3) * (1/6)
    HardSigmoidForm("div", _over_six(_relu6_plus_3())),                 # Relu6(x + 3) / 6
    HardSigmoidForm("gated_mul", _times_sixth(_gated(_relu6_plus_3()))),  # y * Relu6(x+3) * (1/6)
    HardSigmoidForm("gated_div", _over_six(_gated(_relu6_plus_3()))),     # y * Relu6(x+3) / 6
)


def match_hard_sigmoid(graph, op_name, context=None, forms=None):
    """(form name, pattern.Match) of the hard sigmoid whose last op ("op") is `op_name`, or
    None. `forms`: the names of the forms to try (default all, in HARD_SIGMOIDS order)."""
    return _match_form(HARD_SIGMOIDS, graph, op_name, context, forms)
