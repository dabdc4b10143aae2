"""Architecture coverage: real model families through post-training quantization and QAT.

Shared by ``tests/test_coverage.py`` (asserts) and ``benchmarks/coverage.py`` (the table).
Each model is built with random weights (``tf_keras.applications`` with ``weights=None``, or a
``tf_slim.nets`` network), frozen, quantized with :func:`decent_q.quantize_frozen` on random
calibration batches, and its eval model is run against the float graph; then its training
version goes through ``CreateQuantizeTrainingGraph`` and QAT_STEPS Adam steps on one batch.

Random weights: Keras' default Glorot init of a depthwise kernel divides by the channel count
it does not sum over, so MobileNet's output shrinks by ~sqrt(C) per layer (1e-20 at the end)
and no signal is left to measure. Every conv / dense kernel is therefore set to He-normal
values (std sqrt(2 / fan_in), fan_in the products the layer sums: kh*kw*in for a conv,
kh*kw for a depthwise kernel, in for a dense kernel) before freezing; nothing else changes.
"""

import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

COMPUTE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "Conv2DBackpropInput")

Spec = collections.namedtuple("Spec", "family name size")

# (family, builder name, input size). Sizes: the smallest each model accepts at or above
# 32 px (Inception / Xception need 71-75 px; tf_slim's AlexNet, OverFeat, VGG and Inception v1
# end in VALID convolutions / pools sized for their native input). CI runs every model
# (tests/test_coverage.py).
MODELS = [
    Spec("keras", "ResNet50", 32),
    Spec("keras", "ResNet50V2", 32),
    Spec("keras", "ResNetRS50", 32),
    Spec("keras", "InceptionV3", 75),
    Spec("keras", "InceptionResNetV2", 75),
    Spec("keras", "Xception", 71),
    Spec("keras", "VGG16", 32),
    Spec("keras", "MobileNet", 32),
    Spec("keras", "MobileNetV2", 32),
    Spec("keras", "MobileNetV3Small", 32),
    Spec("keras", "DenseNet121", 32),
    Spec("keras", "NASNetMobile", 32),
    Spec("keras", "EfficientNetB0", 32),
    Spec("keras", "EfficientNetV2B0", 32),
    Spec("keras", "RegNetX002", 32),
    Spec("keras", "RegNetY002", 32),
    Spec("keras", "ConvNeXtTiny", 32),
    Spec("slim", "alexnet_v2", 224),
    Spec("slim", "overfeat", 231),
    Spec("slim", "vgg_a", 224),
    Spec("slim", "vgg_16", 224),
    Spec("slim", "vgg_19", 224),
    Spec("slim", "inception_v1", 224),
    Spec("slim", "inception_v2", 32),
    Spec("slim", "inception_v3", 139),
    Spec("slim", "resnet_v1_50", 32),
    Spec("slim", "resnet_v2_50", 32),
]
# Keras models that rescale / normalize raw [0, 255] pixels inside the model.
_RAW_PIXELS = ("EfficientNet", "MobileNetV3", "ResNetRS", "RegNet", "ConvNeXt")
_SLIM = {  # net -> (module, arg scope)
    "alexnet_v2": ("alexnet", "alexnet_v2_arg_scope"),
    "overfeat": ("overfeat", "overfeat_arg_scope"),
    "vgg_a": ("vgg", "vgg_arg_scope"), "vgg_16": ("vgg", "vgg_arg_scope"),
    "vgg_19": ("vgg", "vgg_arg_scope"),
    "inception_v1": ("inception_v1", "inception_v1_arg_scope"),
    "inception_v2": ("inception_v2", "inception_v2_arg_scope"),
    "inception_v3": ("inception_v3", "inception_v3_arg_scope"),
    "resnet_v1_50": ("resnet_v1", "resnet_arg_scope"),
    "resnet_v2_50": ("resnet_v2", "resnet_arg_scope"),
}
CLASSES = 10
BATCH = 2
QAT_STEPS = 24
QAT_MIN_STEPS = 8   # the QAT leg stops at the first step from here at <= half the first loss
CALIB_BATCHES = 2
# SQNR is measured on HELD_OUT batches (8 images) never used for calibration. One batch of 2
# is too few: a model's SQNR moved by up to 5 dB between such batches (EfficientNetV2B0
# 7.8-12.6 dB, EfficientNetB0 14.5-20.6 dB).
HELD_OUT = (1000, 1001, 1002, 1003)
# Rows whose default PTQ measures under the floor of tests/test_coverage.py (the reason is in
# benchmarks/README.md "Coverage"). Each is quantized a second time with fast finetune
# (include_fast_ft=1), the remedy the user guide gives for an accuracy loss after
# post-training quantization, and that leg must reach the floor.
BELOW_FLOOR = ("EfficientNetV2B0",)


