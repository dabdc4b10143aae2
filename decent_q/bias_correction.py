"""Bias correction (``bias_correction`` 1 or 2): each quantized layer's bias absorbs a mean
shift of the layer's output, measured per output channel on the calibration batches
(docs/passes.md "Bias correction").

    eval GraphDef (EVAL FixNeurons with the calibrated positions)
      -> targets: layers with quantized Const weights and a Const bias   (_targets)
      -> passes: layers in graph order, a layer in a later pass when an earlier layer of the
         current pass feeds it                                         (passes)
      -> per pass, on input_fn(0 .. calib_iter - 1), with the eval model as corrected so far,
         per channel c, means over batch and spatial positions:
           1 (weights): shift_c = mean conv(x_q, W_q - W)[..., c]             (_probe)
           2 (output):  shift_c = mean conv(x_q, W_q)[..., c] - mean conv(x, W)[..., c]
                        (the second mean from the float model, one run for all layers)
      -> b' = b - shift; the bias FixNeuron's position searched again on b'   (_apply)

x_q is the layer's input as the quantized model computes it (quantized, and the biases of
the layers before it already corrected), x the float model's. conv(x_q, W_q - W) is a copy of
the compute op reading the weight FixNeuron's output minus its Const, in a probe copy of the
eval model that is never written out. Sums are float64 in batch order, so the result is
deterministic.
"""

import dataclasses
import logging
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from decent_q import calibrate, inputs, layers, ops, registry, report
from decent_q.errors import QuantizeError, op_error_text
from decent_q.graph import quantized, utils
from decent_q.graph.utils import node_name, tensor_name

log = logging.getLogger("decent_q")

_SUFFIX = "/bias_correction"


@dataclasses.dataclass(frozen=True)
class _Target:
    """A layer to correct, by its nodes in the eval model."""
    compute: str     # the compute op
    weight_fix: str  # its weight FixNeuron, reading the weight Const
    bias_fix: str    # its bias FixNeuron, reading the bias Const
    bias_const: str
    added_to: str    # the tensor the bias op adds the bias to (compute op or BatchToSpaceND)
    axis: int        # the channel axis of that tensor
    channels: int


@dataclasses.dataclass
class Result:
    """What :func:`correct_biases` did."""
    graph_def: object
    shifts: Dict[str, np.ndarray]  # compute op -> the per-channel shift subtracted (float64)
    positions: Dict[str, Tuple[int, int]]  # bias FixNeuron -> (old, new) position
    skipped: Dict[str, str]  # compute op -> why it was left alone
    passes: int


def correct_biases(eval_graph_def, plan, batches, config, s_config=None, progress=False,
                   input_fn_name="input_fn", float_graph_def=None):
    """The eval model with every quantized layer's bias corrected (module docstring).

    Args:
      eval_graph_def: the eval GraphDef (appliers.apply_to_graph_def); not changed.
      plan: its Plan; layers are corrected in its (graph) order.
      batches: callable(step) -> {placeholder name: array}, called for steps
        0 .. config.calib_iter - 1 once per pass (and once more for the float model).
      config: QuantizeConfig: bias_correction 1 (weights) or 2 (output); calib_iter,
        fix_neuron_impl, session options.
      s_config: optional session ConfigProto.
      progress: show a progress bar on stderr (only if it is a terminal).
      input_fn_name: the input function's name, for error messages.
      float_graph_def: the prepared float GraphDef the eval model was made from (needed by
        bias_correction=2).

    Returns:
      A :class:`Result`.
    """
    if config.bias_correction == 2 and float_graph_def is None:
        raise ValueError("bias_correction=2 needs float_graph_def")
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(eval_graph_def)
    targets, skipped = _targets(out, plan)
    for compute, reason in skipped.items():
        log.info("bias correction: %s left alone: %s", compute, reason)
    groups = passes(utils.NodeMap(out), targets)
    output_mode = config.bias_correction == 2
    run = _Runner(batches, config, s_config, input_fn_name, progress,
                  (len(groups) + output_mode) * config.calib_iter)
    shifts, positions = {}, {}
    with run:
        reference = run.means(float_graph_def, targets, {t.compute: t.added_to
                                                         for t in targets}) \
            if output_mode and targets else {}
        for group in groups:
            if output_mode:
                means = run.means(out, group, {t.compute: t.added_to for t in group})
                measured = {c: means[c] - reference[c] for c in means}
            else:
                measured = run.means(*_probe(out, group))
            positions.update(_apply(out, group, measured, config))
            shifts.update(measured)
    for target in targets:
        old, new = positions[target.bias_fix]
        log.debug("bias correction: %s: max |shift| %.3g, bias position %d -> %d",
                  target.compute, float(np.max(np.abs(shifts[target.compute]))), old, new)
    log.info("bias correction (%s): %d layer(s) corrected in %d pass(es) over %d batches, %d "
             "left alone", "output" if output_mode else "weights", len(targets), len(groups),
             config.calib_iter, len(skipped))
    return Result(out, shifts, positions, skipped, len(groups))


