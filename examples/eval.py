"""QAT step 2 (guide 4.2.2.3): evaluation graph, deploy graph and accuracy, in a new process.

    python examples/eval.py --float_dir /tmp/qat_example/float --train_dir /tmp/qat_example/train

Builds the float EVALUATION graph, rewrites it with CreateQuantizeEvaluationGraph, then freezes
it with the latest QAT checkpoint (CreateQuantizeDeployGraph) and prints the float accuracy, the
QAT accuracy (of the written quantize_eval_model) and the files written.
"""

import argparse
import os
import sys

import tensorflow as tf

import data
import model


def float_accuracy(float_dir, images, labels):
    graph = tf.Graph()
    with graph.as_default():
        net = model.model_fn(is_training=False)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, tf.train.latest_checkpoint(float_dir))
            return model.evaluate(sess, net, images, labels)


def model_accuracy(path, images, labels, output):
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session() as sess:
            logits = sess.run(output + ":0", {model.INPUT_NODE + ":0": images})
    return float((logits.argmax(1) == labels).mean())


def onnx_accuracy(path, images, labels):
    import onnxruntime  # pylint: disable=import-outside-toplevel
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {model.INPUT_NODE: images})[0]
    return float((logits.argmax(1) == labels).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float_dir", default="/tmp/qat_example/float")
    parser.add_argument("--train_dir", default="/tmp/qat_example/train")
    parser.add_argument("--output_dir", default="/tmp/qat_example/quantize_results")
    parser.add_argument("--output_format", default="pb", choices=("pb", "onnx"),
                        help="onnx also writes quantize_eval_model_*.onnx and prints its "
                             "accuracy in ONNX Runtime (needs pip install 'decent_q[onnx]')")
    args = parser.parse_args(argv)
    tf.compat.v1.disable_v2_behavior()
    from tensorflow.contrib import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()

    float_acc = float_accuracy(args.float_dir, test_x, test_y)

    # Create the float evaluation graph
    net = model.model_fn(is_training=False)
    q_config = decent_q.QuantizeConfig(input_nodes=[model.INPUT_NODE],
                                       output_nodes=[model.OUTPUT_NODE],
                                       input_shapes=[model.INPUT_SHAPE],
                                       output_dir=args.output_dir,
                                       output_format=args.output_format)
    eval_graph = decent_q.CreateQuantizeEvaluationGraph(config=q_config)
    files = decent_q.CreateQuantizeDeployGraph(checkpoint=args.train_dir, config=q_config)

    # The evaluation graph itself, with the checkpoint (FixNeurons read the trained positions).
    with tf.compat.v1.Session() as sess:
        tf.compat.v1.train.Saver().restore(sess, tf.train.latest_checkpoint(args.train_dir))
        graph_acc = model.evaluate(sess, net, test_x, test_y)

    # The frozen eval model: the user's output node is carried by its FixNeuron '<name>/aquant'.
    qat_acc = model_accuracy(files["quantize_eval_model"], test_x, test_y,
                             model.OUTPUT_NODE + "/aquant")
    print(f"test images: {len(test_y)}")
    print(f"float accuracy: {float_acc:.4f}")
    print(f"QAT accuracy (quantize eval graph + checkpoint): {graph_acc:.4f}")
    print(f"QAT accuracy (quantize_eval_model): {qat_acc:.4f}")
    if "quantize_eval_model_onnx" in files:
        print("QAT accuracy (quantize_eval_model.onnx in ONNX Runtime): "
              f"{onnx_accuracy(files['quantize_eval_model_onnx'], test_x, test_y):.4f}")
    print("files written:")
    for path in [eval_graph] + sorted(files.values()):
        print(f"  {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
