"""FixNeuron and FixNeuronDynamic from standard TensorFlow ops: the path for GPUs and XLA.

The C++ kernel in ``ops/`` runs on the CPU only. This module computes the same function from
ops that every TensorFlow device and XLA (``jit_compile``) support, bit for bit the same
outputs and positions as the kernel; :mod:`decent_q.ops` chooses between the two.

Why float64 and bit patterns. TensorFlow runs CPU kernels with denormals flushed (FTZ/DAZ):
a denormal float32 input reads as 0 and a denormal result becomes 0, while the kernel honours
them (positions reach +-127, whose steps and scales are denormal). So no float32 arithmetic
touches a value here:

* x enters as an exact float64: ``Cast`` for normal values, and for denormals the value is
  rebuilt from the bit pattern (``mantissa * 2^-149``, integer arithmetic in float64).
* ``v = x * 2^p`` is exact in float64. The kernel forms v in float32, which differs only when
  |v| < 2^-126 (rounded to the denormal grid, or to a signed zero): that rounding is repeated
  with ``rint(v * 2^149) * 2^-149``, so that rounding and min-diffs errors see the kernel's v.
* Rounding (half up for ACTIVATION, half away from zero for weights) is exact in float64,
  and keeps the kernel's signs of zero (floor / trunc, then a select, never an addition).
* The output ``q * 2^-p`` is exact in float64; it becomes float32 by ``Cast`` when normal, by
  its bit pattern when denormal, and +-Inf when float32 overflows (|q 2^-p| >= 2^128).
* Powers of two are built from their bit patterns (``pow`` is not exact everywhere, e.g.
  under XLA).

Position search, as the kernel and docs/fixneuron.md "Position search" have it: method 0 from
the finite min and max
(``p = -ceil(log2(step))`` read from step's float64 exponent, exact); methods 1 and 2 try
``p0 .. p0+4`` (not beyond 127) with costs summed in float64 (squared error in units of the
step, ``(Q - v)^2 * 4^-p``, as the kernel; the depthwise cost for method 2 on DW_WEIGHT), the
smallest cost wins, ties to the smaller p. The kernel sums in fixed blocks of 8 lanes and this
path with TensorFlow's reduction tree: each term is the same, and the sums can differ only in
their last bits, so a candidate could only be chosen differently when two costs are equal to
about 1e-15 relative but not exactly (exact ties, and sums without rounding, agree).

XLA: the ops of a point are many small elementwise ones, which XLA fuses into a few kernels.
With ``jit=None`` (the default) they are built in ``tf.xla.experimental.jit_scope()`` when a GPU
is visible, so TensorFlow compiles each point as an XLA cluster (once per input shape); the
environment variable ``DECENT_Q_TF_OPS_JIT=1`` / ``0`` forces it on / off. The numbers do not
change (the tests compare both forms with the kernel).

Gradient: straight through, d out / d in = 1 (an ``IdentityN`` whose gradient is overridden).

Graph layout of a point (``Q/fix`` mirrors the kernel op's outputs, so the rest of decent_q
reads both alike)::

    Q/fix_ops/...   the computation (standard ops)
    Q/fix           IdentityN(y, used_pos, x): output 0 y, output 1 used_pos; input 2 is x.
                    Attributes _fix_bit_width, _fix_method, _fix_mode, _fix_phase,
                    _fix_arch_type record the FixNeuron attributes for finalize.
"""

import contextlib
import functools
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

MIN_POS = -127
MAX_POS = 127
ZERO_POS = 127
NUM_CANDIDATES = 5
ATTR_PREFIX = "_fix_"  # attributes on the Q/fix IdentityN: _fix_bit_width, ...
_GRADIENT = "DecentQStraightThrough"
_F64 = tf.float64

_WEIGHT, _ACTIVATION, _DW_WEIGHT = 0, 1, 2
_EVAL = 1


@functools.lru_cache(maxsize=None)
def gpu_visible():
    """Whether TensorFlow sees a GPU (asked once per process)."""
    return bool(tf.config.list_physical_devices("GPU"))