def _targets(graph_def, plan):
    """([_Target] in plan order, {compute: why skipped}) for the layers with a weight point."""
    nm = utils.NodeMap(graph_def)
    return split_targets(plan, lambda layer: _target(nm, plan, layer))


def split_targets(plan, target_of):
    """([target_of(layer)] in plan order, {compute: reason}) over the plan's layers with a weight
    point; `target_of` returns a target, or a string: why the layer is left alone."""
    targets, skipped = [], {}
    for layer in plan.layers:
        if layer.weight_point is None:
            continue
        found = target_of(layer)
        if isinstance(found, str):
            skipped[layer.compute] = found
        else:
            targets.append(found)
    return targets, skipped


def _target(nm, plan, layer):
    """The _Target of a plan layer, or the reason it cannot be corrected."""
    if layer.bias_point is None:
        return ("no bias: the layer has no BiasAdd / Add of a constant after its compute op "
                "(decent_q does not add one)")
    weights = nm.const(nm[layer.weight_point].input[0])
    bias = nm.const(nm[layer.bias_point].input[0])
    if weights is None or bias is None:
        return "its weights or bias are not a Const"
    compute = nm[layer.compute]
    channels = _out_channels(compute, utils.const_value(weights).shape)
    if channels is None or utils.const_value(bias).size != channels:
        return (f"its bias has shape {list(utils.const_value(bias).shape)}, not one value per "
                f"output channel")
    bias_op, index = plan.point(layer.bias_point).consumers[0]
    others = [i for k, i in enumerate(nm.data_inputs(nm[bias_op])) if k != index]
    added_to = tensor_name(others[0]) if len(others) == 1 else None
    producer = nm.producer(added_to) if added_to else None
    if producer is None or (producer.name != layer.compute and
                            producer.op != "BatchToSpaceND"):
        return "its bias op does not read the compute op"
    if len(nm.consumers.get(tensor_name(bias.name), ())) != 1:
        return f"its bias Const {bias.name} is shared with other nodes"
    fmt = compute.attr["data_format"].s if "data_format" in compute.attr else b"NHWC"
    axis = 1 if fmt.startswith(b"NC") else -1
    return _Target(layer.compute, layer.weight_point, layer.bias_point, bias.name, added_to,
                   axis, channels)


def _out_channels(compute, shape):
    """The output channel count of a compute op with weights of `shape`, or None."""
    if len(shape) != (2 if compute.op == "MatMul" else 4):
        return None
    return layers.out_channels(compute.op, shape, layers.transpose_b(compute))


def passes(nm, targets):
    """Targets (with a ``compute`` name) split into passes, in order: a target starts a new
    pass when a target of the current pass is among the nodes its compute op is computed
    from."""
    groups = []
    for target in targets:
        feeding = nm.ancestors([target.compute])
        if not groups or any(t.compute in feeding for t in groups[-1]):
            groups.append([])
        groups[-1].append(target)
    return groups


