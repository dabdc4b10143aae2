"""Fingerprints of the models decent_q writes: the sha256 of every file, for a fixed set of cases.

    python benchmarks/fingerprint.py --out manifest.json --checkpoints DIR [--compare other.json]

Every case quantizes a model built by code (seeded; nothing is downloaded) with the public API
(``quantize_frozen``, ``QuantizeConfig``, the ``CreateQuantize*Graph`` calls) or the examples'
own code, in a fresh default graph, and writes its models into a folder of its own; the
manifest is ``{case: {file name: sha256}}``, or ``{case: {"error": "<type>: <first line>"}}``
for a case that raised. Time stamps are dropped from file names (``deploy_model_5_<stamp>.pb``
-> ``deploy_model_5.pb``). Cases:

- ``ptq_example/*``: examples/ptq's digits CNN (trained 60 steps), frozen again with
  ``freeze_graph`` and quantized with the default options (calib_iter 10) and one option
  changed in each of the others.
- ``graph/*``: small frozen graphs, one per layer form the quantizer recognises (constants
  from a seeded generator), and nets with slim / Keras / tf.layers batch norms frozen with
  seeded random variable values; a few with options changed.
- ``zoo/*``: the model-zoo models CI runs (benchmarks/model_zoo.py), with model_zoo's config.
- ``qat/*``: the QAT examples (examples/train.py + eval.py, examples/keras_qat.py) and four
  batch-norm nets at fold_bn_freeze_step -1 / 0 / 3, each trained 5 steps.

Whatever trains (the examples' float and QAT models, the QAT nets) is trained once and kept in
``--checkpoints DIR``; a later run (another commit) finds it there and only deploys from it, so
two commits are compared on the same checkpoints (keep DIR where it is: TensorFlow's checkpoint
index names absolute paths). ``--compare other.json`` prints every case and file that differs
and exits 1 if any does; ``--only PREFIX,...`` runs the cases whose names start so; ``--keep
FOLDER`` keeps the written models there. decent_q is imported from this script's checkout.
"""

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's decent_q (ahead of an installed one), benchmarks/ and the examples' modules.
sys.path[:0] = [ROOT] + [os.path.join(ROOT, folder) for folder in
                         ("benchmarks", "examples", os.path.join("examples", "ptq"))]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers (layers_bn) needs Keras 2

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf
import tf_keras
import tf_slim as slim

import decent_q
import model_zoo

SHAPE = [8, 8, 3]          # input of the hand-built graphs and nets
CALIB_ITER = 2             # calibration batches of the hand-built graphs
EXAMPLE_CALIB_ITER = 10    # ... of examples/ptq's model
EXAMPLE_STEPS = 60         # examples/ptq float training
QAT_STEPS = 5              # every QAT training
QAT_FLOAT_STEPS = 30       # the QAT examples' float training
_STAMP = re.compile(r"_\d{14}(?=\.pb$)")


# -- running cases ------------------------------------------------------------------------------

def fresh_graph(learning_phase=0):
    """A new, empty default graph (Keras' too), graph seed 0, Keras learning phase set."""
    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(learning_phase)
    tf.compat.v1.set_random_seed(0)


def file_hashes(folder):
    """{file name relative to `folder`, time stamp dropped: sha256} of every file in it."""
    hashes = {}
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            hashes[_STAMP.sub("", os.path.relpath(path, folder))] = digest
    return hashes


