"""FixNeuron kernel and its wrapper (decent_q/ops.py) against the NumPy model of docs/fixneuron.md.

Every comparison is bit-exact: ``np.array_equal`` on outputs (NaN where the model has NaN),
equality on positions. The model is ``tests/numpy_reference.py``.
"""

import itertools
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from decent_q import ops
from tests import numpy_reference as ref

MODES = (ref.WEIGHT, ref.ACTIVATION, ref.DW_WEIGHT)
SEARCH_PHASES = (ref.CALIB, ref.TRAIN)
ALL_PHASES = (ref.CALIB, ref.EVAL, ref.TRAIN)
BIT_WIDTHS = tuple(range(2, 17))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# > 3 * 16384 elements, so the kernel's block-parallel path runs with a partial last block.
LARGE_SHAPE = (3, 131, 127)
SHAPES = {"one": (1,), "vector": (37,), "nhwc": (2, 6, 5, 3), "large": LARGE_SHAPE}


def _session_run(build, feed_shapes, feeds):
    """Builds a graph with ``build(placeholders)`` and runs what it returns once."""
    with tf.Graph().as_default() as graph:
        phs = [tf.compat.v1.placeholder(tf.float32, shape) for shape in feed_shapes]
        fetches = build(*phs)
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(fetches, dict(zip(phs, feeds)))


