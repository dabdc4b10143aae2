"""Per-layer error analysis: where post-training quantization loses accuracy (docs/analyze.md).

    frozen float graph
      -> checks, float passes, plan, calibration              (ptq.calibrate_frozen)
      -> position passes, as in quantize_eval_model.pb         (transforms.adjust_positions)
      -> three copies of the eval model: weights only, activations only, both
         (the other kind's FixNeurons bypassed)                 (variant)
      -> the float graph and each copy on input_fn(0 .. calib_iter - 1)
      -> SQNR of each layer's data input and output and of each output node   (_measure)
      -> rows, suggestions, analyze_report.md / .json / .png   (analysis_report)

SQNR compares the whole quantized network up to a tensor with the float one, so a layer's
value includes the error of every layer before it; the drop from its input to its output is
what the layer itself loses.
"""

import contextlib
import dataclasses
import logging
import math
import os
from typing import Tuple

import numpy as np
import tensorflow as tf

from decent_q import analysis_report, appliers, calibrate, inputs, ptq, registry, report
from decent_q import transforms
from decent_q.analysis_report import VARIANTS, LayerRow, OutputRow, Report
from decent_q.errors import ConfigError, QuantizeError, op_error_text
from decent_q.graph import quantized, utils
from decent_q.graph.utils import tensor_name
from decent_q.ops import Mode

log = logging.getLogger("decent_q")


def analyze(input_frozen_graph, input_fn, config=None, output_dir=None, s_config=None,
            skip_check=None, suggest=3, progress=True):
    """Quantizes as :func:`decent_q.quantize_frozen` does, then measures per layer the SQNR of
    its output with only the weights, only the activations and both quantized, and writes
    analyze_report.md, analyze_report.json and analyze_report.png.

    Args:
      input_frozen_graph: path of a frozen float GraphDef (binary or text), or a GraphDef.
      input_fn: callable(step) -> {placeholder name: numpy array}, or "module.function".
        Steps 0 .. config.calib_iter - 1 calibrate the positions and are then measured.
      config: QuantizeConfig; input_nodes, output_nodes and input_shapes are required.
      output_dir: the folder of the report files; None: config.output_dir.
      s_config: optional tf.compat.v1.ConfigProto for the sessions.
      skip_check: optional 0/1; overrides config.skip_check.
      suggest: at most this many layers get nodes_bit suggestions (0: none).
      progress: progress bars on stderr (only if it is a terminal).

    Returns:
      A :class:`Report`: layer rows in graph order, output rows, suggestions and the paths
      written (``files``). Nothing is written unless every step succeeded; each file is
      written atomically.

    Raises:
      ConfigError: a required option is missing or malformed.
      QuantizeError: the graph, a node name, input_fn, its data or output_dir is wrong; the
        message says what to fix.
    """
    if not isinstance(suggest, int) or isinstance(suggest, bool) or suggest < 0:
        raise ConfigError(f"suggest={suggest!r} must be a non-negative integer")
    if config is not None and output_dir is not None:
        config = dataclasses.replace(config, output_dir=str(output_dir))
    done = ptq.calibrate_frozen(input_frozen_graph, input_fn, config, s_config, skip_check,
                                progress)
    with_plot = analysis_report.plot_available()
    eval_gd = transforms.adjust_positions(done.eval_graph_def, done.config)
    layers = [l for l in done.plan.layers if l.weight_point is not None]
    aliases = appliers.output_aliases(done.plan, done.config.output_nodes)
    probes = _probes(done.float_graph_def, eval_gd, layers, done.config.output_nodes, aliases)
    graphs = dict([("float", done.float_graph_def)] +
                  [(name, variant(eval_gd, name)) for name in VARIANTS])
    sqnr = _measure(graphs, probes, done, progress)
    rows = _layer_rows(layers, eval_gd, sqnr)
    # an entry must name a node of the user's graph (docs/analyze.md "Suggestions")
    suggestions = analysis_report.suggest(rows, suggest, {n.name for n in done.graph_def.node})
    result = Report(rows, _output_rows(probes, sqnr), suggestions,
                    ",".join(e for s in suggestions for e in s.entries),
                    _model_name(input_frozen_graph), done.input_fn_name, done.config.calib_iter)
    result.files = analysis_report.write(result, done.config.output_dir, with_plot)
    analysis_report.log_summary(result)
    return result


def variant(eval_graph_def, keep):
    """A copy of an eval model in which only the FixNeurons `keep` names quantize.

    keep: 'weights' (WEIGHT and DW_WEIGHT mode: weights and biases), 'activations'
    (ACTIVATION mode: graph inputs, layer and pass-through outputs, Concat constants) or
    'both' (all). The others become Identity nodes of the same name, so every tensor name
    of the eval model exists in each copy.
    """
    if keep not in VARIANTS:
        raise ValueError(f"keep={keep!r}; use one of {', '.join(VARIANTS)}")
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(eval_graph_def)
    for node in out.node:
        if not quantized.is_fix_neuron(node) or keep == "both":
            continue
        is_activation = quantized.mode(node) == Mode.ACTIVATION
        if is_activation != (keep == "activations"):
            dtype = node.attr["T"].type
            node.op = "Identity"
            node.ClearField("attr")
            node.attr["T"].type = dtype
    return out


