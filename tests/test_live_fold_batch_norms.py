"""live.fold_batch_norms: live-graph batch-norm folding, numerics with quantization off."""

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q  # (also registers the contrib aliases slim.batch_norm needs)
from decent_q.live import fold_batch_norms as fold

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 8, 8, 3)).astype(np.float32)


def build(kind, is_training, bias=False):
    """input -> layer -> batch norm -> relu, with random BN parameters and moving statistics."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        if kind in ("keras", "keras_dense"):
            import tf_keras  # pylint: disable=import-outside-toplevel
            if kind == "keras":
                y = tf_keras.layers.Conv2D(4, 3, use_bias=bias, name="conv")(x)
            else:  # rank 2: an unfused batch norm (tf.nn.batch_normalization's ops)
                y = tf_keras.layers.Dense(4, use_bias=bias, name="dense")(
                    tf.reshape(x, [-1, 8 * 8 * 3]))
            y = tf_keras.layers.BatchNormalization(name="bn")(y, training=is_training)
        elif kind in ("slim_unfused", "slim_dense", "slim_unfused_plain"):
            bn = {"is_training": is_training, "scale": kind != "slim_unfused_plain",
                  "center": kind != "slim_unfused_plain", "fused": False}
            if kind in ("slim_unfused", "slim_unfused_plain"):
                y = slim.conv2d(x, 4, 3, activation_fn=None, scope="conv",
                                normalizer_fn=slim.batch_norm, normalizer_params=bn)
            else:
                y = slim.fully_connected(tf.reshape(x, [-1, 8 * 8 * 3]), 4, activation_fn=None,
                                         scope="fc", normalizer_fn=slim.batch_norm,
                                         normalizer_params=bn)
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


def copy_variables(source, source_sess, target, target_sess):
    """Loads the values of `source`'s variables into `target`'s variables of the same name."""
    values = {v.op.name: source_sess.run(v)
              for v in source.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    with target.as_default():
        for v in target.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
            v.load(values[v.op.name], target_sess)


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


KINDS = [("conv", False), ("conv", True), ("depthwise", False), ("atrous", False),
         ("keras", False), ("keras", True),
         # unfused batch norms: tf.nn.batch_normalization's ops
         ("keras_dense", False), ("keras_dense", True), ("slim_unfused", False),
         ("slim_dense", False), ("slim_unfused_plain", False)]
UNFUSED = ["keras_dense", "slim_unfused", "slim_dense"]


@pytest.mark.parametrize("kind,bias", KINDS)
@pytest.mark.parametrize("is_training", [False, True])
def test_fold_equals_batch_norm(kind, bias, is_training):
    graph, sess = build(kind, is_training, bias)
    before = run(graph, sess)
    result, sess = fold_and_reopen(graph, sess, freeze_step=-1)
    assert len(result.folded) == 1
    bn_name, scope = result.folded[0]
    out = graph.get_operation_by_name("out")
    conv = graph.get_operation_by_name(f"{scope}/conv")
    assert f"{scope}/bias:0" in result.parameters
    if is_training:
        # One conv, reading the folded weights unscaled again; the original batch norm
        # normalises its output.
        assert conv.inputs[1].name == f"{scope}/conv_weights:0"
        assert out.inputs[0].name == f"{bn_name}:0"
        near = [conv]  # the batch norm is within three ops after the conv
        for _ in range(3):
            near += [c for op in near for c in op.outputs[0].consumers()]
        assert graph.get_operation_by_name(bn_name) in near
        layer = result.layers[conv.name]
        assert layer.weights == f"{scope}/weights:0" and layer.weights_consumers
        assert layer.nodes[0] == conv.name and layer.nodes[-1] == bn_name
        assert layer.bias_consumer is None and bn_name not in result.exclude
    else:
        assert conv.inputs[1].name == f"{scope}/weights:0"
        assert out.inputs[0].name == f"{scope}/BiasAdd:0"
        assert bn_name in result.exclude and not result.layers
    np.testing.assert_allclose(run(graph, sess), before, atol=1e-5, rtol=1e-5)


LOSS_WEIGHTS = RNG.standard_normal((6, 8)).astype(np.float32)


def gradients(graph, sess):
    """Gradients of a global-average-pooling loss w.r.t. every trainable variable, by name."""
    with graph.as_default():
        out = graph.get_tensor_by_name("out:0")
        pooled = tf.reduce_mean(out, [1, 2]) if out.shape.rank == 4 else out
        loss = tf.reduce_sum(pooled * LOSS_WEIGHTS[:, :pooled.shape[-1]])
        variables = tf.compat.v1.trainable_variables()
        grads = tf.gradients(loss, variables)
        return {v.op.name: g for v, g in zip(variables, sess.run(grads, {"input:0": X}))}


@pytest.mark.parametrize("kind,bias", KINDS)
def test_training_fold_has_the_batch_norms_gradients(kind, bias):
    """The gradients of the training fold are those of the training batch norm, batch
    statistics included (a fold that treats them as constants fails this: with global pooling
    most of the gradient is along the direction the batch mean removes)."""
    reference, reference_sess = build(kind, True, bias)
    expected = gradients(reference, reference_sess)
    graph, sess = build(kind, True, bias)
    copy_variables(reference, reference_sess, graph, sess)
    _, sess = fold_and_reopen(graph, sess, freeze_step=-1)
    got = gradients(graph, sess)
    assert sorted(got) == sorted(expected)
    # One scale for all: a bias in front of a training batch norm has a zero gradient (the
    # batch mean removes it), computed as rounding noise.
    scale = max(np.abs(g).max() for g in expected.values())
    for name in expected:
        np.testing.assert_allclose(got[name] / scale, expected[name] / scale, atol=2e-5,
                                   err_msg=name)


def test_zero_gamma_channel_outputs_beta():
    """gamma = 0 gives a zero folding scale: the channel outputs beta, nothing divides by 0."""
    graph, sess = build("conv", True)
    with graph.as_default():
        gamma = [v for v in tf.compat.v1.global_variables() if "gamma" in v.op.name][0]
        beta = [v for v in tf.compat.v1.global_variables() if "beta" in v.op.name][0]
        value = sess.run(gamma)
        value[1] = 0.0
        gamma.load(value, sess)
    _, sess = fold_and_reopen(graph, sess, freeze_step=-1)
    out = run(graph, sess)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[..., 1], max(sess.run(beta)[1], 0), atol=1e-6)
    assert all(np.isfinite(g).all() for g in gradients(graph, sess).values())


def test_forward_differs_from_the_two_conv_form_only_by_the_weight_quantization(tmp_path):
    """The QAT training layer (one conv with quantized folded weights, normalised by the batch
    statistics of its own output) against the two-conv form (the batch statistics of the float
    conv, as decent_q computed before): the same function up to where the weight quantization
    sits. At 8 bit they differ by at most 0.85 % of the output's standard deviation here."""
    graph, sess = build("conv", True)
    sess.close()
    with graph.as_default():
        decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(
            input_nodes=["input"], output_nodes=["out"], input_shapes=[[-1, 8, 8, 3]],
            output_dir=str(tmp_path)))
        sess = tf.compat.v1.Session(graph=graph)
        sess.run(tf.compat.v1.global_variables_initializer())
        bn = graph.get_operation_by_name("conv/BatchNorm/FusedBatchNormV3")
        gamma, beta = bn.inputs[1], bn.inputs[2]
        moving_var = [v for v in tf.compat.v1.global_variables()
                      if v.op.name.endswith("moving_variance")][0]
        fetch = [bn.outputs[0], graph.get_tensor_by_name("conv/BatchNorm_Fold/conv:0"),
                 graph.get_tensor_by_name("conv/Conv2D:0"), gamma, beta, moving_var]
        new, quantized_conv, float_conv, g, b, mv = sess.run(fetch, {"input:0": X})
    eps = bn.get_attr("epsilon")
    mean, var = float_conv.mean((0, 1, 2)), float_conv.var((0, 1, 2))
    two_conv = quantized_conv * np.sqrt(mv + eps) / np.sqrt(var + eps) + \
        (b - g * mean / np.sqrt(var + eps))
    difference = np.abs(new - two_conv).max() / new.std()
    print(f"one-conv vs two-conv form: max |difference| = {difference:.4f} of the output std")
    assert 1e-4 < difference < 0.05, difference