def run_case(case, out_dir, work):
    """Runs one case (a function of (out_dir, work)) in a fresh graph; returns its entry."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    fresh_graph()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            case(out_dir, work)
    except Exception as err:  # pylint: disable=broad-except
        lines = str(err).strip().splitlines() or [""]
        text = lines[0].replace(work.tmp, "<tmp>").replace(work.checkpoints, "<checkpoints>") \
            .replace(ROOT, "<checkout>")
        return {"error": f"{type(err).__name__}: {text}"}
    if not os.listdir(out_dir):
        return {"error": "no file written"}
    return file_hashes(out_dir)


class Work:
    """Where a run keeps things: `checkpoints` (kept across runs) and `tmp` (this run's)."""

    def __init__(self, checkpoints, tmp):
        self.checkpoints = os.path.abspath(checkpoints)
        self.tmp = os.path.abspath(tmp)

    def checkpoint_dir(self, case):
        """Where `case` keeps what it trained."""
        return os.path.join(self.checkpoints, case)

    def scratch(self, case):
        """A throwaway folder (for the files a training run writes)."""
        path = os.path.join(self.tmp, "_scratch", case)
        os.makedirs(path, exist_ok=True)
        return path


# -- frozen graphs built in code ----------------------------------------------------------------

def const(rng, shape, name, scale=0.5):
    """A Const of normal values times `scale`."""
    return tf.constant((rng.standard_normal(shape) * scale).astype(np.float32), name=name)


def compute(x, rng, name, kind="conv", cout=8):
    """One compute op on x named `name`/...: conv, dilated (Conv2D with dilations), atrous
    (SpaceToBatchND form), depthwise (multiplier 2), transpose (stride 2) or matmul."""
    cin = int(x.shape[-1])
    if kind in ("conv", "dilated"):
        return tf.nn.conv2d(x, const(rng, [3, 3, cin, cout], f"{name}/weights"), 1, "SAME",
                            dilations=2 if kind == "dilated" else 1, name=f"{name}/Conv2D")
    if kind == "atrous":
        return tf.nn.atrous_conv2d(x, const(rng, [3, 3, cin, cout], f"{name}/weights"), 2,
                                   "SAME", name=f"{name}/atrous")
    if kind == "depthwise":
        return tf.nn.depthwise_conv2d(x, const(rng, [3, 3, cin, 2], f"{name}/weights"),
                                      [1, 1, 1, 1], "SAME", name=f"{name}/depthwise")
    if kind == "transpose":
        h, w = int(x.shape[1]), int(x.shape[2])
        shape = tf.stack([tf.shape(x)[0], 2 * h, 2 * w, cout], name=f"{name}/output_shape")
        return tf.nn.conv2d_transpose(x, const(rng, [3, 3, cout, cin], f"{name}/weights"),
                                      shape, 2, "SAME", name=f"{name}/conv2d_transpose")
    flat = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))], name=f"{name}/flatten")
    return tf.matmul(flat, const(rng, [int(flat.shape[1]), cout], f"{name}/weights"),
                     name=f"{name}/MatMul")


def activation(y, name, kind):
    """relu, relu6, leaky (the LeakyRelu op), leaky_max (Maximum(Mul(a, x), x)), leaky_keras
    (Sub(Relu(x), Mul(a, Relu(Neg(x))))), hard_sigmoid (Relu6(x + 3) * 1/6), hard_sigmoid_div
    (Relu6(x + 3) / 6), hard_swish (x * Relu6(x + 3) * 1/6) or None."""
    if kind is None:
        return y
    if kind in ("relu", "relu6"):
        return getattr(tf.nn, kind)(y, name=f"{name}/{kind}")
    if kind == "leaky":
        return tf.nn.leaky_relu(y, 0.1, name=f"{name}/leaky")
    if kind == "leaky_max":
        return tf.maximum(tf.multiply(0.1, y, name=f"{name}/leaky/mul"), y, name=f"{name}/leaky")
    if kind == "leaky_keras":
        neg = tf.nn.relu(tf.negative(y, name=f"{name}/leaky/neg"), name=f"{name}/leaky/relu_neg")
        return tf.subtract(tf.nn.relu(y, name=f"{name}/leaky/relu"),
                           tf.multiply(0.1, neg, name=f"{name}/leaky/mul"), name=f"{name}/leaky")
    r6 = tf.nn.relu6(tf.add(y, 3.0, name=f"{name}/hs/add"), name=f"{name}/hs/relu6")
    if kind == "hard_sigmoid_div":
        return tf.divide(r6, 6.0, name=f"{name}/hs")
    if kind == "hard_swish":
        r6 = tf.multiply(y, r6, name=f"{name}/hs/x")
    return tf.multiply(r6, 1.0 / 6.0, name=f"{name}/hs")


def layer(x, rng, name, kind="conv", bias="BiasAdd", act="relu", bn=None):
    """compute -> [bias: BiasAdd | Add] -> [bn: fused | global | unfused] -> activation."""
    y = compute(x, rng, name, kind)
    n = int(y.shape[-1])
    if bias == "BiasAdd":
        y = tf.nn.bias_add(y, const(rng, [n], f"{name}/biases", 0.1), name=f"{name}/BiasAdd")
    elif bias == "Add":
        y = tf.add(y, const(rng, [n], f"{name}/biases", 0.1), name=f"{name}/add")
    if bn:
        y = batch_norm(y, rng, f"{name}/bn", bn)
    return activation(y, name, act)