def _probe(graph_def, group):
    """(a copy of `graph_def` with conv(x, W_q - W) of each target, through the
    BatchToSpaceND of an atrous layer; the targets; {compute: that probe tensor})."""
    probe = tf.compat.v1.GraphDef()
    probe.CopyFrom(graph_def)
    nm = utils.NodeMap(graph_def)
    tensors = {}
    for target in group:
        base = target.compute + _SUFFIX
        weight_fix = nm[target.weight_fix]
        probe.node.append(utils.make_node("Sub", base + "/delta_w",
                                          [weight_fix.name, weight_fix.input[0]],
                                          T=tf.float32))
        copy = probe.node.add()
        copy.CopyFrom(nm[target.compute])
        copy.name = base + "/shift"
        copy.input[registry.COMPUTE_OPS[copy.op].weight_index] = base + "/delta_w"
        last = copy.name
        if node_name(target.added_to) != target.compute:  # atrous: through BatchToSpaceND
            crop = probe.node.add()
            crop.CopyFrom(nm[node_name(target.added_to)])
            crop.name, crop.input[0] = base + "/shift_crop", last
            last = crop.name
        tensors[target.compute] = tensor_name(last)
    return probe, group, tensors


class _Runner:
    """Runs graphs on the calibration batches, with one progress bar for all runs."""

    def __init__(self, batches, config, s_config, input_fn_name, progress, total):
        self.batches, self.config, self.input_fn_name = batches, config, input_fn_name
        self.options = calibrate.session_config(config, s_config)
        self.bar = report.Progress(total, enabled=progress, label="bias correction")
        self.done = 0

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.bar.close()

    def means(self, graph_def, group, tensors):
        """{compute: per-channel mean of tensors[compute]} over the calibration batches
        (float64 sums in batch order)."""
        graph = utils.import_graph(graph_def)
        fetches = [graph.get_tensor_by_name(tensors[t.compute]) for t in group]
        sums = [np.zeros(t.channels, np.float64) for t in group]
        counts = [0] * len(group)
        with tf.compat.v1.Session(graph=graph, config=self.options) as sess:
            for step in range(self.config.calib_iter):
                feed = inputs.feed_dict(graph, self.batches(step), step, self.input_fn_name)
                try:
                    values = sess.run(fetches, feed)
                except tf.errors.OpError as err:
                    raise QuantizeError(f"bias correction failed on batch {step}: "
                                        f"{op_error_text(err)}") from err
                for i, (target, value) in enumerate(zip(group, values)):
                    value = np.moveaxis(np.asarray(value, np.float64), target.axis, -1)
                    if value.shape[-1] != target.channels:
                        raise QuantizeError(f"bias correction: {target.compute} has "
                                            f"{value.shape[-1]} output channels, its bias "
                                            f"{target.channels}")
                    sums[i] += value.reshape(-1, target.channels).sum(axis=0)
                    counts[i] += value.size // target.channels
                self.bar.update(self.done)
                self.done += 1
        return {t.compute: s / max(c, 1) for t, s, c in zip(group, sums, counts)}


def _apply(graph_def, group, shifts, config):
    """Subtracts each target's shift from its bias Const IN PLACE and searches the bias
    FixNeuron's position again on the new value; returns {bias FixNeuron: (old, new)}."""
    nm = utils.NodeMap(graph_def)
    values = {}
    for target in group:
        const = nm[target.bias_const]
        bias = utils.const_value(const)
        corrected = (bias.astype(np.float64) -
                     shifts[target.compute].reshape(bias.shape)).astype(bias.dtype)
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(corrected))
        values[target.bias_fix] = corrected
    found = search_positions({name: (values[name], nm[name]) for name in values},
                             config.fix_neuron_impl)
    changed = {}
    for name, pos in found.items():
        fix = nm[name]
        changed[name] = (int(fix.attr["quantize_pos"].i), pos)
        fix.attr["quantize_pos"].i = pos
    return changed


def search_positions(tensors, impl="kernel"):
    """{name: position} that a CALIB FixNeuron with the attributes of NodeDef `fix` picks for
    `value`, for each name -> (value, fix): the position calibration gives a Const."""
    graph = tf.Graph()
    with graph.as_default():
        used = {}
        for name, (value, fix) in tensors.items():
            attrs = quantized.fix_attributes(fix)
            _, used[name] = ops.fix_neuron_dynamic(
                tf.constant(value), tf.constant(0, tf.int32), phase=ops.Phase.CALIB,
                impl=impl, **attrs)
    with tf.compat.v1.Session(graph=graph) as sess:
        return {name: int(pos) for name, pos in sess.run(used).items()}
