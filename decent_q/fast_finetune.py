"""Fast finetune (``include_fast_ft=1``): each quantized layer's weights and bias are adjusted,
layer by layer in graph order, so that its quantized output matches the float layer's output
on the calibration batches; then the activations are calibrated again
(docs/fast-finetune.md).

    eval GraphDef (EVAL FixNeurons with the calibrated positions) and the prepared float one
      -> targets: layers whose weights are a Const read by this layer alone       (_targets)
      -> passes: layers in graph order, a layer in a later pass when an earlier
         layer of the current pass feeds it                          (bias_correction.passes)
      -> per pass, over input_fn(0 .. calib_iter - 1):
           x_q: the data input of each layer's compute op in the quantized model as
                finetuned so far;  y: the layer's output in the float model
           per layer, fast_ft_epochs epochs of one Adam step per batch on
                mean((layer_q(x_q) - y)^2)                                   (_Tuner.tune)
           the layer keeps the new parameters only if that error went down
      -> the finetuned weights and biases go into both GraphDefs; calibration runs again on
         the finetuned float model; of the eval models with the new and with the first
         activation positions, the one whose outputs are closer to the float model's on the
         calibration batches is kept                                          (finetune)

layer_q is the layer as the eval model computes it: compute op, [BatchToSpaceND], bias op and
activation, with its weights and bias quantized by its FixNeurons at their calibrated
positions, with a straight-through gradient; its output is compared before its own output
FixNeuron. The weights and biases keep those positions in the new eval model (a position
searched again on the finetuned values could differ, and the values were fitted to these);
the activations' positions come from the new calibration.

Modes (``fast_ft_mode``):
  0 (AdaQuant, Hubara et al. 2021): the weights and the bias are free; Adam step sizes are
    fast_ft_lr quantization steps (2^-position) of each tensor, the bias's times
    fast_ft_lrcoef.
  1 (AdaRound, Nagel et al. 2020): each weight rounds down or up from its calibrated grid
    point, chosen by a learned soft rounding variable with the paper's rectified sigmoid and
    annealed regularizer; the weights stay on the calibrated grid (the position does not
    change); the bias as in mode 0.

Memory: the data inputs and float outputs of one pass's layers over all calibration batches,
held as NumPy arrays. Steps run in batch order and sums are taken in a fixed order, so a given
input_fn gives the same files.
"""

import dataclasses
import logging
import math
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from decent_q import appliers, bias_correction, calibrate, inputs, ops, report
from decent_q.errors import QuantizeError, op_error_text
from decent_q.graph import utils
from decent_q.graph import quantized
from decent_q.graph.utils import node_name, tensor_name
from decent_q.registry import COMPUTE_OPS

log = logging.getLogger("decent_q")

_SCOPE = "decent_q_fast_ft"
# AdaRound's rectified sigmoid h(V) = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1), its
# regularizer weight and the range its exponent beta is annealed over (the paper's values).
_ZETA, _GAMMA = 1.1, -0.1
_ROUND_REG = 0.01
_BETA = (20.0, 2.0)
_WARMUP = 0.2  # fraction of the steps without the rounding regularizer


@dataclasses.dataclass(frozen=True)
class _Target:
    """A layer to finetune, by its tensors and nodes in the eval model."""
    compute: str
    weight_fix: str
    weight_const: str
    bias_fix: object   # str or None
    bias_const: object  # str or None
    data: str          # the compute op's data input tensor (fed with x_q)
    output: str        # the layer's output tensor, before its output FixNeuron
    sides: Tuple[str, ...] = ()  # other inputs of the layer's ops that depend on the model's
    # inputs (a transposed conv's output size), fed like data


@dataclasses.dataclass
class Result:
    """What :func:`finetune` did."""
    eval_graph_def: object   # the eval model built anew on the finetuned float model
    float_graph_def: object  # the prepared float GraphDef with the finetuned parameters
    errors: Dict[str, Tuple[float, float]]  # compute op -> (MSE before, after), float64
    kept: Dict[str, str]     # compute op -> why its parameters were left as they were
    skipped: Dict[str, str]  # compute op -> why it was not finetuned
    passes: int
    seconds: Dict[str, float]  # wall time: collect (model runs), tune, calibrate (again),
    # compare (the two candidate eval models)
    activations: str  # whose activation positions the eval model has: "calibrated again" or
    # "first calibration"
    output_errors: Dict[str, float]  # candidate -> its output MSE against float (calibration)


