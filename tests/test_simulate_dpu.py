"""transforms/simulate_dpu.py: DPU arithmetic for AvgPool / Mean, LeakyRelu and hard-sigmoid."""

import math

import numpy as np
import pytest
import tensorflow as tf

from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.graph import utils
from decent_q.transforms import simulate_dpu as sim

RNG = np.random.default_rng(0)


def build(fn, shape=(None, 8, 8, 4)):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, list(shape), name="input")
        fn(x)
    return graph.as_graph_def()


def config(outputs, shape=(-1, 8, 8, 4), **kw):
    return QuantizeConfig(input_nodes=["input"], output_nodes=outputs,
                          input_shapes=[list(shape)], **kw)


def run(graph_def, output, x):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(f"{output}:0", {"input:0": x})


def ops_of(graph_def):
    return {n.name: n.op for n in graph_def.node}


def data(shape=(2, 8, 8, 4), low=-4.0, high=4.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


@pytest.mark.parametrize("kernel,factor", [((3, 3), 9 * 7 / 64), ((5, 5), 25 * 10 / 256),
                                           ((6, 6), 36 * 7 / 256), ((7, 7), 49 * 21 / 1024),
                                           ((14, 14), 196 * 21 / 4096)])
def test_special_factors(kernel, factor):
    assert sim.avgpool_factor(*kernel) == factor
    assert sim.avgpool_factor(*kernel, scale_all=False) == factor


@pytest.mark.parametrize("kh,kw", [(2, 2), (4, 4), (3, 5), (8, 8), (10, 10), (16, 16), (1, 7)])
def test_generic_factor_is_best_shift(kh, kw):
    k = kh * kw
    factor = sim.avgpool_factor(kh, kw)
    # factor = k * m / 2^n with m = round(2^n / k), the best such n below ceil(log2(128 k))
    candidates = [(abs(round(2 ** n / k) / 2 ** n - 1 / k), n)
                  for n in range(math.ceil(math.log2(128 * k)))]
    _, n = min(candidates)
    m = round(2 ** n / k)
    assert factor == k * m / 2 ** n and m <= 128
    assert abs(factor - 1) < 0.02
    if k in (4, 16, 64, 256):
        assert factor == 1.0  # powers of two divide exactly
    assert sim.avgpool_factor(kh, kw, scale_all=False) == 1.0


def test_large_or_unit_kernels_are_not_scaled():
    assert sim.avgpool_factor(17, 17) == 1.0  # area 289 > 256
    assert sim.avgpool_factor(1, 1) == 1.0


@pytest.mark.parametrize("ksize", [3, 5, 2, 7])
def test_avgpool_scaled_and_named(ksize):
    gd = build(lambda x: tf.identity(tf.nn.avg_pool2d(x, ksize, 1, "VALID", name="pool"),
                                     name="out"))
    new = sim.simulate_dpu(gd, config(["out"]))
    x = data()
    factor = sim.avgpool_factor(ksize, ksize)
    np.testing.assert_allclose(run(new, "out", x), run(gd, "out", x) * factor, rtol=1e-6)
    names = ops_of(new)
    if factor == 1.0:
        assert names["pool"] == "AvgPool" and "pool/dpu_scale" not in names
    else:
        assert names["pool"] == "Mul" and names["pool/pool"] == "AvgPool"
        assert names["pool/dpu_scale"] == "Const"
        assert utils.const_value(utils.NodeMap(new)["pool/dpu_scale"]) == np.float32(factor)
    again = sim.simulate_dpu(new, config(["out"]))
    assert again.SerializeToString(deterministic=True) == \
        new.SerializeToString(deterministic=True)


@pytest.mark.parametrize("keep_dims", [True, False])
@pytest.mark.parametrize("size", [7, 4])
def test_global_mean_becomes_avgpool(keep_dims, size):
    shape = (None, size, size, 4)
    gd = build(lambda x: tf.reduce_mean(x, [1, 2], keepdims=keep_dims, name="gap"), shape)
    cfg = config(["gap"], shape=(-1, size, size, 4))
    new = sim.simulate_dpu(gd, cfg)
    names = ops_of(new)
    assert "Mean" not in names.values()
    assert names["gap"] == ("Mul" if keep_dims and size == 7 else
                            "AvgPool" if keep_dims else "Squeeze")
    x = data((2, size, size, 4))
    want = run(gd, "gap", x) * sim.avgpool_factor(size, size)
    got = run(new, "gap", x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # plan.py quantizes the scaled value once: the Mul, not the AvgPool under it.
    points = [p.name for p in plan_lib.plan_quantization(new, cfg).points]
    pool = next(n.name for n in new.node if n.op == "AvgPool")
    mul = [n.name for n in new.node if n.op == "Mul"]
    assert (f"{pool}/aquant" in points) == (not mul)
    assert all(f"{m}/aquant" in points for m in mul)


def test_mean_shape_from_config_input_shapes():
    gd = build(lambda x: tf.reduce_mean(x, [1, 2], name="gap"), (None, None, None, 4))
    new = sim.simulate_dpu(gd, config(["gap"], shape=(-1, 7, 7, 4)))
    pool = next(n for n in new.node if n.op == "AvgPool")
    assert list(pool.attr["ksize"].list.i) == [1, 7, 7, 1]
    # Unknown H, W and no shapes: left as Mean.
    cfg = QuantizeConfig(input_nodes=["input"], output_nodes=["gap"])
    assert "Mean" in ops_of(sim.simulate_dpu(gd, cfg)).values()


def test_mean_over_other_axes_is_left_alone():
    gd = build(lambda x: tf.reduce_mean(x, [3], name="m"))
    assert ops_of(sim.simulate_dpu(gd, config(["m"])))["m"] == "Mean"


def leaky_forms(x, alpha, form):
    if form == "fused":
        return tf.nn.leaky_relu(x, alpha, name="act")
    if form == "maximum":
        return tf.maximum(tf.multiply(alpha, x, name="act/mul"), x, name="act")
    neg = tf.nn.relu(tf.negative(x, name="act/neg"), name="act/relu_neg")
    return tf.subtract(tf.nn.relu(x, name="act/relu"),
                       tf.multiply(alpha, neg, name="act/mul"), name="act")


@pytest.mark.parametrize("form", ["fused", "maximum", "keras"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_leaky_relu_alpha(form, alpha):
    gd = build(lambda x: leaky_forms(x, alpha, form))
    new = sim.simulate_dpu(gd, config(["act"]))
    x = data()
    dpu_alpha = 26 / 256 if alpha == 0.1 else alpha
    want = np.where(x > 0, x, dpu_alpha * x)
    np.testing.assert_allclose(run(new, "act", x), want, rtol=1e-6, atol=1e-7)
    again = sim.simulate_dpu(new, config(["act"]))
    assert again.SerializeToString(deterministic=True) == \
        new.SerializeToString(deterministic=True)


def test_shared_alpha_constant_is_not_changed_for_other_users():
    def net(x):
        alpha = tf.constant(0.1, name="alpha")
        y = tf.maximum(tf.multiply(alpha, x, name="act/mul"), x, name="act")
        return tf.add(y, alpha, name="out")
    gd = build(net)
    new = sim.simulate_dpu(gd, config(["out"]))
    x = data()
    want = np.where(x > 0, x, 26 / 256 * x) + np.float32(0.1)
    np.testing.assert_allclose(run(new, "out", x), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", ["mul", "div", "swish"])
def test_hard_sigmoid(form):
    def net(x):
        r = tf.nn.relu6(tf.add(x, 3.0, name="hs/add"), name="hs/relu6")
        if form == "mul":
            return tf.multiply(r, 1.0 / 6.0, name="act")
        if form == "div":
            return tf.divide(r, 6.0, name="act")
        return tf.multiply(tf.multiply(x, r, name="hs/x"), 1.0 / 6.0, name="act")
    gd = build(net)
    new = sim.simulate_dpu(gd, config(["act"]))
    x = data(low=-5, high=5)
    hard = np.clip(x + 3, 0, 6) * 2731 / 16384
    want = hard * x if form == "swish" else hard
    np.testing.assert_allclose(run(new, "act", x), want, rtol=2e-6, atol=1e-6)
    again = sim.simulate_dpu(new, config(["act"]))
    assert again.SerializeToString(deterministic=True) == \
        new.SerializeToString(deterministic=True)


def test_keras_hard_sigmoid_and_plain_mul_are_left_alone():
    def net(x):
        y = tf.clip_by_value(x * 0.2 + 0.5, 0.0, 1.0)
        return tf.multiply(y, 1.0 / 6.0, name="act")
    gd = build(net)
    new = sim.simulate_dpu(gd, config(["act"]))
    x = data()
    np.testing.assert_array_equal(run(new, "act", x), run(gd, "act", x))