@dataclasses.dataclass
class Result:
    name: str
    size: int
    nodes: int                 # frozen float graph
    compute: int               # compute ops in the quantized range of the prepared graph
    quantized: int             # of them with a FixNeuron on their weights in the eval model
    unquantized: list          # compute ops whose weights stay float
    float_reasons: dict        # reason kind -> count (plan.float_nodes)
    sqnr_db: float             # eval model vs float graph, logits, HELD_OUT batches
    ptq_seconds: float         # quantize_frozen
    qat_loss: float            # loss of the first QAT training step
    qat_loss_end: float        # loss of the last step run on the same batch
    qat_steps: int             # steps run (QAT_MIN_STEPS .. QAT_STEPS: see qat_step)
    seconds: float             # everything for this model
    sqnr_fast_ft_db: float = float("nan")  # BELOW_FLOOR rows: sqnr_db with fast finetune


# -- building -----------------------------------------------------------------------------------

def he_normal(sess, variables, seed=0):
    """Sets every conv / dense kernel among `variables` to He-normal values (module docstring)."""
    rng = np.random.default_rng(seed)
    assigns, feeds = [], {}
    for var in sorted(variables, key=lambda v: v.name):
        base = var.name.split(":")[0].rsplit("/", 1)[-1]
        shape = var.shape.as_list()
        if base not in ("kernel", "depthwise_kernel", "weights", "depthwise_weights") or \
                len(shape) < 2:
            continue
        fan_in = int(np.prod(shape[:-2])) if "depthwise" in base else int(np.prod(shape[:-1]))
        value = rng.standard_normal(shape).astype(np.float32) * np.sqrt(2.0 / fan_in)
        holder = tf.compat.v1.placeholder(tf.float32, shape)
        assigns.append(tf.compat.v1.assign(var, holder))
        feeds[holder] = value
    sess.run(assigns, feeds)


def _keras_model(name, size, training):
    import tf_keras  # pylint: disable=import-outside-toplevel
    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(1 if training else 0)
    tf.compat.v1.set_random_seed(0)
    return getattr(tf_keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                               classes=CLASSES)


def _slim_logits(name, size, training):
    import importlib  # pylint: disable=import-outside-toplevel
    import tf_slim  # pylint: disable=import-outside-toplevel
    module_name, scope_name = _SLIM[name]
    module = importlib.import_module(f"tf_slim.nets.{module_name}")
    tf.compat.v1.set_random_seed(0)
    images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="input")
    with tf_slim.arg_scope(getattr(module, scope_name)()):
        logits, _ = getattr(module, name)(images, num_classes=CLASSES, is_training=training)
    return images, logits