def finetune(float_graph_def, eval_graph_def, plan, batches, config, s_config=None,
             progress=False, input_fn_name="input_fn"):
    """Fast finetune (module docstring).

    Args:
      float_graph_def: the prepared float GraphDef the plan was made on; not changed.
      eval_graph_def: its eval GraphDef (appliers.apply_to_graph_def); not changed.
      plan: their Plan; layers are finetuned in its (graph) order.
      batches: callable(step) -> {placeholder name: array}, called for steps
        0 .. config.calib_iter - 1 twice per pass, and once more for the calibration.
      config: QuantizeConfig (fast_ft_mode, fast_ft_epochs, fast_ft_lr, fast_ft_lrcoef,
        calib_iter, fix_neuron_impl, session options).
      s_config: optional session ConfigProto.
      progress: show a progress bar on stderr (only if it is a terminal).
      input_fn_name: the input function's name, for error messages.

    Returns:
      A :class:`Result`.
    """
    if config.calib_iter == 1:
        log.warning("fast finetune on 1 calibration batch: the weights may fit that batch "
                    "only; calib_iter >= 2 (different batches) is safer")
    targets, skipped = _targets(eval_graph_def, plan)
    for compute, reason in skipped.items():
        log.info("fast finetune: %s left alone: %s", compute, reason)
    groups = bias_correction.passes(utils.NodeMap(eval_graph_def), targets)
    steps = config.fast_ft_epochs * config.calib_iter
    bar = report.Progress(sum(len(g) for g in groups) * steps + 2 * len(groups) *
                          config.calib_iter, enabled=progress, label="fast finetune")
    tuner = _Tuner(eval_graph_def, float_graph_def, targets, batches, config, s_config,
                   input_fn_name, bar)
    errors, kept = {}, {}
    seconds = {"collect": 0.0, "tune": 0.0}
    try:
        for group in groups:
            start = time.perf_counter()
            inputs_q, outputs = tuner.collect(group)
            seconds["collect"] += time.perf_counter() - start
            for target in group:
                start = time.perf_counter()
                before, after, reason = tuner.tune(target, inputs_q[target.compute],
                                                   outputs[target.compute])
                seconds["tune"] += time.perf_counter() - start
                errors[target.compute] = (before, after)
                if reason:
                    kept[target.compute] = reason
                    log.info("fast finetune: %s keeps its calibrated parameters: %s",
                             target.compute, reason)
                else:
                    log.debug("fast finetune: %s: output MSE %.4g -> %.4g", target.compute,
                              before, after)
            del inputs_q, outputs
        values = tuner.values()
    finally:
        tuner.close()
        bar.close()
    float_ft = _with_values(float_graph_def, values)
    start = time.perf_counter()
    positions = calibrate.calibrate_positions(float_ft, plan, batches, config,
                                              s_config=s_config)
    seconds["calibrate"] = time.perf_counter() - start
    # The finetuned weights and biases keep the positions they were finetuned at.
    calibrated = quantized.positions(eval_graph_def)
    for target in targets:
        for point in (target.weight_fix, target.bias_fix):
            if point is not None:
                positions[point] = calibrated[point]
    candidates = {"calibrated again": positions, "first calibration": calibrated}
    models = {name: appliers.apply_to_graph_def(float_ft, plan, found,
                                                arch_type=config.arch_type)
              for name, found in candidates.items()}
    start = time.perf_counter()
    output_errors = _output_errors(models, float_graph_def, plan, batches, config, s_config,
                                   input_fn_name)
    seconds["compare"] = time.perf_counter() - start
    # The new calibration unless the first one's positions are closer to float (a tie keeps
    # the new one).
    chosen = min(output_errors,
                 key=lambda name: (output_errors[name], name != "calibrated again"))
    eval_ft = models[chosen]
    log.info("fast finetune: activation positions of the %s (output MSE against float on the "
             "calibration batches: %s)", chosen,
             ", ".join(f"{name} {error:.4g}" for name, error in output_errors.items()))
    log.info("fast finetune (%s, %d epochs): %d layer(s) in %d pass(es), %d kept their "
             "calibrated parameters, %d left alone; %.1f s running the models for the "
             "layers' data, %.1f s finetuning, %.1f s calibrating again, %.1f s choosing",
             _MODE_NAMES[config.fast_ft_mode], config.fast_ft_epochs, len(targets) - len(kept),
             len(groups), len(kept), len(skipped), seconds["collect"], seconds["tune"],
             seconds["calibrate"], seconds["compare"])
    return Result(eval_ft, float_ft, errors, kept, skipped, len(groups), seconds, chosen,
                  output_errors)


