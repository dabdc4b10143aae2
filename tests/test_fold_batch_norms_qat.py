"""fold_batch_norms_qat: live-graph batch-norm folding, numerics with quantization off."""

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q  # noqa: F401  (registers the contrib aliases slim.batch_norm needs)
from decent_q.transforms import fold_batch_norms_qat as fold

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 8, 8, 3)).astype(np.float32)


def build(kind, is_training, bias=False):
    """input -> layer -> batch norm -> relu, with random BN parameters and moving statistics."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        if kind == "keras":
            import tf_keras  # pylint: disable=import-outside-toplevel
            y = tf_keras.layers.Conv2D(4, 3, use_bias=bias, name="conv")(x)
            y = tf_keras.layers.BatchNormalization(name="bn")(y, training=is_training)
        else:
            bn = {"is_training": is_training, "scale": True}
            if kind == "conv":
                y = slim.conv2d(x, 4, 3, activation_fn=None, scope="conv",
                                normalizer_fn=None if bias else slim.batch_norm,
                                normalizer_params=bn)
                if bias:
                    y = slim.batch_norm(y, scope="conv/BatchNorm", **bn)
            elif kind == "depthwise":
                y = slim.separable_conv2d(x, None, 3, depth_multiplier=2, activation_fn=None,
                                          normalizer_fn=slim.batch_norm, normalizer_params=bn,
                                          scope="dw")
            elif kind == "atrous":
                w = tf.compat.v1.get_variable("atrous/weights", [3, 3, 3, 4])
                y = tf.nn.atrous_conv2d(x, w, 2, "SAME", name="atrous/conv")
                y = slim.batch_norm(y, scope="atrous/BatchNorm", **bn)
        tf.nn.relu(y, name="out")
        init = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    with graph.as_default():
        for v in tf.compat.v1.global_variables():
            if any(k in v.op.name for k in ("moving", "gamma", "beta", "bias")):
                sess.run(v.assign(RNG.uniform(0.3, 1.5, v.shape.as_list()).astype(np.float32)))
    return graph, sess


def run(graph, sess):
    return sess.run(graph.get_tensor_by_name("out:0"), {"input:0": X})


def fold_and_reopen(graph, sess, **kwargs):
    """Folds, then opens a NEW session with the same variable values: a session that already
    ran the graph keeps executing the graph it saw (rewired inputs are not picked up)."""
    with graph.as_default():
        values = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()}
    result = fold.fold_batch_norms(graph, **kwargs)
    sess.close()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        sess.run(tf.compat.v1.global_variables_initializer())
        for v in tf.compat.v1.global_variables():
            if v.op.name in values:
                v.load(values[v.op.name], sess)
    return result, sess


@pytest.mark.parametrize("kind,bias", [("conv", False), ("conv", True), ("depthwise", False),
                                       ("atrous", False), ("keras", False), ("keras", True)])
@pytest.mark.parametrize("is_training", [False, True])
def test_fold_equals_batch_norm(kind, bias, is_training):
    graph, sess = build(kind, is_training, bias)
    before = run(graph, sess)
    result, sess = fold_and_reopen(graph, sess, freeze_step=-1)
    assert len(result.folded) == 1
    bn_name, scope = result.folded[0]
    out = graph.get_operation_by_name("out")
    assert out.inputs[0].name == f"{scope}/BiasAdd:0"
    assert graph.get_operation_by_name(f"{scope}/conv").inputs[1].name == f"{scope}/weights:0"
    if is_training:
        assert f"{scope}/correction_mul" in [c.name for c in
                                             graph.get_operation_by_name(f"{scope}/conv")
                                             .outputs[0].consumers()] or kind == "atrous"
        assert f"{scope}/correction:0" in result.parameters
    assert bn_name in result.exclude
    np.testing.assert_allclose(run(graph, sess), before, atol=1e-5, rtol=1e-5)


def moving_statistics_output(graph, sess):
    """relu(BN with the moving statistics) of the conv output, in NumPy (float64)."""
    bn = graph.get_operation_by_name("conv/BatchNorm/FusedBatchNormV3")
    y, gamma, beta, mean, var = sess.run(list(bn.inputs), {"input:0": X})
    scale = gamma / np.sqrt(var.astype(np.float64) + bn.get_attr("epsilon"))
    return np.maximum(y * scale + (beta - mean * scale), 0)


def test_freeze_step_zero_uses_moving_statistics():
    graph, sess = build("conv", True)
    expected = moving_statistics_output(graph, sess)
    result, sess = fold_and_reopen(graph, sess, freeze_step=0)
    scope = result.folded[0][1]
    assert not any(op.name == f"{scope}/correction_mul" for op in graph.get_operations())
    np.testing.assert_allclose(run(graph, sess), expected, atol=1e-5, rtol=1e-5)


def test_freeze_step_switches_at_the_global_step():
    graph, sess = build("conv", True)
    training_out = run(graph, sess)
    moving_out = moving_statistics_output(graph, sess)
    _, sess = fold_and_reopen(graph, sess, freeze_step=5)
    with graph.as_default():
        step = tf.compat.v1.train.get_global_step()
        np.testing.assert_allclose(run(graph, sess), training_out, atol=1e-5, rtol=1e-5)
        sess.run(step.assign(5))
        np.testing.assert_allclose(run(graph, sess), moving_out, atol=1e-5, rtol=1e-5)


def test_moving_averages_still_update():
    graph, sess = build("conv", True)
    _, sess = fold_and_reopen(graph, sess, freeze_step=-1)
    with graph.as_default():
        mean = [v for v in tf.compat.v1.global_variables() if "moving_mean" in v.op.name][0]
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        before = sess.run(mean)
        sess.run(updates, {"input:0": X})
        assert not np.allclose(sess.run(mean), before)


def test_same_names_in_training_and_evaluation_graphs():
    names = []
    for is_training in (True, False):
        graph, _ = build("depthwise", is_training)
        fold.fold_batch_norms(graph, freeze_step=-1)
        names.append({op.name for op in graph.get_operations()
                      if op.name.endswith(("/weights", "/bias", "/conv", "/BiasAdd"))
                      and "Fold" in op.name})
    assert names[0] == names[1] and names[0]


def test_output_batch_norm_is_kept():
    graph, _ = build("conv", False)
    result = fold.fold_batch_norms(graph, keep=["conv/BatchNorm/FusedBatchNormV3"])
    assert result.folded == []
