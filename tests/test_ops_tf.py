"""ops_tf (FixNeuron from standard TensorFlow ops) against the C++ kernel, bit for bit.

Every comparison is on bit patterns (``view(int32)``), so signs of zeros and denormals count;
NaN must be NaN in both. The kernel is itself checked against the NumPy model of
docs/fixneuron.md in test_ops.py. Also here: the straight-through gradient, XLA
(``jit_compile``), the histogram of ``ops.quantize(impl="tf_ops")``, the choice of
implementation, and PTQ / QAT end to end with the TF-op path forced.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import ops, ops_tf, ptq
from decent_q.graph import quantized, utils
from tests import numpy_reference as ref
from tests.test_ops import _random_tensor

MODES = (ref.WEIGHT, ref.ACTIVATION, ref.DW_WEIGHT)
ALL_PHASES = (ref.CALIB, ref.EVAL, ref.TRAIN)
BIT_WIDTHS = tuple(range(2, 17))


def assert_bits_equal(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype == np.float32 and actual.shape == expected.shape, what
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN in different places"
    a, e = actual[~nan_a].view(np.int32), expected[~nan_e].view(np.int32)
    if not np.array_equal(a, e):
        i = np.flatnonzero(a != e)[0]
        raise AssertionError(f"{what}: {np.count_nonzero(a != e)} of {a.size} differ; first: "
                             f"tf_ops {actual[~nan_a][i]!r} vs kernel {expected[~nan_e][i]!r}")


# Every (mode, phase, bit width, method, arch) the pair fixture builds: all bit widths and
# methods for EVAL and TRAIN, CALIB (the same search as TRAIN) on a subset, DPUCADF8H on
# activations.
COMBOS = ([c + ("DEFAULT",) for c in itertools.product(
    MODES, (ref.EVAL, ref.TRAIN), BIT_WIDTHS, (0, 1, 2))]
          + [c + ("DEFAULT",) for c in itertools.product(MODES, (ref.CALIB,), (2, 8, 16),
                                                          (0, 1, 2))]
          + [(ref.ACTIVATION, ph, b, 1, "DPUCADF8H") for ph, b in itertools.product(
              (ref.EVAL, ref.TRAIN), (2, 4, 8))])


@pytest.fixture(scope="module")
def pairs():
    """run(x, pos) -> [((y_k, p_k), (y_t, p_t)) for COMBOS]: the kernel's and the TF-op
    FixNeuronDynamic on the flattened x, built once (one graph, one session)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None])
        pos = tf.compat.v1.placeholder(tf.int32, [])
        fetches = []
        for mode, phase, bits, method, arch in COMBOS:
            kw = dict(mode=mode, phase=phase, bit_width=bits, method=method, arch_type=arch)
            fetches.append((ops.fix_neuron_dynamic(x, pos, impl="kernel", **kw),
                            ops.fix_neuron_dynamic(x, pos, impl="tf_ops", **kw)))
    sess = tf.compat.v1.Session(graph=graph)

    def run(value, position=0):
        return sess.run(fetches, {x: np.asarray(value, np.float32).reshape(-1),
                                  pos: position})
    yield run
    sess.close()


def _check_pairs(combos, got, what=""):
    for combo, ((yk, pk), (yt, pt)) in zip(combos, got):
        assert int(pt) == int(pk), f"{what} {combo}: position tf_ops {pt} vs kernel {pk}"
        assert_bits_equal(yt, yk, f"{what} {combo}")


# --------------------------------------------------------------------------------------------
# FixNeuronDynamic: every mode, method, bit width and phase.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", (1.0, 3e-4, 7e3))
def test_dynamic_matches_kernel_all_bits_methods_phases(pairs, scale):
    rng = np.random.default_rng([20, int(np.log10(scale)) + 10])
    x = _random_tensor(rng, (2, 6, 5, 3), scale)
    _check_pairs(COMBOS, pairs(x, 4))


def test_dynamic_matches_kernel_on_large_tensor(pairs):
    """Several kernel blocks (16384 elements) with a partial last one."""
    x = _random_tensor(np.random.default_rng(24), (3, 131, 127), 0.37)
    _check_pairs(COMBOS, pairs(x, -2))


def test_eval_positions_match_kernel(pairs):
    """EVAL over positions: negative, large, out of range, and 'unknown' (< -127)."""
    rng = np.random.default_rng(21)
    x = np.concatenate([_random_tensor(rng, (300,), 10.0 ** e) for e in (-30, -3, 0, 3, 30)])
    x = np.concatenate([x, [np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, -1e-45, 0.0, -0.0]])
    for pos in (-1000, -128, -127, -120, -5, 0, 100, 126, 127, 128, 500):
        _check_pairs(COMBOS, pairs(x, pos), f"pos={pos}")