def _jit_scope(jit):
    if jit is None:
        env = os.environ.get("DECENT_Q_TF_OPS_JIT", "")
        jit = env == "1" if env in ("0", "1") else gpu_visible()
    return tf.xla.experimental.jit_scope() if jit else contextlib.nullcontext()


@tf.RegisterGradient(_GRADIENT)
def _straight_through(op, *grads):
    """IdentityN(y, [used_pos,] x): the gradient of y (and of x's pass-through) goes to x."""
    out = [None] * len(op.inputs)
    grad_y, grad_x = grads[0], grads[-1]
    if grad_y is not None and grad_x is not None:
        out[-1] = grad_y + grad_x
    else:
        out[-1] = grad_y if grad_y is not None else grad_x
    return out


def _pow2(k):
    """2^k as float64 (exact) for int k in [-1022, 1023], from the bit pattern."""
    k = tf.cast(k, tf.int64)
    return tf.bitcast(tf.bitwise.left_shift(k + 1023, tf.constant(52, tf.int64)), _F64)


def _const(value):
    return tf.constant(value, _F64)


def exact_float64(x):
    """float32 x -> the same value in float64, denormals included (TF's Cast flushes them)."""
    bits = tf.cast(tf.bitcast(x, tf.int32), _F64)  # exact: integers below 2^31
    negative = bits < 0
    magnitude = tf.where(negative, bits + _const(2.0 ** 31), bits)  # the bits without the sign
    exponent_field = tf.floor(magnitude * _const(2.0 ** -23))
    denormal = magnitude * _const(2.0 ** -149)  # exact; only used where exponent_field == 0
    denormal = tf.where(negative, -denormal, denormal)
    return tf.where(tf.equal(exponent_field, 0.0), denormal, tf.cast(x, _F64))


def to_float32(y):
    """float64 y that float32 holds exactly (or overflows) -> float32 without flushing."""
    magnitude = tf.abs(y)
    tiny = tf.logical_and(magnitude < _const(2.0 ** -126), magnitude > 0.0)
    huge = magnitude >= _const(2.0 ** 128)
    mantissa = magnitude * _const(2.0 ** 149)  # an integer below 2^23 where tiny
    signed_bits = tf.where(y < 0.0, mantissa - _const(2.0 ** 31), mantissa)
    denormal = tf.bitcast(tf.cast(tf.where(tiny, signed_bits, tf.zeros_like(y)), tf.int32),
                          tf.float32)
    inf = tf.where(y < 0.0, _const(-np.inf), _const(np.inf))
    normal = tf.cast(tf.where(tf.logical_or(tiny, huge), tf.zeros_like(y), y), tf.float32)
    return tf.where(tiny, denormal, tf.where(huge, tf.cast(inf, tf.float32), normal))


def _as_float32_grid(v):
    """v rounded as float32 arithmetic rounds it below 2^-126 (denormals, signed zeros)."""
    on_grid = tf.math.rint(v * _const(2.0 ** 149)) * _const(2.0 ** -149)
    return tf.where(tf.abs(v) < _const(2.0 ** -126), on_grid, v)


def _round(v, mode):
    """Exact rounding of float64 v: half up (ACTIVATION) or half away from zero."""
    if mode == _ACTIVATION:
        f = tf.floor(v)
        return tf.where(v - f >= 0.5, f + 1.0, f)
    t = tf.where(v < 0.0, tf.math.ceil(v), tf.floor(v))  # trunc, keeping the sign of zero
    d = v - t
    return tf.where(d >= 0.5, t + 1.0, tf.where(d <= -0.5, t - 1.0, t))


def _clamp(q, lo, hi):
    # NaN compares false both times and passes through, as in the kernel.
    return tf.where(q < lo, _const(lo), tf.where(q > hi, _const(hi), q))


def quant_range(bit_width, mode, arch_type="DEFAULT"):
    half = 2.0 ** (bit_width - 1)
    lo, hi = -half, half - 1.0
    if arch_type == "DPUCADF8H" and mode == _ACTIVATION:
        lo = -hi
    return lo, hi


