"""FixNeuron numerics on torch tensors: the same numbers as decent_q's TensorFlow op.

docs/fixneuron.md describes them; docs/pytorch.md "Numerics" says what the PyTorch flow adds.
With position p the step is 2^-p and each element x becomes

    clamp(round(x * 2^p), lo, hi) * 2^-p

computed in float32 and exactly: x * 2^p is exact (a power-of-two scaling; where it overflows
the value saturates anyway, where it turns denormal it rounds to 0 anyway), and the rounding
compares v - floor(v), itself exact, with 1/2, never floor(v + 0.5) (0.49999997 rounds to 0).
The roundings:

    std_round   half away from zero (the op's WEIGHT / DW_WEIGHT mode; weights, biases, inputs)
    half_up     half towards +inf (the op's ACTIVATION mode: the DPU's activation rounding)
    half_even   half to even (CPU runtimes; not a DPU rounding)
    half_down   half towards -inf

Position search (CALIB and QAT training; non-finite values read as 0):

    maxmin (method 0)  p0 = floor(log2(1 / step)), step = max(mn / (-2^(b-1) - 0.5),
                       mx / (2^(b-1) - 0.5)), mn = min(0, min x), mx = max(0, max x)
    diffs  (method 1)  the candidate of p0 .. p0 + 4 (none above 127) with the smallest sum of
                       squared errors (float64), ties to the smaller
    diffs on a depthwise weight with method 2: sum(sqrt(|err| / (|x| + 1e-9))) instead

A tensor with no nonzero finite value gets position 127; positions lie in [-127, 127].

CPU float32 tensors with the two DPU roundings go to the TensorFlow op's C++ code
(native.py); the torch operations below compute the same numbers everywhere else, and the
tests hold the two to each other bit for bit.
"""

import math

import torch

from decent_q_torch import native

MIN_POS, MAX_POS = -127, 127
ZERO_POS = 127
NUM_POS = MAX_POS - MIN_POS + 1
ROUND_MODES = ("std_round", "half_up", "half_even", "half_down")


def quant_range(bit_width, narrow_range=False):
    """[lo, hi] of a signed ``bit_width`` code; ``narrow_range`` drops the most negative code."""
    hi = 2 ** (bit_width - 1) - 1
    return (-hi if narrow_range else -hi - 1), hi


def _half_up(v):
    """floor(v + 1/2) decided exactly in float32: v - floor(v) is exact (Sterbenz for
    |v| >= 1; below, the comparison with 0.5 comes out right even where it rounds)."""
    whole = torch.floor(v)
    return whole + ((v - whole) >= 0.5).to(v.dtype)


def _round(v, round_mode):
    """Rounds float32 ``v`` exactly; NaN stays NaN and +-inf stay."""
    if round_mode == "half_up":
        return _half_up(v)
    if round_mode == "half_even":
        return torch.round(v)
    if round_mode == "half_down":
        return -_half_up(-v)
    return torch.sign(v) * _half_up(v.abs())  # sign * ..., not copysign: ONNX has Sign


def to_codes(x, pos, bit_width, round_mode="std_round", narrow_range=False):
    """The integer codes (float32) of ``x`` at position ``pos``: clamp(round(x * 2^pos)).
    x * 2^pos is exact in float32 except where it overflows (saturates anyway) or becomes
    denormal (rounds to 0 anyway)."""
    lo, hi = quant_range(bit_width, narrow_range)
    v = x.detach().to(torch.float32) * (2.0 ** pos)
    return _round(v, round_mode).clamp_(lo, hi)  # NaN stays NaN; +-inf saturate


def quantize(x, pos, bit_width, round_mode="std_round", narrow_range=False):
    """``clamp(round(x * 2^pos), lo, hi) * 2^-pos`` as float32 (a correctly rounded product,
    so exact where representable)."""
    if native.handles(x, round_mode):
        return native.quantize(x, pos, round_mode, *quant_range(bit_width, narrow_range))
    return to_codes(x, pos, bit_width, round_mode, narrow_range) * (2.0 ** -pos)


_CHUNK = 1 << 18  # elements per block of the candidates' error sums (bounded memory)