def _edge_inputs():
    return {
        "ties": (np.arange(-40, 41) / 4.0).astype(np.float32),  # exact .5 ties at p = 0, 1
        "ties_small": (np.arange(-40, 41) / 4.0 * 2.0 ** -20).astype(np.float32),
        "saturation": np.array([-1e6, -200.0, -128.6, -128.5, -127.5, 126.5, 127.49, 127.5,
                                300.0, 1e6], np.float32),
        "zeros": np.zeros((3, 4), np.float32),
        "neg_zeros": -np.zeros((5,), np.float32),
        "nan_inf": np.array([0.3, -1.7, 2.2, 0.01, np.nan, np.inf, -np.inf, -0.0], np.float32),
        "only_nonfinite": np.array([np.nan, np.inf, -np.inf], np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "large": np.array([3.0e38, -1.0e38, 5.0e20, 1.0, -3.4e38], np.float32),
        "tiny": np.array([3e-38, -1e-39, 1e-44, 1e-45, -1e-45, 0.0], np.float32),
        "denormal_only": np.array([1e-45, -3e-45, 7e-42], np.float32),
        "small_negatives": np.array([-0.3, -0.49999997, -0.5, -0.51, 0.49999997, 0.5],
                                    np.float32),
    }


@pytest.mark.parametrize("name", sorted(_edge_inputs()))
def test_edge_cases_match_kernel(pairs, name):
    """Ties at .5, saturation, zeros (and -0), NaN / Inf, empty tensors, large values
    (negative positions), tiny and denormal values (positions up to 127)."""
    for pos in (0, 3, -127, 127, -128):
        _check_pairs(COMBOS, pairs(_edge_inputs()[name], pos), f"{name} pos={pos}")


def test_min_diffs_ties_match_kernel(pairs):
    """Inputs whose exact min-diffs costs tie between candidates (the smaller p wins)."""
    rng = np.random.default_rng(5)
    found = 0
    while found < 30:
        bits = int(rng.integers(2, 5))
        x = (rng.integers(-8, 9, size=int(rng.integers(1, 4))) / 4.0).astype(np.float32)
        p0 = ref.non_overflow_pos(x, bits)
        if p0 == 127:
            continue
        costs = [ref.cost(x, p, int(rng.integers(0, 3)), bits, 1) for p in range(p0, p0 + 5)]
        if costs.count(min(costs)) > 1:
            found += 1
            _check_pairs(COMBOS, pairs(x), str(x))
    # a large tensor of such values, where the sums are long but still exact
    _check_pairs(COMBOS, pairs((rng.integers(-8, 9, size=40000) / 4.0).astype(np.float32)))


# --------------------------------------------------------------------------------------------
# The stateless FixNeuron, validation, the gradient.
# --------------------------------------------------------------------------------------------

def test_stateless_fix_neuron_matches_kernel():
    rng = np.random.default_rng(22)
    x = np.concatenate([_random_tensor(rng, (200,), 2.5), _edge_inputs()["tiny"],
                        _edge_inputs()["nan_inf"]])
    cases = (list(itertools.product(MODES, (ref.EVAL,), (2, 8, 16), (1,),
                                    (-300, -127, -3, 0, 5, 127, 300)))
             + list(itertools.product(MODES, (ref.CALIB, ref.TRAIN), (4,), (0, 1, 2), (5,))))
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape)
        fetches = []
        for mode, phase, bits, method, pos in cases:
            kw = dict(mode=mode, phase=phase, bit_width=bits, method=method, quantize_pos=pos)
            fetches.append((ops.fix_neuron(ph, impl="kernel", **kw),
                            ops.fix_neuron(ph, impl="tf_ops", **kw)))
        with tf.compat.v1.Session(graph=graph) as sess:
            got = sess.run(fetches, {ph: x})
    for case, (yk, yt) in zip(cases, got):
        assert_bits_equal(yt, yk, str(case))