def batch_norm(y, rng, name, form):
    """An inference batch norm of constants: fused (FusedBatchNormV3), global
    (BatchNormWithGlobalNormalization) or unfused (tf.nn.batch_normalization's Mul / Add)."""
    n = int(y.shape[-1])
    gamma = tf.constant(rng.uniform(0.5, 1.5, n).astype(np.float32), name=f"{name}/gamma")
    beta = const(rng, [n], f"{name}/beta", 0.2)
    mean = const(rng, [n], f"{name}/moving_mean", 0.2)
    var = tf.constant(rng.uniform(0.5, 1.5, n).astype(np.float32), name=f"{name}/moving_var")
    if form == "fused":
        return tf.compat.v1.nn.fused_batch_norm(y, gamma, beta, mean, var, epsilon=1e-3,
                                                is_training=False, name=name)[0]
    if form == "global":
        return tf.compat.v1.nn.batch_norm_with_global_normalization(
            y, mean, var, beta, gamma, 1e-3, True, name=name)
    return tf.nn.batch_normalization(y, mean, var, beta, gamma, 1e-3, name=name)


def _two_layers(kind="conv", act="relu", bias="BiasAdd", bn=None):
    """input -> layer(kind, act, bias, bn) -> a conv (matmul after a matmul) layer without
    activation."""
    second = "matmul" if kind == "matmul" else "conv"
    return lambda x, rng: layer(layer(x, rng, "l1", kind, bias, act, bn), rng, "l2", second,
                                act=None)


def shift_extremes(x, rng):
    """Tiny weights under a large bias, then a tiny bias: shift_cut and shift_bias out of the
    DPU's ranges (what adjust_shift_cut / adjust_shift_bias move)."""
    y = tf.nn.conv2d(x, const(rng, [3, 3, 3, 8], "c1/weights", 1e-3), 1, "SAME",
                     name="c1/Conv2D")
    y = tf.nn.bias_add(y, const(rng, [8], "c1/biases", 50.0), name="c1/BiasAdd")
    y = tf.nn.conv2d(tf.nn.relu(y, name="c1/relu"), const(rng, [3, 3, 8, 8], "c2/weights"), 1,
                     "SAME", name="c2/Conv2D")
    return tf.nn.bias_add(y, const(rng, [8], "c2/biases", 1e-6), name="c2/BiasAdd")


def depthwise_relu6(x, rng):
    """conv-relu6 -> depthwise-relu6 -> conv (what CLE equalizes, replace_relu6 permitting)."""
    y = layer(x, rng, "c1", act="relu6")
    y = layer(y, rng, "dw", "depthwise", act="relu6")
    return layer(y, rng, "pw", act=None)


def transpose_conv(x, rng):
    """conv -> conv2d_transpose (stride 2) -> conv."""
    y = layer(x, rng, "c1")
    return layer(layer(y, rng, "up", "transpose"), rng, "c2", act=None)


def matmul(x, rng):
    """conv -> dense-relu -> dense."""
    y = layer(layer(x, rng, "c1"), rng, "fc1", "matmul")
    return layer(y, rng, "fc2", "matmul", act=None)


def bn_after_relu(x, rng):
    """conv-relu -> a batch norm with no compute op before it -> conv."""
    y = batch_norm(layer(x, rng, "c1"), rng, "bn", "fused")
    return layer(y, rng, "c2", act=None)


def bn_on_input(x, rng):
    """A batch norm of the input -> conv."""
    return layer(batch_norm(x, rng, "bn", "fused"), rng, "c1", act=None)


def concat(x, rng):
    """Two branches concatenated into a conv, whose output is concatenated with a third (the
    branches' positions differ: align_concat 0, 1 and 2 give three models)."""
    a = layer(x, rng, "a")
    b = layer(x, rng, "b", "dilated", act="relu6")
    c = layer(tf.concat([a, b], 3, name="cat1"), rng, "c")
    return tf.concat([c, layer(x, rng, "d", act="relu6")], 3, name="cat2")


