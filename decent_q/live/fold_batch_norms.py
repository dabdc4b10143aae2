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
from decent_q.errors import QuantizeError
from decent_q.graph import pattern
from decent_q.live import edit

log = logging.getLogger("decent_q")

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
    # F/conv, F/weights, F/bias -> the names of what they replace (the user's conv, its weight
    # read and variable, its bias), for ignore_nodes / nodes_bit / nodes_method
    aliases: Dict[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Match:
    conv: tf.Operation
    space_to_batch: tf.Operation  # BatchToSpaceND after an atrous conv, or None
    bias_op: tf.Operation          # BiasAdd / Add after the conv, or None
    bias: tf.Tensor                # its bias vector, or None
    bn: "_BatchNorm"


@dataclasses.dataclass
class _BatchNorm:
    """A matched batch norm, whatever its form (layers.BATCH_NORMS)."""
    form: str
    op: tf.Operation               # its last op: its output 0 is the normalised tensor
    x: tf.Tensor                   # the tensor it normalises
    ops: List[tf.Operation]        # its ops, batch-statistics ops included
    gamma: Optional[tf.Tensor]
    beta: Optional[tf.Tensor]
    epsilon: object                # a float or a tensor
    training: bool                 # normalises with batch statistics
    mean: tf.Tensor                # moving (inference) or batch (training) statistics
    variance: tf.Tensor

    @property
    def chain(self):
        """Its ops on the data path, x to output: the op itself, or x * inv -> + offset."""
        if self.form in ("fused", "global_normalization"):
            return [self.op]
        return [self.op.inputs[0].op if self.op.inputs[0].op in self.ops else
                self.op.inputs[1].op, self.op]

    @property
    def side_inputs(self):
        """Tensors the chain reads that are computed from statistics (not data)."""
        chain = self.chain
        return [t for op in chain for t in op.inputs
                if t.op not in chain and t is not self.x and t.op in self.ops]

    @property
    def output(self):
        return self.op.outputs[0]

    def batch_statistic(self, index):
        """The batch mean (index 1) or variance (2) the moving averages read."""
        if self.form == "fused":
            return self.op.outputs[index]
        return self.mean if index == 1 else self.variance


def _is_parameter(tensor):
    """A weight read from a variable or a constant (possibly through Identity reads)."""
    op = tensor.op
    for _ in range(4):
        if op.type in registry.VARIABLE_OPS or op.type == "Const":
            return True
        if op.type not in registry.READ_OPS or not op.inputs:
            return False
        op = op.inputs[0].op
    return False


def _context(graph):
    return pattern.Context(is_param=lambda t: _is_parameter(graph.get_tensor_by_name(t)))


def _describe(graph, form, found):
    """The _BatchNorm of a layers.match_batch_norm result, or None if it cannot be folded."""
    tensor = graph.get_tensor_by_name
    op = graph.get_operation_by_name(found["batch_norm"])
    if form == "fused":
        if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
            return None
        return _BatchNorm(form, op, op.inputs[0], [op], op.inputs[1], op.inputs[2],
                          op.get_attr("epsilon"), bool(op.get_attr("is_training")),
                          op.inputs[3], op.inputs[4])
    if form == "global_normalization":
        gamma = op.inputs[4] if op.get_attr("scale_after_normalization") else None
        return _BatchNorm(form, op, op.inputs[0], [op], gamma, op.inputs[3],
                          op.get_attr("variance_epsilon"), False, op.inputs[1], op.inputs[2])
    if form == "scale_offset":
        return _BatchNorm(form, op, tensor(found["x"]), [graph.get_operation_by_name(n)
                                                          for n in found.ops],
                          tensor(found["scale"]), tensor(found["offset"]), None, False, None,
                          None)
    mean, variance = tensor(found["mean"]), tensor(found["variance"])
    training = not (_is_parameter(mean) and _is_parameter(variance))
    x = tensor(found["x"])
    ops = [graph.get_operation_by_name(n) for n in found.ops]
    if training:
        ops += _statistics_ops(x, (mean, variance))
    return _BatchNorm(form, op, x, ops, tensor(found["gamma"]) if "gamma" in found.captures
                      else None, tensor(found["beta"]) if "beta" in found.captures else None,
                      tensor(found["epsilon"]), training, mean, variance)


def _statistics_ops(x, statistics):
    """The ops between `x` and its batch statistics (tf.nn.moments: Mean, StopGradient,
    SquaredDifference, Squeeze)."""
    found, stack = {}, [t.op for t in statistics]
    while stack:
        op = stack.pop()
        if op.name in found or len(found) > 16:
            continue
        found[op.name] = op
        stack.extend(t.op for t in op.inputs if t is not x and not _is_parameter(t))
    return list(found.values())


_LIVE_FORMS = ("fused", "global_normalization", "nn_batch_normalization", "scale_offset")
_LAST_OP_TYPES = registry.BATCH_NORM_OPS | {"Add", "AddV2"}


def _layer_in_front(graph, bn):
    """The compute layer whose output `bn` normalises, as a _Match, or None."""
    found = pattern.match(layers.BIASED, bn.x.name, graph, _context(graph))
    if found is None or not found.closed(pattern.LiveView(graph)):
        return None
    conv = graph.get_operation_by_name(found["compute"])
    if conv.type == "MatMul" and conv.get_attr("transpose_a"):
        return None
    if not set(op.name for op in bn.x.consumers()) <= {op.name for op in bn.ops}:
        return None
    bias = graph.get_tensor_by_name(found["bias"]) if found.get("bias") else None
    if bias is not None and bias.shape.rank != 1:
        return None
    get = graph.get_operation_by_name
    return _Match(conv, get(found["batch_to_space"]) if found.get("batch_to_space") else None,
                  get(found["bias_op"]) if found.get("bias_op") else None, bias, bn)


def _is_empty(tensor):
    return tensor.shape.num_elements() == 0


def _read(variable_op):
    if variable_op.type == "VarHandleOp":
        return tf.raw_ops.ReadVariableOp(resource=variable_op.outputs[0], dtype=tf.float32)
    return tf.identity(variable_op.outputs[0])


def _moving_statistic(bn, index):
    """The moving mean (index 1) or variance (2) of `bn`: its input in inference, or, where it
    normalises with batch statistics, the variable its batch statistic updates::

        batch statistic -> Sub(moving_read, statistic) -> Mul(decay) -> AssignSub(moving)
    """
    tensor = bn.mean if index == 1 else bn.variance
    if not bn.training or (bn.form == "fused" and not _is_empty(tensor)):
        return tensor
    stack, seen = [(bn.batch_statistic(index), 0)], set()
    while stack:
        t, depth = stack.pop()
        for user in t.consumers():
            if user.type in _ASSIGN_SUB_OPS:
                return _read(user.inputs[0].op)
            if depth < 3 and user.name not in seen and user not in bn.ops:
                seen.add(user.name)
                stack.extend((o, depth + 1) for o in user.outputs)
    raise QuantizeError(f"batch norm {bn.op.name} has no moving statistics (no moving-average "
                        "update reads its batch statistics); build it with moving averages "
                        "(e.g. slim.batch_norm / BatchNormalization)")


def _scale_weights(weights, scale, conv):
    """W * scale per output channel (layers.channel_shape)."""
    transpose_b = conv.type == "MatMul" and conv.get_attr("transpose_b")
    shape = layers.channel_shape(conv.type, weights.shape.as_list(), transpose_b)
    if shape == [-1]:
        return weights * scale
    return weights * tf.reshape(scale, shape)


def _folding_scale(m, moving_var, weights):
    """F/scale: gamma / sqrt(moving variance + eps), or the constant scale of x * s + o."""
    bn = m.bn
    if bn.form == "scale_offset":
        transpose_b = m.conv.type == "MatMul" and m.conv.get_attr("transpose_b")
        channels = layers.out_channels(m.conv.type, weights.shape.as_list(), transpose_b)
        return tf.multiply(bn.gamma, tf.ones([channels], bn.gamma.dtype), name="scale")
    if bn.gamma is None:
        return tf.math.rsqrt(moving_var + bn.epsilon, name="scale")
    return tf.multiply(bn.gamma, tf.math.rsqrt(moving_var + bn.epsilon), name="scale")


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
    training = bn.training
    step = _global_step(graph) if training and freeze_step > 0 else None
    before = {op.name for op in graph.get_operations()}
    scope = _fold_scope(graph, m.conv)
    with graph.as_default(), graph.name_scope(None), graph.name_scope(scope + "/"):
        moving_mean = _moving_statistic(bn, 1) if bn.mean is not None else None
        moving_var = _moving_statistic(bn, 2) if bn.variance is not None else None
        scale = _folding_scale(m, moving_var, m.conv.inputs[spec.weight_index])
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
        bias = _folded_bias(m, moving_mean, scale)
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
            edit.rewire_consumers((m.space_to_batch or m.conv).outputs[0], unscaled)
        if not training or freeze_step == 0:
            result = inference
        elif step is None:
            result = bn.output
        else:
            result = tf.where(frozen, inference, bn.output, name="output")
            # Frozen statistics stay frozen: the moving-average updates then read the moving
            # statistics themselves (no change), as PyTorch's freeze_bn.
            for k, moving in ((1, moving_mean), (2, moving_var)):
                statistic = bn.batch_statistic(k)
                held = tf.where(frozen, moving, statistic, name=f"frozen_statistic_{k}")
                edit.rewire_consumers(statistic, held, skip=[held.op] + bn.ops)
    if result is not bn.output:
        edit.rewire_consumers(bn.output, result, skip=(result.op,))
    original = ([m.bias_op] if m.bias_op is not None else []) + bn.chain
    if result is inference:
        main = [conv.op, out.op, inference.op]
    else:
        main = [conv.op, out.op] + original
        if result is not bn.output:
            main += [inference.op, result.op]
    main = [op.name for op in dict.fromkeys(main)]  # without atrous, out is F/conv
    created = sorted(op.name for op in graph.get_operations()
                     if op.name not in before and op.name not in main)
    dead = [m.conv.name] + [op.name for op in [m.space_to_batch] + original + bn.ops
                            if op is not None and op.name not in main]
    dead = list(dict.fromkeys(dead))
    layer = None
    if training:
        reader = (inference.op.name, 1) if inference is not None and \
            inference.op.name in main else None
        readers = tuple((op.name, i) for op in weights.consumers()
                        for i, t in enumerate(op.inputs) if t is weights)
        layer = FoldedLayer(tuple(main), weights.name, bias.name, reader,
                            f"{scope}/BiasAdd", readers)
    parameters = [bias.name] + ([t.name for t in bn.side_inputs] if training else [])
    return scope, parameters, created + dead, layer


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
    aliases = {f"{scope}/conv": (m.conv.name,), f"{scope}/weights": _source_names(weights)}
    if m.bias is not None:
        aliases[f"{scope}/bias"] = _source_names(m.bias)
    return aliases


def find_batch_norms(graph):
    """The batch norms of the graph (layers.BATCH_NORMS forms, graph order), each with its
    matched layer (None: no compute layer in front). x * s + o with nothing to fold into is
    not a batch norm and is left out."""
    graph_view, context = pattern.LiveView(graph), _context(graph)
    found = []
    for op in graph.get_operations():
        if op.type not in _LAST_OP_TYPES:
            continue
        matched = layers.match_batch_norm(graph_view, op.name, context, forms=_LIVE_FORMS)
        bn = matched and _describe(graph, *matched)
        if bn is None:
            continue
        layer = _layer_in_front(graph, bn)
        if layer is not None or bn.form != "scale_offset":
            found.append((bn, layer))
    return found


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
            log.warning("batch norm %s does not follow a conv / depthwise / MatMul layer, so "
                        "it has no weights to fold into; it stays a float op", bn.op.name)
            continue
        inside = [op.name for op in bn.chain] + \
            ([match.bias_op.name] if match.bias_op is not None else [])
        if keep & set(inside):
            log.warning("batch norm %s is an output node; left unfolded", bn.op.name)
            continue
        scope, parameters, exclude, layer = _fold(graph, match, freeze_step)
        result.folded.append((bn.op.name, scope))
        result.aliases.update(_aliases(scope, match))
        result.parameters += parameters
        result.exclude += exclude
        if layer is not None:
            result.layers[layer.nodes[0]] = layer
    return result