_MODE_NAMES = {0: "AdaQuant", 1: "AdaRound"}


def _output_errors(models, float_graph_def, plan, batches, config, s_config, input_fn_name):
    """{name: mean over the calibration batches of the MSE of the output nodes' tensors (after
    their FixNeurons where they have one) against the float model} for each eval model of
    {name: GraphDef}."""
    aliases = appliers.output_aliases(plan, config.output_nodes)
    options = calibrate.session_config(config, s_config)

    def outputs(graph_def, names):
        graph = utils.import_graph(graph_def)
        fetches = [graph.get_tensor_by_name(tensor_name(n)) for n in names]
        found = []
        with tf.compat.v1.Session(graph=graph, config=options) as sess:
            for step in range(config.calib_iter):
                feed = inputs.feed_dict(graph, batches(step), step, input_fn_name)
                try:
                    found.append(sess.run(fetches, feed))
                except tf.errors.OpError as err:
                    raise QuantizeError(f"fast finetune failed on batch {step}: "
                                        f"{op_error_text(err)}") from err
        return found

    want = outputs(float_graph_def, config.output_nodes)
    names = [aliases.get(n, n) for n in config.output_nodes]
    errors = {}
    for name, graph_def in models.items():
        got = outputs(graph_def, names)
        errors[name] = math.fsum(float(np.mean(np.square(g.astype(np.float64) - w)))
                                 for gs, ws in zip(got, want) for g, w in zip(gs, ws)) / \
            max(len(want), 1)
    return errors


def _targets(graph_def, plan):
    """([_Target] in plan order, {compute: why skipped}) for the layers with a weight point."""
    nm = utils.NodeMap(graph_def)
    readers = {}
    for layer in plan.layers:
        if layer.weight_point is not None:
            readers.setdefault(layer.weight_point, []).append(layer.compute)
    return bias_correction.split_targets(
        plan, lambda layer: _target(nm, layer, readers[layer.weight_point]))


def _target(nm, layer, weight_readers):
    """The _Target of a plan layer, or the reason it cannot be finetuned."""
    others = [r for r in weight_readers if r != layer.compute]
    if others:
        return f"its weights are shared with {', '.join(others)}"
    weights = nm.const(nm[layer.weight_point].input[0])
    if weights is None:
        return "its weights are not a Const"
    bias = nm.const(nm[layer.bias_point].input[0]) if layer.bias_point else None
    if layer.bias_point and (bias is None or len(nm.consumers.get(tensor_name(bias.name),
                                                                  ())) != 1):
        return "its bias is not a Const read by this layer alone"
    compute = nm[layer.compute]
    data = tensor_name(nm.data_inputs(compute)[COMPUTE_OPS[compute.op].data_index])
    output = tensor_name(layer.nodes[-1])
    own = nm.ancestors([node_name(output)], stop={node_name(data)}, data_only=True) & \
        set(layer.nodes)
    params = {node_name(data), layer.weight_point, layer.bias_point}
    sides = []
    for name in sorted(own):
        for inp in nm.data_inputs(nm[name]):
            source = node_name(inp)
            if source in own or source in params or tensor_name(inp) in sides:
                continue
            if any(nm[n].op == "Placeholder" for n in nm.ancestors([source], data_only=True)):
                sides.append(tensor_name(inp))
    return _Target(layer.compute, layer.weight_point, weights.name,
                   layer.bias_point, bias.name if bias is not None else None, data, output,
                   tuple(sides))