def build_inference(spec):
    """(frozen GraphDef, input node, logits node) of the model in inference mode."""
    if spec.family == "keras":
        import tf_keras  # pylint: disable=import-outside-toplevel
        model = _keras_model(spec.name, spec.size, training=False)
        sess = tf_keras.src.backend.get_session()
        he_normal(sess, model.weights)
        images, out = model.inputs[0], model.outputs[0]
        logits = out.op.inputs[0] if out.op.type == "Softmax" else out
        graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, sess.graph.as_graph_def(), [out.op.name])
        tf_keras.backend.clear_session()
        return graph_def, images.op.name, logits.op.name
    graph = tf.Graph()
    with graph.as_default():
        images, logits = _slim_logits(spec.name, spec.size, training=False)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            he_normal(sess, tf.compat.v1.global_variables())
            graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [logits.op.name])
    return graph_def, images.op.name, logits.op.name


def batch(spec, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (BATCH, spec.size, spec.size, 3)).astype(np.float32)
    if spec.name.startswith(_RAW_PIXELS):
        x = (x + 1.0) * 127.5
    return x


# -- measuring ----------------------------------------------------------------------------------

def session_config():
    """Grappler off: these graphs run once or twice, so optimizing them costs more than it
    saves (it dominates the QAT step otherwise)."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    return config


def _run(graph_def, fetch, feed):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
        return sess.run(fetch, feed)


def sqnr_db(reference, test):
    """10 log10(sum ref^2 / sum (test - ref)^2)."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    noise = np.sum((test - reference) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))


def _config(spec, input_node, logits, output_dir, **options):
    import decent_q  # pylint: disable=import-outside-toplevel
    return decent_q.QuantizeConfig(input_nodes=[input_node], output_nodes=[logits],
                                   input_shapes=[[-1, spec.size, spec.size, 3]],
                                   calib_iter=CALIB_BATCHES, output_dir=output_dir, **options)


def compute_coverage(eval_gd, config):
    """(compute ops in range, those whose weights are not read through a FixNeuron)."""
    from decent_q import registry  # pylint: disable=import-outside-toplevel
    from decent_q.graph import utils  # pylint: disable=import-outside-toplevel
    nm = utils.NodeMap(eval_gd)
    in_range = utils.range_nodes(nm, config.input_nodes, config.output_nodes)
    compute = sorted(n for n in in_range if nm[n].op in COMPUTE_OPS)
    missing = [n for n in compute if nm.input_node(
        nm[n], registry.COMPUTE_OPS[nm[n].op].weight_index).op != "FixNeuron"]
    return compute, missing


def ptq(spec, graph_def, input_node, logits, output_dir, **options):
    """Post-training quantization with QuantizeConfig `options`; returns (eval GraphDef, plan,
    SQNR dB on the HELD_OUT batches, seconds, config)."""
    import decent_q  # pylint: disable=import-outside-toplevel
    from decent_q import plan as plan_lib  # pylint: disable=import-outside-toplevel
    from decent_q import transforms  # pylint: disable=import-outside-toplevel
    from decent_q.graph import utils  # pylint: disable=import-outside-toplevel
    config = _config(spec, input_node, logits, output_dir, **options)
    start = time.time()
    paths = decent_q.quantize_frozen(
        graph_def, lambda step: {input_node: batch(spec, step)}, config, progress=False)
    seconds = time.time() - start
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    plan = plan_lib.plan_quantization(transforms.prepare_float_graph(graph_def, config), config)
    # The eval model's value of the output node: the FixNeuron after it
    # (docs/placement.md "Output nodes and their aliases").
    alias = next((n.name for n in eval_gd.node if n.op == "FixNeuron" and
                  utils.node_name(n.input[0]) == logits), logits)
    x = {f"{input_node}:0": np.concatenate([batch(spec, seed) for seed in HELD_OUT])}
    reference = _run(graph_def, f"{logits}:0", x)
    quantized = _run(eval_gd, f"{alias}:0", x)
    return eval_gd, plan, sqnr_db(reference, quantized), seconds, config