def residual(x, rng):
    """conv-relu -> conv -> Add (residual) -> Relu -> conv."""
    y = layer(x, rng, "c1")
    z = layer(y, rng, "c2", act=None)
    y = tf.nn.relu(tf.add(y, z, name="res/add"), name="res/relu")
    return layer(y, rng, "c3", act=None)


def pooling(x, rng):
    """AvgPool 3x3 (a DPU special factor), AvgPool 2x3 and global Mean pooling over 5x4 (scaled
    only with scale_all_avgpool)."""
    y = tf.nn.avg_pool2d(layer(x, rng, "c1"), 3, 1, "VALID", name="pool1")
    y = tf.nn.avg_pool2d(layer(y, rng, "c2"), [2, 3], 1, "VALID", name="pool2")
    y = tf.reduce_mean(layer(y, rng, "c3"), [1, 2], name="gap")
    return tf.nn.bias_add(tf.matmul(y, const(rng, [8, 10], "fc/weights"), name="fc/MatMul"),
                          const(rng, [10], "fc/biases", 0.1), name="logits")


# (case name, graph builder, options)
GRAPHS = [
    ("conv_biasadd_relu", _two_layers(), {}),
    ("conv_add_relu6", _two_layers(act="relu6", bias="Add"), {}),
    ("conv_no_bias", _two_layers(bias=None), {}),
    ("dilated_conv", _two_layers("dilated"), {}),
    ("atrous_conv", _two_layers("atrous"), {}),
    ("depthwise_relu6", depthwise_relu6, {}),
    ("depthwise_relu6/do_cle1", depthwise_relu6, {"do_cle": 1}),
    ("depthwise_relu6/do_cle1_replace_relu6_0", depthwise_relu6,
     {"do_cle": 1, "replace_relu6": 0}),
    ("transpose_conv", transpose_conv, {}),
    ("matmul", matmul, {}),
    ("leaky_relu_op", _two_layers(act="leaky"), {}),
    ("leaky_relu_op/simulate_dpu0", _two_layers(act="leaky"), {"simulate_dpu": 0}),
    ("leaky_relu_maximum", _two_layers(act="leaky_max"), {}),
    ("leaky_relu_keras", _two_layers(act="leaky_keras"), {}),
    ("hard_sigmoid", _two_layers(act="hard_sigmoid"), {}),
    ("hard_sigmoid/simulate_dpu0", _two_layers(act="hard_sigmoid"), {"simulate_dpu": 0}),
    ("hard_sigmoid_div", _two_layers(act="hard_sigmoid_div"), {}),
    ("hard_swish", _two_layers(act="hard_swish"), {}),
    ("bn_fused", _two_layers(bias=None, bn="fused"), {}),
    ("bn_fused/do_cle1", _two_layers(bias=None, bn="fused"), {"do_cle": 1}),
    ("bn_fused_after_bias", _two_layers(bn="fused"), {}),
    ("bn_global_normalization", _two_layers(bias=None, bn="global"), {}),
    ("bn_unfused", _two_layers(bias=None, bn="unfused"), {}),
    ("bn_depthwise", _two_layers("depthwise", bias=None, bn="fused"), {}),
    ("bn_atrous", _two_layers("atrous", bias=None, bn="fused"), {}),
    ("bn_transpose", _two_layers("transpose", bias=None, bn="fused"), {}),
    ("bn_matmul_unfused", _two_layers("matmul", bias=None, bn="unfused"), {}),
    ("bn_after_relu", bn_after_relu, {}),
    ("bn_on_input", bn_on_input, {}),
    ("concat", concat, {}),
    ("concat/align_concat1", concat, {"align_concat": 1}),
    ("concat/align_concat2", concat, {"align_concat": 2}),
    ("residual_add_relu", residual, {}),
    ("shift_extremes", shift_extremes, {}),
    ("shift_extremes/adjust_shift_cut0", shift_extremes, {"adjust_shift_cut": 0}),
    ("shift_extremes/adjust_shift_bias0", shift_extremes, {"adjust_shift_bias": 0}),
    ("shift_extremes/adjust_shift_bias2", shift_extremes, {"adjust_shift_bias": 2}),
    ("pooling", pooling, {}),
    ("pooling/simulate_dpu0", pooling, {"simulate_dpu": 0}),
    ("pooling/scale_all_avgpool0", pooling, {"scale_all_avgpool": 0}),
]


