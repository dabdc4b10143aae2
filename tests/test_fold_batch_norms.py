"""transforms/fold_batch_norms.py: inference batch norms folded into the compute op."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import registry
from decent_q.transforms import cleanup
from decent_q.transforms.fold_batch_norms import fold_batch_norms, scale_weights

RNG = np.random.default_rng(0)


def c(shape, low=-1.0, high=1.0, name=None):
    return tf.constant(RNG.uniform(low, high, shape).astype(np.float32), name=name)


def bn(y, n, form):
    gamma, beta, mean = c([n]), c([n]), c([n], -0.5, 0.5)
    var = c([n], 0.5, 2.0)
    if form == "fused":
        return tf.compat.v1.nn.fused_batch_norm(y, gamma, beta, mean, var, epsilon=1e-3,
                                                is_training=False, name="bn")[0]
    return tf.identity(tf.nn.batch_normalization(y, mean, var, beta, gamma, 1e-3), name="bn")


def net(x, op, form, bias):
    if op == "conv":
        y, n = tf.nn.conv2d(x, c([3, 3, 3, 4], name="w"), 1, "SAME", name="conv"), 4
    elif op == "depthwise":
        y = tf.nn.depthwise_conv2d(x, c([3, 3, 3, 2], name="w"), [1, 1, 1, 1], "SAME",
                                   name="conv")
        n = 6
    elif op == "atrous":
        y, n = tf.nn.atrous_conv2d(x, c([3, 3, 3, 4], name="w"), 2, "SAME", name="conv"), 4
    elif op == "transposed":
        y = tf.nn.conv2d_transpose(x, c([3, 3, 5, 3], name="w"), [2, 16, 16, 5], 2, "SAME",
                                   name="conv")
        n = 5
    else:
        flat = tf.reshape(x, [-1, 192])
        y, n = tf.matmul(flat, c([192, 4], name="w"), name="conv"), 4
    if bias:
        y = tf.nn.bias_add(y, c([n], name="b"), name="bias")
    if op == "matmul" and form == "fused":
        form = "unfused"  # FusedBatchNorm wants 4-D
    return tf.nn.relu(bn(y, n, form), name="out")


def build(op, form, bias):
    graph = tf.Graph()
    with graph.as_default():
        net(tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="input"), op, form, bias)
    return graph.as_graph_def()


def run(graph_def, x):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run("out:0", {"input:0": x})


@pytest.mark.parametrize("op", ["conv", "depthwise", "atrous", "transposed", "matmul"])
@pytest.mark.parametrize("form", ["fused", "unfused"])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_keeps_outputs(op, form, bias):
    gd = build(op, form, bias)
    keep = ["input", "out"]
    cleaned = cleanup.clean_for_inference(gd, keep)
    snapshot = cleaned.SerializeToString(deterministic=True)
    folded = fold_batch_norms(cleaned, keep)
    assert cleaned.SerializeToString(deterministic=True) == snapshot  # pure
    ops = [n.op for n in folded.node]
    assert not registry.BATCH_NORM_OPS & set(ops)
    assert "Mul" not in ops and "Rsqrt" not in ops
    assert ops.count("BiasAdd") == 1 and "bias" not in [n.name for n in folded.node]
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(gd, x), rtol=1e-4, atol=1e-5)
    again = fold_batch_norms(folded, keep)
    assert again.SerializeToString(deterministic=True) == \
        folded.SerializeToString(deterministic=True)


def test_training_mode_and_stripped_defaults():
    gd = cleanup.clean_for_inference(build("conv", "fused", True), ["input", "out"])
    bn_node = next(n for n in gd.node if n.op.startswith("FusedBatchNorm"))
    # A GraphDef written without default attrs: is_training defaults to True (training).
    del bn_node.attr["is_training"]
    snapshot = gd.SerializeToString(deterministic=True)
    out = fold_batch_norms(gd, ["input", "out"])
    assert any(n.op.startswith("FusedBatchNorm") for n in out.node)
    assert gd.SerializeToString(deterministic=True) == snapshot  # no attr inserted
    bn_node.attr["is_training"].b = True
    assert any(n.op.startswith("FusedBatchNorm") for n in fold_batch_norms(gd, ["out"]).node)


def test_shared_weights_get_their_own_copy():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="input")
        w = c([1, 1, 3, 4], name="w")
        y1 = tf.nn.conv2d(x, w, 1, "SAME", name="conv")
        y1 = tf.compat.v1.nn.fused_batch_norm(y1, c([4]), c([4]), c([4]), c([4], 0.5, 2),
                                              is_training=False, name="bn")[0]
        y2 = tf.nn.conv2d(x, w, 1, "SAME", name="conv2")
        tf.add(y1, y2, name="out")
    gd = cleanup.clean_for_inference(graph.as_graph_def(), ["input", "out"])
    folded = fold_batch_norms(gd, ["input", "out"])
    names = {n.name: n for n in folded.node}
    assert "conv/folded_weights" in names and names["conv2"].input[1] == "w"
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(gd, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op, shape, transpose_b, out_axes", [
    ("Conv2D", [3, 3, 5, 7], False, (3,)),
    ("DepthwiseConv2dNative", [3, 3, 4, 2], False, (2, 3)),
    ("Conv2DBackpropInput", [3, 3, 6, 5], False, (2,)),
    ("MatMul", [6, 5], True, (0,)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_scale_weights_rounds_the_float64_product_once(op, shape, transpose_b, out_axes, dtype):
    """Each folded weight is w * scale taken in float64 and rounded once to the weights' dtype
    (an independent reference: the whole product in float64, then one cast)."""
    weights = RNG.standard_normal(shape).astype(dtype)
    n = int(np.prod([shape[a] for a in out_axes]))
    scale = RNG.uniform(0.1, 3.0, n)  # float64, as the batch norm's gamma / sqrt(var + eps)
    broadcast = np.ones(len(shape), int)
    for axis in out_axes:
        broadcast[axis] = shape[axis]
    expected = (weights.astype(np.float64) * scale.reshape(broadcast)).astype(dtype)
    folded = scale_weights(weights, scale, op, transpose_b)
    assert folded.dtype == dtype
    np.testing.assert_array_equal(folded, expected)
    rounded_twice = weights * scale.astype(dtype).reshape(broadcast)
    assert not np.array_equal(folded, rounded_twice)  # the float64 product matters
