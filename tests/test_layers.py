"""layers.py: the declared forms match on a frozen GraphDef and on a live tf.Graph."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import layers
from decent_q.graph import pattern as pt
from decent_q.graph.utils import node_name

RNG = np.random.default_rng(0)


def _c(shape, name=None, low=-1.0, high=1.0):
    return tf.constant(RNG.uniform(low, high, shape).astype(np.float32), name=name)


def _const_context(graph):
    """Parameters are the outputs of Const ops."""
    graph_view = pt.view(graph)
    return pt.Context(is_param=lambda tensor: graph_view.op_type(node_name(tensor)) == "Const")


def _both(build):
    """(frozen GraphDef, live tf.Graph) of `build(x)` on a placeholder 'input'."""
    graph = tf.Graph()
    with graph.as_default():
        build(tf.compat.v1.placeholder(tf.float32, [2, 4, 4, 3], name="input"))
    return graph.as_graph_def(), graph


# -- batch-norm forms -------------------------------------------------------------------------

def _fused(x):
    tf.compat.v1.nn.fused_batch_norm(x, _c([3], "gamma"), _c([3], "beta"), _c([3], "mean"),
                                     _c([3], "variance", 0.5, 2.0), is_training=False,
                                     name="bn")


def _scale_offset(x):
    tf.add(tf.multiply(_c([3], "scale"), x, name="bn/mul"), _c([3], "offset"), name="bn")


def _nn(gamma, beta):
    def build(x):
        y = tf.nn.batch_normalization(x, _c([3], "mean"), _c([3], "variance", 0.5, 2.0),
                                      _c([3], "beta") if beta else None,
                                      _c([3], "gamma") if gamma else None, 1e-3, name="bn")
        tf.identity(y, name="out")
    return build


def _global_normalization_graph_def():
    """BatchNormWithGlobalNormalization, removed from GraphDef version 9 on: written by hand,
    with producer 8 so that a live graph can import it."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.placeholder(tf.float32, [2, 4, 4, 3], name="input")
        for name in ("mean", "variance", "beta", "gamma"):
            _c([3], name, 0.5, 2.0)
    graph_def = graph.as_graph_def()
    node = graph_def.node.add(name="bn", op="BatchNormWithGlobalNormalization",
                              input=["input", "mean", "variance", "beta", "gamma"])
    node.attr["T"].type = tf.float32.as_datatype_enum
    node.attr["variance_epsilon"].f = 1e-3
    node.attr["scale_after_normalization"].b = True
    graph_def.versions.producer = 8
    return graph_def


def _live(graph_def):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _check_batch_norm(graph, last, form, captures):
    found = layers.match_batch_norm(graph, last, _const_context(graph))
    assert found is not None and found[0] == form
    match = found[1]
    assert match["batch_norm"] == last and match["x"] == "input:0"
    for key, value in captures.items():
        assert match[key] == value, key
    # No other form matches, and nothing matches at the input.
    others = [f.name for f in layers.BATCH_NORMS if f.name != form]
    assert layers.match_batch_norm(graph, last, _const_context(graph), forms=others) is None
    assert layers.match_batch_norm(graph, "input", _const_context(graph)) is None


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
def test_batch_norm_form_fused(live):
    graph_def, graph = _both(_fused)
    _check_batch_norm(graph if live else graph_def, "bn", "fused",
                      {"gamma": "gamma:0", "beta": "beta:0", "mean": "mean:0",
                       "variance": "variance:0"})


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
def test_batch_norm_form_global_normalization(live):
    graph_def = _global_normalization_graph_def()
    _check_batch_norm(_live(graph_def) if live else graph_def, "bn", "global_normalization",
                      {"gamma": "gamma:0", "beta": "beta:0", "mean": "mean:0",
                       "variance": "variance:0"})


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
@pytest.mark.parametrize("gamma", [True, False], ids=["gamma", "no_gamma"])
@pytest.mark.parametrize("beta", [True, False], ids=["beta", "no_beta"])
def test_batch_norm_form_nn_batch_normalization(live, gamma, beta):
    graph_def, graph = _both(_nn(gamma, beta))
    graph = graph if live else graph_def
    last = node_name(pt.view(graph).data_inputs("out")[0])  # the final Add
    captures = {"mean": "mean:0", "variance": "variance:0"}
    if gamma:
        captures["gamma"] = "gamma:0"
    if beta:
        captures["beta"] = "beta:0"
    _check_batch_norm(graph, last, "nn_batch_normalization", captures)
    match = layers.match_batch_norm(graph, last, _const_context(graph))[1]
    assert ("gamma" in match.captures) == gamma and ("beta" in match.captures) == beta


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
def test_batch_norm_form_scale_offset(live):
    graph_def, graph = _both(_scale_offset)
    _check_batch_norm(graph if live else graph_def, "bn", "scale_offset",
                      {"mul": "bn/mul", "scale": "scale:0", "offset": "offset:0"})
    # Scale and offset must be parameters.
    graph = graph if live else graph_def
    assert layers.match_batch_norm(graph, "bn", pt.Context()) is None