# -- nets with variables (batch norms of tf-slim, Keras, tf.layers): PTQ and QAT ---------------
# Each builds the net in the default graph: (images, logits, Keras update ops).

def slim_net(fused):
    """conv-BN-relu x2 (slim.batch_norm fused or not) -> dense 'logits'."""
    def build(training):
        images = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name="input")
        bn = {"is_training": training, "fused": fused, "scale": True, "decay": 0.9}
        with slim.arg_scope([slim.conv2d], normalizer_fn=slim.batch_norm, normalizer_params=bn):
            y = slim.conv2d(images, 8, 3, scope="conv1")
            y = slim.conv2d(y, 8, 3, stride=2, scope="conv2")
        logits = slim.fully_connected(slim.flatten(y), 10, activation_fn=None, scope="logits")
        return images, logits, []
    return build


def keras_conv_bn(training):  # pylint: disable=unused-argument  (Keras: the learning phase)
    """Keras Conv2D-BatchNormalization-ReLU x2 -> Dense 'logits'."""
    layers = tf_keras.layers
    inputs = tf_keras.Input(SHAPE, name="input")
    y = inputs
    for i, stride in ((1, 1), (2, 2)):
        y = layers.Conv2D(8, 3, stride, padding="same", use_bias=False, name=f"conv{i}")(y)
        y = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(y)
        y = layers.ReLU(name=f"relu{i}")(y)
    logits = layers.Dense(10, name="logits")(layers.Flatten(name="flatten")(y))
    model = tf_keras.Model(inputs, logits)
    return model.input, model.output, list(model.updates)


def keras_dense_bn(training):  # pylint: disable=unused-argument  (Keras: the learning phase)
    """Keras Dense-BatchNormalization-ReLU (an unfused batch norm) -> Dense 'logits'."""
    layers = tf_keras.layers
    inputs = tf_keras.Input(SHAPE, name="input")
    y = layers.Dense(32, use_bias=False, name="fc1")(layers.Flatten(name="flatten")(inputs))
    y = layers.ReLU(name="relu1")(layers.BatchNormalization(momentum=0.9, name="bn1")(y))
    logits = layers.Dense(10, name="logits")(y)
    model = tf_keras.Model(inputs, logits)
    return model.input, model.output, list(model.updates)


def layers_bn(training):
    """tf.compat.v1.layers conv - batch_normalization(fused) - relu -> dense 'logits'."""
    v1 = tf.compat.v1.layers
    images = tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name="input")
    y = v1.conv2d(images, 8, 3, padding="same", use_bias=False, name="conv1")
    y = tf.nn.relu(v1.batch_normalization(y, fused=True, training=training, name="bn1"))
    logits = v1.dense(tf.reshape(y, [-1, 8 * 8 * 8]), 10, name="logits")
    return images, logits, []


NETS = {"slim_fused": slim_net(True), "slim_unfused": slim_net(False),
        "keras_conv_bn": keras_conv_bn, "keras_dense_bn": keras_dense_bn,
        "layers_bn": layers_bn}


def freeze_variables(output, seed=0):
    """The default graph frozen with seeded random variable values (batch-norm variances and
    gammas in [0.5, 1.5])."""
    graph = tf.compat.v1.get_default_graph()
    rng = np.random.default_rng(seed)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for var in sorted(tf.compat.v1.global_variables(), key=lambda v: v.op.name):
            shape = var.shape.as_list()
            value = rng.uniform(0.5, 1.5, shape) if re.search("variance|gamma", var.op.name) \
                else rng.standard_normal(shape) * 0.3
            var.load(value.astype(np.float32), sess)
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [output])


# -- post-training quantization cases ----------------------------------------------------------

def random_input(step):
    """Calibration batch `step` of the hand-built graphs: 4 images, uniform in [-2, 2]."""
    rng = np.random.default_rng(100 + step)
    return {"input": rng.uniform(-2.0, 2.0, [4] + SHAPE).astype(np.float32)}


