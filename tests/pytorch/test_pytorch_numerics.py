"""decent_q's PyTorch FixNeuron against the NumPy reference of docs/fixneuron.md (the one the
TensorFlow kernel is tested against), bit for bit, and against the TensorFlow op itself; each
on both implementations (the C++ code shared with the op, and the torch operations)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests import numpy_reference as ref  # noqa: E402
from decent_q_torch import fix_neuron, native  # noqa: E402
from decent_q_torch.config import TensorConfig  # noqa: E402
from decent_q_torch.points import FixNeuron  # noqa: E402



@pytest.fixture(params=["native", "torch"])
def impl(request, monkeypatch):
    """The implementation under test: native.py's library (CPU float32, the DPU roundings) or
    fix_neuron.py's torch operations (everything else)."""
    if request.param == "torch":
        monkeypatch.setattr(native, "handles", lambda x, round_mode: False)
    else:
        assert native._load() is not None, "the FixNeuron CPU library did not build"
    return request.param


# The reference's modes: std_round is the op's WEIGHT rounding, half_up its ACTIVATION one.
MODES = {"std_round": ref.WEIGHT, "half_up": ref.ACTIVATION}


def _reference(x, pos, bit_width, round_mode, narrow_range=False):
    """The reference's quantize; half_even and half_down written here the same exact way."""
    if round_mode in MODES and not narrow_range:
        return ref.quantize(x, pos, MODES[round_mode], bit_width)
    lo, hi = ref.quant_range(bit_width, ref.WEIGHT)
    lo = -hi if narrow_range else lo
    v = np.asarray(x, np.float32).astype(np.float64) * 2.0 ** pos
    with np.errstate(invalid="ignore"):
        q = {"half_even": np.rint, "half_down": lambda t: np.ceil(t - 0.5),
             "std_round": lambda t: ref.round_exact(t, ref.WEIGHT),
             "half_up": lambda t: ref.round_exact(t, ref.ACTIVATION)}[round_mode](v)
    q = np.where(q < lo, lo, np.where(q > hi, hi, q))
    with np.errstate(over="ignore"):
        return (q * 2.0 ** -pos).astype(np.float32)


