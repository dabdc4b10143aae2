"""Top-1 accuracy of a (float or quantized) digits graph on the held-out split.

    python evaluate.py frozen_graph.pb
    python evaluate.py quantize_results/quantize_eval_model.pb

As the guide says, a quantized model needs ``from tensorflow.contrib import decent_q`` (or
``import decent_q``) to register the FixNeuron op before it is loaded.
"""

import sys

import numpy as np
import tensorflow as tf

try:
    from tensorflow.contrib import decent_q  # noqa: F401  registers FixNeuron
except ImportError:  # decent_q not installed (running from a checkout): same op
    import decent_q  # noqa: F401

from my_input_fn import load_split


def accuracy(graph_path, output="prob:0"):
    graph_def = tf.compat.v1.GraphDef()
    with open(graph_path, "rb") as f:
        graph_def.ParseFromString(f.read())
    _, _, test_x, test_y = load_split()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        prob = sess.run(output, {"input:0": test_x})
    return float(np.mean(np.argmax(prob, axis=1) == test_y))


if __name__ == "__main__":
    print(f"accuracy {accuracy(sys.argv[1]):.4f}")