def quantize(graph_def, out_dir, output, **options):
    """quantize_frozen of a hand-built graph (input 'input' [?, 8, 8, 3])."""
    options.setdefault("calib_iter", CALIB_ITER)
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=[output],
                                     input_shapes=[[-1] + SHAPE], output_dir=out_dir, **options)
    decent_q.quantize_frozen(graph_def, random_input, config, progress=False)


def graph_case(build, options):
    """PTQ of a GRAPHS builder with `options`."""
    def case(out_dir, work):  # pylint: disable=unused-argument
        graph = tf.compat.v1.get_default_graph()
        out = build(tf.compat.v1.placeholder(tf.float32, [None] + SHAPE, name="input"),
                    np.random.default_rng(0))
        quantize(graph.as_graph_def(), out_dir, out.op.name, **options)
    return case


def net_ptq_case(build):
    """PTQ of a NETS builder's inference graph, frozen with random variable values."""
    def case(out_dir, work):  # pylint: disable=unused-argument
        _, logits, _ = build(False)
        quantize(freeze_variables(logits.op.name), out_dir, logits.op.name)
    return case


def zoo_case(spec):
    """model_zoo's post-training quantization of one model (its config and batches)."""
    def case(out_dir, work):  # pylint: disable=unused-argument
        graph_def, input_node, logits = model_zoo.build_inference(spec)
        config = model_zoo._config(spec, input_node, logits,  # pylint: disable=protected-access
                                   out_dir)
        decent_q.quantize_frozen(graph_def, lambda step: {input_node: model_zoo.batch(spec, step)},
                                 config, progress=False)
    return case


# -- examples/ptq -------------------------------------------------------------------------------

EXAMPLE_VARIANTS = {
    "default": {},
    "do_cle1": {"do_cle": 1},
    "do_cle1_replace_relu6_0": {"do_cle": 1, "replace_relu6": 0},
    "simulate_dpu0": {"simulate_dpu": 0},
    "scale_all_avgpool0": {"scale_all_avgpool": 0},
    "adjust_shift_cut0": {"adjust_shift_cut": 0},
    "adjust_shift_bias0": {"adjust_shift_bias": 0},
    "adjust_shift_bias2": {"adjust_shift_bias": 2},
    "align_concat1": {"align_concat": 1},
    "align_concat2": {"align_concat": 2},
    "method0": {"method": 0},
    "method2": {"method": 2},
    "weight_bit4": {"weight_bit": 4},
    "weight_bit6": {"weight_bit": 6},
    "activation_bit4": {"activation_bit": 4},
    "activation_bit6": {"activation_bit": 6},
    "arch_type_DPUCADF8H": {"arch_type": "DPUCADF8H"},
    "ignore_nodes_conv2": {"ignore_nodes": ["conv2/Conv2D"]},
    "nodes_bit": {"nodes_bit": {"conv2/Conv2D": 4, "fc1/Relu": 6}},
    "nodes_method": {"nodes_method": {"conv1/Conv2D": 0, "fc1/Relu": 2}},
}


def freeze_example(folder, output):
    """examples/ptq's freeze step (make_frozen_graph.py): inf_graph.pb + checkpoint -> output."""
    from decent_q import freeze  # pylint: disable=import-outside-toplevel
    status = freeze.main(["--input_graph", os.path.join(folder, "inf_graph.pb"),
                          "--input_checkpoint", tf.train.latest_checkpoint(folder),
                          "--input_binary", "true", "--output_graph", output,
                          "--output_node_names", "prob"])
    if status:
        raise RuntimeError(f"freeze_graph exited with {status}")


def example_frozen_graph(work):
    """examples/ptq's frozen graph, kept with the checkpoints (trained and frozen once)."""
    folder = work.checkpoint_dir("ptq_example")
    path = os.path.join(folder, "frozen_graph.pb")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        importlib.import_module("make_frozen_graph").train(folder, EXAMPLE_STEPS)
        freeze_example(folder, path)
    return path


def example_freeze_case(out_dir, work):
    """The example's freeze step again, from the kept graph and checkpoint."""
    example_frozen_graph(work)
    freeze_example(work.checkpoint_dir("ptq_example"), os.path.join(out_dir, "frozen_graph.pb"))