def qat_step(spec, output_dir, steps=None):
    """Builds the training-mode model, runs CreateQuantizeTrainingGraph and Adam steps on one
    fixed batch: QAT_MIN_STEPS, then on until the loss is at most half the first step's,
    `steps` (QAT_STEPS) at most; returns the first loss, the last loss and the steps run.

    QAT must train: on a fixed batch the loss falls as float training's does (to under half in
    a few dozen steps); a fold or rewrite that breaks the gradient stays put, and one that
    diverges shows within the minimum steps. Steps after the verdict are not run.
    """
    steps = steps or QAT_STEPS
    import decent_q  # pylint: disable=import-outside-toplevel
    from decent_q.live import edit  # pylint: disable=import-outside-toplevel
    if spec.family == "keras":
        import tf_keras  # pylint: disable=import-outside-toplevel
        model = _keras_model(spec.name, spec.size, training=True)
        images, out = model.inputs[0], model.outputs[0]
        logits = out.op.inputs[0] if out.op.type == "Softmax" else out
        updates = list(model.updates)
        graph = tf.compat.v1.get_default_graph()
    else:
        graph = tf.Graph()
        with graph.as_default():
            images, logits = _slim_logits(spec.name, spec.size, training=True)
        updates = []
    config = _config(spec, images.op.name, logits.op.name, output_dir)
    with graph.as_default():
        decent_q.CreateQuantizeTrainingGraph(config=config)
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        # The loss reads the output node's consumers' view: its quantized value.
        quantized = graph.get_tensor_by_name(f"{logits.op.name}/aquant:0") \
            if edit.has_op(graph, f"{logits.op.name}/aquant") else logits
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(
            labels, tf.reshape(quantized, [-1, CLASSES]))
        updates += tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            train = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss)
        feed = {images: batch(spec, 0), labels: np.arange(BATCH) % CLASSES}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            losses = []
            while len(losses) < steps:
                losses.append(sess.run([loss, train], feed)[0])
                if len(losses) >= QAT_MIN_STEPS and losses[-1] <= 0.5 * losses[0]:
                    break
    if spec.family == "keras":
        tf_keras.backend.clear_session()
    return float(losses[0]), float(losses[-1]), len(losses)


def reason_kinds(plan):
    from decent_q import report  # pylint: disable=import-outside-toplevel
    return dict(collections.Counter(report._reason_kind(r)  # pylint: disable=protected-access
                                    for r in plan.float_nodes.values()))


def measure(spec, output_dir=None, qat=True):
    """Runs one model through PTQ (and QAT); returns a Result."""
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        output_dir = output_dir or tmp
        graph_def, input_node, logits = build_inference(spec)
        eval_gd, plan, sqnr, ptq_seconds, config = ptq(
            spec, graph_def, input_node, logits, os.path.join(output_dir, "ptq"))
        compute, missing = compute_coverage(eval_gd, config)
        sqnr_fast_ft = ptq(spec, graph_def, input_node, logits,
                           os.path.join(output_dir, "ptq_fast_ft"), include_fast_ft=1)[2] \
            if spec.name in BELOW_FLOOR else float("nan")
        losses = qat_step(spec, os.path.join(output_dir, "qat")) if qat else \
            (float("nan"), float("nan"), 0)
    return Result(spec.name, spec.size, len(graph_def.node), len(compute),
                  len(compute) - len(missing), missing, reason_kinds(plan), sqnr, ptq_seconds,
                  *losses, time.time() - start, sqnr_fast_ft)


def measure_isolated(spec, output_dir=None, qat=True, timeout=1800):
    """:func:`measure` in a fresh Python process (``benchmarks/coverage.py --one``): its graphs,
    sessions and memory go with the process (the 27 models in one process grew past 10 GB),
    and its time is its own.

    Raises:
      RuntimeError: the process failed; the message ends with its last line of stderr.
    """
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "coverage.py"), "--one", spec.name]
    if output_dir:
        cmd += ["--output_dir", output_dir]
    if not qat:
        cmd.append("--no-qat")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{spec.name}: exit status {proc.returncode}: {tail}")
    return Result(**json.loads(lines[-1][len("RESULT "):]))


def spec_by_name(name):
    return next(s for s in MODELS if s.name == name)