@pytest.mark.parametrize("attrs", [
    dict(bit_width=1), dict(bit_width=17), dict(method=3), dict(mode=3), dict(phase=3),
    dict(arch_type="DPUCZDX8G_BOGUS"),
])
def test_invalid_attrs_raise(attrs):
    kwargs = dict(mode=ref.ACTIVATION, phase=ref.EVAL)
    kwargs.update(attrs)
    with tf.Graph().as_default():
        x = tf.zeros([2])
        with pytest.raises(ValueError, match=next(iter(attrs))):
            ops.fix_neuron(x, impl="tf_ops", **kwargs)
        with pytest.raises(ValueError, match=next(iter(attrs))):
            ops.fix_neuron_dynamic(x, tf.constant(0), impl="tf_ops", **kwargs)
    with pytest.raises(ValueError, match="impl"):
        ops.resolve_impl("gpu")


@pytest.mark.parametrize("phase", ALL_PHASES)
def test_gradient_is_straight_through(phase):
    rng = np.random.default_rng(8)
    x = _random_tensor(rng, (3, 50), 4.0)
    x[0, :3] = [1e6, -1e6, 0.0]  # saturated values pass the gradient too (no clipping)
    w = rng.standard_normal(x.shape).astype(np.float32)
    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape)
        y1 = ops.fix_neuron(ph, mode=ref.ACTIVATION, phase=phase, bit_width=4, impl="tf_ops")
        y2, _ = ops.fix_neuron_dynamic(ph, tf.constant(1), mode=ref.WEIGHT, phase=phase,
                                       impl="tf_ops")
        y3 = ops.quantize(ph, "q/aquant", mode=ref.ACTIVATION, phase=phase, impl="tf_ops")
        grads = [tf.gradients(tf.reduce_sum(tf.constant(w) * y), ph)[0] for y in (y1, y2, y3)]
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for g in sess.run(grads, {ph: x}):
                np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------------------------
# XLA.
# --------------------------------------------------------------------------------------------

