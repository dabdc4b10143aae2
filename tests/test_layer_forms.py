"""layers: each declared compute-layer and activation form, matched on a frozen GraphDef and on
the live graph it came from (the planner, the eval-model reader, deploy and QAT all read them)."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import layers
from decent_q.graph import pattern as pt

RNG = np.random.default_rng(0)


def const(shape, name):
    return tf.constant(RNG.standard_normal(shape).astype(np.float32), name=name)


def conv(x):
    return tf.nn.conv2d(x, const([3, 3, 3, 4], "w"), 1, "SAME", name="conv")


def biased(y, op="BiasAdd"):
    b = const([4], "b")
    return tf.nn.bias_add(y, b, name="bias") if op == "BiasAdd" else tf.add(y, b, name="bias")


def leaky_maximum(y):
    return tf.maximum(tf.multiply(const([], "alpha"), y, name="mul"), y, name="act")


def leaky_keras(y):
    alpha = const([], "alpha")
    return tf.subtract(tf.nn.relu(y, name="relu"),
                       tf.multiply(alpha, tf.nn.relu(tf.negative(y, name="neg"), name="relu2"),
                                   name="mul"), name="act")


def atrous(x):
    s2b = tf.space_to_batch_nd(x, [2, 2], [[0, 0], [0, 0]], name="s2b")
    y = tf.nn.conv2d(s2b, const([3, 3, 3, 4], "w"), 1, "SAME", name="conv")
    return tf.compat.v1.batch_to_space_nd(y, [2, 2], [[0, 0], [0, 0]], name="b2s")


# name -> (build(x) -> output, expected nodes, activation kind)
FORMS = {
    "conv": (conv, ("conv",), None),
    "conv_bias_relu": (lambda x: tf.nn.relu(biased(conv(x)), name="act"),
                       ("conv", "bias", "act"), "Relu"),
    "conv_add_relu6": (lambda x: tf.nn.relu6(biased(conv(x), "Add"), name="act"),
                       ("conv", "bias", "act"), "Relu6"),
    "depthwise_leaky_op": (lambda x: tf.nn.leaky_relu(tf.nn.depthwise_conv2d(
        x, const([3, 3, 3, 2], "w"), [1, 1, 1, 1], "SAME", name="conv"), 0.2, name="act"),
        ("conv", "act"), "LeakyRelu"),
    "transposed": (lambda x: tf.nn.conv2d_transpose(
        x, const([3, 3, 4, 3], "w"), tf.constant([2, 8, 8, 4]), 1, name="conv"),
        ("conv",), None),
    "matmul_bias": (lambda x: biased(tf.matmul(tf.reshape(x, [2, 192]), const([192, 4], "w"),
                                               name="conv")), ("conv", "bias"), None),
    "leaky_maximum": (lambda x: leaky_maximum(biased(conv(x))),
                      ("conv", "bias", "mul", "act"), "LeakyRelu"),
    "leaky_keras": (lambda x: leaky_keras(biased(conv(x))),
                    ("conv", "bias", "relu", "neg", "relu2", "mul", "act"), "LeakyRelu"),
    "atrous_relu": (lambda x: tf.nn.relu(biased(atrous(x)), name="act"),
                    ("s2b", "conv", "b2s", "bias", "act"), "Relu"),
}


def build(form):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="input")
        out = FORMS[form][0](x)
        tf.identity(out, name="out")
    return graph


def context(graph_def):
    consts = {n.name for n in graph_def.node if n.op == "Const"}
    return pt.Context(is_param=lambda t: t.split(":")[0] in consts)


@pytest.mark.parametrize("where", ["graph_def", "live"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_declared_layer_form_matches(form, where):
    graph = build(form)
    graph_def = graph.as_graph_def()
    found = layers.match_layer(graph_def if where == "graph_def" else graph, "conv",
                               context(graph_def))
    _, nodes, kind = FORMS[form]
    assert found.nodes == nodes
    assert (found.activation.kind if found.activation else None) == kind
    assert found.weight == "w:0"
    assert found.input == ("Reshape:0" if form == "matmul_bias" else "input:0")
    assert found.bias == ("b:0" if "bias" in nodes else None)
    if form.startswith("leaky_"):
        assert found.activation.alpha == "alpha:0"  # multi-op forms: the alpha tensor


def test_a_second_reader_ends_the_layer_before_it():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="input")
        y = biased(conv(x))
        tf.nn.relu(y, name="act")
        tf.identity(y, name="second_reader")
    found = layers.match_layer(graph, "conv", context(graph.as_graph_def()))
    assert found.nodes == ("conv", "bias") and found.activation is None


def test_a_non_parameter_bias_is_not_a_bias():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 8, 8, 3], name="input")
        tf.nn.relu(conv(x) + x[..., :1], name="act")
    found = layers.match_layer(graph, "conv", context(graph.as_graph_def()))
    assert found.nodes == ("conv",)


@pytest.mark.parametrize("where", ["graph_def", "live"])
def test_activation_after_any_op(where):
    graph = build("leaky_keras")
    target = graph.as_graph_def() if where == "graph_def" else graph
    act = layers.match_activation(target, "bias:0", context(graph.as_graph_def()))
    assert act.nodes == ("relu", "neg", "relu2", "mul", "act") and act.alpha == "alpha:0"


def test_channel_shape_and_out_channels():
    assert layers.channel_shape("Conv2D", [3, 3, 8, 16]) == [-1]
    assert layers.channel_shape("DepthwiseConv2dNative", [3, 3, 8, 2]) == [8, 2]
    assert layers.channel_shape("Conv2DBackpropInput", [3, 3, 16, 8]) == [-1, 1]
    assert layers.channel_shape("MatMul", [8, 16]) == [-1]
    assert layers.channel_shape("MatMul", [16, 8], transpose_b=True) == [-1, 1]
    assert layers.out_channels("DepthwiseConv2dNative", [3, 3, 8, 2]) == 16
    assert layers.out_channels("MatMul", [16, 8], transpose_b=True) == 16
    w = RNG.standard_normal([3, 3, 16, 8])  # transposed conv: [kh, kw, out, in]
    s = np.arange(1, 17, dtype=np.float64)
    np.testing.assert_array_equal(
        w * s.reshape(layers.channel_shape("Conv2DBackpropInput", w.shape)),
        w * s[None, None, :, None])
