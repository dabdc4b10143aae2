"""Train a small CNN on scikit-learn's 8x8 digits and freeze it: frozen_graph.pb.

    python make_frozen_graph.py [--output_dir .] [--steps 600]

Writes the inference graph and a checkpoint, then freezes them as the guide's
``freeze_graph`` command does (decent_q.freeze). Input node ``input`` [?, 8, 8, 1]; output
node of the quantized part ``logits``; ``prob`` (Softmax) stays float.
"""

import argparse
import os

import numpy as np
import tensorflow as tf
import tf_slim as slim

from my_input_fn import load_split


def model(x, is_training):
    """conv/bn/relu -> conv/bias/relu -> maxpool -> dense/relu -> dense (logits)."""
    init = tf.compat.v1.glorot_uniform_initializer(seed=1)
    w1 = tf.compat.v1.get_variable("conv1/weights", [3, 3, 1, 16], initializer=init)
    y = tf.nn.conv2d(x, w1, 1, "SAME", name="conv1/Conv2D")
    y = slim.batch_norm(y, is_training=is_training, fused=True, scope="conv1/bn")
    y = tf.nn.relu(y, name="conv1/Relu")
    w2 = tf.compat.v1.get_variable("conv2/weights", [3, 3, 16, 32], initializer=init)
    b2 = tf.compat.v1.get_variable("conv2/biases", [32], initializer=tf.zeros_initializer())
    y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(y, w2, 1, "SAME", name="conv2/Conv2D"), b2,
                                  name="conv2/BiasAdd"), name="conv2/Relu")
    y = tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool")
    y = tf.reshape(y, [-1, 4 * 4 * 32], name="flatten")
    w3 = tf.compat.v1.get_variable("fc1/weights", [512, 64], initializer=init)
    b3 = tf.compat.v1.get_variable("fc1/biases", [64], initializer=tf.zeros_initializer())
    y = tf.nn.relu(tf.nn.bias_add(tf.matmul(y, w3, name="fc1/MatMul"), b3,
                                  name="fc1/BiasAdd"), name="fc1/Relu")
    w4 = tf.compat.v1.get_variable("fc2/weights", [64, 10], initializer=init)
    b4 = tf.compat.v1.get_variable("fc2/biases", [10], initializer=tf.zeros_initializer())
    return tf.nn.bias_add(tf.matmul(y, w4, name="fc2/MatMul"), b4, name="logits")


def train(output_dir, steps):
    train_x, train_y, test_x, test_y = load_split()
    ckpt = os.path.join(output_dir, "model.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1], name="input")
        labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
        logits = model(x, is_training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits))
        with tf.control_dependencies(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.UPDATE_OPS)):
            step = tf.compat.v1.train.AdamOptimizer(3e-3).minimize(loss)
        saver = tf.compat.v1.train.Saver()
        rng = np.random.default_rng(0)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                idx = rng.integers(0, len(train_x), 64)
                sess.run(step, {x: train_x[idx], labels: train_y[idx]})
            saver.save(sess, ckpt, global_step=steps)
    # The inference graph: same variables, batch norm in inference mode, softmax on top.
    inference = tf.Graph()
    with inference.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1], name="input")
        tf.nn.softmax(model(x, is_training=False), name="prob")
        tf.io.write_graph(inference.as_graph_def(), output_dir, "inf_graph.pb", as_text=False)
    return os.path.join(output_dir, "inf_graph.pb"), f"{ckpt}-{steps}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=".")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    graph_path, checkpoint = train(args.output_dir, args.steps)
    from decent_q import freeze  # pylint: disable=import-outside-toplevel
    status = freeze.main(["--input_graph", graph_path, "--input_checkpoint", checkpoint,
                          "--input_binary", "true", "--output_graph",
                          os.path.join(args.output_dir, "frozen_graph.pb"),
                          "--output_node_names", "prob"])
    raise SystemExit(status)


if __name__ == "__main__":
    main()