def _codes(x64, scale, mode, lo, hi):
    """(Q, v): the clamped integer codes of x64 * scale and the kernel's float32 v."""
    v = _as_float32_grid(x64 * scale)
    return _clamp(_round(v, mode), lo, hi), v


def _float32_overflow(q):
    """q, or +-Inf where float32 overflows (|q| >= 2^128), as the kernel's float32 q."""
    inf = tf.where(q < 0.0, _const(-np.inf), _const(np.inf))
    return tf.where(tf.abs(q) >= _const(2.0 ** 128), inf, q)


def _non_overflow_pos(finite, bit_width):
    """Method 0: p = floor(log2(1 / step)), step = max(min/(lo-0.5), max/(hi+0.5))."""
    half = 2.0 ** (bit_width - 1)
    mn = tf.minimum(tf.reduce_min(finite), 0.0)
    mx = tf.maximum(tf.reduce_max(finite), 0.0)
    step = tf.maximum(mn / _const(-half - 0.5), mx / _const(half - 0.5))
    bits = tf.bitcast(step, tf.int64)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, tf.constant(52, tf.int64)),
                                      tf.constant(0x7FF, tf.int64)) - 1023
    fraction = tf.bitwise.bitwise_and(bits, tf.constant((1 << 52) - 1, tf.int64))
    ceil_log2 = exponent + tf.cast(tf.not_equal(fraction, 0), tf.int64)
    pos = tf.clip_by_value(-ceil_log2, MIN_POS, MAX_POS)
    # step > 0 is false for all zero or no finite value (NaN-free: finite values only)
    return tf.cast(tf.where(step > 0.0, pos, tf.constant(ZERO_POS, tf.int64)), tf.int32)


def _min_diffs_pos(finite, p0, mode, bit_width, dw_cost, lo, hi):
    """Methods 1 / 2: the candidate p0 .. p0+4 (<= 127) of smallest cost, ties to the smaller."""
    offsets = tf.range(NUM_CANDIDATES, dtype=tf.int32)
    candidates = p0 + offsets
    valid = candidates <= MAX_POS
    used = tf.minimum(candidates, MAX_POS)  # p > 127 is never chosen
    x = tf.reshape(finite, [1, -1])
    scale = tf.reshape(_pow2(used), [NUM_CANDIDATES, 1])
    q, v = _codes(x, scale, mode, lo, hi)
    if dw_cost:
        # sum |(q - x) / (|x| + 1e-9)|^0.5 with q the float32 output value
        q_value = _float32_overflow(q * tf.reshape(_pow2(-used), [NUM_CANDIDATES, 1]))
        terms = tf.sqrt(tf.abs((q_value - x) / (tf.abs(x) + _const(1e-9))))
        costs = tf.reduce_sum(terms, axis=1)
    else:
        # (q - x)^2 = 4^-p (Q - v)^2: Q - v and its square are exact
        e = q - v
        costs = tf.reduce_sum(e * e, axis=1) * _pow2(-2 * used)
    costs = tf.where(valid, costs, tf.fill([NUM_CANDIDATES], _const(np.inf)))
    best = tf.reduce_min(costs)
    first = tf.reduce_min(tf.where(tf.equal(costs, best), offsets,
                                   tf.fill([NUM_CANDIDATES], NUM_CANDIDATES)))
    return tf.where(tf.equal(p0, ZERO_POS), p0, p0 + first)


def search_pos(x64, mode, bit_width, method, arch_type="DEFAULT"):
    """The position CALIB and TRAIN choose for x (float64, from exact_float64)."""
    lo, hi = quant_range(bit_width, mode, arch_type)
    flat = tf.reshape(x64, [-1])
    finite = tf.where(tf.math.is_finite(flat), flat, tf.zeros_like(flat))
    p0 = _non_overflow_pos(finite, bit_width)
    if method == 0:
        return p0
    dw_cost = method == 2 and mode == _DW_WEIGHT
    return _min_diffs_pos(finite, p0, mode, bit_width, dw_cost, lo, hi)