def _assert_same(actual, expected, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.float32 and actual.shape == expected.shape, what
    if not np.array_equal(actual, expected, equal_nan=True):
        bad = np.flatnonzero(~((actual == expected) | (np.isnan(actual) & np.isnan(expected))))
        i = bad[0]
        raise AssertionError(
            f"{what}: {bad.size} of {actual.size} differ; first at flat index {i}: "
            f"x-> kernel {actual.flat[i]!r} vs reference {expected.flat[i]!r}")


def _random_tensor(rng, shape, scale):
    """Normal values times ``scale``, with some exact half-step ties and zeros mixed in."""
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    flat = x.reshape(-1)
    k = flat.size // 8
    if k:
        # multiples of a quarter of a power of two land exactly on .5 ties at some position
        idx = rng.choice(flat.size, size=2 * k, replace=False)
        flat[idx[:k]] = (rng.integers(-40, 40, size=k) / 4.0 * scale).astype(np.float32)
        flat[idx[k:]] = 0.0
    return x


# --------------------------------------------------------------------------------------------
# The model itself, checked against pure rational arithmetic on small inputs.
# --------------------------------------------------------------------------------------------

def _fraction_round(v, mode):
    if mode == ref.ACTIVATION:
        return math.floor(v + Fraction(1, 2))
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


@pytest.mark.parametrize("mode", MODES)
def test_reference_rounding_matches_rationals(mode):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(300) * 4,
                        np.arange(-20, 21) / 2.0, [0.49999997, -0.49999997, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    for pos, bits in [(0, 8), (3, 4), (-2, 16), (5, 2)]:
        lo, hi = ref.quant_range(bits, mode)
        expect = [float(Fraction(min(max(_fraction_round(Fraction(float(v)) * Fraction(2) ** pos,
                                                         mode), lo), hi))
                        / Fraction(2) ** pos) for v in x]
        np.testing.assert_array_equal(ref.quantize(x, pos, mode, bits),
                                      np.array(expect, np.float32))


def test_reference_non_overflow_pos_matches_log2():
    rng = np.random.default_rng(2)
    for _ in range(200):
        x = (rng.standard_normal(10) * 10.0 ** rng.integers(-6, 7)).astype(np.float32)
        bits = int(rng.integers(2, 17))
        half = 2 ** (bits - 1)
        step = max(float(x.min()) / (-half - 0.5), float(x.max()) / (half - 0.5))
        assert ref.non_overflow_pos(x, bits) == math.floor(math.log2(1 / step))


# --------------------------------------------------------------------------------------------
# Kernel vs model: random tensors x shapes x modes x methods x bit widths x phases.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("mode", MODES)
def test_search_phases_match_reference(shape_name, mode):
    """CALIB and TRAIN, every method and bit width: FixNeuronDynamic's output and used_pos,
    and the stateless FixNeuron's output."""
    shape = SHAPES[shape_name]
    rng = np.random.default_rng([sorted(SHAPES).index(shape_name), mode])
    large = shape_name == "large"
    scales = (1.0, 3e-4, 7e3) if not large else (0.37, 2e3)
    xs = [_random_tensor(rng, shape, s) for s in scales]
    bits = BIT_WIDTHS if not large else (2, 3, 8, 16)
    combos = list(itertools.product(range(len(xs)), bits, (0, 1, 2), SEARCH_PHASES))

    def build(*phs):
        out = []
        for i, b, m, ph in combos:
            y, p = ops.fix_neuron_dynamic(phs[i], tf.constant(0), mode=mode, phase=ph,
                                          bit_width=b, method=m)
            y2 = ops.fix_neuron(phs[i], mode=mode, phase=ph, bit_width=b, method=m,
                                quantize_pos=5)
            out.append((y, p, y2))
        return out

    got = _session_run(build, [shape] * len(xs), xs)
    for (i, b, m, ph), (y, p, y2) in zip(combos, got):
        # the search does not depend on the phase, so compute it once per (x, b, m)
        want_y, want_p = ref.fix_neuron(xs[i], mode, ph, b, m)
        what = f"{shape_name} mode={mode} phase={ph} bits={b} method={m} scale={scales[i]}"
        assert int(p) == want_p, what
        _assert_same(y, want_y, what)
        _assert_same(y2, want_y, what + " (FixNeuron)")


def test_tensor_beyond_the_caches():
    """> 8 MiB: the kernel writes a fresh output with streaming stores (and partial block)."""
    rng = np.random.default_rng(14)
    x = _random_tensor(rng, (2 ** 21 + 2 ** 14 + 5,), 3.0)

    def build(ph):
        return (ops.fix_neuron(ph, mode=ref.ACTIVATION, phase=ref.EVAL, quantize_pos=5),
                ops.fix_neuron_dynamic(ph, tf.constant(0), mode=ref.WEIGHT, phase=ref.TRAIN))

    y_eval, (y_train, p_train) = _session_run(build, [x.shape], [x])
    _assert_same(y_eval, ref.quantize(x, 5, ref.ACTIVATION, 8), "EVAL")
    want_y, want_p = ref.fix_neuron(x, ref.WEIGHT, ref.TRAIN)
    assert p_train == want_p
    _assert_same(y_train, want_y, "TRAIN")


@pytest.mark.parametrize("mode", MODES)
def test_eval_matches_reference_for_positions(mode):
    """EVAL with fixed positions, including negative, large and out-of-range ones (clamped)."""
    rng = np.random.default_rng(10 + mode)
    x = np.concatenate([_random_tensor(rng, (500,), 10.0 ** e) for e in (-30, -3, 0, 3, 30)])
    x = np.concatenate([x, [np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, -1e-45]])
    x = x.astype(np.float32)
    positions = (-200, -128, -127, -120, -5, -1, 0, 1, 4, 7, 100, 126, 127, 128, 500)
    combos = list(itertools.product(positions, (2, 4, 8, 16), ("DEFAULT", "DPUCADF8H")))

    def build(ph):
        return [ops.fix_neuron(ph, mode=mode, phase=ref.EVAL, bit_width=b, quantize_pos=p,
                               arch_type=a) for p, b, a in combos]

    got = _session_run(build, [x.shape], [x])
    for (p, b, a), y in zip(combos, got):
        want, _ = ref.fix_neuron(x, mode, ref.EVAL, b, quantize_pos=max(p, ref.MIN_POS),
                                 arch_type=a)
        _assert_same(y, want, f"mode={mode} pos={p} bits={b} arch={a}")


def test_dynamic_eval_position_input():
    """FixNeuronDynamic EVAL: pos >= -127 is used (clamped above at 127); pos < -127 means
    'unknown' and the position is searched per batch."""
    rng = np.random.default_rng(3)
    x = _random_tensor(rng, (4, 9), 2.5)
    cases = [(-1000, 1), (-128, 1), (-128, 0), (-127, 1), (-3, 1), (2, 1), (127, 1), (999, 1)]

    def build(ph):
        pos = [ops.fix_neuron_dynamic(ph, tf.constant(p, tf.int32), mode=ref.ACTIVATION,
                                      phase=ref.EVAL, method=m) for p, m in cases]
        return pos

    got = _session_run(build, [x.shape], [x])
    for (p, m), (y, used) in zip(cases, got):
        want_y, want_p = ref.fix_neuron(x, ref.ACTIVATION, ref.EVAL, 8, m, quantize_pos=p)
        assert int(used) == want_p, (p, m)
        _assert_same(y, want_y, f"pos={p}")
    assert int(got[0][1]) == ref.search_pos(x, ref.ACTIVATION, 8, 1)
    assert int(got[-1][1]) == 127


# --------------------------------------------------------------------------------------------
# Edge cases.
# --------------------------------------------------------------------------------------------

def _eval(x, mode, pos=0, bits=8, arch="DEFAULT"):
    x = np.asarray(x, np.float32)
    return _session_run(lambda ph: ops.fix_neuron(ph, mode=mode, phase=ref.EVAL,
                                                  bit_width=bits, quantize_pos=pos,
                                                  arch_type=arch), [x.shape], [x])


def _dynamic(x, mode, phase, bits=8, method=1, pos=0, arch="DEFAULT"):
    x = np.asarray(x, np.float32)
    return _session_run(lambda ph: ops.fix_neuron_dynamic(ph, tf.constant(pos), mode=mode,
                                                          phase=phase, bit_width=bits,
                                                          method=method, arch_type=arch),
                        [x.shape], [x])


HALVES = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]


@pytest.mark.parametrize("mode,expect", [
    (ref.ACTIVATION, [-3, -2, -1, 0, 1, 2, 3, 4]),
    (ref.WEIGHT, [-4, -3, -2, -1, 1, 2, 3, 4]),
    (ref.DW_WEIGHT, [-4, -3, -2, -1, 1, 2, 3, 4]),
])
def test_half_ties(mode, expect):
    np.testing.assert_array_equal(_eval(HALVES, mode), np.array(expect, np.float32))
    # the same ties at another position: x = k.5 * 2^-3 at p = 3
    np.testing.assert_array_equal(_eval(np.array(HALVES) / 8, mode, pos=3),
                                  np.array(expect, np.float32) / 8)


@pytest.mark.parametrize("mode", MODES)
def test_just_below_half_rounds_to_zero(mode):
    below = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997
    below_1_5 = np.nextafter(np.float32(1.5), np.float32(0))
    x = np.array([below, -below, below_1_5, -below_1_5], np.float32)
    np.testing.assert_array_equal(_eval(x, mode), np.array([0, 0, 1, -1], np.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", [2, 3, 8, 16])
def test_saturation_both_ends(mode, bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    x = np.array([lo - 0.5, lo - 0.49, lo - 1000.0, hi + 0.49, hi + 0.5, hi + 1e6], np.float32)
    y = _eval(x, mode, bits=bits)
    # lo - 0.5 rounds to lo (half up) or lo - 1 (half away), then clamps to lo
    np.testing.assert_array_equal(y, np.array([lo, lo, lo, hi, hi, hi], np.float32))


def test_dpucadf8h_narrows_activation_only():
    x = np.array([-200.0, -128.0, -127.6, 127.0, 300.0], np.float32)
    np.testing.assert_array_equal(_eval(x, ref.ACTIVATION, arch="DPUCADF8H"),
                                  np.array([-127, -127, -127, 127, 127], np.float32))
    np.testing.assert_array_equal(_eval(x, ref.ACTIVATION),
                                  np.array([-128, -128, -128, 127, 127], np.float32))
    for mode in (ref.WEIGHT, ref.DW_WEIGHT):
        np.testing.assert_array_equal(_eval(x, mode, arch="DPUCADF8H"),
                                      np.array([-128, -128, -128, 127, 127], np.float32))
    # the narrowed range also enters the min-diffs search
    rng = np.random.default_rng(4)
    x = _random_tensor(rng, (64,), 1.0)
    x[0] = -x.max() * 1.01
    for phase, bits in itertools.product(SEARCH_PHASES, (2, 4, 8)):
        y, p = _dynamic(x, ref.ACTIVATION, phase, bits=bits, arch="DPUCADF8H")
        want_y, want_p = ref.fix_neuron(x, ref.ACTIVATION, phase, bits, 1,
                                        arch_type="DPUCADF8H")
        assert p == want_p
        _assert_same(y, want_y)


@pytest.mark.parametrize("phase", SEARCH_PHASES)
@pytest.mark.parametrize("method", (0, 1, 2))
@pytest.mark.parametrize("mode", MODES)
def test_all_zero_tensor_gets_position_127(phase, method, mode):
    for x in (np.zeros((3, 4), np.float32), -np.zeros((5,), np.float32)):
        y, p = _dynamic(x, mode, phase, method=method)
        assert p == 127
        np.testing.assert_array_equal(y, np.zeros_like(x))


def test_empty_tensor():
    for phase in ALL_PHASES:
        y, p = _dynamic(np.zeros((0, 3), np.float32), ref.ACTIVATION, phase)
        assert y.shape == (0, 3)
        assert p == (127 if phase != ref.EVAL else 0)


@pytest.mark.parametrize("method", (0, 1, 2))
def test_large_values_give_negative_positions(method):
    x = np.array([3.0e38, -1.0e38, 5.0e20, 1.0], np.float32)
    for bits, mode in itertools.product((2, 8, 16), MODES):
        y, p = _dynamic(x, mode, ref.CALIB, bits=bits, method=method)
        want_y, want_p = ref.fix_neuron(x, mode, ref.CALIB, bits, method)
        assert p == want_p and p < -100
        _assert_same(y, want_y)
    # 2 bits needs step >= 2^127 here: the position clamps at -127
    assert _dynamic(np.array([3.0e38], np.float32), ref.WEIGHT, ref.CALIB, bits=2,
                    method=0)[1] == -127


@pytest.mark.parametrize("method", (0, 1, 2))
def test_tiny_values_give_large_positions(method):
    for x in ([3e-38, -1e-39, 1e-44], [1e-45, -1e-45], [2e-30]):
        x = np.array(x, np.float32)
        for bits, mode in itertools.product((2, 8, 16), MODES):
            y, p = _dynamic(x, mode, ref.TRAIN, bits=bits, method=method)
            want_y, want_p = ref.fix_neuron(x, mode, ref.TRAIN, bits, method)
            assert p == want_p and p > 90
            _assert_same(y, want_y)
    # the smallest subnormal needs p ~ 155: clamped to 127, it quantizes to 0
    y, p = _dynamic(np.array([1e-45], np.float32), ref.WEIGHT, ref.CALIB, method=0)
    assert p == 127 and y[0] == 0


@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf(mode):
    """NaN stays NaN, +-Inf saturate, and neither affects the chosen position."""
    finite = np.array([0.3, -1.7, 2.2, 0.01], np.float32)
    x = np.concatenate([finite, np.array([np.nan, np.inf, -np.inf], np.float32)])
    lo, hi = ref.quant_range(8, mode)
    for phase, method in itertools.product(ALL_PHASES, (0, 1, 2)):
        y, p = _dynamic(x, mode, phase, method=method, pos=4)
        want_p = 4 if phase == ref.EVAL else ref.search_pos(finite, mode, 8, method)
        assert p == want_p
        _assert_same(y[:4], ref.quantize(finite, want_p, mode, 8))
        assert np.isnan(y[4])
        assert y[5] == np.float32(hi * 2.0 ** -p) and y[6] == np.float32(lo * 2.0 ** -p)
    # only non-finite values: no finite value to scale -> 127
    y, p = _dynamic(np.array([np.nan, np.inf, -np.inf], np.float32), mode, ref.CALIB)
    assert p == 127 and np.isnan(y[0])


def test_min_diffs_ties_go_to_smaller_position():
    """Find inputs whose exact min-diffs costs tie between candidates; the smaller p wins."""
    rng = np.random.default_rng(5)
    found = []
    for _ in range(4000):
        bits = int(rng.integers(2, 5))
        x = (rng.integers(-8, 9, size=int(rng.integers(1, 4))) / 4.0).astype(np.float32)
        p0 = ref.non_overflow_pos(x, bits)
        if p0 == 127:
            continue
        mode = int(rng.integers(0, 3))
        costs = [ref.cost(x, p, mode, bits, 1) for p in range(p0, p0 + 5)]
        best = min(costs)
        if costs.count(best) > 1:
            found.append((x, bits, mode))
        if len(found) >= 20:
            break
    assert found, "no tie found; widen the search"
    for x, bits, mode in found:
        y, p = _dynamic(x, mode, ref.CALIB, bits=bits, method=1)
        want_y, want_p = ref.fix_neuron(x, mode, ref.CALIB, bits, 1)
        assert p == want_p, (x, bits, mode)
        _assert_same(y, want_y)


def test_method2_uses_relative_cost_only_for_dw_weight():
    # A tensor where the squared-error and relative costs pick different positions.
    rng = np.random.default_rng(6)
    for _ in range(200):
        x = (rng.standard_normal(16) * np.exp(rng.standard_normal(16) * 3)).astype(np.float32)
        p1 = ref.search_pos(x, ref.DW_WEIGHT, 4, 1)
        p2 = ref.search_pos(x, ref.DW_WEIGHT, 4, 2)
        if p1 != p2:
            break
    else:
        pytest.fail("no input separating methods 1 and 2 found")
    assert _dynamic(x, ref.DW_WEIGHT, ref.CALIB, bits=4, method=2)[1] == p2
    assert _dynamic(x, ref.DW_WEIGHT, ref.CALIB, bits=4, method=1)[1] == p1
    for mode in (ref.WEIGHT, ref.ACTIVATION):
        assert (_dynamic(x, mode, ref.CALIB, bits=4, method=2)[1]
                == ref.search_pos(x, mode, 4, 1))


def test_result_does_not_depend_on_thread_count():
    rng = np.random.default_rng(7)
    x = _random_tensor(rng, (5, 40000), 1.0)
    outs = []
    for threads in (1, 2, 5):
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=1)
        with tf.Graph().as_default() as graph:
            ph = tf.compat.v1.placeholder(tf.float32, x.shape)
            y, p = ops.fix_neuron_dynamic(ph, tf.constant(0), mode=ref.WEIGHT,
                                          phase=ref.TRAIN, method=1, bit_width=4)
            with tf.compat.v1.Session(graph=graph, config=config) as sess:
                outs.append(sess.run((y, p), {ph: x}))
    for y, p in outs[1:]:
        assert p == outs[0][1]
        np.testing.assert_array_equal(y, outs[0][0])


# --------------------------------------------------------------------------------------------
# Gradient, attributes.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ALL_PHASES)
def test_gradient_is_straight_through(phase):
    rng = np.random.default_rng(8)
    x = _random_tensor(rng, (3, 50), 4.0)
    x[0, :3] = [1e6, -1e6, 0.0]  # saturated values pass the gradient too (no clipping)
    w = rng.standard_normal(x.shape).astype(np.float32)
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape)
        y1 = ops.fix_neuron(ph, mode=ref.ACTIVATION, phase=phase, bit_width=4)
        y2, _ = ops.fix_neuron_dynamic(ph, tf.constant(1), mode=ref.WEIGHT, phase=phase)
        y3 = ops.quantize(ph, "q/aquant", mode=ref.ACTIVATION, phase=phase)
        grads = [tf.gradients(tf.reduce_sum(tf.constant(w) * y), ph)[0] for y in (y1, y2, y3)]
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for g in sess.run(grads, {ph: x}):
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("attrs", [
    dict(bit_width=1), dict(bit_width=17), dict(method=3), dict(method=-1), dict(mode=3),
    dict(phase=3), dict(arch_type="DPUCZDX8G_BOGUS"),
])
def test_invalid_attrs_raise(attrs):
    kwargs = dict(mode=ref.ACTIVATION, phase=ref.EVAL)
    kwargs.update(attrs)
    for build in (lambda ph: ops.fix_neuron(ph, **kwargs),
                  lambda ph: ops.fix_neuron_dynamic(ph, tf.constant(0), **kwargs)):
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                           match=next(iter(attrs))):
            _session_run(build, [(2,)], [np.ones(2, np.float32)])


# --------------------------------------------------------------------------------------------
# ops.quantize: the histogram variable.
# --------------------------------------------------------------------------------------------

def _hist_variable(point):
    (var,) = [v for v in tf.compat.v1.global_variables()
              if v.op.name == point + "/" + ops.HIST_SUFFIX]
    return var


def _batches(rng, n):
    # scales spread so that several positions occur
    return [_random_tensor(rng, (4, 8), float(s)) for s in rng.choice([0.5, 1.0, 4.0, 9.0], n)]


def test_quantize_train_counts_positions_and_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    batches = _batches(rng, 12)
    want_pos = [ref.search_pos(b, ref.ACTIVATION, 8, 1) for b in batches]
    ckpt = str(tmp_path / "model.ckpt")
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, (4, 8))
        y = ops.quantize(ph, "conv/aquant", mode=ref.ACTIVATION, phase=ref.TRAIN)
        hist = _hist_variable("conv/aquant")
        global_names = [v.op.name for v in tf.compat.v1.global_variables()]
        trainable = tf.compat.v1.trainable_variables()
        assert "conv/aquant/pos_hist" in global_names and not trainable
        assert y.op.name == "conv/aquant"
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for b, p in zip(batches, want_pos):
                _assert_same(sess.run(y, {ph: b}), ref.quantize(b, p, ref.ACTIVATION, 8))
            counts = sess.run(hist)
            tf.compat.v1.train.Saver().save(sess, ckpt)
    expect = np.zeros(ops.NUM_POS, np.int64)
    for p in want_pos:
        expect[p - ops.MIN_POS] += 1
    np.testing.assert_array_equal(counts, expect)
    assert len(set(want_pos)) > 1
    kept = ref.kept_position(want_pos)
    assert ops.kept_position_np(counts) == kept

    # A fresh EVAL graph restores the histogram and quantizes with the kept position.
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, (4, 8))
        y = ops.quantize(ph, "conv/aquant", mode=ref.ACTIVATION, phase=ref.EVAL)
        pos = graph.get_tensor_by_name("conv/aquant/pos:0")
        hist = _hist_variable("conv/aquant")
        with tf.compat.v1.Session(graph=graph) as sess:
            tf.compat.v1.train.Saver().restore(sess, ckpt)
            np.testing.assert_array_equal(sess.run(hist), expect)
            assert sess.run(pos) == kept
            for b in batches[:3]:
                _assert_same(sess.run(y, {ph: b}), ref.quantize(b, kept, ref.ACTIVATION, 8))
            # EVAL does not count
            np.testing.assert_array_equal(sess.run(hist), expect)


