"""live.gradients: the QAT passes' gradients equal TensorFlow's bit for bit and keep the
caller's control dependencies off their constants."""

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q
from decent_q.live import gradients

RNG = np.random.default_rng(0)


def _values(shape):
    return RNG.standard_normal([2 if d is None else d for d in shape]).astype(np.float32)


def _gradients(build, feeds_shapes, constant_y=False):
    """(light gradients, TensorFlow's) of sum(build(x, y) * r) w.r.t. x and y, as values."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, feeds_shapes[0], name="x")
        y_value = _values(feeds_shapes[1])
        y = tf.constant(y_value) if constant_y else \
            tf.compat.v1.placeholder(tf.float32, feeds_shapes[1], name="y")
        light = build(x, y, light=True)
        plain = build(x, y, light=False)
        r = tf.constant(_values(light.shape.as_list() if light.shape.is_fully_defined()
                                else [2] + light.shape.as_list()[1:]))
        targets = [x] if constant_y else [x, y]
        got = tf.gradients(tf.reduce_sum(light * r), targets)
        want = tf.gradients(tf.reduce_sum(plain * r), targets)
        if constant_y:  # no gradient op is built for the constant
            assert tf.gradients(tf.reduce_sum(light * r), [y]) == [None]
    feed = {x: _values(feeds_shapes[0])}
    if not constant_y:
        feed[y] = y_value
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run([got, want], feed)


def _multiply(x, y, light):
    return gradients.multiply(x, y) if light else tf.multiply(x, y)


@pytest.mark.parametrize("shapes", [
    ([3, 3, 4, 5], [5]),           # conv weights x output-channel scale
    ([3, 3, 4, 2], [4, 2]),        # depthwise weights x (channel, multiplier) scale
    ([6, 5], [5]),                 # MatMul weights
    ([5, 6], [5, 1]),              # MatMul weights with transpose_b
    ([5], [5]),                    # equal shapes
    ([None, 4, 4, 3], [3]),        # activations of an unknown batch
    ([None, 3], [None, 3]),        # a broadcast decided at run time
], ids=str)
def test_multiply_equals_tensorflow(shapes):
    got, want = _gradients(_multiply, shapes)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.array_equal(g, w)


def test_multiply_by_a_constant_builds_no_gradient_for_it():
    got, want = _gradients(_multiply, ([None, 4, 4, 3], []), constant_y=True)
    assert np.array_equal(got[0], want[0])


def test_multiply_without_its_constants_builds_them():
    """An op given the gradient by hand (no <op>/grad_* beside it) still differentiates."""
    def build(x, y, light):
        if not light:
            return tf.multiply(x, y)
        with tf.compat.v1.get_default_graph().gradient_override_map({"Mul": gradients.MUL}):
            return tf.multiply(x, y)
    got, want = _gradients(build, ([3, 3, 4, 5], [5]))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_divide_no_nan_and_reshape_equal_tensorflow():
    def build(x, y, light):
        ones = tf.ones_like(y)
        if light:
            return gradients.reshape(gradients.divide_no_nan(ones, y, name="inverse"), [4, 2]) * x
        return tf.reshape(tf.math.divide_no_nan(ones, y), [4, 2]) * x
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(_values([4, 2]))
        value = _values([8])
        value[3] = 0.0  # div_no_nan's zero: no gradient there
        y = tf.Variable(value)
        got = tf.gradients(tf.reduce_sum(build(x, y, True)), [y])
        want = tf.gradients(tf.reduce_sum(build(x, y, False)), [y])
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        got, want = sess.run([got, want])
    assert np.array_equal(got[0], want[0]) and got[0][3] == 0.0


def test_divide_no_nan_takes_one_static_shape():
    graph = tf.Graph()
    with graph.as_default():
        y = tf.compat.v1.placeholder(tf.float32, [None])
        out = gradients.divide_no_nan(tf.ones([1]), y, name="inverse")
        with pytest.raises(ValueError, match="one static shape"):
            tf.gradients(out, [y])


def _qat_model(output_dir, light_gradients):
    """A slim conv + BN, depthwise + BN, average pool, dense + BN net in QAT, its train-op
    gradients (TF1 pattern) and the number of ops carrying the updates' control inputs."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        bn = {"is_training": True, "scale": True}
        y = slim.conv2d(x, 4, 3, normalizer_fn=slim.batch_norm, normalizer_params=bn,
                        scope="conv")
        y = slim.separable_conv2d(y, None, 3, depth_multiplier=2, normalizer_fn=slim.batch_norm,
                                  normalizer_params=bn, scope="dw")
        y = slim.avg_pool2d(y, 3, stride=2, padding="SAME", scope="pool")
        y = slim.fully_connected(tf.reshape(y, [-1, 4 * 4 * 8]), 5, activation_fn=tf.nn.relu,
                                 normalizer_fn=slim.batch_norm,
                                 normalizer_params=dict(bn, fused=False), scope="fc")
        decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(
            input_nodes=["input"], output_nodes=[y.op.name], input_shapes=[[-1, 8, 8, 3]],
            output_dir=output_dir))
        if not light_gradients:  # TensorFlow's own gradients, for reference
            for op in graph.get_operations():
                if op.node_def.attr["_gradient_op_type"].s.startswith(b"DecentQ"):
                    op._clear_attr("_gradient_op_type")  # pylint: disable=protected-access
        labels = tf.constant(np.arange(6) % 5)
        out = ([c.outputs[0] for c in y.consumers() if c.type.startswith("FixNeuron")]
               or [y])[0]
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, out)
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        variables = tf.compat.v1.trainable_variables()
        with tf.control_dependencies(updates):
            grads = tf.gradients(loss, variables, gate_gradients=True)
        update_names = {op.name for op in updates}
        heavy = [op for op in graph.get_operations()
                 if update_names & {c.name for c in op.control_inputs}]
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        values = sess.run(grads, {x: _INPUT})
    return values, [v.op.name for v in variables], heavy


_INPUT = np.random.default_rng(1).standard_normal((6, 8, 8, 3)).astype(np.float32)


def test_qat_gradients_equal_tensorflows_with_fewer_control_edges(tmp_path):
    got, names, heavy = _qat_model(str(tmp_path / "light"), True)
    want, want_names, plain_heavy = _qat_model(str(tmp_path / "plain"), False)
    assert names == want_names
    for name, g, w in zip(names, got, want):
        assert np.array_equal(g, w), name
    # The ops that take the updates' control inputs: of the folds' weight arithmetic (not
    # their conv, whose gradient is TensorFlow's), only the gating NoOps of W * scale and of
    # Q(W * scale) / scale (two input gradients each); none of the pool's DPU factor.
    # TensorFlow's gradients of the same ops add shape and axis constants and -x / y / y.
    def arithmetic(ops):
        return [op for op in ops if ("BatchNorm_Fold/" in op.name and "/conv_grad/" not in
                                     op.name) or "/dpu_grad/" in op.name]
    assert sorted(op.type for op in arithmetic(heavy)) == ["NoOp"] * 6
    assert len(arithmetic(plain_heavy)) >= 3 * 8