def test_runs_under_xla_jit_compile():
    """tf.function(jit_compile=True): the TF-op path compiles (the kernel does not) and gives
    the kernel's numbers; so does the jit_scope form (jit=True, the default with a GPU
    visible), which TensorFlow runs as an XLA cluster; the gradient is straight-through."""
    rng = np.random.default_rng(23)
    x = np.concatenate([_random_tensor(rng, (3000,), 1.7), _edge_inputs()["tiny"],
                        _edge_inputs()["nan_inf"], _edge_inputs()["saturation"]])
    cases = [(m, ref.TRAIN, 8, meth) for m, meth in itertools.product(MODES, (0, 1, 2))]
    cases += [(ref.ACTIVATION, ref.EVAL, 8, 1), (ref.WEIGHT, ref.CALIB, 2, 1),
              (ref.DW_WEIGHT, ref.TRAIN, 16, 2)]

    def compiled(impl, mode, phase, bits, method):
        @tf.function(jit_compile=True)
        def fn(t, pos):
            return ops.fix_neuron_dynamic(t, pos, mode=mode, phase=phase, bit_width=bits,
                                          method=method, impl=impl)
        return fn

    with tf.Graph().as_default() as graph:
        ph = tf.compat.v1.placeholder(tf.float32, x.shape)
        fetches = []
        for case in cases:
            pos = tf.constant(4, tf.int32)
            fetches.append((ops.fix_neuron_dynamic(ph, pos, mode=case[0], phase=case[1],
                                                   bit_width=case[2], method=case[3]),
                            compiled("tf_ops", *case)(ph, pos)))
        scoped = [ops.fix_neuron_dynamic(ph, tf.constant(4, tf.int32), mode=case[0],
                                         phase=case[1], bit_width=case[2], method=case[3],
                                         impl="tf_ops", jit=True) for case in cases]
        y, _ = compiled("tf_ops", ref.ACTIVATION, ref.TRAIN, 8, 1)(ph, tf.constant(0))
        grad = tf.gradients(tf.reduce_sum(3.0 * y), ph)[0]
        grad_scoped = tf.gradients(tf.reduce_sum(3.0 * scoped[0][0]), ph)[0]
        broken = compiled("kernel", ref.ACTIVATION, ref.TRAIN, 8, 1)(ph, tf.constant(0))
        with tf.compat.v1.Session(graph=graph) as sess:
            got = sess.run(fetches, {ph: x})
            meta = tf.compat.v1.RunMetadata()
            got_scoped = sess.run(scoped, {ph: x}, run_metadata=meta, options=tf.compat.v1.RunOptions(
                trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
            ran = {n.node_name for d in meta.step_stats.dev_stats for n in d.node_stats}
            assert any("xla_run" in n for n in ran), "jit=True: no XLA cluster ran"
            for g in sess.run([grad, grad_scoped], {ph: x}):
                np.testing.assert_array_equal(g, np.full(x.shape, 3.0))
            with pytest.raises(tf.errors.InvalidArgumentError, match="FixNeuronDynamic"):
                sess.run(broken, {ph: x})  # proves that the wrapper really compiles
    for case, ((yk, pk), (yt, pt)), (ys, ps) in zip(cases, got, got_scoped):
        assert int(pt) == int(pk) == int(ps), case
        assert_bits_equal(yt, yk, str(case))
        assert_bits_equal(ys, yk, str(case) + " jit_scope")


# --------------------------------------------------------------------------------------------
# ops.quantize with the TF-op path; choosing the implementation.
# --------------------------------------------------------------------------------------------

def test_quantize_histogram_and_eval_match_kernel(tmp_path):
    rng = np.random.default_rng(9)
    batches = [_random_tensor(rng, (4, 8), float(s))
               for s in rng.choice([0.5, 1.0, 4.0, 9.0], 12)]
    results = {}
    for impl in ("kernel", "tf_ops"):
        with tf.Graph().as_default() as graph:
            ph = tf.compat.v1.placeholder(tf.float32, (4, 8))
            y = ops.quantize(ph, "conv/aquant", mode=ref.ACTIVATION, phase=ref.TRAIN, impl=impl)
            (hist,) = ops.histogram_variables(graph).values()
            assert hist.op.name == "conv/aquant/pos_hist"
            fix = graph.get_operation_by_name("conv/aquant/fix")
            assert fix.type == ("FixNeuronDynamic" if impl == "kernel" else "IdentityN")
            with tf.compat.v1.Session(graph=graph) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                outs = [sess.run(y, {ph: b}) for b in batches]
                counts = sess.run(hist)
                tf.compat.v1.train.Saver().save(sess, str(tmp_path / impl / "model.ckpt"))
        with tf.Graph().as_default() as graph:
            ph = tf.compat.v1.placeholder(tf.float32, (4, 8))
            y = ops.quantize(ph, "conv/aquant", mode=ref.ACTIVATION, phase=ref.EVAL, impl=impl)
            with tf.compat.v1.Session(graph=graph) as sess:
                tf.compat.v1.train.Saver().restore(sess, str(tmp_path / impl / "model.ckpt"))
                evals = [sess.run(y, {ph: b}) for b in batches[:3]]
        results[impl] = (outs, counts, evals)
    (k_outs, k_counts, k_evals), (t_outs, t_counts, t_evals) = results["kernel"], results["tf_ops"]
    np.testing.assert_array_equal(t_counts, k_counts)
    assert np.count_nonzero(k_counts) > 1
    for a, b in zip(t_outs + t_evals, k_outs + k_evals):
        assert_bits_equal(a, b)


def test_resolve_impl_follows_device_scopes():
    with tf.Graph().as_default():
        x = tf.zeros([2])
        with tf.device("/device:GPU:0"):
            assert ops.resolve_impl("auto") == "tf_ops"
            with tf.device("/device:CPU:0"):
                assert ops.resolve_impl("auto") == "kernel"
        with tf.device("/device:CPU:0"):
            assert ops.resolve_impl("auto") == "kernel"
        setter = tf.compat.v1.train.replica_device_setter(
            ps_tasks=1, worker_device="/job:worker/task:0/device:GPU:0")
        with tf.compat.v1.device(setter):
            assert ops.resolve_impl("auto") == "tf_ops"
        with tf.device("/job:worker/task:0"):  # no device type: as without a scope
            want = "tf_ops" if ops.gpu_visible() else "kernel"
            assert ops.resolve_impl("auto", x) == want
        assert ops.resolve_impl("auto") == want
        with tf.device("/device:GPU:0"):
            gpu_x = tf.identity(x)
        assert ops.resolve_impl("auto", gpu_x) == "tf_ops"
        for impl in ("kernel", "tf_ops"):
            with tf.device("/device:GPU:0"):
                assert ops.resolve_impl(impl) == impl


def test_quantize_on_gpu_scope_keeps_histogram_on_cpu():
    """Built under a GPU scope, a point computes with TF ops (there) and keeps its int32
    histogram and update on the CPU (graph only: this test needs no GPU)."""
    with tf.Graph().as_default() as graph:
        with tf.device("/device:GPU:0"):
            x = tf.compat.v1.placeholder(tf.float32, [4])
            ops.quantize(x, "n/aquant", mode=ref.ACTIVATION, phase=ref.TRAIN)
        assert graph.get_operation_by_name("n/aquant/fix").type == "IdentityN"
        for name in ("n/aquant/pos_hist", "n/aquant/count"):
            assert "CPU" in graph.get_operation_by_name(name).device, name
        assert "GPU" in graph.get_operation_by_name("n/aquant/fix").device
    with tf.Graph().as_default() as graph:
        with tf.compat.v1.device(tf.compat.v1.train.replica_device_setter(ps_tasks=1)):
            x = tf.compat.v1.placeholder(tf.float32, [4])
            ops.quantize(x, "n/aquant", mode=ref.ACTIVATION, phase=ref.TRAIN, impl="tf_ops")
        assert graph.get_operation_by_name("n/aquant/pos_hist").device.startswith("/job:ps")


# --------------------------------------------------------------------------------------------
# End to end: PTQ and QAT with the TF-op path forced give the kernel's positions and outputs.
# --------------------------------------------------------------------------------------------

def test_ptq_with_tf_ops_writes_the_same_models(tmp_path):
    paths = {}
    for impl in ("kernel", "tf_ops"):
        cfg = helpers.config(output_dir=str(tmp_path / impl), fix_neuron_impl=impl)
        paths[impl] = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg,
                                                progress=False)
    for key, path in paths["kernel"].items():
        with open(path, "rb") as a, open(paths["tf_ops"][key], "rb") as b:
            assert a.read() == b.read(), key
    fixes = quantized.fix_neurons(utils.load_graph_def(paths["tf_ops"]["quantize_eval_model"]))
    assert len(fixes) > 5


def test_qat_with_tf_ops_gives_the_kernels_positions_and_outputs(tmp_path):
    """Training (histograms), the evaluation graph and the deployed models, kernel vs TF ops."""
    import decent_q  # pylint: disable=import-outside-toplevel
    from tests import test_qat  # pylint: disable=import-outside-toplevel
    out = {}
    for impl in ("kernel", "tf_ops"):
        work = tmp_path / impl
        with tf.Graph().as_default() as graph:
            graph.seed = 7  # both runs start from the same weights
            _, loss = test_qat.model_fn(True)
            decent_q.CreateQuantizeTrainingGraph(config=test_qat.config(work,
                                                                        fix_neuron_impl=impl))
            step = tf.compat.v1.train.get_or_create_global_step()
            with tf.control_dependencies(tf.compat.v1.get_collection(
                    tf.compat.v1.GraphKeys.UPDATE_OPS)):
                train_op = tf.compat.v1.train.AdamOptimizer(1e-2).minimize(loss, step)
            with tf.compat.v1.Session(graph=graph, config=test_qat.no_remapping()) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(4):
                    sess.run(train_op, {"images:0": test_qat.X, "labels:0": test_qat.Y})
                tf.compat.v1.train.Saver().save(sess, str(work / "train" / "model.ckpt"), 4)
        ckpt = str(work / "train" / "model.ckpt-4")
        hists = {name: tf.train.load_variable(ckpt, name)
                 for name, _ in tf.train.list_variables(ckpt) if name.endswith("/pos_hist")}
        with tf.Graph().as_default() as graph:
            test_qat.model_fn(False)
            cfg = test_qat.config(work, fix_neuron_impl=impl)
            decent_q.CreateQuantizeEvaluationGraph(config=cfg)
            fix_types = {op.type for op in graph.get_operations()
                         if op.name.endswith("quant/fix")}
            with tf.compat.v1.Session(graph=graph, config=test_qat.no_remapping()) as sess:
                tf.compat.v1.train.Saver().restore(sess, ckpt)
                logits = sess.run("logits/BiasAdd/aquant:0", {"images:0": test_qat.X})
            paths = decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=cfg)
        model = utils.load_graph_def(paths["quantize_eval_model"])
        positions = {n: f.attr["quantize_pos"].i
                     for n, f in quantized.fix_neurons(model).items()}
        out[impl] = (hists, fix_types, logits, positions)
    (k_hists, k_types, k_logits, k_pos), (t_hists, t_types, t_logits, t_pos) = (
        out["kernel"], out["tf_ops"])
    assert k_types == {"FixNeuronDynamic"} and t_types == {"IdentityN"}
    assert sorted(k_hists) == sorted(t_hists) and len(k_hists) > 5
    for name in k_hists:
        np.testing.assert_array_equal(t_hists[name], k_hists[name], err_msg=name)
    assert t_pos == k_pos
    assert_bits_equal(t_logits, k_logits)