def _import(graph_def, input_map, prefix):
    """Imports graph_def into the default graph under `prefix` with `input_map`."""
    try:
        tf.graph_util.import_graph_def(graph_def, input_map=input_map, name=prefix)
    except (ValueError, tf.errors.OpError) as err:
        raise QuantizeError(f"fast finetune cannot load the eval model: "
                            f"{str(err).strip().splitlines()[0]}") from err


def _with_values(graph_def, values):
    """A copy of graph_def with the Const nodes named in {name: array} set to those arrays."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        if node.name in values:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values[node.name]))
    return out


class _Tuner:
    """The quantized model with each target's parameters in variables (one session) and the
    float model (another), and the per-layer optimisation."""

    def __init__(self, eval_graph_def, float_graph_def, targets, batches, config, s_config,
                 input_fn_name, bar):
        self.config, self.batches, self.input_fn_name, self.bar = (config, batches,
                                                                   input_fn_name, bar)
        self.done = 0
        nm = utils.NodeMap(eval_graph_def)
        options = calibrate.session_config(config, s_config)
        ops.load_library()
        self.graph = tf.Graph()
        self.params = {}
        with self.graph.as_default():
            input_map = {}
            for i, target in enumerate(targets):
                with tf.compat.v1.variable_scope(f"{_SCOPE}/{i}"):
                    param = _Params(target, nm, config)
                input_map.update(param.input_map)
                self.params[target.compute] = param
            # Two copies of the eval model: the model itself, which gives each layer's input
            # x_q, and a copy in which those inputs are placeholders, for the layers' losses
            # (feeding a tensor that the same graph also computes trips Grappler).
            _import(eval_graph_def, input_map, "")
            self.inputs = {}
            for target in targets:
                for name in (target.data,) + target.sides:
                    if name not in self.inputs:
                        tensor = self.graph.get_tensor_by_name(name)
                        self.inputs[name] = tf.compat.v1.placeholder(
                            tensor.dtype, tensor.shape, name=f"{_SCOPE}/input")
            _import(eval_graph_def, {**input_map, **self.inputs}, _SCOPE + "/layers")
            for i, target in enumerate(targets):
                output = self.graph.get_tensor_by_name(f"{_SCOPE}/layers/{target.output}")
                self.params[target.compute].build_loss(self.graph, output, f"{_SCOPE}/{i}")
            init = tf.compat.v1.global_variables_initializer()
        self.session = tf.compat.v1.Session(graph=self.graph, config=options)
        self.session.run(init)
        for param in self.params.values():
            param.load(self.session)
        self.float_graph = utils.import_graph(float_graph_def)
        self.float_session = tf.compat.v1.Session(graph=self.float_graph, config=options)

    def close(self):
        self.session.close()
        self.float_session.close()

    def _run_batches(self, session, graph, fetches):
        """[[value per fetch] per calibration batch]."""
        found = []
        for step in range(self.config.calib_iter):
            feed = inputs.feed_dict(graph, self.batches(step), step, self.input_fn_name)
            try:
                found.append(session.run(fetches, feed))
            except tf.errors.OpError as err:
                raise QuantizeError(f"fast finetune failed on batch {step}: "
                                    f"{op_error_text(err)}") from err
            self.bar.update(self.done)
            self.done += 1
        return found

    def collect(self, group):
        """({compute: [{input placeholder: value} per batch]}, {compute: [y per batch]}) for
        a pass's targets: x_q (and side inputs) from the quantized model, y from the float
        model."""
        names = sorted({n for t in group for n in (t.data,) + t.sides})
        quantized = self._run_batches(self.session, self.graph,
                                      [self.graph.get_tensor_by_name(n) for n in names])
        floats = self._run_batches(self.float_session, self.float_graph,
                                   [self.float_graph.get_tensor_by_name(t.output)
                                    for t in group])
        feeds = {t.compute: [{self.inputs[n]: values[names.index(n)]
                              for n in (t.data,) + t.sides} for values in quantized]
                 for t in group}
        return feeds, {t.compute: [b[i] for b in floats] for i, t in enumerate(group)}

    def tune(self, target, xs, ys):
        """Optimises one target on its cached batches; (MSE before, after, why kept or '')."""
        param = self.params[target.compute]
        before = param.error(self.session, xs, ys)
        param.start(self.session)
        steps = self.config.fast_ft_epochs * len(xs)
        for step in range(steps):
            k = step % len(xs)
            loss = param.step(self.session, xs[k], ys[k], step, steps)
            self.bar.update(self.done)
            self.done += 1
            if not math.isfinite(loss):
                param.restore(self.session)
                log.warning("fast finetune: %s: its output error became %s at step %d; it "
                            "keeps its calibrated parameters (a smaller fast_ft_lr may help)",
                            target.compute, loss, step)
                return before, before, (f"its output error became {loss} at step {step}; "
                                        "try a smaller fast_ft_lr")
        param.finish(self.session)
        after = param.error(self.session, xs, ys)
        if not math.isfinite(after) or after >= before:
            param.restore(self.session)
            return before, before, (f"finetuning did not lower its output error "
                                    f"(MSE {before:.4g} -> {after:.4g})")
        return before, after, ""

    def values(self):
        """{Const name: finetuned value} of every target's weights and bias."""
        found = {}
        for param in self.params.values():
            found.update(param.values(self.session))
        return found