# -- hard-sigmoid forms -------------------------------------------------------------------------

def _hard_sigmoid(form, three=3.0, six=6.0):
    def build(x):
        r = tf.nn.relu6(tf.add(x, three, name="hs/add"), name="hs/relu6")
        if form.startswith("gated"):
            r = tf.multiply(tf.multiply(x, 2.0, name="y"), r, name="hs/gate")
        if form.endswith("div"):
            tf.divide(r, six, name="hs")
        else:
            tf.multiply(1.0 / six, r, name="hs")
    return build


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
@pytest.mark.parametrize("form", ["mul", "div", "gated_mul", "gated_div"])
def test_hard_sigmoid_forms(form, live):
    graph_def, graph = _both(_hard_sigmoid(form))
    graph = graph if live else graph_def
    found = layers.match_hard_sigmoid(graph, "hs")
    assert found is not None and found[0] == form
    match = found[1]
    assert match["op"] == "hs" and match["relu6"] == "hs/relu6" and match["add"] == "hs/add"
    assert match["x"] == "input:0" and match["three"] == "hs/add/y"
    assert match["scale"] == ("hs/y" if form.endswith("div") else "hs/x")
    assert (match.get("gate"), match.get("y")) == \
        (("hs/gate", "y:0") if form.startswith("gated") else (None, None))
    assert layers.match_hard_sigmoid(graph, "hs/relu6") is None


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
@pytest.mark.parametrize("form", ["mul", "div", "gated_mul", "gated_div"])
def test_hard_sigmoid_constants_are_part_of_the_form(form, live):
    for three, six in ((2.0, 6.0), (3.0, 5.0), (3.0 * (1 + 1e-5), 6.0)):
        graph_def, graph = _both(_hard_sigmoid(form, three, six))
        assert layers.match_hard_sigmoid(graph if live else graph_def, "hs") is None
    # Within the tolerance (1e-6, relative) of float32 values.
    graph_def, graph = _both(_hard_sigmoid(form, 3.0 * (1 + 1e-7)))
    assert layers.match_hard_sigmoid(graph if live else graph_def, "hs")[0] == form


@pytest.mark.parametrize("live", [False, True], ids=["graph_def", "live"])
def test_hard_sigmoid_others_are_not_matched(live):
    def build(x):
        tf.multiply(tf.clip_by_value(x * 0.2 + 0.5, 0.0, 1.0), 1.0 / 6.0, name="keras")
        tf.multiply(tf.nn.relu(x + 3.0), 1.0 / 6.0, name="relu")
        tf.multiply(tf.nn.relu6(x + tf.constant([3.0, 3.0, 3.0])), 1.0 / 6.0, name="vector")
        tf.divide(6.0, tf.nn.relu6(x + 3.0), name="reversed")
    graph_def, graph = _both(build)
    for name in ("keras", "relu", "vector", "reversed"):
        assert layers.match_hard_sigmoid(graph if live else graph_def, name) is None, name


# -- per-channel shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("op,shape,transpose_b,out,inp", [
    ("Conv2D", [3, 3, 4, 8], False, [-1], [-1, 1]),
    ("DepthwiseConv2dNative", [3, 3, 4, 2], False, [4, 2], [-1, 1]),
    ("Conv2DBackpropInput", [3, 3, 8, 4], False, [-1, 1], [-1]),
    ("MatMul", [4, 8], False, [-1], [-1, 1]),
    ("MatMul", [8, 4], True, [-1, 1], [-1]),
])
def test_channel_shapes(op, shape, transpose_b, out, inp):
    assert layers.channel_shape(op, shape, transpose_b) == out
    assert layers.in_channel_shape(op, shape, transpose_b) == inp
    assert layers.out_channels(op, shape, transpose_b) == 8