def _finite_values(x):
    x = x.detach().reshape(-1).to(torch.float32)
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _non_overflow(x, bit_width):
    """Method 0 on the finite, flattened float32 values ``x``."""
    if x.numel() == 0:
        return ZERO_POS
    half = 2.0 ** (bit_width - 1)
    low, high = torch.aminmax(x)
    mn, mx = min(float(low), 0.0), max(float(high), 0.0)
    # float64 step: mn and mx are float32 values, so a quotient that rounds onto a power of two
    # was one already; the position is read from the binary exponent of the step.
    step = max(mn / (-half - 0.5), mx / (half - 0.5))
    if step <= 0.0:
        return ZERO_POS
    mantissa, exponent = math.frexp(step)  # step = m * 2^e, 0.5 <= m < 1
    # 1 / step = 2^-e / m with 1 < 1/m <= 2: floor(log2) is -e, or -e + 1 when m == 0.5.
    pos = -exponent + (1 if mantissa == 0.5 else 0)
    return int(min(max(pos, MIN_POS), MAX_POS))


def non_overflow_pos(x, bit_width):
    """Method 0 (maxmin): the largest p with the whole range representable, 127 if all zero."""
    return _non_overflow(_finite_values(x), bit_width)


def _squared_errors(x, positions, bit_width, round_mode, narrow_range):
    """sum((q_p * 2^-p - x)^2) for each candidate p, all candidates in one pass per block.

    In units of the candidate's step the error e = q - x * 2^p is exact in float32 (q and
    x * 2^p are within a factor of two, or q is 0, or saturated codes of at most 16 bits differ
    from x * 2^p < 2^21 by a representable amount), e^2 is exact in float64, and the scaling
    by 2^-2p is exact: only the float64 sum rounds."""
    lo, hi = quant_range(bit_width, narrow_range)
    scales = torch.tensor([2.0 ** p for p in positions], dtype=torch.float32)[:, None]
    totals = torch.zeros(len(positions), dtype=torch.float64)
    for start in range(0, x.numel(), _CHUNK):
        v = x[None, start:start + _CHUNK] * scales
        e = (_round(v, round_mode).clamp_(lo, hi) - v).to(torch.float64)
        totals += (e * e).sum(dim=1)
    return [float(t) * 2.0 ** (-2 * p) for t, p in zip(totals, positions)]


def _relative_cost(x, pos, bit_width, round_mode, narrow_range):
    """Method 2's depthwise cost sum(sqrt(|(y - x) / (|x| + 1e-9)|)) in float64."""
    x64 = x.to(torch.float64)
    d = quantize(x, pos, bit_width, round_mode, narrow_range).to(torch.float64) - x64
    return float(torch.sqrt((d / (x64.abs() + 1e-9)).abs()).sum())


def search_pos(x, bit_width, method=1, round_mode="std_round", narrow_range=False,
               depthwise=False):
    """The position a calibration or training batch ``x`` chooses (see the module doc)."""
    if native.handles(x, round_mode):
        return native.search_pos(x, bit_width, method, round_mode,
                                 *quant_range(bit_width, narrow_range), depthwise)
    x = _finite_values(x)
    p0 = _non_overflow(x, bit_width)
    if method == 0 or p0 == ZERO_POS:
        return p0
    positions = list(range(p0, min(p0 + 4, MAX_POS) + 1))
    if method == 2 and depthwise:
        costs = [_relative_cost(x, p, bit_width, round_mode, narrow_range) for p in positions]
    else:
        costs = _squared_errors(x, positions, bit_width, round_mode, narrow_range)
    best = 0
    for k in range(1, len(costs)):
        if costs[k] < costs[best]:  # strict: ties go to the smaller position
            best = k
    return positions[best]


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized values; backward: the gradient passes unchanged (FixNeuron's)."""

    @staticmethod
    def forward(ctx, x, quantized):  # pylint: disable=arguments-differ
        return quantized

    @staticmethod
    def backward(ctx, grad):  # pylint: disable=arguments-differ
        return grad, None


def fake_quantize(x, pos, bit_width, round_mode="std_round", narrow_range=False):
    """``quantize`` with the straight-through gradient (QAT and fast finetune)."""
    quantized = quantize(x, pos, bit_width, round_mode, narrow_range)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return quantized
    return _StraightThrough.apply(x, quantized)


def kept_position(hist):
    """The most frequent position of histogram ``hist`` (int tensor [255]), ties to the
    smaller; None if empty."""
    if int(hist.max()) <= 0:
        return None
    return int(torch.nonzero(hist == hist.max())[0, 0]) + MIN_POS
