"""Folds batch norms into the preceding compute op of a LIVE graph, in place (QAT).

The training and evaluation graphs of a QAT script hold variables, so the frozen-graph pass
(:mod:`decent_q.transforms.fold_batch_norms`) cannot run on them. This pass builds the folded
layer next to the original one and moves the batch norm's consumers onto it. Matched::

    x -> conv(x, W) -> [BatchToSpaceND] -> [BiasAdd(b)] -> FusedBatchNorm{,V2,V3}(gamma, beta,
                                                                  moving_mean, moving_var) -> ...
    conv = Conv2D | DepthwiseConv2dNative | Conv2DBackpropInput | MatMul   (NHWC)

Batch norms in unfused form (Keras' BatchNormalization of a rank-2 input, i.e. Dense + batch
norm, or ``slim.batch_norm(fused=False)``) are not folded here: they train as float ops between
quantized layers.

Built under ``F = <conv scope>/BatchNorm_Fold`` (the same names in the training and the
evaluation graph, so one checkpoint serves both), with sigma = sqrt(var + eps)::

    F/scale   = gamma / sigma_moving                 (per output channel)
    F/weights = W * F/scale                                              -> wquant
    F/conv    = conv(x, F/weights) [-> F/BatchToSpaceND]
    F/bias    = beta + (b - moving_mean) * F/scale                       -> wquant
    F/BiasAdd = BiasAdd(F/conv, F/bias)

Inference (evaluation graph, a batch norm with is_training=False, or training after the freeze
step) computes ``F/BiasAdd``: exactly what the deploy model computes.

Training with batch statistics runs the conv ONCE, with the quantized folded weights unscaled
again, and lets the original batch norm normalise its output (Jacob et al. 2018's one-conv form,
as PyTorch's QAT ConvBn modules)::

    F/conv_weights = Q(F/weights) * (1 / F/scale)  (0 where F/scale == 0: the channel outputs beta)
    F/conv    = conv(x, F/conv_weights)
    out       = BatchNorm_train(F/conv [+ b])          (the original batch-norm op, rewired)

F/conv is conv(x, W) up to the weight quantization (the same as conv(x, Q(F/weights)) / F/scale,
with a weight-sized multiply instead of an activation-sized one), so ``out`` is the training
batch norm of the quantized layer, and the gradient is that of this function, batch statistics
included (the batch norm's own gradient). Stopping the gradient through the batch mean and
variance instead (the two-conv form of tf.contrib.quantize with constant statistics) does not
learn on nets that end in global pooling: there the loss gradient is nearly constant over each
channel's positions, mostly along the direction the batch mean removes, and only the mean's
gradient cancels it. The batch norm's moving averages update as before (its batch outputs and
UPDATE_OPS are untouched); they now track the quantized layer, as in PyTorch.

``freeze_step`` (QuantizeConfig.fold_bn_freeze_step): -1 never freezes; k > 0 switches to the
inference form once the global step reaches k (F/conv then reads Q(F/weights), and
``F/output = where(frozen, F/BiasAdd, out)``; the moving averages stop); 0 uses the inference
form from the start (the original vai_q_tensorflow's moving-statistics fold) while the batch
norm still runs on ``F/unscale = F/conv * (1 / F/scale)`` for the moving averages. Batch-norm
variables keep their names, so float checkpoints restore.

The original conv (no consumers left) and the fold's parameter arithmetic are reported in
``FoldResult.exclude``; each training layer's ops from F/conv to its output are declared in
``FoldResult.layers`` for the quantization planner (their shape is not the plain
conv -> bias -> activation chain it matches elsewhere).
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from decent_q import registry
from decent_q.errors import QuantizeError
from decent_q.live import edit

log = logging.getLogger("decent_q")

_READ_OPS = ("Identity", "ReadVariableOp")
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")
_ASSIGN_SUB_OPS = ("AssignSub", "AssignSubVariableOp")


@dataclasses.dataclass(frozen=True)
class FoldedLayer:
    """A training-graph folded layer, declared for the planner.

    ``nodes`` run from ``F/conv`` to ``nodes[-1]``, the op whose output the activation (or the
    next layer) reads. ``bias_consumer`` is the (op, input index) reading ``F/bias``, or None
    where the forward pass does not read it (its point is still built: its histogram gives the
    evaluation graph's bias position). ``weights_consumers`` are the (op, input index) pairs that
    read ``F/weights`` (F/conv, or the ops that unscale them for it). ``output_name`` is the name
    of the inference form's
    output op, ``F/BiasAdd``: a layer with no activation after it names its output point after
    it, as the evaluation graph does, so both graphs have the same points.
    """
    nodes: Tuple[str, ...]
    weights: str
    bias: str
    bias_consumer: Optional[Tuple[str, int]]
    output_name: str
    weights_consumers: Tuple[Tuple[str, int], ...] = ()  # (op, input index) reading F/weights


@dataclasses.dataclass
class FoldResult:
    """What the fold built, for the planner and the tests."""
    folded: List[Tuple[str, str]]  # (batch norm op, F scope) pairs, in graph order
    parameters: List[str]          # tensors computed from data the planner treats as parameters
    exclude: List[str]             # ops the planner leaves out of the quantized range
    layers: Dict[str, FoldedLayer] = dataclasses.field(default_factory=dict)  # by F/conv name


@dataclasses.dataclass
class _Match:
    conv: tf.Operation
    space_to_batch: tf.Operation  # BatchToSpaceND after an atrous conv, or None
    bias_op: tf.Operation          # BiasAdd / Add after the conv, or None
    bias: tf.Tensor                # its bias vector, or None
    bn: tf.Operation


def _single_consumer(tensor):
    users = tensor.consumers()
    return users[0] if len(users) == 1 else None


def _is_parameter(tensor):
    """A weight read from a variable or a constant (possibly through Identity reads)."""
    op = tensor.op
    for _ in range(4):
        if op.type in _VARIABLE_OPS or op.type == "Const":
            return True
        if op.type not in _READ_OPS or not op.inputs:
            return False
        op = op.inputs[0].op
    return False


def _match(bn):
    """The layer in front of batch norm `bn` (see the module docstring), or None."""
    if bn.get_attr("data_format") not in (b"NHWC", "NHWC"):
        return None
    cur = bn.inputs[0].op
    bias_op = bias = None
    if cur.type in registry.BIAS_OPS and len(cur.inputs) == 2:
        for data, other in ((0, 1), (1, 0)):
            if cur.inputs[data].op.type in registry.COMPUTE_OPS or \
                    cur.inputs[data].op.type == "BatchToSpaceND":
                if cur.inputs[other].shape.rank == 1 and _is_parameter(cur.inputs[other]):
                    bias_op, bias = cur, cur.inputs[other]
                    cur = cur.inputs[data].op
                break
        if bias_op is None:
            return None
        if _single_consumer(bias_op.outputs[0]) is not bn:
            return None
    batch_to_space = None
    if cur.type == "BatchToSpaceND":
        batch_to_space, cur = cur, cur.inputs[0].op
        if _single_consumer(cur.outputs[0]) is not batch_to_space:
            return None
    if cur.type not in registry.COMPUTE_OPS:
        return None
    spec = registry.COMPUTE_OPS[cur.type]
    if not _is_parameter(cur.inputs[spec.weight_index]):
        return None
    if cur.type == "MatMul" and cur.get_attr("transpose_a"):
        return None
    if _single_consumer(cur.outputs[0]) is not (batch_to_space or bias_op or bn):
        return None
    if batch_to_space is not None and \
            _single_consumer(batch_to_space.outputs[0]) is not (bias_op or bn):
        return None
    return _Match(cur, batch_to_space, bias_op, bias, bn)


def _is_empty(tensor):
    return tensor.shape.num_elements() == 0


def _read(variable_op):
    if variable_op.type == "VarHandleOp":
        return tf.raw_ops.ReadVariableOp(resource=variable_op.outputs[0], dtype=tf.float32)
    return tf.identity(variable_op.outputs[0])


def _moving_statistic(bn, index):
    """The moving mean (index 3) or variance (4) of `bn`: its input, or, where the batch norm
    was given none (training mode), the variable its batch statistic updates::

        bn:k -> Sub(moving_read, bn:k) -> Mul(decay) -> AssignSub(moving_variable)
    """
    tensor = bn.inputs[index]
    if not _is_empty(tensor):
        return tensor
    stack, seen = [(bn.outputs[index - 2], 0)], set()
    while stack:
        t, depth = stack.pop()
        for user in t.consumers():
            if user.type in _ASSIGN_SUB_OPS:
                return _read(user.inputs[0].op)
            if depth < 3 and user.name not in seen:
                seen.add(user.name)
                stack.extend((o, depth + 1) for o in user.outputs)
    raise QuantizeError(f"batch norm {bn.name} has no moving statistics (input {index} is empty "
                        "and no moving-average update reads its batch statistics); build it "
                        "with moving averages (e.g. slim.batch_norm / BatchNormalization)")


def _scale_weights(weights, scale, conv):
    """W * scale per output channel (registry.COMPUTE_OPS out axes)."""
    if conv.type == "DepthwiseConv2dNative":  # [kh, kw, in, mult]; channel = in * mult
        return weights * tf.reshape(scale, tf.shape(weights)[2:])
    if conv.type == "Conv2DBackpropInput":    # [kh, kw, out, in]
        return weights * tf.reshape(scale, [-1, 1])
    if conv.type == "MatMul" and conv.get_attr("transpose_b"):  # [out, in]
        return weights * tf.reshape(scale, [-1, 1])
    return weights * scale                    # Conv2D [kh, kw, in, out], MatMul [in, out]


def _copy_op(op, inputs, name):
    """A new op of op's type and attributes on `inputs`."""
    attrs = {key: op.node_def.attr[key] for key in op.node_def.attr}
    return op.graph.create_op(op.type, inputs, [t.dtype for t in op.outputs], attrs=attrs,
                              name=name)


def _fold_scope(graph, conv):
    scope = conv.name.rpartition("/")[0] or conv.name
    base = f"{scope}/BatchNorm_Fold"
    name, k = base, 0
    while _scope_used(graph, name):
        k += 1
        name = f"{base}_{k}"
    return name


def _scope_used(graph, name):
    try:
        graph.get_operation_by_name(f"{name}/scale")
        return True
    except KeyError:
        return False


def _global_step(graph):
    step = tf.compat.v1.train.get_global_step(graph)
    if step is None:
        with graph.as_default(), graph.name_scope(None):
            step = tf.compat.v1.train.get_or_create_global_step(graph)
        log.info("created the global step variable %s for fold_bn_freeze_step", step.op.name)
    return step


def _fold(graph, m, freeze_step):
    """Builds the folded layer of match `m`.

    Returns:
      (scope, parameter tensor names, names of the ops to leave out of the quantized range,
      FoldedLayer of a training fold or None).
    """
    bn = m.bn
    spec = registry.COMPUTE_OPS[m.conv.type]
    gamma, beta = bn.inputs[1], bn.inputs[2]
    eps = bn.get_attr("epsilon")
    training = bool(bn.get_attr("is_training"))
    step = _global_step(graph) if training and freeze_step > 0 else None
    before = {op.name for op in graph.get_operations()}
    scope = _fold_scope(graph, m.conv)
    with graph.as_default(), graph.name_scope(None), graph.name_scope(scope + "/"):
        moving_mean = _moving_statistic(bn, 3)
        moving_var = _moving_statistic(bn, 4)
        scale = tf.multiply(gamma, tf.math.rsqrt(moving_var + eps), name="scale")
        weights = tf.identity(_scale_weights(m.conv.inputs[spec.weight_index], scale, m.conv),
                              name="weights")
        conv_weights = weights
        if training and freeze_step != 0:
            # The conv reads Q(W * scale) / scale (0 where scale == 0): it outputs the float
            # conv's scale for the batch norm, and the unscaling costs a weight-sized multiply
            # instead of an activation-sized one. From the freeze step on it reads Q(W * scale).
            inverse = tf.math.divide_no_nan(tf.ones_like(scale), scale, name="inverse_scale")
            conv_weights = _scale_weights(weights, inverse, m.conv)
            if step is not None:
                frozen = tf.greater_equal(step, tf.cast(freeze_step, step.dtype),
                                          name="frozen")
                conv_weights = tf.where(frozen, weights, conv_weights)
            conv_weights = tf.identity(conv_weights, name="conv_weights")
        conv_inputs = list(m.conv.inputs)
        conv_inputs[spec.weight_index] = conv_weights
        conv = _copy_op(m.conv, conv_inputs, name="conv").outputs[0]
        out = conv
        if m.space_to_batch is not None:
            out = _copy_op(m.space_to_batch, [out] + list(m.space_to_batch.inputs[1:]),
                           name="BatchToSpaceND").outputs[0]
        b = m.bias if m.bias is not None else tf.zeros_like(beta)
        bias = tf.identity(beta + (b - moving_mean) * scale, name="bias")
        inference = None
        if not training or freeze_step >= 0:
            inference = tf.nn.bias_add(out, bias, name="BiasAdd")
        unscaled = out
        if training and freeze_step == 0:
            # The deploy form from the start; the batch norm runs on the unscaled conv only
            # for its moving averages.
            inverse = tf.math.divide_no_nan(tf.ones_like(scale), scale, name="inverse_scale")
            unscaled = tf.multiply(out, inverse, name="unscale")
        if training:
            # The batch norm reads the float-scale conv output (through the original bias op,
            # whose variable keeps its name).
            edit.replace_input(m.bias_op or bn, (m.space_to_batch or m.conv).outputs[0], unscaled)
        if not training or freeze_step == 0:
            result = inference
        elif step is None:
            result = bn.outputs[0]
        else:
            result = tf.where(frozen, inference, bn.outputs[0], name="output")
            # Frozen statistics stay frozen: the moving-average updates then read the moving
            # statistics themselves (no change), as PyTorch's freeze_bn.
            for k, moving in ((1, moving_mean), (2, moving_var)):
                held = tf.where(frozen, moving, bn.outputs[k], name=f"frozen_statistic_{k}")
                edit.rewire_consumers(bn.outputs[k], held, skip=(held.op,))
    if result is not bn.outputs[0]:
        edit.rewire_consumers(bn.outputs[0], result, skip=(result.op,))
    original = [op for op in (m.bias_op, bn) if op is not None]
    if result is inference:
        main = [conv.op, out.op, inference.op]
    else:
        main = [conv.op, out.op] + original
        if result is not bn.outputs[0]:
            main += [inference.op, result.op]
    main = [op.name for op in dict.fromkeys(main)]  # without atrous, out is F/conv
    created = sorted(op.name for op in graph.get_operations()
                     if op.name not in before and op.name not in main)
    dead = [m.conv.name] + [op.name for op in [m.space_to_batch] + original
                            if op is not None and op.name not in main]
    layer = None
    if training:
        reader = (inference.op.name, 1) if inference is not None and \
            inference.op.name in main else None
        readers = tuple((op.name, i) for op in weights.consumers()
                        for i, t in enumerate(op.inputs) if t is weights)
        layer = FoldedLayer(tuple(main), weights.name, bias.name, reader,
                            f"{scope}/BiasAdd", readers)
    return scope, [bias.name], created + dead, layer


def find_batch_norms(graph):
    """Batch-norm ops of the graph (graph order) and their matched layers (None: unmatched)."""
    return [(op, _match(op)) for op in graph.get_operations()
            if op.type in registry.BATCH_NORM_OPS and op.type.startswith("FusedBatchNorm")]


def fold_batch_norms(graph, freeze_step=-1, keep=()):
    """Folds every matched batch norm of the live `graph` in place (see the module docstring).

    Args:
      graph: a tf.Graph (training or evaluation phase; each batch norm's is_training decides).
      freeze_step: global step from which training folds use moving statistics; -1 never,
        0 always.
      keep: node names that must stay as they are (the user's output nodes): a batch norm in
        `keep` is not folded.

    Returns:
      FoldResult.
    """
    keep = set(keep)
    result = FoldResult([], [], [])
    for bn, match in find_batch_norms(graph):
        if match is None:
            log.warning("batch norm %s does not follow a conv / depthwise / MatMul layer; "
                        "left unfolded", bn.name)
            continue
        if bn.name in keep or (match.bias_op is not None and match.bias_op.name in keep):
            log.warning("batch norm %s is an output node; left unfolded", bn.name)
            continue
        scope, parameters, exclude, layer = _fold(graph, match, freeze_step)
        result.folded.append((bn.name, scope))
        result.parameters += parameters
        result.exclude += exclude
        if layer is not None:
            result.layers[layer.nodes[0]] = layer
    return result