@pytest.mark.parametrize("counts,kept", [
    ({3: 2, 5: 2}, 3), ({-4: 1, 0: 1, 7: 1}, -4), ({2: 1, 6: 3, -1: 3}, -1), ({127: 5, 4: 1}, 127),
    ({-127: 1}, -127),
])
def test_quantize_eval_kept_position_ties_to_smaller(counts, kept):
    hist = np.zeros(ops.NUM_POS, np.int32)
    for p, c in counts.items():
        hist[p - ops.MIN_POS] = c
    assert ref.kept_position([p for p, c in counts.items() for _ in range(c)]) == kept
    assert ops.kept_position_np(hist) == kept
    x = _random_tensor(np.random.default_rng(11), (20,), 3.0)
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape)
        y = ops.quantize(ph, "w/wquant", mode=ref.WEIGHT, phase=ref.EVAL)
        var = _hist_variable("w/wquant")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(var.assign(hist))
            _assert_same(sess.run(y, {ph: x}), ref.quantize(x, kept, ref.WEIGHT, 8))


def test_quantize_eval_with_empty_histogram_searches_per_batch():
    rng = np.random.default_rng(12)
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, (4, 8))
        y = ops.quantize(ph, "n/aquant", mode=ref.ACTIVATION, phase=ref.EVAL)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for b in _batches(rng, 3):
                want, _ = ref.fix_neuron(b, ref.ACTIVATION, ref.CALIB, 8, 1)
                _assert_same(sess.run(y, {ph: b}), want)


