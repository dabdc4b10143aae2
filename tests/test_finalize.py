"""finalize: frozen QAT evaluation graph -> one EVAL FixNeuron per quantization point."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import ops
from decent_q.errors import QuantizeError
from decent_q.transforms import finalize

X = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)


def frozen_group(phase=ops.Phase.EVAL, hist_pos=3):
    """input -> MatMul(W) -> point 'mm/aquant' (weights point 'w/wquant'), frozen."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="input")
        w = tf.compat.v1.Variable(np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2),
                                  name="w")
        wq = ops.quantize(w.value(), "w/wquant", ops.Mode.WEIGHT, phase)
        y = tf.matmul(x, wq, name="mm")
        ops.quantize(y, "mm/aquant", ops.Mode.ACTIVATION, phase)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for hist in ops.histogram_variables(graph).values():
                counts = np.zeros(ops.NUM_POS, np.int32)
                if hist_pos is not None:
                    counts[hist_pos - ops.MIN_POS] = 2
                hist.load(counts, sess)
            live = sess.run("mm/aquant:0", {"input:0": X})
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["mm/aquant"])
    return frozen, live


def run(graph_def):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session() as sess:
            return sess.run("mm/aquant:0", {"input:0": X})


def test_groups_become_eval_fix_neurons_with_the_kept_position():
    frozen, live = frozen_group()
    model = finalize.finalize(frozen, keep=["input", "mm/aquant"])
    fix = {n.name: n for n in model.node if n.op == "FixNeuron"}
    assert sorted(fix) == ["mm/aquant", "w/wquant"]
    assert all(n.attr["phase"].i == ops.Phase.EVAL and n.attr["quantize_pos"].i == 3
               for n in fix.values())
    assert fix["w/wquant"].attr["mode"].i == ops.Mode.WEIGHT
    assert not any(n.op in ("FixNeuronDynamic", "Identity", "AssignAdd") for n in model.node)
    assert not any("pos_hist" in n.name for n in model.node)
    np.testing.assert_array_equal(run(model), live)  # bit-exact


def test_finalize_twice_equals_once():
    frozen, _ = frozen_group()
    once = finalize.finalize(frozen, keep=["input", "mm/aquant"])
    twice = finalize.finalize(once, keep=["input", "mm/aquant"])
    assert once.SerializeToString(deterministic=True) == \
        twice.SerializeToString(deterministic=True)


def test_empty_histogram_is_an_error():
    frozen, _ = frozen_group(hist_pos=None)
    with pytest.raises(QuantizeError, match="empty position histogram"):
        finalize.finalize(frozen, keep=["input", "mm/aquant"])


def test_training_graph_is_refused():
    frozen, _ = frozen_group(phase=ops.Phase.TRAIN)
    with pytest.raises(QuantizeError, match="not EVAL"):
        finalize.finalize(frozen, keep=["input", "mm/aquant"])
