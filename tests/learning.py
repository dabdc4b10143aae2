"""Does QAT learn? Train / fine-tune / deploy flows on the bundled MNIST digits, in process.

The outcome a QAT user wants is a deployed model that is as accurate as float training. The
helpers here run the guide's flow end to end on small conv + batch-norm nets (each in its own
tf.Graph): float training, QAT from scratch or from the float checkpoint with
CreateQuantizeTrainingGraph, then CreateQuantizeEvaluationGraph + CreateQuantizeDeployGraph,
and measure the accuracy of the written ``quantize_eval_model_*.pb`` on held-out digits.
Used by tests/test_qat_learning.py and benchmarks/accuracy.py.

A model is a function ``build(is_training) -> dict(images, labels, logits, loss, updates)``
that builds the float graph in the default graph; ``logits`` is the output node
``logits/BiasAdd``.
"""

import os
import random
import sys

import numpy as np
import tensorflow as tf
import tf_slim as slim

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import data  # noqa: E402  pylint: disable=wrong-import-position
import eval as qat_eval  # noqa: E402  examples/eval.py  pylint: disable=wrong-import-position,redefined-builtin

import decent_q  # noqa: E402  pylint: disable=wrong-import-position

INPUT_NODE = "images"
OUTPUT_NODE = "logits/BiasAdd"
BATCH = 64


def _head(images, logits, updates=()):
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    return {"images": images, "labels": labels, "logits": logits, "loss": loss,
            "updates": list(updates)}


def slim_net(pool="mean"):
    """tf-slim: strided conv, residual block, depthwise separable conv, global average pooling
    (``Mean`` or ``AvgPool``), Dense + batch norm (unfused), logits. Every conv is followed by
    ``slim.batch_norm(decay=0.9, scale=True)``."""
    def build(is_training):
        images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1], name=INPUT_NODE)
        bn = {"is_training": is_training, "decay": 0.9, "scale": True}
        with slim.arg_scope([slim.conv2d, slim.separable_conv2d, slim.fully_connected],
                            normalizer_fn=slim.batch_norm, normalizer_params=bn):
            net = slim.conv2d(images, 24, 3, stride=2, scope="conv1")             # 14x14
            res = slim.conv2d(net, 24, 3, scope="res_a")
            res = slim.conv2d(res, 24, 3, activation_fn=None, scope="res_b")
            net = tf.nn.relu(net + res, name="res_relu")
            net = slim.separable_conv2d(net, None, 3, depth_multiplier=1, stride=2,
                                        activation_fn=tf.nn.relu6, scope="dw")   # 7x7
            net = slim.conv2d(net, 48, 1, scope="pw")
            if pool == "mean":
                net = tf.reduce_mean(net, [1, 2], name="gap")
            else:
                net = slim.flatten(slim.avg_pool2d(net, 7, scope="gap"))
            # Dense + batch norm: a rank-2 batch norm must be unfused on TF 2.21 (tf_slim's
            # fused path for rank 2 uses the removed ops.Tensor).
            net = slim.fully_connected(net, 48, scope="fc",
                                       normalizer_params=dict(bn, fused=False))
        logits = slim.fully_connected(net, 10, activation_fn=None, scope="logits")
        return _head(images, logits)
    return build


def plain_net():
    """tf-slim: conv-BN-ReLU x4 (two strided) -> ``tf.reduce_mean`` -> logits: the plainest
    conv + batch-norm net with global average pooling."""
    def build(is_training):
        images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1], name=INPUT_NODE)
        bn = {"is_training": is_training, "decay": 0.9, "scale": True}
        with slim.arg_scope([slim.conv2d], normalizer_fn=slim.batch_norm, normalizer_params=bn):
            net = slim.conv2d(images, 16, 3, stride=2, scope="conv1")
            net = slim.conv2d(net, 32, 3, scope="conv2")
            net = slim.conv2d(net, 32, 3, stride=2, scope="conv3")
            net = slim.conv2d(net, 64, 3, scope="conv4")
        net = tf.reduce_mean(net, [1, 2], name="gap")
        logits = slim.fully_connected(net, 10, activation_fn=None, scope="logits")
        return _head(images, logits)
    return build


