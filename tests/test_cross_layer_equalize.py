"""transforms/cross_layer_equalize.py: same float function, closer per-channel ranges."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q.config import QuantizeConfig
from decent_q.graph import utils
from decent_q.transforms import cross_layer_equalize as cle

RNG = np.random.default_rng(0)
# Per-channel imbalance put into c1 (and undone in c2's input channels).
IMBALANCE = np.array([8.0, 0.125, 1.0, 4.0, 0.25, 2.0, 0.5, 1.0], np.float32)


def weights(shape, name, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def const(value, name):
    return tf.constant(value, name=name)


def net(x, act2, multiplier=1, consumer2=False):
    """c1 conv+bias+relu -> c2 conv+bias+act2 -> dw depthwise+bias+relu -> maxpool -> pad
    -> mul -> c3 conv+bias."""
    w1 = weights([3, 3, 3, 8], "c1") * IMBALANCE
    b1 = weights([8], "c1b") * IMBALANCE
    y = tf.nn.bias_add(tf.nn.conv2d(x, const(w1, "c1/w"), 1, "SAME", name="c1/conv"),
                       const(b1, "c1/b"), name="c1/bias")
    y = tf.nn.relu(y, name="c1/relu")
    w2 = weights([3, 3, 8, 8], "c2", 0.1) / IMBALANCE.reshape(1, 1, 8, 1)
    y = tf.nn.bias_add(tf.nn.conv2d(y, const(w2, "c2/w"), 1, "SAME", name="c2/conv"),
                       const(weights([8], "c2b", 0.1), "c2/b"), name="c2/bias")
    y = act2(y, name="c2/act")
    if consumer2:
        tf.identity(y, name="side")
    wd = weights([3, 3, 8, multiplier], "dw")
    y = tf.nn.depthwise_conv2d(y, const(wd, "dw/w"), [1, 1, 1, 1], "SAME", name="dw/conv")
    y = tf.nn.bias_add(y, const(weights([8 * multiplier], "dwb"), "dw/b"), name="dw/bias")
    y = tf.nn.relu(y, name="dw/relu")
    y = tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool")
    y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad")
    y = tf.multiply(y, const(np.float32(0.5), "half"), name="mul")
    w3 = weights([1, 1, 8 * multiplier, 6], "c3")
    return tf.nn.bias_add(tf.nn.conv2d(y, const(w3, "c3/w"), 1, "SAME", name="c3/conv"),
                          const(weights([6], "c3b"), "c3/b"), name="out")


def build(**kw):
    graph = tf.Graph()
    with graph.as_default():
        net(tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input"), **kw)
    return graph.as_graph_def()


def run(graph_def, x, names=("out",)):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run([f"{n}:0" for n in names], {"input:0": x})


def cfg(replace_relu6=1):
    return QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                          input_shapes=[[-1, 8, 8, 3]], do_cle=1, replace_relu6=replace_relu6)


def const_of(graph_def, name):
    return utils.const_value(utils.NodeMap(graph_def)[name]).astype(np.float64)


def range_spread(graph_def):
    """max / min over c1's output channels of max(|W1[..., c]|, |b1_c|)."""
    r = np.maximum(np.abs(const_of(graph_def, "c1/w")).max(axis=(0, 1, 2)),
                   np.abs(const_of(graph_def, "c1/b")))
    return r.max() / r.min()


def pair_mismatch(graph_def):
    """max over channels of |log(r1 / r2)| for the c1 -> c2 pair."""
    r1 = np.maximum(np.abs(const_of(graph_def, "c1/w")).max(axis=(0, 1, 2)),
                    np.abs(const_of(graph_def, "c1/b")))
    r2 = np.abs(const_of(graph_def, "c2/w")).max(axis=(0, 1, 3))
    return np.abs(np.log(r1 / r2)).max()


@pytest.mark.parametrize("act2", [tf.nn.relu, tf.nn.relu6])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_outputs_kept_and_ranges_equalized(act2, multiplier):
    gd = build(act2=act2, multiplier=multiplier)
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    before, c2 = run(gd, x, ("out", "c2/act"))
    assert c2.max() < 6  # Relu6 -> Relu changes nothing below 6
    new = cle.cross_layer_equalize(gd, cfg())
    after, = run(new, x)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    assert range_spread(new) < range_spread(gd) / 4
    assert pair_mismatch(new) < 0.05 < pair_mismatch(gd)
    ops = {n.name: n.op for n in new.node}
    assert ops["c2/act"] == "Relu"  # Relu6 replaced inside the chain
    names = [(p.head.name, p.tail.name) for p in cle.find_pairs(gd)]
    assert names == [("c1/conv", "c2/conv"), ("c2/conv", "dw/conv"), ("dw/conv", "c3/conv")]


def test_relu6_kept_breaks_the_chain():
    gd = build(act2=tf.nn.relu6)
    names = [(p.head.name, p.tail.name) for p in cle.find_pairs(gd, replace_relu6=False)]
    assert names == [("c1/conv", "c2/conv"), ("dw/conv", "c3/conv")]
    new = cle.cross_layer_equalize(gd, cfg(replace_relu6=0))
    assert {n.name: n.op for n in new.node}["c2/act"] == "Relu6"
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    before, after = run(gd, x)[0], run(new, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    # c2 is a tail (of c1) but no longer a head: its output channels (bias) are unscaled.
    np.testing.assert_array_equal(const_of(new, "c2/b"), const_of(gd, "c2/b"))


def test_head_with_two_consumers_is_not_equalized():
    gd = build(act2=tf.nn.relu, consumer2=True)
    names = [(p.head.name, p.tail.name) for p in cle.find_pairs(gd)]
    assert ("c2/conv", "dw/conv") not in names
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    new = cle.cross_layer_equalize(gd, cfg())
    before, side = run(gd, x, ("out", "side"))
    after, side2 = run(new, x, ("out", "side"))
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    np.testing.assert_allclose(side2, side, rtol=1e-4, atol=1e-5)


def test_scales_follow_spec():
    r1 = np.array([4.0, 1.0, 0.1, 1e-6, 0.0])
    r2 = np.array([1.0, 4.0, 0.1, 1.0, 1.0])
    s = cle.equalize_scales(r1, r2)
    np.testing.assert_allclose(s[:2], [0.5, 2.0])
    assert s[2] == 1.0          # r1 + r2 < 0.5: left alone
    assert s[3] == 100.0        # clipped
    assert s[4] == 1.0          # r1 = 0: a dead channel is left alone


def test_no_chain_returns_graph_unchanged():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="input")
        tf.matmul(x, tf.constant(np.ones([4, 2], np.float32)), name="out")
    gd = graph.as_graph_def()
    assert cle.cross_layer_equalize(gd, cfg()) is gd
