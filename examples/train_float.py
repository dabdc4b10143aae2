"""Trains the float model of the QAT example and saves a float checkpoint.

    python examples/train_float.py --float_dir /tmp/qat_example/float --steps 1200
"""

import argparse
import os
import sys

import tensorflow as tf

import data
import model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float_dir", default="/tmp/qat_example/float")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    args = parser.parse_args(argv)
    tf.compat.v1.disable_v2_behavior()
    tf.compat.v1.set_random_seed(0)
    train_x, train_y, test_x, test_y = data.load()

    net = model.model_fn(is_training=True)
    train_op = model.train_op(net["loss"], args.learning_rate)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        model.train(sess, train_op, net, train_x, train_y, args.steps, log_every=400)
        os.makedirs(args.float_dir, exist_ok=True)
        path = saver.save(sess, os.path.join(args.float_dir, "model.ckpt"), args.steps)
    print(f"float checkpoint: {path}")

    # The float evaluation graph: batch norms use their moving statistics.
    tf.compat.v1.reset_default_graph()
    net = model.model_fn(is_training=False)
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, path)
        print(f"float accuracy: {model.evaluate(sess, net, test_x, test_y):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