def keras_net():
    """tf_keras: Conv2D(stride 2)-BN-ReLU, DepthwiseConv2D-BN-ReLU6, Conv2D-BN, residual Add,
    ReLU, Conv2D(stride 2)-BN-ReLU, Conv2D-BN-ReLU, GlobalAveragePooling2D, Dense (the learning
    phase decides the batch norms' mode)."""
    def build(is_training):
        import tf_keras  # pylint: disable=import-outside-toplevel
        layers = tf_keras.layers
        tf_keras.backend.set_learning_phase(1 if is_training else 0)
        inputs = tf_keras.Input((28, 28, 1), name=INPUT_NODE)
        x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
        x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
        x = layers.ReLU(name="relu1")(x)
        y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
        y = layers.BatchNormalization(momentum=0.9, name="bn2")(y)
        y = layers.ReLU(6.0, name="relu2")(y)
        y = layers.Conv2D(24, 1, use_bias=False, name="pw2")(y)
        y = layers.BatchNormalization(momentum=0.9, name="bn3")(y)
        x = layers.ReLU(name="relu3")(layers.Add(name="add")([x, y]))
        x = layers.Conv2D(48, 3, strides=2, padding="same", name="conv4")(x)
        x = layers.BatchNormalization(momentum=0.9, name="bn4")(x)
        x = layers.ReLU(name="relu4")(x)
        x = layers.Conv2D(64, 1, use_bias=False, name="conv5")(x)
        x = layers.BatchNormalization(momentum=0.9, name="bn5")(x)
        x = layers.ReLU(name="relu5")(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        logits = layers.Dense(10, name="logits")(x)
        model = tf_keras.Model(inputs, logits)
        return _head(model.input, logits, model.updates)
    return build


def config(output_dir, **kwargs):
    return decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                   input_shapes=[[-1, 28, 28, 1]], output_dir=output_dir,
                                   **kwargs)


def train(build, ckpt_dir, steps, lr, q_config=None, init=None, seed=0):
    """Trains `steps` Adam steps, cosine-decayed from `lr` (QAT when `q_config` is given; from the float checkpoint
    `init` if given) and saves ``ckpt_dir/model.ckpt-<steps>``.

    Returns:
      (checkpoint prefix, training losses).
    """
    train_x, train_y, _, _ = data.load()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        random.seed(seed)  # tf_keras draws its initializers' seeds from Python's and NumPy's
        np.random.seed(seed)
        net = build(True)
        if q_config is not None:
            decent_q.CreateQuantizeTrainingGraph(config=q_config)
            restore = tf.compat.v1.train.Saver(var_list=decent_q.qat.float_variables())
        else:
            restore = tf.compat.v1.train.Saver()
        step = tf.compat.v1.train.get_or_create_global_step()
        updates = net["updates"] + tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.UPDATE_OPS)
        # Cosine decay to 0: the last steps settle the weights and the moving statistics, so
        # that accuracies compare runs rather than the noise of the last batches.
        rate = tf.compat.v1.train.cosine_decay(lr, step, steps)
        with tf.control_dependencies(updates):
            train_op = tf.compat.v1.train.AdamOptimizer(rate).minimize(net["loss"], step)
        losses = []
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            if init is not None:
                restore.restore(sess, init)
                sess.run(step.assign(0))
            for i in range(steps):
                x, y = data.batches(train_x, train_y, BATCH, i)
                _, loss = sess.run([train_op, net["loss"]],
                                   {net["images"]: x, net["labels"]: y})
                losses.append(float(loss))
            os.makedirs(ckpt_dir, exist_ok=True)
            path = tf.compat.v1.train.Saver().save(sess, os.path.join(ckpt_dir, "model.ckpt"),
                                                   steps)
    return path, losses


def _accuracy(logits):
    _, _, test_x, test_y = data.load()
    return float((np.argmax(logits(test_x), 1) == test_y).mean())


def float_accuracy(build, checkpoint):
    """Held-out accuracy of the float evaluation graph (moving statistics) at `checkpoint`."""
    graph = tf.Graph()
    with graph.as_default():
        net = build(False)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, checkpoint)
            return _accuracy(lambda x: sess.run(net["logits"], {net["images"]: x}))


def frozen(build, checkpoint):
    """The frozen inference GraphDef (moving statistics) of `build` at `checkpoint`, output
    node ``logits/BiasAdd``."""
    graph = tf.Graph()
    with graph.as_default():
        build(False)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, checkpoint)
            return tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [OUTPUT_NODE])


def deploy(build, checkpoint, q_config):
    """CreateQuantizeEvaluationGraph + CreateQuantizeDeployGraph at `checkpoint`; returns the
    path of the written quantize_eval_model_*.pb."""
    graph = tf.Graph()
    with graph.as_default():
        build(False)
        decent_q.CreateQuantizeEvaluationGraph(config=q_config)
        return decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint,
                                                  config=q_config)["quantize_eval_model"]


def model_accuracy(path):
    """Held-out accuracy of a written model (.pb), e.g. quantize_eval_model.pb (the QAT
    example's eval.py measures its models the same way)."""
    _, _, test_x, test_y = data.load()
    return qat_eval.model_accuracy(path, test_x, test_y, OUTPUT_NODE)
