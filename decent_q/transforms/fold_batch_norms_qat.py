"""Folds batch norms into the preceding compute op of a LIVE graph, in place (QAT).

The training and evaluation graphs of a QAT script hold variables, so the frozen-graph pass
(:mod:`decent_q.transforms.fold_batch_norms`) cannot run on them. This pass builds the folded
layer next to the original one and moves the batch norm's consumers onto it. Matched::

    x -> conv(x, W) -> [BatchToSpaceND] -> [BiasAdd(b)] -> FusedBatchNorm{,V2,V3}(gamma, beta,
                                                                  moving_mean, moving_var) -> ...
    conv = Conv2D | DepthwiseConv2dNative | Conv2DBackpropInput | MatMul   (NHWC)

Built under ``F = <conv scope>/BatchNorm_Fold`` (the same names in the training and the
evaluation graph, so one checkpoint serves both)::

    F/scale     = gamma / sqrt(moving_var + eps)
    F/weights   = W * F/scale                      (per output channel)     -> wquant
    F/conv      = conv(x, F/weights) [-> F/BatchToSpaceND]
    F/correction_mul = F/conv * F/correction       (training, batch statistics only)
    F/BiasAdd   = BiasAdd(.., F/bias)                                       -> aquant

Inference (evaluation graph, or a batch norm with is_training=False)::

    F/bias = beta + (b - moving_mean) * F/scale

Training with batch statistics (Krishnamoorthi 2018, as tf.contrib.quantize): with
mu_B, var_B the batch moments of the float conv output and sigma = sqrt(var + eps)::

    F/correction = sigma_moving / sigma_B
    F/bias       = beta - gamma * mu_B / sigma_B        (b cancels: it shifts mu_B as well)

so ``F/BiasAdd = gamma * (conv(x, W) + b - mean_B(conv + b)) / sigma_B + beta`` -- exactly the
training-mode batch norm -- while the weights that are quantized are the inference weights.
mu_B and var_B are the training batch norm's own batch outputs and, as in tf.contrib.quantize,
the gradient treats them as constants, so the float conv has no backward pass (it halves the
step-time cost of the fold; see benchmarks/README.md).
After ``freeze_step`` (global step >= freeze_step) the correction is 1 and the bias is the
inference bias: the network trains as it will be deployed. freeze_step 0 uses the moving
statistics from the start (the original vai_q_tensorflow behaviour); -1 never freezes.

The original conv and batch norm stay in the training graph: they compute the batch statistics
and feed the moving-average updates (UPDATE_OPS / Keras ``model.updates``) as before. They are
reported in ``FoldResult.exclude`` so the quantization planner leaves them float.
"""

import dataclasses
import logging
from typing import List, Tuple

import tensorflow as tf

from decent_q import registry
from decent_q.errors import QuantizeError

log = logging.getLogger("decent_q")

_READ_OPS = ("Identity", "ReadVariableOp")
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")
_ASSIGN_SUB_OPS = ("AssignSub", "AssignSubVariableOp")


@dataclasses.dataclass
class FoldResult:
    """What the fold built, for the planner and the tests."""
    folded: List[Tuple[str, str]]  # (batch norm op, F scope) pairs, in graph order
    parameters: List[str]          # tensors computed from data the planner treats as parameters
    exclude: List[str]             # ops the planner leaves out of the quantized range


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


def _batch_moments(bn, float_out, bias):
    """Batch mean and (biased) variance of `float_out`, treated as constants by the gradient.

    As in tf.contrib.quantize, they are the training batch norm's own batch statistics (it runs
    anyway, for the moving averages), and no gradient flows through them: the float conv then
    needs no backward pass, which is most of what the batch-statistics fold costs per step.
    FusedBatchNorm returns the Bessel-corrected variance (n / (n - 1)); the fold needs the
    biased one it normalizes with. With ``exponential_avg_factor`` != 1 its outputs are the
    updated running statistics instead, and the moments are computed here.
    """
    try:
        factor = bn.get_attr("exponential_avg_factor")
    except ValueError:
        factor = 1.0
    if factor != 1.0:
        axes = list(range(float_out.shape.rank - 1))
        mean, var = tf.nn.moments(float_out, axes, name="batch_moments")
        return tf.stop_gradient(mean), tf.stop_gradient(var)
    mean, var = bn.outputs[1], bn.outputs[2]
    if bias is not None:  # the batch norm saw conv + b; the fold needs the moments of conv
        mean = mean - bias
    count = tf.cast(tf.size(float_out, out_type=tf.int64) // tf.cast(
        tf.shape(float_out)[-1], tf.int64), var.dtype)
    var = var * ((count - 1.0) / tf.maximum(count, 1.0))
    return (tf.stop_gradient(mean, name="batch_mean"),
            tf.stop_gradient(var, name="batch_variance"))