# --------------------------------------------------------------------------------------------
# A saved graph runs in a fresh process once decent_q is imported.
# --------------------------------------------------------------------------------------------

_LOAD_AND_RUN = """
import sys
import numpy as np
import tensorflow as tf
if sys.argv[1] == "import":
    import decent_q
gd = tf.compat.v1.GraphDef()
with open(sys.argv[2], "rb") as f:
    gd.ParseFromString(f.read())
with tf.Graph().as_default() as g:
    tf.compat.v1.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        y = sess.run("out:0", {"x:0": np.load(sys.argv[3])})
np.save(sys.argv[4], y)
"""


def test_saved_graph_runs_in_fresh_process(tmp_path):
    rng = np.random.default_rng(13)
    x = _random_tensor(rng, (2, 4, 4, 3), 2.0)
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape, name="x")
        ops.fix_neuron(ph, mode=ref.ACTIVATION, phase=ref.EVAL, bit_width=6, quantize_pos=3,
                       name="out")
        pb = tmp_path / "graph.pb"
        pb.write_bytes(graph.as_graph_def().SerializeToString())
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")

    def run(flag):
        return subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, flag, str(pb),
                               str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                              capture_output=True, text=True, env=env, cwd=str(tmp_path),
                              timeout=300, check=False)

    proc = run("import")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same(np.load(tmp_path / "y.npy"), ref.quantize(x, 3, ref.ACTIVATION, 6))
    proc = run("no-import")
    assert proc.returncode != 0
    assert "Op type not registered 'FixNeuron'" in proc.stderr