def example_ptq_case(options):
    """The guide's quantize command on the example (input_fn my_input_fn.calib_input)."""
    def case(out_dir, work):
        config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["logits"],
                                         input_shapes=[[-1, 8, 8, 1]],
                                         calib_iter=EXAMPLE_CALIB_ITER, output_dir=out_dir,
                                         **options)
        decent_q.quantize_frozen(example_frozen_graph(work),
                                 importlib.import_module("my_input_fn").calib_input, config,
                                 progress=False)
    return case


# -- quantization-aware training ----------------------------------------------------------------

def trained(folder):
    """Whether `folder` holds a checkpoint (False: no such folder, train it).

    Raises:
      RuntimeError: the folder exists without a checkpoint TensorFlow finds (the 'checkpoint'
        file names absolute paths: the folder was moved, or a training run died).
    """
    if not os.path.exists(folder):
        return False
    if tf.train.latest_checkpoint(folder) is None:
        raise RuntimeError(f"{folder} holds no usable checkpoint (moved, or a training run "
                           "died?); remove it to train again")
    return True


def qat_config(logits, output_dir, freeze_step):
    """The QuantizeConfig of the QAT nets."""
    return decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=[logits.op.name],
                                   input_shapes=[[-1] + SHAPE], output_dir=output_dir,
                                   fold_bn_freeze_step=freeze_step)


def train_qat_net(build, freeze_step, checkpoint_dir, scratch):
    """QAT_STEPS Adam steps of the QAT training graph of `build` (seeded batches); saves
    checkpoint_dir/model.ckpt-QAT_STEPS."""
    fresh_graph(learning_phase=1)
    _, logits, updates = build(True)
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    decent_q.CreateQuantizeTrainingGraph(config=qat_config(logits, scratch, freeze_step))
    step = tf.compat.v1.train.get_or_create_global_step()
    updates += tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
        train_op = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss, step)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for i in range(QAT_STEPS):
            rng = np.random.default_rng(i)
            sess.run(train_op, {"input:0": rng.uniform(-1, 1, [16] + SHAPE),
                                labels: rng.integers(0, 10, 16)})
        os.makedirs(checkpoint_dir, exist_ok=True)
        saver.save(sess, os.path.join(checkpoint_dir, "model.ckpt"), global_step=QAT_STEPS)


def qat_net_case(name, build, freeze_step):
    """Trains `build` with QAT once (checkpoint kept), then evaluation graph + deploy."""
    def case(out_dir, work):
        checkpoint_dir = work.checkpoint_dir(name)
        if not trained(checkpoint_dir):
            train_qat_net(build, freeze_step, checkpoint_dir, work.scratch(name))
            fresh_graph()
        _, logits, _ = build(False)
        config = qat_config(logits, out_dir, freeze_step)
        decent_q.CreateQuantizeEvaluationGraph(config=config)
        decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint_dir, config=config)
    return case


def qat_example_case(out_dir, work):
    """examples/train_float.py, train.py (once; checkpoints kept), then eval.py."""
    name = "qat/example"
    float_dir, train_dir = (os.path.join(work.checkpoint_dir(name), d) for d in ("float", "train"))
    common = ["--float_dir", float_dir, "--train_dir", train_dir]
    if not trained(train_dir):
        importlib.import_module("train_float").main(
            ["--float_dir", float_dir, "--steps", str(QAT_FLOAT_STEPS)])
        fresh_graph()
        importlib.import_module("train").main(
            common + ["--output_dir", work.scratch(name), "--steps", str(QAT_STEPS)])
        fresh_graph()
    importlib.import_module("eval").main(common + ["--output_dir", out_dir])


def keras_example_case(out_dir, work):
    """examples/keras_qat.py's float and QAT phases (once; checkpoints kept), then its eval."""
    name = "qat/keras_example"
    keras_qat = importlib.import_module("keras_qat")
    args = argparse.Namespace(float_dir=os.path.join(work.checkpoint_dir(name), "float"),
                              train_dir=os.path.join(work.checkpoint_dir(name), "train"),
                              output_dir=work.scratch(name), float_steps=QAT_FLOAT_STEPS,
                              qat_steps=QAT_STEPS)
    if not trained(args.train_dir):
        keras_qat.train(args, qat=False)
        keras_qat.train(args, qat=True)
    args.output_dir = out_dir
    keras_qat.evaluate(args)


# -- the run ------------------------------------------------------------------------------------