def _fold(graph, m, freeze_step):
    """Builds the folded layer of match `m`; returns (parameters, created ops' names)."""
    bn = m.bn
    spec = registry.COMPUTE_OPS[m.conv.type]
    gamma, beta = bn.inputs[1], bn.inputs[2]
    eps = bn.get_attr("epsilon")
    batch_stats = bool(bn.get_attr("is_training")) and freeze_step != 0
    before = {op.name for op in graph.get_operations()}
    step = _global_step(graph) if batch_stats and freeze_step > 0 else None
    scope = _fold_scope(graph, m.conv)
    with graph.as_default(), graph.name_scope(None), graph.name_scope(scope + "/"):
        moving_mean = _moving_statistic(bn, 3)
        moving_var = _moving_statistic(bn, 4)
        scale = tf.multiply(gamma, tf.math.rsqrt(moving_var + eps), name="scale")
        weights = tf.identity(_scale_weights(m.conv.inputs[spec.weight_index], scale, m.conv),
                              name="weights")
        conv_inputs = list(m.conv.inputs)
        conv_inputs[spec.weight_index] = weights
        out = _copy_op(m.conv, conv_inputs, name="conv").outputs[0]
        float_out = m.conv.outputs[0]
        if m.space_to_batch is not None:
            out = _copy_op(m.space_to_batch, [out] + list(m.space_to_batch.inputs[1:]),
                           name="BatchToSpaceND").outputs[0]
            float_out = m.space_to_batch.outputs[0]
        b = m.bias if m.bias is not None else tf.zeros_like(beta)
        moving_bias = beta + (b - moving_mean) * scale
        parameters = []
        if batch_stats:
            mean, var = _batch_moments(bn, float_out, m.bias)
            inv_sigma = tf.math.rsqrt(var + eps)
            correction = tf.sqrt(moving_var + eps) * inv_sigma
            batch_bias = beta - gamma * mean * inv_sigma
            if step is not None:
                frozen = tf.greater_equal(step, tf.cast(freeze_step, step.dtype), name="frozen")
                correction = tf.where(frozen, tf.ones_like(correction), correction)
                batch_bias = tf.where(frozen, moving_bias, batch_bias)
            correction = tf.identity(correction, name="correction")
            bias = tf.identity(batch_bias, name="bias")
            out = tf.multiply(out, correction, name="correction_mul")
            parameters += [correction.name, bias.name]
        else:
            bias = tf.identity(moving_bias, name="bias")
            parameters.append(bias.name)
        out = tf.nn.bias_add(out, bias, name="BiasAdd")
    main_path = {out.op.name, f"{scope}/conv", f"{scope}/BatchToSpaceND",
                 f"{scope}/correction_mul"}
    created = sorted(op.name for op in graph.get_operations()
                     if op.name not in before and op.name not in main_path)
    for consumer in list(bn.outputs[0].consumers()):
        if consumer is out.op:
            continue
        for i, t in enumerate(consumer.inputs):
            if t is bn.outputs[0]:
                consumer._update_input(i, out)  # pylint: disable=protected-access
    return scope, parameters, created


def find_batch_norms(graph):
    """Batch-norm ops of the graph (graph order) and their matched layers (None: unmatched)."""
    return [(op, _match(op)) for op in graph.get_operations()
            if op.type in registry.BATCH_NORM_OPS and op.type.startswith("FusedBatchNorm")]


def fold_batch_norms(graph, freeze_step=-1, keep=()):
    """Folds every matched batch norm of the live `graph` in place (see the module docstring).

    Args:
      graph: a tf.Graph (training or evaluation phase; each batch norm's is_training decides).
      freeze_step: global step after which training folds use moving statistics; -1 never,
        0 always (no batch statistics).
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
        scope, parameters, created = _fold(graph, match, freeze_step)
        result.folded.append((bn.name, scope))
        result.parameters += parameters
        result.exclude += created + [op.name for op in (match.conv, match.space_to_batch,
                                                        match.bias_op, bn) if op is not None]
    return result