def _same(a, b):
    """Equal float32 values (NaN where NaN; -0.0 and 0.0 are the same code), as the
    TensorFlow kernel's tests compare."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def _torch(x, pos, bit_width, round_mode, narrow_range=False):
    return fix_neuron.quantize(torch.from_numpy(np.asarray(x, np.float32)), pos, bit_width,
                               round_mode, narrow_range).numpy()


TIES = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 0.50000006,
                 -0.50000006, 127.5, -128.5, 126.5, 1e-45, -1e-45, 0.0, -0.0], np.float32)


@pytest.mark.parametrize("round_mode", fix_neuron.ROUND_MODES)
@pytest.mark.parametrize("bit_width", [2, 4, 6, 8, 16])
@pytest.mark.usefixtures("impl")
def test_quantize_matches_reference(round_mode, bit_width):
    rng = np.random.default_rng(bit_width)
    x = np.concatenate([TIES, TIES * 2.0 ** -3, rng.normal(0, 3, 4000).astype(np.float32),
                        np.array([np.inf, -np.inf, np.nan, 3e38, -3e38], np.float32)])
    for pos in (-127, -20, -3, 0, 1, 3, 7, 20, 127):
        _same(_torch(x, pos, bit_width, round_mode), _reference(x, pos, bit_width, round_mode))
        _same(_torch(x, pos, bit_width, round_mode, True),
              _reference(x, pos, bit_width, round_mode, True))


@pytest.mark.usefixtures("impl")
def test_ties_round_as_documented():
    x = np.array([2.5, -2.5, 0.5, -0.5, 1.5, 0.49999997], np.float32)
    assert _torch(x, 0, 8, "std_round").tolist() == [3, -3, 1, -1, 2, 0]
    assert _torch(x, 0, 8, "half_up").tolist() == [3, -2, 1, 0, 2, 0]
    assert _torch(x, 0, 8, "half_even").tolist() == [2, -2, 0, 0, 2, 0]
    assert _torch(x, 0, 8, "half_down").tolist() == [2, -3, 0, -1, 1, 0]


@pytest.mark.usefixtures("impl")
def test_saturation_and_non_finite():
    y = _torch([1000.0, -1000.0, np.inf, -np.inf, np.nan], 4, 8, "half_up")
    assert y[:4].tolist() == [127 / 16, -8.0, 127 / 16, -8.0] and np.isnan(y[4])


@pytest.mark.parametrize("method", [0, 1])
@pytest.mark.parametrize("bit_width", [4, 8, 16])
@pytest.mark.usefixtures("impl")
def test_search_matches_reference(method, bit_width):
    rng = np.random.default_rng(method * 100 + bit_width)
    cases = [rng.normal(0, s, n).astype(np.float32) for s, n in ((1.0, 3000), (1e-3, 500),
                                                                    (50.0, 700), (1e-30, 100))]
    cases += [np.abs(rng.normal(0, 2, 2000)).astype(np.float32),  # ReLU-like
              -np.abs(rng.normal(0, 2, 2000)).astype(np.float32),
              rng.standard_t(2, 5000).astype(np.float32),  # heavy tails: saturation pays
              np.zeros(10, np.float32), np.array([np.nan, np.inf, 0.0], np.float32),
              np.array([0.75], np.float32), np.array([-128.0, 127.0], np.float32)]
    for x in cases:
        for round_mode, mode in MODES.items():
            expected = ref.search_pos(x, mode, bit_width, method)
            got = fix_neuron.search_pos(torch.from_numpy(x), bit_width, method, round_mode)
            assert got == expected, (x[:5], round_mode)


@pytest.mark.usefixtures("impl")
def test_search_depthwise_cost_matches_reference():
    rng = np.random.default_rng(7)
    for _ in range(5):
        x = (rng.normal(0, 0.3, 300) * rng.choice([1e-3, 1.0], 300)).astype(np.float32)
        assert fix_neuron.search_pos(torch.from_numpy(x), 8, 2, "std_round", depthwise=True) == \
            ref.search_pos(x, ref.DW_WEIGHT, 8, 2)


@pytest.mark.usefixtures("impl")
def test_positions_range_and_all_zero():
    assert fix_neuron.search_pos(torch.zeros(5), 8) == 127
    assert fix_neuron.search_pos(torch.tensor([]), 8) == 127
    assert fix_neuron.search_pos(torch.tensor([3e38]), 2, 0) == -127
    assert fix_neuron.search_pos(torch.tensor([1e-44]), 16, 0) == 127


def test_histogram_statistics():
    point = FixNeuron("p", "activation", TensorConfig(calib_statistic_method="modal"))
    for pos in (3, 5, 5, 4, 3, 9):
        point.hist[pos - fix_neuron.MIN_POS] += 1
    assert point.kept_position() == ref.kept_position([3, 5, 5, 4, 3, 9]) == 3
    for statistic, expected in (("max", 3), ("mean", 5), ("median", 4)):
        point.config = TensorConfig(calib_statistic_method=statistic)
        assert point.kept_position() == expected, statistic


@pytest.mark.usefixtures("impl")
def test_straight_through_gradient():
    x = torch.tensor([0.3, -1.7, 100.0], requires_grad=True)
    y = fix_neuron.fake_quantize(x, 2, 8, "half_up")
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]
    assert y.tolist() == [0.25, -1.75, 31.75]


@pytest.mark.usefixtures("impl")
def test_same_integers_and_position_as_the_tensorflow_op():
    """The same tensor through decent_q's TensorFlow kernel (CALIB phase, method 1) and the
    PyTorch flow: the same position and the same integers, for weights and activations."""
    tf = pytest.importorskip("tensorflow")
    import decent_q  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(0, 0.7, 20000), [0.5, -0.5, 2.5, -2.5]]).astype(np.float32)
    for tf_mode, round_mode in ((decent_q.Mode.WEIGHT, "std_round"),
                                (decent_q.Mode.ACTIVATION, "half_up")):
        for bit_width in (4, 8):
            with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
                pos_tf = ref.search_pos(x, int(tf_mode), bit_width, 1)
                y_tf = sess.run(decent_q.fix_neuron(tf.constant(x), tf_mode, decent_q.Phase.EVAL,
                                                    bit_width=bit_width, quantize_pos=pos_tf))
                y_calib = sess.run(decent_q.fix_neuron(tf.constant(x), tf_mode,
                                                       decent_q.Phase.CALIB,
                                                       bit_width=bit_width))
            pos = fix_neuron.search_pos(torch.from_numpy(x), bit_width, 1, round_mode)
            assert pos == pos_tf
            codes = fix_neuron.to_codes(torch.from_numpy(x), pos, bit_width, round_mode).numpy()
            np.testing.assert_array_equal(codes, y_tf * 2.0 ** pos)
            _same(y_calib, _torch(x, pos, bit_width, round_mode))


def test_native_equals_torch_operations_on_large_tensors(monkeypatch):
    """Tensors of many blocks, on several threads: the library and the torch operations give
    the same positions and values, and the library's position does not depend on the number
    of threads."""
    assert native._load() is not None, "the FixNeuron CPU library did not build"
    rng = np.random.default_rng(5)
    cases = [torch.from_numpy(rng.standard_t(3, 1_000_003).astype(np.float32)),
             torch.from_numpy(rng.normal(0, 0.02, (64, 3, 7, 7, 33)).astype(np.float32)),
             torch.randn(300, 700).t()]  # not contiguous
    threads = torch.get_num_threads()
    results = {}
    try:
        for label, count in (("one thread", 1), ("two threads", 2)):
            torch.set_num_threads(count)
            results[label] = [(fix_neuron.search_pos(x, bw, 1, rm),
                               fix_neuron.quantize(x, 3, bw, rm))
                              for x in cases for bw in (4, 8) for rm in MODES]
    finally:
        torch.set_num_threads(threads)
    with monkeypatch.context() as patch:
        patch.setattr(native, "handles", lambda x, round_mode: False)
        results["torch"] = [(fix_neuron.search_pos(x, bw, 1, rm),
                             fix_neuron.quantize(x, 3, bw, rm))
                            for x in cases for bw in (4, 8) for rm in MODES]
    for label in ("two threads", "torch"):
        for (pos, y), (pos_other, y_other) in zip(results["one thread"], results[label]):
            assert pos == pos_other, label
            _same(y.numpy(), y_other.numpy())


def test_without_a_compiler_the_torch_operations_take_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DECENT_Q_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_unavailable", False)
    x = torch.tensor([0.3, -1.7, 2.5, 100.0])
    assert not native.handles(x, "half_up")
    assert "[VAIQ_WARN]" in capsys.readouterr().out
    expected = ref.search_pos(x.numpy(), ref.ACTIVATION, 8, 1)
    assert fix_neuron.search_pos(x, 8, 1, "half_up") == expected
    assert fix_neuron.quantize(x, 2, 8, "half_up").tolist() == [0.25, -1.75, 2.5, 31.75]
