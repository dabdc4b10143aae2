"""transforms/cleanup.py: Identity removal, dropout removal, constant folding, dead nodes."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q.transforms import cleanup

RNG = np.random.default_rng(0)


def build(fn):
    graph = tf.Graph()
    with graph.as_default():
        fn(tf.compat.v1.placeholder(tf.float32, [2, 4], name="input"))
    return graph.as_graph_def()


def run(graph_def, x, name="out"):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(f"{name}:0", {"input:0": x})


def ops(graph_def):
    return {n.name: n.op for n in graph_def.node}


def test_identities_removed_except_kept():
    def net(x):
        y = tf.identity(tf.identity(x, name="id1"), name="id2")
        y = tf.debugging.check_numerics(y, "x", name="check")
        return tf.identity(tf.nn.relu(y, name="relu"), name="out")
    gd = build(net)
    out = cleanup.remove_identities(gd, keep=["out"])
    assert set(ops(out)) == {"input", "relu", "out"}
    assert list(ops(out).values()).count("Identity") == 1
    x = RNG.standard_normal([2, 4]).astype(np.float32)
    np.testing.assert_array_equal(run(out, x), run(gd, x))


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_dropout_removed(api):
    def net(x):
        if api == "v1":
            y = tf.compat.v1.nn.dropout(x, keep_prob=0.5)
        else:
            y = tf.nn.dropout(x, rate=0.5)
        return tf.nn.relu(y, name="out")
    gd = build(net)
    out = cleanup.clean_for_inference(gd, keep=["input", "out"])
    assert not any(op.startswith("Random") for op in ops(out).values())
    x = RNG.standard_normal([2, 4]).astype(np.float32)
    np.testing.assert_array_equal(run(out, x), np.maximum(x, 0))


def test_fold_constants_and_keep():
    def net(x):
        w = tf.constant(RNG.standard_normal([4, 3]).astype(np.float32), name="w")
        scaled = tf.multiply(w, 2.0, name="scaled")  # constant subgraph
        tf.identity(scaled, name="kept_const")
        return tf.matmul(x, scaled, name="out")
    gd = build(net)
    out = cleanup.fold_constants(gd, keep=["input", "out", "kept_const"])
    names = ops(out)
    assert names["scaled"] == "Const" and "w" not in names
    assert names["kept_const"] == "Const"
    x = RNG.standard_normal([2, 4]).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(gd, x), rtol=1e-6)
    again = cleanup.fold_constants(out, keep=["input", "out", "kept_const"])
    assert again.SerializeToString(deterministic=True) == \
        out.SerializeToString(deterministic=True)


def test_remove_dead_keeps_ancestors_only():
    def net(x):
        tf.nn.relu(x, name="unused")
        return tf.nn.relu6(x, name="out")
    gd = build(net)
    assert set(ops(cleanup.remove_dead(gd, ["out"]))) == {"input", "out"}
    assert set(cleanup.sinks(gd)) == {"unused", "out"}


def test_repeated_data_input_survives_clean_up():
    """tf.cond's Switch(pred, pred) keeps both inputs (only control inputs are deduplicated)."""
    tf.compat.v1.disable_control_flow_v2()

    def fn(x):
        total = tf.reduce_sum(x)
        tf.identity(tf.compat.v1.cond(total > 0, lambda: total * 2.0, lambda: total - 1.0),
                    name="out")

    graph_def = build(fn)
    switch = next(n for n in graph_def.node if n.op == "Switch" and
                  len(set(n.input)) == 1 and len(n.input) == 2)
    cleaned = cleanup.remove_identities(graph_def, ["input", "out"])
    assert list(next(n for n in cleaned.node if n.name == switch.name).input) == \
        list(switch.input)
    # Not run: a v1 cond whose pivot Identities were removed hangs the executor; the float
    # passes only clean inside the quantized range (transforms.restore_outside).


def test_chained_dropouts_are_all_removed():
    """fc -> dropout -> fc -> dropout (AlexNet / VGG heads): the second dropout's data input is
    downstream of the first one's random mask and must still be found."""
    w = RNG.standard_normal((4, 4)).astype(np.float32)

    def fn(x):
        y = tf.nn.dropout(tf.matmul(x, w), rate=0.5)
        y = tf.nn.dropout(tf.matmul(y, w), rate=0.5)
        tf.identity(y, name="out")

    cleaned = cleanup.remove_dropout(build(fn), keep=["out"])
    assert not any(n.op.startswith("Random") or n.op.startswith("Select") for n in cleaned.node)
    x = RNG.uniform(-1, 1, (2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(cleaned, x), x @ w @ w, rtol=1e-5)


def test_passes_leave_their_input_unchanged_and_return_it_when_there_is_nothing_to_do():
    """Pure: the input GraphDef is byte-for-byte what it was; a pass with nothing to change
    returns its input (no copy of the weights), one that changes something a new GraphDef."""
    def net(x):
        w = tf.constant(RNG.standard_normal([4, 3]).astype(np.float32), name="w")
        y = tf.identity(tf.matmul(tf.identity(x, name="id_x"), w), name="id_y")
        tf.nn.relu(x, name="unused")
        return tf.nn.relu(y, name="out")
    gd = build(net)
    before = gd.SerializeToString(deterministic=True)
    keep = ["input", "out"]
    no_identities = cleanup.remove_identities(gd, keep)
    assert "id_x" not in ops(no_identities) and "id_y" not in ops(no_identities)
    alive = cleanup.remove_dead(no_identities, keep)
    assert "unused" not in ops(alive)
    assert gd.SerializeToString(deterministic=True) == before
    x = RNG.standard_normal([2, 4]).astype(np.float32)
    np.testing.assert_array_equal(run(alive, x), run(gd, x))
    assert cleanup.remove_identities(alive, keep) is alive
    assert cleanup.remove_dead(alive, keep) is alive


def test_repeated_control_inputs_are_dropped_even_with_nothing_to_bypass():
    """remove_identities on a graph without Identity ops still writes each control input once
    (as it always did): the early return is only for a graph it leaves as it is."""
    gd = build(lambda x: tf.nn.relu(x, name="out"))
    out = next(n for n in gd.node if n.name == "out")
    out.input.extend(["^input", "^input"])
    cleaned = cleanup.remove_identities(gd, keep=["input", "out"])
    assert cleaned is not gd
    assert list(next(n for n in cleaned.node if n.name == "out").input) == ["input", "^input"]
    assert list(out.input) == ["input", "^input", "^input"]  # the input graph is unchanged
