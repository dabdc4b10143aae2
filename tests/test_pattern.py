"""graph.pattern: op-type patterns over a GraphDef and a live graph, through one adapter."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q.graph import pattern as pt


def graph():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.constant(np.ones([4, 4], np.float32), name="w")
        b = tf.constant(np.ones([4], np.float32), name="b")
        y = tf.add(b, tf.matmul(x, w, name="mm"), name="add")  # the bias first
        m = tf.multiply(tf.constant(0.1, name="alpha"), y, name="mul")
        tf.maximum(y, m, name="max")
        tf.identity(y, name="other_reader")
    return g


def context():
    return pt.Context(is_param=lambda t: t.startswith(("w:", "b:", "alpha:")))


@pytest.fixture(params=["graph_def", "live"])
def view(request):
    g = graph()
    return pt.view(g.as_graph_def() if request.param == "graph_def" else g)


MATMUL = pt.Op("MatMul", [pt.Data("input"), pt.Param("weight")], name="compute")


def test_commutative_inputs_and_captures(view):
    found = pt.match(pt.Op("AddV2", [MATMUL, pt.Param("bias")], name="bias_op",
                           commutative=True), "add", view, context())
    assert found["compute"] == "mm" and found["bias"] == "b:0" and found["input"] == "x:0"
    assert found.ops == ("mm", "add") and found.interior == ("mm:0",)
    ordered = pt.Op("AddV2", [MATMUL, pt.Param("bias")])  # not commutative: b comes first
    assert pt.match(ordered, "add", view, context()) is None


def test_bind_and_ref_read_one_tensor_twice(view):
    inner = pt.Op("AddV2", None, name="inner")
    leaky = pt.Op("Maximum", [pt.Op("Mul", [pt.Param("alpha"), pt.Bind("x", inner)],
                                    commutative=True), pt.Ref("x")], commutative=True)
    found = pt.match(leaky, "max", view, context())
    assert found["x"] == "add:0" and found["alpha"] == "alpha:0"
    # add:0 is also read by other_reader, outside the match: not closed
    assert not found.closed(view)
    assert found.closed(view, after={"mul"})


def test_one_of_takes_the_first_alternative_that_matches(view):
    optional_bias = pt.OneOf(pt.Op("BiasAdd", [MATMUL, pt.Param("bias")]), MATMUL)
    assert pt.match(optional_bias, "mm", view, context())["compute"] == "mm"
    assert pt.match(optional_bias, "add", view, context()) is None


def test_kinds_and_allowed_ops_come_from_the_context(view):
    assert pt.match(MATMUL, "mm", view, pt.Context()) is None  # nothing is a parameter
    assert pt.match(MATMUL, "mm", view, pt.Context(
        is_param=context().is_param, allowed=lambda name: name != "mm")) is None
    assert pt.match(MATMUL, "mm", view, context()) is not None


def test_a_name_bound_twice_must_bind_the_same_op(view):
    twice = pt.Op("Maximum", [pt.Op(None, name="n"), pt.Op(None, name="n")])
    assert pt.match(twice, "max", view) is None
    assert pt.match(pt.Op("Maximum", [pt.Op(None, name="a"), pt.Op(None, name="b")]),
                    "max", view)["b"] == "mul"


def test_where_reads_attributes(view):
    no_transpose = pt.Op("MatMul", where=lambda v, name: not v.attr(name, "transpose_a").b)
    assert pt.match(no_transpose, "mm", view) is not None
