"""Small frozen graphs built in code, shared by the test modules.

Every builder returns a frozen GraphDef (weights as Const nodes, no variables) with a
``Placeholder`` named ``input`` of shape ``[None, 8, 8, 3]``. Weights are random but seeded, so
each call gives the same graph.
"""

import os
import textwrap

import numpy as np
import tensorflow as tf

from decent_q.config import QuantizeConfig

INPUT = "input"
SHAPE = [8, 8, 3]


def _const(rng, shape, name, scale=0.5):
    return tf.constant((rng.standard_normal(shape) * scale).astype(np.float32), name=name)


def small_cnn(seed=0, with_softmax=True):
    """conv/bn/relu -> maxpool -> depthwise/bias/relu6 -> conv/bias/relu -> mean -> dense
    (-> softmax 'prob'). Output node of the quantized range: 'logits'."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name=INPUT)
        y = tf.nn.conv2d(x, _const(rng, [3, 3, 3, 8], "conv1/weights"), 1, "SAME",
                         name="conv1/Conv2D")
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, _const(rng, [8], "conv1/bn/gamma", 0.1) + 1.0, _const(rng, [8], "conv1/bn/beta"),
            mean=_const(rng, [8], "conv1/bn/mean", 0.1),
            variance=tf.abs(_const(rng, [8], "conv1/bn/var")) + 0.5, is_training=False,
            name="conv1/bn")
        y = tf.nn.relu(y, name="conv1/Relu")
        y = tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool1")
        y = tf.nn.depthwise_conv2d(y, _const(rng, [3, 3, 8, 1], "dw2/weights"), [1, 1, 1, 1],
                                   "SAME", name="dw2/depthwise")
        y = tf.nn.bias_add(y, _const(rng, [8], "dw2/biases", 0.1), name="dw2/BiasAdd")
        y = tf.nn.relu6(y, name="dw2/Relu6")
        y = tf.nn.conv2d(y, _const(rng, [1, 1, 8, 16], "conv3/weights"), 1, "SAME",
                         name="conv3/Conv2D")
        y = tf.nn.bias_add(y, _const(rng, [16], "conv3/biases", 0.1), name="conv3/BiasAdd")
        y = tf.nn.relu(y, name="conv3/Relu")
        y = tf.reduce_mean(y, axis=[1, 2], name="gap")
        y = tf.matmul(y, _const(rng, [16, 10], "fc/weights"), name="fc/MatMul")
        y = tf.nn.bias_add(y, _const(rng, [10], "fc/biases", 0.1), name="logits")
        if with_softmax:
            tf.nn.softmax(y, name="prob")
    return graph.as_graph_def()


def concat_graph(seed=0):
    """Two conv branches joined by ConcatV2, padded, reshaped and expanded: the ops whose
    constant parameters the deploy model turns into attributes."""
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name=INPUT)
        a = tf.nn.relu(tf.nn.conv2d(x, _const(rng, [3, 3, 3, 4], "a/weights"), 1, "SAME",
                                    name="a/Conv2D"), name="a/Relu")
        b = tf.nn.conv2d(x, _const(rng, [1, 1, 3, 4], "b/weights"), 1, "SAME", name="b/Conv2D")
        b = tf.nn.bias_add(b, _const(rng, [4], "b/biases"), name="b/BiasAdd")
        y = tf.concat([a, b], axis=3, name="cat")
        y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad")
        y = tf.reduce_mean(y, axis=[1, 2], keepdims=True, name="mean")
        y = tf.reshape(y, [-1, 8], name="flat")
        tf.expand_dims(y, 1, name="out")
    return graph.as_graph_def()


def forms_graph():
    """conv (no bias) -> relu -> atrous conv + Add bias -> relu -> transposed conv + bias
    'out' (8x8x2)."""
    rng = np.random.default_rng(3)
    graph = tf.Graph()
    with graph.as_default():
        def const(shape, name):
            return tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.5, name=name)

        x = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name=INPUT)
        y = tf.nn.relu(tf.nn.conv2d(x, const([3, 3, 3, 4], "a/w"), 1, "SAME", name="a/conv"),
                       name="a/relu")
        s2b = tf.space_to_batch_nd(y, [2, 2], [[0, 0], [0, 0]], name="b/s2b")
        y = tf.nn.conv2d(s2b, const([3, 3, 4, 4], "b/w"), 1, "SAME", name="b/conv")
        y = tf.compat.v1.batch_to_space_nd(y, [2, 2], [[0, 0], [0, 0]], name="b/b2s")
        y = tf.nn.relu(tf.add(const([4], "b/b"), y, name="b/add"), name="b/relu")
        size = tf.stack([tf.shape(y)[0], 8, 8, 2])
        y = tf.nn.conv2d_transpose(y, const([3, 3, 2, 4], "c/w"), size, 1, name="c/conv")
        tf.nn.bias_add(y, const([2], "c/b"), name="out")
    return graph.as_graph_def()


def nan_graph():
    """input -> conv -> relu -> log(y - 10) 'out': NaN for every input (the float check's
    failure)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name=INPUT)
        w = tf.constant(np.full([1, 1, 3, 2], 0.5, np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="relu")
        tf.math.log(y - 10.0, name="out")  # log of a negative number: NaN
    return graph.as_graph_def()


def config(output_nodes=("logits",), **kw):
    kw.setdefault("calib_iter", 2)
    return QuantizeConfig(input_nodes=[INPUT], output_nodes=list(output_nodes),
                          input_shapes=[[-1] + SHAPE], **kw)


def batch(step=0, n=4):
    """A deterministic input batch for step `step`."""
    rng = np.random.default_rng(100 + step)
    return rng.uniform(0.0, 1.0, [n] + SHAPE).astype(np.float32)


def input_fn(step):
    return {INPUT: batch(step)}


def run(graph_def, fetch, images):
    """Runs `fetch` (a tensor name) of `graph_def` on `images` fed to 'input'."""
    import decent_q  # noqa: F401  registers FixNeuron  pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetch, {f"{INPUT}:0": images})


def write_input_fn_module(folder, name="my_input_fn", body=None):
    """Writes a module `name`.py into `folder` with calib_input / dump_input functions."""
    body = body or textwrap.dedent("""
        import numpy as np

        def calib_input(iter):
            rng = np.random.default_rng(100 + iter)
            return {"input": rng.uniform(0.0, 1.0, [4, 8, 8, 3]).astype(np.float32)}

        def dump_input(iter):
            rng = np.random.default_rng(200 + iter)
            return {"input": rng.uniform(0.0, 1.0, [1, 8, 8, 3]).astype(np.float32)}
        """)
    path = os.path.join(str(folder), f"{name}.py")
    with open(path, "w") as f:
        f.write(body)
    return path
