"""adjust_shift_cut / adjust_shift_bias: keep a compute layer's shifts in the DPU's ranges.

On the DPU a layer computes ``acc = sum(w_int * x_int)`` at scale ``2^-(pw + pi)``, adds the
bias shifted left by ``shift_bias`` and cuts the result right by ``shift_cut`` to the output
scale ``2^-po``::

    shift_cut  = pw + pi - po      must lie in [0, 16]      else pw moves (adjust_shift_cut)
    shift_bias = pw + pi - pb      must lie in [min, 16]    else pb moves (adjust_shift_bias)
      mode 1 (static):  min = min(0, -(24 - (8 + shift_cut)))
      mode 2 (dynamic): min = min(0, -(24 - (8 + ceil(log2(kh * kw * ic)))))

pw, pi, pb, po: positions of the weight, input, bias and output FixNeurons
(:func:`decent_q.graph.quantized.find_layers`). A position moves the least that brings the
shift into range; each move is logged on one line (logger ``decent_q``).

All-zero tensors (docs/passes.md "All-zero tensors in the shift passes"): calibration gives
an all-zero tensor position 127
(``ops.ZERO_POS``). The original computed with such positions in int32 and overflowed, printing
absurd warnings. Here shifts are Python integers (no overflow), and a 127 is read as "any
position represents this tensor exactly":

* an all-zero weight (shift cut) or bias (shift bias) is moved into range like any other;
  the values stay exactly zero, so this only gives the compiler a sane position;
* a layer whose input or output (or, for shift bias, weight) is all zero is left alone, with
  one log line: its shifts carry no information, and moving a real tensor to fit a free one
  would wreck it (e.g. shift_cut with pi = 127 would push pw down by ~100 and quantize every
  weight to zero).

Results are clamped to the FixNeuron range [-127, 127].
"""

import logging
import math

from decent_q import ops
from decent_q.graph import quantized

log = logging.getLogger("decent_q")

SHIFT_MAX = 16


def _clamp(pos):
    return max(ops.MIN_POS, min(ops.MAX_POS, int(pos)))


def _zero(model, *fixes):
    """Names of the FixNeurons among `fixes` with the all-zero position."""
    return [f for f in fixes if model.position(f) == ops.ZERO_POS]


def adjust_shift_cut(graph_def, config=None):
    """Moves weight positions so that every layer's shift_cut lies in [0, 16].

    Args:
      graph_def: an eval model (EVAL FixNeurons).
      config: unused (the pass list passes it; the caller checks config.adjust_shift_cut).

    Returns:
      A new GraphDef; only FixNeuron quantize_pos attrs differ.
    """
    del config
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    model = quantized.EvalModel(out)
    for layer in model.layers():
        if not (layer.input_fix and layer.weight_fix and layer.output_fix):
            continue
        zero = _zero(model, layer.input_fix, layer.output_fix)
        if zero:
            log.info("adjust_shift_cut: %s skipped: %s is all zero in calibration (position "
                     "%d), so its shift is not meaningful", layer.compute, zero[0], ops.ZERO_POS)
            continue
        pi, po = model.position(layer.input_fix), model.position(layer.output_fix)
        pw = model.position(layer.weight_fix)
        shift_cut = pw + pi - po
        if 0 <= shift_cut <= SHIFT_MAX:
            continue
        new_pw = _clamp(po - pi + min(max(shift_cut, 0), SHIFT_MAX))
        model.set_position(layer.weight_fix, new_pw)
        log.info("adjust_shift_cut: %s shift_cut %d out of [0, %d]: weight %s position "
                 "%d -> %d", layer.compute, shift_cut, SHIFT_MAX, layer.weight_fix, pw, new_pw)
    return out


def shift_bias_min(layer, shift_cut, mode):
    """The lower bound of shift_bias for `layer` (mode 1 static, 2 dynamic); see docstring.

    Mode 2 falls back to mode 1 where the kernel geometry is unknown (weights not a Const).
    """
    if mode == 2 and layer.accumulations:
        grow = math.ceil(math.log2(layer.accumulations)) if layer.accumulations > 1 else 0
        return min(0, -(24 - (8 + grow)))
    return min(0, -(24 - (8 + shift_cut)))


def adjust_shift_bias(graph_def, config):
    """Moves bias positions so that every layer's shift_bias lies in [min, 16].

    Args:
      graph_def: an eval model (EVAL FixNeurons).
      config: QuantizeConfig; config.adjust_shift_bias picks the lower bound (1 static,
        2 dynamic; 0 returns an unchanged copy).

    Returns:
      A new GraphDef; only FixNeuron quantize_pos attrs differ.
    """
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    mode = config.adjust_shift_bias
    if not mode:
        return out
    model = quantized.EvalModel(out)
    for layer in model.layers():
        if not (layer.input_fix and layer.weight_fix and layer.bias_fix):
            continue
        needs_output = mode == 1 or not layer.accumulations
        if needs_output and not layer.output_fix:
            continue
        watched = [layer.input_fix, layer.weight_fix] + ([layer.output_fix] if needs_output
                                                         else [])
        zero = _zero(model, *watched)
        if zero:
            log.info("adjust_shift_bias: %s skipped: %s is all zero in calibration (position "
                     "%d), so its shift is not meaningful", layer.compute, zero[0], ops.ZERO_POS)
            continue
        pi, pw = model.position(layer.input_fix), model.position(layer.weight_fix)
        pb = model.position(layer.bias_fix)
        shift_cut = pw + pi - model.position(layer.output_fix) if layer.output_fix else 0
        low = shift_bias_min(layer, shift_cut, mode)
        shift_bias = pw + pi - pb
        if low <= shift_bias <= SHIFT_MAX:
            continue
        new_pb = _clamp(pw + pi - min(max(shift_bias, low), SHIFT_MAX))
        model.set_position(layer.bias_fix, new_pb)
        what = " (all-zero bias: values unchanged)" if pb == ops.ZERO_POS else ""
        log.info("adjust_shift_bias: %s shift_bias %d out of [%d, %d]: bias %s position "
                 "%d -> %d%s", layer.compute, shift_bias, low, SHIFT_MAX, layer.bias_fix, pb,
                 new_pb, what)
    return out
