"""The QAT flow with a Keras 2 (tf_keras) model: float training, QAT, evaluation and deploy.

    python examples/keras_qat.py [--work_dir /tmp/keras_qat_example]

Guide 4.2.2.3 tips for Keras: ``set_learning_phase(1)`` before building the training graph and,
after ``clear_session()``, ``set_learning_phase(0)`` before building the evaluation graph. Train
with ``sess.run`` (not ``model.fit``), running the layers' updates (batch-norm moving averages)
and UPDATE_OPS (the FixNeurons' position histograms) with each step. Each phase runs in its own
process, like train.py / eval.py.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import data

INPUT_NODE = "images"
OUTPUT_NODE = "logits/BiasAdd"


def build(tf_keras):
    """The float Keras model in the default graph: returns (model, labels, loss, accuracy)."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name=INPUT_NODE)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = layers.ReLU(6.0, name="relu2")(x)
    x = layers.Conv2D(32, 1, use_bias=False, name="pw2")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn3")(x)
    x = layers.LeakyReLU(0.1, name="leaky3")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    logits = layers.Dense(10, name="logits")(x)
    model = tf_keras.Model(inputs, logits)
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))
    return model, labels, loss, accuracy


def config(decent_q, output_dir):
    return decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                   input_shapes=[[-1, 28, 28, 1]], output_dir=output_dir)


def train(args, qat):
    """Float training (qat=False) or QAT fine-tuning from the float checkpoint (qat=True)."""
    import tf_keras  # pylint: disable=import-outside-toplevel
    from tensorflow.contrib import decent_q  # pylint: disable=import-outside-toplevel
    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(1)
    tf.compat.v1.set_random_seed(0)
    model, labels, loss, _ = build(tf_keras)
    if qat:
        decent_q.CreateQuantizeTrainingGraph(config=config(decent_q, args.output_dir))
        float_saver = tf.compat.v1.train.Saver(var_list=decent_q.qat.float_variables())
    step = tf.compat.v1.train.get_or_create_global_step()
    updates = model.updates + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
        train_op = tf.compat.v1.train.AdamOptimizer(2e-4 if qat else 2e-3).minimize(loss, step)
    train_x, train_y, _, _ = data.load()
    steps = args.qat_steps if qat else args.float_steps
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        if qat:
            float_saver.restore(sess, tf.train.latest_checkpoint(args.float_dir))
        for i in range(steps):
            x, y = data.batches(train_x, train_y, 64, i)
            sess.run(train_op, {model.input: x, labels: y})
        folder = args.train_dir if qat else args.float_dir
        os.makedirs(folder, exist_ok=True)
        print("saved", tf.compat.v1.train.Saver().save(sess, os.path.join(folder, "model.ckpt"),
                                                       steps))


def evaluate(args):
    import tf_keras  # pylint: disable=import-outside-toplevel
    from tensorflow.contrib import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()

    def accuracy_of(checkpoint, quantized):
        tf_keras.backend.clear_session()
        tf_keras.backend.set_learning_phase(0)
        model, _, _, _ = build(tf_keras)
        files = {}
        if quantized:
            q_config = config(decent_q, args.output_dir)
            files["quantize_eval_graph"] = decent_q.CreateQuantizeEvaluationGraph(config=q_config)
            files.update(decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint,
                                                            config=q_config))
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, tf.train.latest_checkpoint(checkpoint))
            logits = sess.run(model.output, {model.input: test_x})
        return float((np.argmax(logits, 1) == test_y).mean()), files

    float_acc, _ = accuracy_of(args.float_dir, False)
    qat_acc, files = accuracy_of(args.train_dir, True)
    print(f"float accuracy: {float_acc:.4f}")
    print(f"QAT accuracy: {qat_acc:.4f}")
    print("files written:")
    for path in sorted(files.values()):
        print(f"  {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/keras_qat_example")
    parser.add_argument("--float_steps", type=int, default=1000)
    parser.add_argument("--qat_steps", type=int, default=300)
    parser.add_argument("--phase", choices=("all", "float", "qat", "eval"), default="all")
    args = parser.parse_args(argv)
    args.float_dir = os.path.join(args.work_dir, "float")
    args.train_dir = os.path.join(args.work_dir, "train")
    args.output_dir = os.path.join(args.work_dir, "quantize_results")
    if args.phase == "all":
        for phase in ("float", "qat", "eval"):
            subprocess.run([sys.executable, os.path.abspath(__file__), "--phase", phase,
                            "--work_dir", args.work_dir,
                            "--float_steps", str(args.float_steps),
                            "--qat_steps", str(args.qat_steps)], check=True)
        return 0
    tf.compat.v1.disable_v2_behavior()
    if args.phase == "eval":
        evaluate(args)
    else:
        train(args, qat=args.phase == "qat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