# The model_zoo models fingerprinted: one per distinct feature (residual, depthwise + relu6,
# hard-swish, swish + squeeze-excite, grouped conv, slim batch norm and inception concats, slim
# pre-activation resnet, a large dense head).
ZOO_CASES = ("ResNet50", "MobileNet", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0",
             "RegNetX002", "alexnet_v2", "inception_v2", "resnet_v2_50")


def cases():
    """{case name: function(out_dir, work)}, in the order they run."""
    table = {"ptq_example/freeze": example_freeze_case}
    table.update({f"ptq_example/{k}": example_ptq_case(v) for k, v in EXAMPLE_VARIANTS.items()})
    table.update({f"graph/{name}": graph_case(build, options)
                  for name, build, options in GRAPHS})
    table.update({f"graph/{name}": net_ptq_case(build) for name, build in NETS.items()})
    table.update({f"zoo/{spec.name}": zoo_case(spec)
                  for spec in model_zoo.MODELS if spec.name in ZOO_CASES})
    table["qat/example"] = qat_example_case
    table["qat/keras_example"] = keras_example_case
    for net in ("slim_fused", "slim_unfused", "keras_conv_bn", "keras_dense_bn"):
        for freeze_step in (-1, 0, 3):
            name = f"qat/{net}/freeze{freeze_step}"
            table[name] = qat_net_case(name, NETS[net], freeze_step)
    return table


def _short(value):
    """A hash's first 12 digits; an error message or '(absent)' in full."""
    return "(absent)" if value is None else value[:12] if re.fullmatch("[0-9a-f]{64}", value) \
        else value


def differences(manifest, other, names):
    """Lines naming each case / file of `names` whose entry differs between the manifests."""
    lines = []
    for case in names:
        mine, theirs = manifest.get(case), other.get(case)
        if mine == theirs:
            continue
        if mine is None or theirs is None:
            lines.append(f"{case}: only in {'the other manifest' if mine is None else 'this run'}")
            continue
        for file in sorted(set(mine) | set(theirs)):
            if mine.get(file) != theirs.get(file):
                lines.append(f"{case}/{file}: {_short(theirs.get(file))} (other) -> "
                             f"{_short(mine.get(file))} (this run)")
    return lines


def parse_args(argv):
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON manifest")
    parser.add_argument("--checkpoints", required=True,
                        help="folder of the trained models, kept across runs (created)")
    parser.add_argument("--compare", help="a manifest to compare with: exit 1 if any differs")
    parser.add_argument("--only", default="",
                        help="run only the cases whose names start with one of these "
                             "comma-separated prefixes")
    parser.add_argument("--keep", help="keep the written models in this folder (else a "
                                       "temporary one, removed)")
    return parser.parse_args(argv)


def run_all(selected, work):
    """Runs the cases; returns the manifest."""
    manifest = {}
    for name, case in selected.items():
        start = time.time()
        manifest[name] = entry = run_case(case, os.path.join(work.tmp, name.replace("/", "__")),
                                          work)
        what = entry["error"] if "error" in entry else f"{len(entry)} files"
        print(f"{name}: {what} ({time.time() - start:.1f} s)", flush=True)
    return manifest


def main(argv=None):
    """Runs the cases, writes the manifest, compares; returns the exit status."""
    args = parse_args(argv)
    tf.compat.v1.disable_v2_behavior()
    logging.getLogger("decent_q").setLevel(logging.ERROR)
    print(f"decent_q from {os.path.dirname(decent_q.__file__)}", flush=True)
    prefixes = tuple(p for p in args.only.split(",") if p)
    selected = {n: c for n, c in cases().items() if not prefixes or n.startswith(prefixes)}
    start = time.time()
    tmp = args.keep or tempfile.mkdtemp(prefix="decent_q_fingerprint_")
    try:
        manifest = run_all(selected, Work(args.checkpoints, tmp))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    errors = sum("error" in entry for entry in manifest.values())
    print(f"{len(manifest)} cases, {errors} errors, {time.time() - start:.0f} s", flush=True)
    with open(args.out, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    if not args.compare:
        return 0
    with open(args.compare) as f:
        other = json.load(f)
    names = list(selected) if prefixes else sorted(set(manifest) | set(other))
    lines = differences(manifest, other, names)
    print("\n".join(lines) if lines else f"identical to {args.compare}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
