"""The batch norms a QAT fold folds, found in a live graph (see live.fold_batch_norms).

Each batch-norm form of :data:`decent_q.layers.BATCH_NORMS` is matched by its last op and
described as a :class:`BatchNorm` (its data tensor, parameters, statistics and ops, whatever the
form); the compute layer in front of it is matched with the layer declarations
(:data:`decent_q.layers.BIASED`). In training, the moving statistics are the variables that the
moving-average updates of the batch statistics assign.
"""

import dataclasses
from typing import List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import tensor_util  # pylint: disable=no-name-in-module

from decent_q import layers
from decent_q import registry
from decent_q.errors import QuantizeError
from decent_q.graph import pattern

_ASSIGN_SUB_OPS = ("AssignSub", "AssignSubVariableOp")
_CONTROL_FLOW_OPS = frozenset({"Switch", "Merge", "RefSwitch", "RefMerge", "Enter", "Exit",
                               "If", "StatelessIf", "While", "StatelessWhile"})


@dataclasses.dataclass
class Match:
    conv: tf.Operation
    space_to_batch: tf.Operation  # BatchToSpaceND after an atrous conv, or None
    bias_op: tf.Operation          # BiasAdd / Add after the conv, or None
    bias: tf.Tensor                # its bias vector, or None
    bn: "BatchNorm"


@dataclasses.dataclass
class BatchNorm:
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

    data_mul: Optional[tf.Operation] = None  # x * inv (or x * scale) of the unfused forms

    @property
    def chain(self):
        """Its ops on the data path, x to output: the op itself, or x * inv -> + offset."""
        return [self.op] if self.data_mul is None else [self.data_mul, self.op]

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


def is_parameter(tensor):
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
    return pattern.Context(is_param=lambda t: is_parameter(graph.get_tensor_by_name(t)))


def _describe(graph, form, found):
    """The BatchNorm of a layers.match_batch_norm result, or None if it cannot be folded."""
    tensor = graph.get_tensor_by_name
    op = graph.get_operation_by_name(found["batch_norm"])
    if form == "fused":
        if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
            return None
        return BatchNorm(form, op, op.inputs[0], [op], op.inputs[1], op.inputs[2],
                          op.get_attr("epsilon"), bool(op.get_attr("is_training")),
                          op.inputs[3], op.inputs[4])
    if form == "global_normalization":
        gamma = op.inputs[4] if op.get_attr("scale_after_normalization") else None
        return BatchNorm(form, op, op.inputs[0], [op], gamma, op.inputs[3],
                          op.get_attr("variance_epsilon"), False, op.inputs[1], op.inputs[2])
    ops = [graph.get_operation_by_name(n) for n in found.ops]
    if form == "scale_offset":
        scale, offset = tensor(found["scale"]), tensor(found["offset"])
        if not all(t.shape.rank is not None and t.shape.rank <= 1 for t in (scale, offset)):
            return None  # a per-position offset (e.g. a detection grid), not a batch norm
        return BatchNorm(form, op, tensor(found["x"]), ops, scale, offset, None, False, None,
                         None, graph.get_operation_by_name(found["mul"]))
    mean, variance = tensor(found["mean"]), tensor(found["variance"])
    training = not (is_parameter(mean) and is_parameter(variance))
    x = tensor(found["x"])
    bn = BatchNorm(form, op, x, ops, tensor(found["gamma"]) if "gamma" in found.captures
                   else None, tensor(found["beta"]) if "beta" in found.captures else None,
                   tensor(found["epsilon"]), training, mean, variance,
                   graph.get_operation_by_name(found["mul"]))
    if training:
        bn.ops += _statistics_ops(x, (mean, variance))
        if not _batch_moments(bn):
            return None  # layer / group / instance norm, or a batch norm inside a tf.cond
    return bn


def _batch_moments(bn):
    """Whether an unfused training normalisation is a batch norm this fold can fold: its
    statistics are moments of x over every axis but the channels (tf.nn.moments), computed
    outside control flow, and moving-average updates of variables read them."""
    if any(op.type in _CONTROL_FLOW_OPS for op in bn.ops + [bn.x.op]):
        return False
    means = [op for op in bn.ops if op.type == "Mean" and op.inputs[0] is bn.x]
    rank = bn.x.shape.rank
    for mean in means:
        axes = tensor_util.constant_value(mean.inputs[1])
        if rank is None or axes is None or \
                sorted(int(a) % rank for a in np.ravel(axes)) != list(range(rank - 1)):
            return False
    return bool(means) and all(_moving_variable(bn, k) is not None for k in (1, 2))


def _statistics_ops(x, statistics):
    """The ops between `x` and its batch statistics (tf.nn.moments: Mean, StopGradient,
    SquaredDifference, Squeeze)."""
    found, stack = {}, [t.op for t in statistics]
    while stack:
        op = stack.pop()
        if op.name in found or len(found) > 16:
            continue
        found[op.name] = op
        stack.extend(t.op for t in op.inputs if t is not x and not is_parameter(t))
    return list(found.values())


_LIVE_FORMS = ("fused", "global_normalization", "nn_batch_normalization", "scale_offset")
_LAST_OP_TYPES = registry.BATCH_NORM_OPS | {"Add", "AddV2"}


def _layer_in_front(graph, bn):
    """The compute layer whose output `bn` normalises, as a Match, or None."""
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
    return Match(conv, get(found["batch_to_space"]) if found.get("batch_to_space") else None,
                  get(found["bias_op"]) if found.get("bias_op") else None, bias, bn)


def _is_empty(tensor):
    return tensor.shape.num_elements() == 0


def _read(variable_op):
    if variable_op.type == "VarHandleOp":
        return tf.raw_ops.ReadVariableOp(resource=variable_op.outputs[0], dtype=tf.float32)
    return tf.identity(variable_op.outputs[0])


def moving_statistic(bn, index):
    """The moving mean (index 1) or variance (2) of `bn`: its input in inference, or, where it
    normalises with batch statistics, the variable its batch statistic updates::

        batch statistic -> Sub(moving_read, statistic) -> Mul(decay) -> AssignSub(moving)
    """
    tensor = bn.mean if index == 1 else bn.variance
    if not bn.training or (bn.form == "fused" and not _is_empty(tensor)):
        return tensor
    variable = _moving_variable(bn, index)
    if variable is not None:
        return _read(variable)
    raise QuantizeError(f"batch norm {bn.op.name} has no moving statistics (no moving-average "
                        "update reads its batch statistics); build it with moving averages "
                        "(e.g. slim.batch_norm / BatchNormalization)")


def _moving_variable(bn, index):
    """The variable op the moving-average update of batch statistic `index` assigns, or
    None."""
    stack, seen = [(bn.batch_statistic(index), 0)], set()
    while stack:
        t, depth = stack.pop()
        for user in t.consumers():
            if user.type in _ASSIGN_SUB_OPS:
                target = user.inputs[0].op
                return target if target.type in registry.VARIABLE_OPS else None
            if depth < 3 and user.name not in seen and user not in bn.ops:
                seen.add(user.name)
                stack.extend((o, depth + 1) for o in user.outputs)
    return None


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