class _Params:
    """One target's variables, the tensors that replace its weight and bias FixNeurons'
    outputs in the eval model, its loss and optimiser."""

    def __init__(self, target, nm, config):
        self.config = config
        self.target = target
        self.mode = config.fast_ft_mode
        weight_fix = nm[target.weight_fix]
        self.w0 = utils.const_value(nm[target.weight_const]).astype(np.float32)
        self.weight_pos = int(weight_fix.attr["quantize_pos"].i)
        attrs = quantized.fix_attributes(weight_fix)
        self.input_map = {}
        if self.mode == 0:
            self.w = _variable("weights", self.w0)
            self.input_map[tensor_name(target.weight_const)] = self.w.value()
            self.trainable = [self.w]
            self.rates = [config.fast_ft_lr * 2.0 ** -self.weight_pos]
        else:
            self.input_map[tensor_name(target.weight_fix)] = self._rounding(attrs)
        self.b = None
        if target.bias_fix is not None:
            bias_fix = nm[target.bias_fix]
            self.b0 = utils.const_value(nm[target.bias_const]).astype(np.float32)
            self.b = _variable("bias", self.b0)
            self.input_map[tensor_name(target.bias_const)] = self.b.value()
            self.trainable.append(self.b)
            self.rates.append(config.fast_ft_lr * config.fast_ft_lrcoef *
                              2.0 ** -int(bias_fix.attr["quantize_pos"].i))

    def _rounding(self, attrs):
        """Mode 1: the weights as floor(W / s) + h(V) on the calibrated grid, clamped to the
        code range; V starts where h(V) is the fractional part of W / s."""
        scale = 2.0 ** -self.weight_pos
        lo, hi = _code_range(attrs)
        scaled = self.w0.astype(np.float64) / scale
        self.floor = np.floor(scaled).astype(np.float32)
        frac = np.clip(scaled - self.floor, 1e-4, 1 - 1e-4)
        # The inverse of the rectified sigmoid at h = frac.
        self.v0 = (-np.log((_ZETA - _GAMMA) / (frac - _GAMMA) - 1)).astype(np.float32)
        self.v = _variable("rounding", self.v0)
        self.h = tf.clip_by_value(tf.sigmoid(self.v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)
        self.beta = tf.compat.v1.placeholder_with_default(_BETA[0], [], name="beta")
        self.reg_weight = tf.compat.v1.placeholder_with_default(0.0, [], name="reg_weight")
        self.code_range = (lo, hi)
        self.scale = scale
        self.trainable = [self.v]
        self.rates = [self.config.fast_ft_lr]
        return tf.clip_by_value(tf.constant(self.floor) + self.h, lo, hi) * scale

    def build_loss(self, graph, out, scope):
        existing = set(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
        with tf.compat.v1.variable_scope(scope):
            self.y = tf.compat.v1.placeholder(tf.float32, out.shape, name="float_output")
            self.mse = tf.reduce_mean(tf.square(out - self.y))
            loss = self.mse
            if self.mode == 1:
                # Normalised so that the regularizer weight means the same for every layer.
                self.mse0 = tf.compat.v1.placeholder_with_default(1.0, [], name="mse0")
                reg = tf.reduce_mean(1.0 - tf.pow(tf.abs(2.0 * self.h - 1.0), self.beta))
                loss = self.mse / self.mse0 + self.reg_weight * reg
            # The learning rates decay to 0 along a cosine over the layer's steps.
            self.decay = tf.compat.v1.placeholder_with_default(1.0, [], name="decay")
            self.train = tf.group(*[
                tf.compat.v1.train.AdamOptimizer(rate * self.decay, name=f"adam{i}").minimize(
                    loss, var_list=[var])
                for i, (var, rate) in enumerate(zip(self.trainable, self.rates))])
        self.init_opt = tf.compat.v1.variables_initializer(
            [v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
             if v not in existing] + self.trainable)

    def load(self, session):
        """Sets the variables to the calibrated parameters (mode 1: each weight rounded to
        its nearest grid point, half away from zero, as its FixNeuron rounds) and resets the
        optimiser."""
        session.run(self.init_opt)
        if self.mode == 0:
            _assign(session, self.w, self.w0)
        else:
            up = _round_half_away(self.w0.astype(np.float64) / self.scale) > self.floor
            _assign(session, self.v, np.where(up, 10.0, -10.0).astype(np.float32))
        if self.b is not None:
            _assign(session, self.b, self.b0)
        self.mse_start = None
        self.kept = False

    def start(self, session):
        """Mode 1: the soft rounding variable starts where h(V) = frac(W / s)."""
        if self.mode == 1:
            _assign(session, self.v, self.v0)

    def restore(self, session):
        """Back to the calibrated parameters, which :meth:`values` then gives unchanged."""
        self.load(session)
        self.kept = True

    def error(self, session, xs, ys):
        """Mean over the batches of the output MSE (float64, batch order); xs: the input
        feeds per batch."""
        total = math.fsum(float(session.run(self.mse, {**x, self.y: y}))
                          for x, y in zip(xs, ys))
        return total / len(xs)

    def step(self, session, x, y, step, steps):
        feed = {**x, self.y: y, self.decay: 0.5 * (1.0 + math.cos(math.pi * step / steps))}
        if self.mode == 1:
            if self.mse_start is None:
                self.mse_start = max(float(session.run(self.mse, feed)), 1e-30)
            warm = int(_WARMUP * steps)
            done = max(step - warm, 0) / max(steps - warm, 1)
            feed[self.mse0] = self.mse_start
            feed[self.reg_weight] = _ROUND_REG if step >= warm else 0.0
            feed[self.beta] = _BETA[1] + (_BETA[0] - _BETA[1]) * (1 - done)
        _, mse = session.run([self.train, self.mse], feed)
        return float(mse)

    def finish(self, session):
        """Mode 1: rounds h(V) to 0 or 1 (the variable moves to the sides of the sigmoid)."""
        if self.mode == 1:
            hard = session.run(self.h) >= 0.5
            _assign(session, self.v, np.where(hard, 10.0, -10.0).astype(np.float32))

    def values(self, session):
        """{Const name: value} of this layer's weights (and bias)."""
        if self.kept:
            found = {self.target.weight_const: self.w0}
            if self.b is not None:
                found[self.target.bias_const] = self.b0
            return found
        if self.mode == 0:
            weights = session.run(self.w)
        else:
            lo, hi = self.code_range
            codes = np.clip(self.floor + (session.run(self.h) >= 0.5), lo, hi)
            weights = (codes.astype(np.float64) * self.scale).astype(np.float32)
        found = {self.target.weight_const: weights.astype(self.w0.dtype)}
        if self.b is not None:
            found[self.target.bias_const] = session.run(self.b)
        return found


def _variable(name, value):
    """A resource variable shaped like `value`, with an assign op fed by a placeholder (set
    with :func:`_assign`)."""
    var = tf.compat.v1.get_variable(name, value.shape, tf.float32, use_resource=True)
    var.setter = tf.compat.v1.placeholder(tf.float32, value.shape, name=name + "_value")
    var.set_op = var.assign(var.setter)
    return var


def _assign(session, var, value):
    session.run(var.set_op, {var.setter: value})


def _round_half_away(values):
    return np.copysign(np.floor(np.abs(values) + 0.5), values)


def _code_range(attrs):
    """The integer code range [lo, hi] of a weight FixNeuron."""
    bits = attrs["bit_width"]
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