def moving_statistics_output(kind, graph, sess):
    """The output of the same net in inference (the batch norm with the moving statistics),
    with `graph`'s variable values."""
    reference, reference_sess = build(kind, False)
    copy_variables(graph, sess, reference, reference_sess)
    return run(reference, reference_sess)


@pytest.mark.parametrize("kind", ["conv"] + UNFUSED)
def test_freeze_step_zero_uses_moving_statistics(kind):
    graph, sess = build(kind, True)
    expected = moving_statistics_output(kind, graph, sess)
    result, sess = fold_and_reopen(graph, sess, freeze_step=0)
    bn_name, scope = result.folded[0]
    assert graph.get_operation_by_name("out").inputs[0].name == f"{scope}/BiasAdd:0"
    # The batch norm still runs (for the moving averages), on the unscaled folded conv.
    assert bn_name in result.exclude
    if kind == "conv":
        bn = graph.get_operation_by_name("conv/BatchNorm/FusedBatchNormV3")
        assert bn.inputs[0].name == f"{scope}/unscale:0"
    np.testing.assert_allclose(run(graph, sess), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv"] + UNFUSED)
def test_freeze_step_switches_at_the_global_step(kind):
    graph, sess = build(kind, True)
    training_out = run(graph, sess)
    moving_out = moving_statistics_output(kind, graph, sess)
    result, sess = fold_and_reopen(graph, sess, freeze_step=5)
    assert len(result.folded) == 1
    with graph.as_default():
        step = tf.compat.v1.train.get_global_step()
        np.testing.assert_allclose(run(graph, sess), training_out, atol=1e-5, rtol=1e-5)
        sess.run(step.assign(5))
        np.testing.assert_allclose(run(graph, sess), moving_out, atol=1e-5, rtol=1e-5)
        # Frozen statistics stay frozen: the moving-average updates change nothing.
        moving = [v for v in tf.compat.v1.global_variables() if "moving" in v.op.name]
        before = sess.run(moving)
        sess.run(update_ops(graph), {"input:0": X})
        for got, want in zip(sess.run(moving), before):
            np.testing.assert_allclose(got, want, rtol=1e-6)


def update_ops(graph):
    """The moving-average updates (slim: UPDATE_OPS; Keras: the layer's updates)."""
    return [op for op in graph.get_operations()
            if op.type in ("AssignSub", "AssignSubVariableOp")]


@pytest.mark.parametrize("kind", ["conv"] + UNFUSED)
@pytest.mark.parametrize("freeze_step", [-1, 0, 5])
def test_moving_averages_update_as_before(freeze_step, kind):
    """The batch norm's moving averages get the same updates as in the float graph (it reads
    the unscaled folded conv, which equals the float conv up to the weight quantization)."""
    graph, sess = build(kind, True)
    with graph.as_default():
        moving = [v for v in tf.compat.v1.global_variables() if "moving" in v.op.name]
        start = sess.run(moving)
        sess.run(update_ops(graph), {"input:0": X})
        expected = sess.run(moving)
        for v, value in zip(moving, start):
            v.load(value, sess)
    _, sess = fold_and_reopen(graph, sess, freeze_step=freeze_step)
    with graph.as_default():
        sess.run(update_ops(graph), {"input:0": X})
        for got, want, was in zip(sess.run(moving), expected, start):
            assert not np.allclose(want, was)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_same_names_in_training_and_evaluation_graphs():
    names = []
    for is_training in (True, False):
        graph, _ = build("depthwise", is_training)
        fold.fold_batch_norms(graph, freeze_step=-1)
        names.append({op.name for op in graph.get_operations()
                      if op.name.endswith(("/weights", "/bias", "/conv"))
                      and "Fold" in op.name})
    assert names[0] == names[1] and names[0]


def test_output_batch_norm_is_kept():
    graph, _ = build("conv", False)
    result = fold.fold_batch_norms(graph, keep=["conv/BatchNorm/FusedBatchNormV3"])
    assert result.folded == []
