"""An independent NumPy model of FixNeuron, written from docs/fixneuron.md, not from the kernel.

The tests compare the kernel with it bit for bit. Everything here is computed exactly:

* ``v = x * 2^p`` is formed in float64. x has 24 significant bits and |p| <= 127, so the product
  is exact (float64 has 53 bits and an exponent range far beyond float32's).
* Rounding uses ``floor(|v| + 0.5)``. Because v has at most 24 significant bits, ``|v| + 0.5`` can
  only be inexact when |v| is far below 0.5 (the sum then still lies in [0.5, 1)) or when v is
  already an integer; so the floor is the exact rounding. 0.49999997f -> 0 in every mode.
* The method-0 step and position use Python fractions (exact rationals), not float division.
* Min-diffs costs are summed with ``math.fsum`` (correctly rounded sum of exact float64 terms).

Deviations of the port from the original that this model shares (documented in ops.py / the
kernel): positions are clamped to [-127, 127]; an all-zero tensor gets 127; NaN stays NaN;
+-Inf saturate; non-finite values are ignored when choosing a position.
"""

import math
from fractions import Fraction

import numpy as np

WEIGHT, ACTIVATION, DW_WEIGHT = 0, 1, 2
CALIB, EVAL, TRAIN = 0, 1, 2
MIN_POS, MAX_POS = -127, 127
ZERO_POS = 127


def quant_range(bit_width, mode, arch_type="DEFAULT"):
    """The integer range [lo, hi] of a signed ``bit_width`` code for ``mode``."""
    lo, hi = -(2 ** (bit_width - 1)), 2 ** (bit_width - 1) - 1
    if arch_type == "DPUCADF8H" and mode == ACTIVATION:
        lo = -hi  # symmetric activations on that DPU; weights keep the full range
    return lo, hi


def round_exact(v, mode):
    """Rounds float64 ``v`` (exact multiples of x * 2^p) as the DPU does for ``mode``.

    WEIGHT / DW_WEIGHT: half away from zero.  ACTIVATION: half up (towards +inf).
    NaN stays NaN; +-inf stays +-inf.
    """
    v = np.asarray(v, np.float64)
    with np.errstate(invalid="ignore"):
        if mode == ACTIVATION:
            return np.floor(v + 0.5)
        return np.copysign(np.floor(np.abs(v) + 0.5), v)


def quantize(x, pos, mode, bit_width, arch_type="DEFAULT"):
    """``clamp(round(x * 2^pos), lo, hi) * 2^-pos`` as float32 (the op's output)."""
    x = np.asarray(x, np.float32)
    lo, hi = quant_range(bit_width, mode, arch_type)
    v = x.astype(np.float64) * (2.0 ** pos)
    q = round_exact(v, mode)
    # np.clip would propagate NaN too, but spell the order out: NaN compares false and stays.
    q = np.where(q < lo, lo, np.where(q > hi, hi, q))
    with np.errstate(over="ignore"):
        # q * 2^-pos is exact in float64; the cast to float32 is exact unless it overflows
        # (tiny bit widths at pos -127), where it becomes +-inf as in float32 arithmetic.
        return (q * (2.0 ** -pos)).astype(np.float32)


def _finite(x):
    x = np.asarray(x, np.float32).ravel()
    return x[np.isfinite(x)]


def non_overflow_pos(x, bit_width):
    """Method 0: p = floor(log2(1 / step)),
    step = max(min(x) / (-2^(b-1) - 0.5), max(x) / (2^(b-1) - 0.5)), all in exact rationals."""
    x = _finite(x)
    if x.size == 0:
        return ZERO_POS
    half = Fraction(2 ** (bit_width - 1))
    step = max(Fraction(float(x.min())) / (-half - Fraction(1, 2)),
               Fraction(float(x.max())) / (half - Fraction(1, 2)))
    if step <= 0:
        return ZERO_POS  # all zero
    # The largest integer p with 2^p <= 1 / step, i.e. step * 2^p <= 1.
    inv = 1 / step
    p = inv.numerator.bit_length() - inv.denominator.bit_length()  # within one of the answer
    while Fraction(2) ** p > inv:
        p -= 1
    while Fraction(2) ** (p + 1) <= inv:
        p += 1
    return int(min(max(p, MIN_POS), MAX_POS))


def cost(x, pos, mode, bit_width, method, arch_type="DEFAULT"):
    """The min-diffs cost of quantizing the finite values of ``x`` with ``pos``."""
    x = _finite(x)
    q = quantize(x, pos, mode, bit_width, arch_type).astype(np.float64)
    d = q - x.astype(np.float64)
    if method == 2 and mode == DW_WEIGHT:
        terms = np.sqrt(np.abs(d / (np.abs(x.astype(np.float64)) + 1e-9)))
    else:
        terms = d * d
    return math.fsum(terms.tolist())


def search_pos(x, mode, bit_width, method, arch_type="DEFAULT"):
    """The position CALIB / TRAIN choose for a batch ``x``."""
    p0 = non_overflow_pos(x, bit_width)
    if method == 0 or p0 == ZERO_POS:
        return p0
    best, best_cost = None, None
    for p in range(p0, min(p0 + 4, MAX_POS) + 1):
        c = cost(x, p, mode, bit_width, method, arch_type)
        if best_cost is None or c < best_cost:  # strict: ties go to the smaller p
            best, best_cost = p, c
    return best


def fix_neuron(x, mode, phase, bit_width=8, method=1, quantize_pos=0, arch_type="DEFAULT"):
    """The reference FixNeuron: returns ``(output, position used)``.

    EVAL uses ``quantize_pos`` clamped to [-127, 127], except that a position below -127 means
    "unknown" (FixNeuronDynamic's empty histogram) and is searched per batch.
    """
    if phase == EVAL and quantize_pos >= MIN_POS:
        pos = min(quantize_pos, MAX_POS)
    else:
        pos = search_pos(x, mode, bit_width, method, arch_type)
    return quantize(x, pos, mode, bit_width, arch_type), pos


def kept_position(positions):
    """The position kept for EVAL from the positions seen: most frequent, ties to the smaller."""
    counts = {}
    for p in positions:
        counts[int(p)] = counts.get(int(p), 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda p: (-counts[p], p))
