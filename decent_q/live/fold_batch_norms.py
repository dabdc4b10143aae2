"""Folds batch norms into the preceding compute op of a LIVE graph, in place (QAT).

The training and evaluation graphs of a QAT script hold variables, so the frozen-graph pass
(:mod:`decent_q.transforms.fold_batch_norms`) cannot run on them. This pass builds the folded
layer next to the original one and moves the batch norm's consumers onto it. Matched::

    x -> conv(x, W) -> [BatchToSpaceND] -> [bias(b)] -> batch norm -> ...

the compute layer and every batch-norm form of :mod:`decent_q.layers` that post-training
quantization folds: FusedBatchNorm{,V2,V3} (NHWC), BatchNormWithGlobalNormalization, the ops of
``tf.nn.batch_normalization`` (Keras' BatchNormalization of a rank-2 input, i.e. Dense + batch
norm, and ``slim.batch_norm(fused=False)``; their batch statistics come from ``tf.nn.moments``
of the layer output in training) and ``x * scale + offset`` with parameter scale and offset
(folded as an inference batch norm in both phases). A batch norm with no compute layer in front
cannot be folded into weights: it stays a float op (a warning names it).

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

from decent_q import layers
from decent_q import registry
from decent_q.live import batch_norms
from decent_q.live import edit
from decent_q.live import gradients

log = logging.getLogger("decent_q")

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
    # F/conv, F/weights, F/bias -> the names of what they replace (the user's conv, its weight
    # read and variable, its bias), for ignore_nodes / nodes_bit / nodes_method
    aliases: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


def _scale_weights(weights, scale, conv, training):
    """W * scale per output channel (layers.channel_shape); in a training fold with
    decent_q.live.gradients' gradients (no op of theirs takes the caller's control
    dependencies: docs/batch-norm-folding.md "Training with batch statistics")."""
    shape = layers.channel_shape(conv.type, weights.shape.as_list(), layers.transpose_b(conv))
    multiply = gradients.multiply if training else tf.multiply
    reshape = gradients.reshape if training else tf.reshape
    if shape == [-1]:
        return multiply(weights, scale, name="mul")
    return multiply(weights, reshape(scale, shape, name="Reshape"), name="mul")


def _folding_scale(m, moving_var, weights):
    """F/scale: gamma / sqrt(moving variance + eps), or the constant scale of x * s + o."""
    bn = m.bn
    multiply = gradients.multiply if bn.training else tf.multiply
    if bn.form == "scale_offset":
        channels = layers.out_channels(m.conv.type, weights.shape.as_list(),
                                       layers.transpose_b(m.conv))
        return multiply(bn.gamma, tf.ones([channels], bn.gamma.dtype), name="scale")
    if bn.gamma is None:
        return tf.math.rsqrt(moving_var + bn.epsilon, name="scale")
    deviation = tf.math.rsqrt(moving_var + bn.epsilon)
    if bn.training:  # the moving variance is not trained (float training gives it no gradient)
        deviation = tf.stop_gradient(deviation)
    return multiply(bn.gamma, deviation, name="scale")


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
    """Builds the folded layer of match `m` (see the module docstring).

    Returns:
      (scope, parameter tensor names, names of the ops to leave out of the quantized range
      besides the ones the fold created, FoldedLayer of a training fold or None, (the layer's
      declared op names, the graph's op count before the fold and after it)).
    """
    bn = m.bn
    step = _global_step(graph) if bn.training and freeze_step > 0 else None
    before = graph.version  # the number of ops: the fold's own ops are listed after it
    scope = _fold_scope(graph, m.conv)
    with graph.as_default(), graph.name_scope(None), graph.name_scope(scope + "/"):
        moving = (batch_norms.moving_statistic(bn, 1) if bn.mean is not None else None,
                  batch_norms.moving_statistic(bn, 2) if bn.variance is not None else None)
        weight_input = m.conv.inputs[registry.COMPUTE_OPS[m.conv.type].weight_index]
        scale = _folding_scale(m, moving[1], weight_input)
        weights = tf.identity(_scale_weights(weight_input, scale, m.conv, bn.training),
                              name="weights")
        frozen, conv_weights = None, weights
        if bn.training and freeze_step != 0:
            frozen, conv_weights = _training_weights(m, weights, scale, step, freeze_step)
        conv, out = _folded_conv(m, conv_weights)
        bias = _folded_bias(m, moving[0], scale)
        inference = None
        if not bn.training or freeze_step >= 0:
            inference = tf.nn.bias_add(out, bias, name="BiasAdd")
        result = _connect(m, out, scale, inference, frozen, freeze_step, moving)
    if result is not bn.output:
        edit.rewire_consumers(bn.output, result, skip=(result.op,))
    main, dead = _declared_ops(m, [conv, out, inference, result])
    layer = None
    if bn.training:
        reader = (inference.op.name, 1) if inference is not None and \
            inference.op.name in main else None
        readers = tuple((op.name, i) for op in weights.consumers()
                        for i, t in enumerate(op.inputs) if t is weights)
        layer = FoldedLayer(tuple(main), weights.name, bias.name, reader,
                            f"{scope}/BiasAdd", readers)
    parameters = [bias.name] + ([t.name for t in bn.side_inputs] if bn.training else [])
    return scope, parameters, dead, layer, (main, before, graph.version)


def _training_weights(m, weights, scale, step, freeze_step):
    """(frozen flag or None, the weights the training conv reads).

    The conv reads Q(W * scale) / scale (0 where scale == 0): it outputs the float conv's scale
    for the batch norm, and the unscaling costs a weight-sized multiply instead of an
    activation-sized one. From the freeze step on it reads Q(W * scale)."""
    inverse = gradients.divide_no_nan(tf.ones_like(scale), scale, name="inverse_scale")
    conv_weights = _scale_weights(weights, inverse, m.conv, training=True)
    frozen = None
    if step is not None:
        frozen = tf.greater_equal(step, tf.cast(freeze_step, step.dtype), name="frozen")
        conv_weights = tf.where(frozen, weights, conv_weights)
    return frozen, tf.identity(conv_weights, name="conv_weights")


def _folded_conv(m, conv_weights):
    """(F/conv, the layer's output before the bias: F/BatchToSpaceND for an atrous conv)."""
    conv_inputs = list(m.conv.inputs)
    conv_inputs[registry.COMPUTE_OPS[m.conv.type].weight_index] = conv_weights
    conv = _copy_op(m.conv, conv_inputs, name="conv").outputs[0]
    out = conv
    if m.space_to_batch is not None:
        out = _copy_op(m.space_to_batch, [out] + list(m.space_to_batch.inputs[1:]),
                       name="BatchToSpaceND").outputs[0]
    return conv, out


def _connect(m, out, scale, inference, frozen, freeze_step, moving):
    """Rewires a training batch norm onto the folded conv; returns the layer's output tensor
    (the batch norm's, F/BiasAdd, or F/output = where(frozen, F/BiasAdd, batch norm))."""
    bn = m.bn
    if not bn.training:
        return inference
    unscaled = out
    if freeze_step == 0:
        # The deploy form from the start; the batch norm runs on the unscaled conv only for
        # its moving averages.
        inverse = tf.math.divide_no_nan(tf.ones_like(scale), scale, name="inverse_scale")
        unscaled = tf.multiply(out, inverse, name="unscale")
    # The batch norm reads the float-scale conv output (through the original bias op, whose
    # variable keeps its name).
    edit.rewire_consumers((m.space_to_batch or m.conv).outputs[0], unscaled)
    if freeze_step == 0:
        return inference
    if frozen is None:
        return bn.output
    result = tf.where(frozen, inference, bn.output, name="output")
    # Frozen statistics stay frozen: the moving-average updates then read the moving
    # statistics themselves (no change), as PyTorch's freeze_bn.
    for k, statistic_moving in ((1, moving[0]), (2, moving[1])):
        statistic = bn.batch_statistic(k)
        held = tf.where(frozen, statistic_moving, statistic, name=f"frozen_statistic_{k}")
        edit.rewire_consumers(statistic, held, skip=[held.op] + bn.ops)
    return result


def _declared_ops(m, built):
    """(the layer's ops from F/conv to its output, for the planner; the ops the fold replaced,
    which stay out of the quantized range with the fold's own arithmetic)."""
    conv, out, inference, result = built
    original = ([m.bias_op] if m.bias_op is not None else []) + m.bn.chain
    if result is inference:
        main = [conv.op, out.op, inference.op]
    else:
        main = [conv.op, out.op] + original
        if result is not m.bn.output:
            main += [inference.op, result.op]
    main = [op.name for op in dict.fromkeys(main)]  # without atrous, out is F/conv
    dead = [m.conv.name] + [op.name for op in [m.space_to_batch] + original + m.bn.ops
                            if op is not None and op.name not in main]
    return main, list(dict.fromkeys(dead))


def _folded_bias(m, moving_mean, scale):
    """F/bias = beta + (b - moving_mean) * F/scale (b = 0 without a bias op)."""
    bn = m.bn
    beta = bn.beta if bn.beta is not None else tf.zeros_like(scale)
    b = m.bias if m.bias is not None else tf.zeros_like(beta)
    if moving_mean is None:  # x * s + o
        return tf.identity(beta + b * scale, name="bias")
    return tf.identity(beta + (b - moving_mean) * scale, name="bias")


def _source_names(tensor):
    """The node of `tensor` and, through variable reads, the variable's name."""
    names, op = [tensor.op.name], tensor.op
    while op.type in registry.READ_OPS and op.inputs:
        op = op.inputs[0].op
        names.append(op.name)
    return tuple(names)


def _aliases(scope, m):
    weights = m.conv.inputs[registry.COMPUTE_OPS[m.conv.type].weight_index]
    aliases = {f"{scope}/conv": (m.conv.name,), f"{scope}/weights": _source_names(weights),
               # the layer's output, where no activation follows: the batch norm's
               f"{scope}/BiasAdd": (m.bn.op.name,), f"{scope}/output": (m.bn.op.name,)}
    if m.bias is not None:
        aliases[f"{scope}/bias"] = _source_names(m.bias)
    return aliases


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
    folds = []
    for bn, match in batch_norms.find_batch_norms(graph):
        if match is None:
            log.warning("batch norm %s does not follow a conv / depthwise / MatMul layer, so "
                        "it has no weights to fold into; it stays a float op", bn.op.name)
            continue
        inside = [op.name for op in bn.chain] + \
            ([match.bias_op.name] if match.bias_op is not None else [])
        if keep & set(inside):
            log.warning("batch norm %s is an output node; left unfolded", bn.op.name)
            continue
        scope, parameters, dead, layer, created = _fold(graph, match, freeze_step)
        folds.append((dead, created))
        result.folded.append((bn.op.name, scope))
        result.aliases.update(_aliases(scope, match))
        result.parameters += parameters
        if layer is not None:
            result.layers[layer.nodes[0]] = layer
    # The ops each fold created, from ONE listing of the graph (in creation order): listing it
    # once per fold made the pass quadratic (2 ms a listing at 150 k ops).
    ops = graph.get_operations() if folds else []
    if folds and len(ops) != graph.version:
        raise AssertionError("tf.Graph.version is not the op count; the fold cannot tell "
                             "its ops from the others")
    for dead, (main, before, after) in folds:
        main = set(main)
        result.exclude += sorted(op.name for op in ops[before:after] if op.name not in main)
        result.exclude += dead
    return result