def sqnr_db(signal, noise):
    """10 log10(signal / noise): +inf for no noise, -inf for noise on an all-zero signal, NaN
    when the noise is NaN (a non-finite quantized value)."""
    if math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclasses.dataclass(frozen=True)
class _Probe:
    """A tensor measured: `key`, its name in the float graph and in the quantized copies."""
    key: Tuple[str, str]  # ('input' | 'output', compute op) or ('node', output node)
    float_tensor: str
    quant_tensor: str


def _probes(float_gd, eval_gd, layers, output_nodes, aliases):
    """Each layer's data input (as its compute op reads it in each graph) and output (the
    last node; in the copies its output FixNeuron), then each output node (its alias)."""
    float_map, eval_map = utils.NodeMap(float_gd), utils.NodeMap(eval_gd)
    probes = []
    for layer in layers:
        index = registry.COMPUTE_OPS[layer.op].data_index
        float_in = float_map.data_inputs(float_map[layer.compute])[index]
        quant_in = eval_map.data_inputs(eval_map[layer.compute])[index]
        probes.append(_Probe(("input", layer.compute), tensor_name(float_in),
                             tensor_name(quant_in)))
        last = layer.nodes[-1]
        probes.append(_Probe(("output", layer.compute), tensor_name(last),
                             tensor_name(layer.output_point or last)))
    for name in output_nodes:
        probes.append(_Probe(("node", name), tensor_name(name),
                             tensor_name(aliases.get(name, name))))
    return probes


class _Runner:
    """A session on one graph that fetches the probes' tensors for a batch."""

    def __init__(self, label, graph_def, tensors, options, stack):
        self.label = label
        self.graph = utils.import_graph(graph_def)
        self.fetches = [self.graph.get_tensor_by_name(t) for t in tensors]
        self.sess = stack.enter_context(tf.compat.v1.Session(graph=self.graph, config=options))

    def run(self, batch, step, fn_name):
        feed = inputs.feed_dict(self.graph, batch, step, fn_name)
        try:
            return self.sess.run(self.fetches, feed)
        except tf.errors.OpError as err:
            raise QuantizeError(f"the {self.label} model fails on {fn_name}({step}): "
                                f"{op_error_text(err)}") from err


def _measure(graphs, probes, done, progress):
    """{probe key: {variant: SQNR dB}} over input_fn(0 .. calib_iter - 1)."""
    options = calibrate.session_config(done.config, done.s_config)
    signal = dict.fromkeys((p.key for p in probes), 0.0)
    noise = {name: dict(signal) for name in VARIANTS}
    bar = report.Progress(done.config.calib_iter, enabled=progress, label="analysis")
    try:
        with contextlib.ExitStack() as stack:
            runners = {name: _Runner("float" if name == "float" else f"{name}-quantized",
                                     graph_def, [p.float_tensor if name == "float" else
                                                 p.quant_tensor for p in probes],
                                     options, stack)
                       for name, graph_def in graphs.items()}
            for step in range(done.config.calib_iter):
                batch = inputs.call_input_fn(done.input_fn, step, done.input_fn_name)
                ref = [np.asarray(v, np.float64)
                       for v in runners["float"].run(batch, step, done.input_fn_name)]
                for probe, value in zip(probes, ref):
                    signal[probe.key] += float(np.sum(np.square(value)))
                for name in VARIANTS:
                    values = runners[name].run(batch, step, done.input_fn_name)
                    for probe, value, want in zip(probes, values, ref):
                        error = np.asarray(value, np.float64) - want
                        noise[name][probe.key] += float(np.sum(np.square(error)))
                bar.update(step)
    finally:
        bar.close()
    return {key: {name: sqnr_db(signal[key], noise[name][key]) for name in VARIANTS}
            for key in signal}


def _layer_rows(layers, eval_gd, sqnr):
    """LayerRow of each layer, with the widths and positions of the eval model's FixNeurons
    (after the position passes)."""
    fixes = quantized.fix_neurons(eval_gd)

    def bit_pos(point):
        node = fixes.get(point) if point else None
        return (None, None) if node is None else (quantized.bit_width(node),
                                                  quantized.position(node))

    rows = []
    for index, layer in enumerate(layers):
        out, into = sqnr[("output", layer.compute)], sqnr[("input", layer.compute)]
        drop = into["both"] - out["both"]
        rows.append(LayerRow(index, layer.compute, layer.op, layer.nodes[-1],
                             layer.weight_point, *bit_pos(layer.weight_point),
                             layer.bias_point, *bit_pos(layer.bias_point),
                             layer.output_point, *bit_pos(layer.output_point),
                             out, into, drop if math.isfinite(drop) else None))
    return rows


def _output_rows(probes, sqnr):
    return [OutputRow(p.key[1], p.quant_tensor, sqnr[p.key]) for p in probes
            if p.key[0] == "node"]


def _model_name(input_frozen_graph):
    if isinstance(input_frozen_graph, (str, os.PathLike)):
        return os.fspath(input_frozen_graph)
    return "(a GraphDef)"