def quantize_exact(x64, pos, mode, bit_width, arch_type="DEFAULT"):
    """float32 ``clamp(round(x 2^pos)) 2^-pos`` of float64 x64 at int32 scalar pos."""
    lo, hi = quant_range(bit_width, mode, arch_type)
    q, _ = _codes(x64, _pow2(pos), mode, lo, hi)
    return to_float32(q * _pow2(-pos))


def _check(bit_width, method, mode, phase, arch_type):
    for name, value, ok in (("bit_width", bit_width, 2 <= bit_width <= 16),
                            ("method", method, method in (0, 1, 2)),
                            ("mode", mode, mode in (0, 1, 2)),
                            ("phase", phase, phase in (0, 1, 2)),
                            ("arch_type", arch_type, arch_type in ("DEFAULT", "DPUCADF8H"))):
        if not ok:
            raise ValueError(f"FixNeuron {name} {value!r} is out of range (bit_width 2..16, "
                             "method/mode/phase 0..2, arch_type DEFAULT or DPUCADF8H)")


def _output(values, x, name, attrs):
    """IdentityN(values..., x) named `name` with the straight-through gradient."""
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"IdentityN": _GRADIENT}):
        outs = tf.raw_ops.IdentityN(input=list(values) + [x], name=name)
    op = outs[0].op
    for key, value in attrs.items():
        attr = (attr_value_pb2.AttrValue(s=value.encode()) if isinstance(value, str)
                else attr_value_pb2.AttrValue(i=int(value)))
        op._set_attr(ATTR_PREFIX + key, attr)  # pylint: disable=protected-access
    return outs


def fix_neuron_dynamic(x, pos, mode, phase, bit_width=8, method=1, arch_type="DEFAULT",
                       name=None, jit=None):
    """FixNeuronDynamic from TensorFlow ops; returns ``(quantized, used_pos)``.

    EVAL quantizes with ``pos`` (clamped above at 127); pos < -127 means "unknown" and the
    position is searched per batch. Without control flow the search is still evaluated in
    EVAL (its result is then unused). ``jit``: build in an XLA jit scope (None: with a GPU
    visible; see the module doc).
    """
    mode, phase, bit_width, method = int(mode), int(phase), int(bit_width), int(method)
    _check(bit_width, method, mode, phase, arch_type)
    name = name or "FixNeuronDynamic"
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.name_scope(name + "_ops"), _jit_scope(jit):
        x64 = exact_float64(x)
        searched = search_pos(x64, mode, bit_width, method, arch_type)
        if phase == _EVAL:
            pos = tf.convert_to_tensor(pos, tf.int32)
            used = tf.where(pos >= MIN_POS, tf.minimum(pos, MAX_POS), searched)
        else:
            used = searched
        y = quantize_exact(x64, used, mode, bit_width, arch_type)
    attrs = dict(bit_width=bit_width, method=method, mode=mode, phase=phase,
                 arch_type=arch_type)
    y, used, _ = _output([y, used], x, name, attrs)
    return y, used


def fix_neuron(x, mode, phase=_EVAL, bit_width=8, method=1, quantize_pos=0,
               arch_type="DEFAULT", name=None, jit=None):
    """FixNeuron from TensorFlow ops: EVAL uses ``quantize_pos`` clamped to [-127, 127]."""
    mode, phase, bit_width, method = int(mode), int(phase), int(bit_width), int(method)
    _check(bit_width, method, mode, phase, arch_type)
    name = name or "FixNeuron"
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.name_scope(name + "_ops"), _jit_scope(jit):
        x64 = exact_float64(x)
        if phase == _EVAL:
            pos = tf.constant(min(max(int(quantize_pos), MIN_POS), MAX_POS), tf.int32)
        else:
            pos = search_pos(x64, mode, bit_width, method, arch_type)
        y = quantize_exact(x64, pos, mode, bit_width, arch_type)
    y, _ = _output([y], x, name, dict(bit_width=bit_width, method=method, mode=mode,
                                      phase=phase, arch_type=arch_type,
                                      quantize_pos=quantize_pos))
    return y
