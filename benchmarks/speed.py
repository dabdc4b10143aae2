"""Speed benchmark: QAT step time against float (and TFMOT), post-training quantize of ResNet50
and VGG16.

    python benchmarks/speed.py qat   [--rounds 8]     # decent_q and TFMOT step-time ratios
    python benchmarks/speed.py ptq   [--repeats 2]    # frozen ResNet50, VGG16: float / decent_q
                                                      # (/ TFLite for ResNet50)
    python benchmarks/speed.py fast_ft [--repeats 1] --models resnet50
                                                      # decent_q / + fast finetune
    python benchmarks/speed.py startup [--repeats 5]  # import decent_q after import tensorflow
    python benchmarks/speed.py qat_big [--repeats 1]  # NASNetMobile, InceptionResNetV2: QAT
                                                      # rewrite to first training step

qat: the ``resnet`` model of benchmarks/accuracy.py (7 conv + BN, batch 64, 28x28x1 MNIST
digits), Adam. One process (TF1 graph mode) holds four sessions: float training graph;
decent_q QAT training graph with fold_bn_freeze_step -1 (one conv with quantized folded weights,
normalised by the batch norm with batch statistics; never frozen), 0 (moving statistics from
the start: the deploy form, what every step after a freeze step runs) and,
for reference, QAT with the batch norms left in inference mode before the rewrite (no training
fold at all); and the first two with quantize_strategy pof2s_tqt (trained thresholds), whose
cost is reported against the same freeze setting with pof2s. Steps are timed in rounds that visit every session in turn (``--steps`` steps per
session per round); each figure is the median over rounds. A FULL_TRACE of a few steps splits
the QAT step into op groups. TFMOT runs in its own process (eager, TF_USE_LEGACY_KERAS=1) and
times ``train_on_batch`` of the float model and of ``quantize_model`` of it the same way.

ptq: a frozen tf_keras ResNet50 (weights=None, seed 0, 224x224x3, output predictions/Softmax)
and 10 batches of 8 random images, and VGG16 (the same, 138 M parameters) with 2 batches of 2,
written once per model (``--models``); then, each in its own process and repeated
``--repeats`` times in turn: (float) import the frozen graph and run the batches in a default
session (Grappler on, as a user's script runs it); (decent_q) ``quantize_frozen`` with
calib_iter = the number of batches (folding, calibration, eval and deploy model written);
(tflite, ResNet50 only) TFLiteConverter int8 full-integer conversion of the same Keras model
and weights with the same 80 images as representative data. Wall time of the work of each
(after the imports), the import time (``import tensorflow``; for decent_q plus ``import
decent_q`` with the kernel loaded) and the peak RSS (getrusage ru_maxrss) of its process.

startup: ``--repeats`` fresh processes, each timing ``import tensorflow``, then ``import decent_q``
with the kernel library loaded (``decent_q.ops.load_library()``, built and cached beforehand by
a first process), then ``from tensorflow.contrib import decent_q`` (the drop-in alias); medians.

qat_big: the training-mode NASNetMobile and InceptionResNetV2 of benchmarks/model_zoo.py (32 /
75 px, batch 2), each in its own process, float and decent_q in turn: seconds to build the
model, CreateQuantizeTrainingGraph (decent_q only), build the Adam train op under the updates
(the usual TF1 ``with tf.control_dependencies(update_ops)``), initialize the variables, and the
first and second training steps (sessions with Grappler off, as the coverage table's).

fast_ft: the same ResNet50 and batches; (decent_q) as above, then (fast_ft) the same with
include_fast_ft=1 (default mode 0, 10 epochs), in turn, each in its own process.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)

import accuracy  # noqa: E402  pylint: disable=wrong-import-position
import data  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  (benchmarks/common.py)

BATCH = 64


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- QAT step time --------------------------------------------------------------------------

def _qat_session(tf, tf_keras, decent_q, variant, work):
    graph = tf.Graph()
    with graph.as_default():
        tf_keras.backend.set_learning_phase(0 if variant == "qat_bn_inference" else 1)
        tf.compat.v1.set_random_seed(0)
        model = accuracy.build(tf_keras, "resnet")
        labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, model.output)
        if variant != "float":
            freeze = 0 if variant.startswith("qat_freeze_0") else -1
            strategy = "pof2s_tqt" if variant.endswith("_tqt") else "pof2s"
            decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(
                input_nodes=[accuracy.INPUT_NODE], output_nodes=[accuracy.OUTPUT_NODE],
                input_shapes=[[-1, 28, 28, 1]], output_dir=os.path.join(work, variant),
                fold_bn_freeze_step=freeze, quantize_strategy=strategy))
        step = tf.compat.v1.train.get_or_create_global_step()
        updates = model.updates + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            train_op = tf.compat.v1.train.AdamOptimizer(1e-4).minimize(loss, step)
        init = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    return sess, train_op, model.input, labels


def _trace_groups(tf, sess, train_op, feed, steps=3):
    """Op time of a few traced steps, summed by group (ms per step)."""
    groups = {}
    for _ in range(steps):
        meta = tf.compat.v1.RunMetadata()
        sess.run(train_op, feed, options=tf.compat.v1.RunOptions(
            trace_level=tf.compat.v1.RunOptions.FULL_TRACE), run_metadata=meta)
        for dev in meta.step_stats.dev_stats:
            if "/device:CPU" not in dev.device or "stream" in dev.device:
                continue
            for node in dev.node_stats:
                name = node.node_name
                ms = (node.all_end_rel_micros) / 1000.0
                backward = name.startswith("gradients")
                if "wquant" in name or "aquant" in name or "FixNeuron" in name or \
                        "pos_hist" in name:
                    group = "FixNeuron + histograms"
                elif "BatchNorm_Fold" in name:
                    group = "folded conv + fold arithmetic"
                elif "Conv2D" in name or "conv" in name.lower().split("/")[-1]:
                    group = "float conv"
                elif "_bn" in name:
                    group = "batch norm (statistics, moving averages)"
                elif "Adam" in name:
                    group = "optimizer"
                else:
                    group = "other"
                key = ("backward: " if backward else "forward: ") + group
                if group == "optimizer":
                    key = group
                groups[key] = groups.get(key, 0.0) + ms / steps
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def run_qat(args):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    work = tempfile.mkdtemp(prefix="dq_speed_qat_")
    train_x, train_y, _, _ = data.load()
    variants = ("float", "qat_freeze_-1", "qat_freeze_0", "qat_bn_inference",
                "qat_freeze_-1_tqt", "qat_freeze_0_tqt")
    sessions = {v: _qat_session(tf, tf_keras, decent_q, v, work) for v in variants}
    times = {v: [] for v in variants}
    batches = [data.batches(train_x, train_y, BATCH, i) for i in range(args.steps)]
    for v, (sess, op, x_in, y_in) in sessions.items():  # warm-up
        for x, y in batches[:3]:
            sess.run(op, {x_in: x, y_in: y})
    for _ in range(args.rounds):
        for v, (sess, op, x_in, y_in) in sessions.items():
            start = time.perf_counter()
            for x, y in batches:
                sess.run(op, {x_in: x, y_in: y})
            times[v].append((time.perf_counter() - start) / len(batches))
    result = {v: statistics.median(t) * 1000 for v, t in times.items()}
    for v in variants[1:]:
        result[f"median_round_ratio_{v}"] = statistics.median(
            q / f for q, f in zip(times[v], times["float"]))
    trace = {}
    for v in ("float", "qat_freeze_-1", "qat_freeze_0"):
        sess, op, x_in, y_in = sessions[v]
        x, y = batches[0]
        trace[v] = _trace_groups(tf, sess, op, {x_in: x, y_in: y})
    result["trace_ms"] = trace
    for freeze in ("-1", "0"):
        pof2s = times[f"qat_freeze_{freeze}"]
        result[f"median_round_ratio_tqt_{freeze}"] = statistics.median(
            t / q for t, q in zip(times[f"qat_freeze_{freeze}_tqt"], pof2s))
    return result


def run_tfmot(args):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
    train_x, train_y, _, _ = data.load()
    tf.random.set_seed(0)
    models = {}
    float_model = accuracy.build(tf_keras, "resnet")
    qmodel = tfmot.quantization.keras.quantize_model(accuracy.build(tf_keras, "resnet"))
    for name, model in (("float", float_model), ("tfmot_qat", qmodel)):
        model.compile(tf_keras.optimizers.Adam(1e-4),
                      tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models[name] = model
    batches = [data.batches(train_x, train_y, BATCH, i) for i in range(args.steps)]
    for model in models.values():
        for x, y in batches[:3]:
            model.train_on_batch(x, y)
    times = {n: [] for n in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for x, y in batches:
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / len(batches))
    result = {n: statistics.median(t) * 1000 for n, t in times.items()}
    result["median_round_ratio"] = statistics.median(
        q / f for q, f in zip(times["tfmot_qat"], times["float"]))
    return result


# -- ResNet50 post-training quantize -------------------------------------------------------

# model -> (tf_keras.applications constructor, calibration batches, batch size)
PTQ_MODELS = {"resnet50": ("ResNet50", 10, 8), "vgg16": ("VGG16", 2, 2)}


def ptq_prepare(work, model_name):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    constructor, batches, batch = PTQ_MODELS[model_name]
    tf_keras.backend.set_learning_phase(0)
    tf.compat.v1.set_random_seed(0)
    model = getattr(tf_keras.applications, constructor)(weights=None, input_shape=(224, 224, 3))
    sess = tf_keras.src.backend.get_session()
    out = model.output.op.name
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, sess.graph.as_graph_def(), [out])
    with open(os.path.join(work, "model.pb"), "wb") as f:
        f.write(frozen.SerializeToString())
    model.save_weights(os.path.join(work, "model.h5"))
    rng = np.random.default_rng(0)
    np.save(os.path.join(work, "calib.npy"),
            rng.uniform(-2.0, 2.0, (batches * batch, 224, 224, 3)).astype(np.float32))
    info = {"model": model_name, "input": model.input.op.name, "output": out,
            "nodes": len(frozen.node), "bytes": frozen.ByteSize(), "batches": batches,
            "batch": batch}
    with open(os.path.join(work, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


def _batches(work, info):
    calib = np.load(os.path.join(work, "calib.npy"))
    size = info["batch"]
    return [calib[i * size:(i + 1) * size] for i in range(info["batches"])]


def ptq_float(work, info, imported_s):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    batches = _batches(work, info)
    rss0 = _peak_rss_mb()
    start = time.perf_counter()
    gd = tf.compat.v1.GraphDef()
    with open(os.path.join(work, "model.pb"), "rb") as f:
        gd.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        out = graph.get_tensor_by_name(info["output"] + ":0")
        inp = graph.get_tensor_by_name(info["input"] + ":0")
        first = time.perf_counter()
        for images in batches:
            sess.run(out, {inp: images})
        end = time.perf_counter()
    return {"wall_s": end - start, "batches_s": end - first, "import_s": imported_s,
            "rss_before_mb": rss0, "peak_rss_mb": _peak_rss_mb()}


def ptq_decent_q(work, info, imported_s, **options):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    start = time.perf_counter()
    import decent_q  # pylint: disable=import-outside-toplevel
    decent_q.ops.load_library()
    imported_s += time.perf_counter() - start
    batches = _batches(work, info)
    rss0 = _peak_rss_mb()
    config = decent_q.QuantizeConfig(input_nodes=[info["input"]], output_nodes=[info["output"]],
                                     input_shapes=[[-1, 224, 224, 3]],
                                     calib_iter=info["batches"],
                                     output_dir=tempfile.mkdtemp(prefix="dq_ptq_"), **options)
    start = time.perf_counter()
    decent_q.quantize_frozen(os.path.join(work, "model.pb"),
                             lambda i: {info["input"]: batches[i]}, config, progress=False)
    return {"wall_s": time.perf_counter() - start, "import_s": imported_s,
            "rss_before_mb": rss0, "peak_rss_mb": _peak_rss_mb()}


def ptq_tflite(work, info, imported_s):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel
    calib = np.load(os.path.join(work, "calib.npy"))
    rss0 = _peak_rss_mb()
    start = time.perf_counter()
    model = getattr(tf_keras.applications, PTQ_MODELS[info["model"]][0])(
        weights=None, input_shape=(224, 224, 3))
    model.load_weights(os.path.join(work, "model.h5"))
    built = time.perf_counter()

    flat = common.tflite_int8(model, calib)
    end = time.perf_counter()
    return {"wall_s": end - built, "build_model_s": built - start, "tflite_bytes": len(flat),
            "import_s": imported_s, "rss_before_mb": rss0, "peak_rss_mb": _peak_rss_mb()}


def ptq_fast_ft(work, info, imported_s):
    """decent_q with fast finetune (include_fast_ft=1, default epochs and mode); with the
    split of its time that decent_q logs."""
    import logging  # pylint: disable=import-outside-toplevel
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("decent_q").addHandler(handler)
    logging.getLogger("decent_q").setLevel(logging.INFO)
    result = ptq_decent_q(work, info, imported_s, include_fast_ft=1)
    result["log"] = [line for line in lines if line.startswith("fast finetune (")]
    return result


PTQ_WORKERS = {"float": ptq_float, "decent_q": ptq_decent_q, "tflite": ptq_tflite,
               "fast_ft": ptq_fast_ft}


def run_qat_big(model_name, quantize):
    """One process: the training-mode tf_keras model of benchmarks/model_zoo.py (random
    weights; the coverage table's size), then (if `quantize`) CreateQuantizeTrainingGraph, an
    Adam train op under the model's updates and UPDATE_OPS (the TF1 pattern), the variables'
    initialization, and the first training step; seconds of each."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import model_zoo  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    from decent_q.live import edit  # pylint: disable=import-outside-toplevel
    spec = model_zoo.spec_by_name(model_name)
    times = {}
    start = time.perf_counter()
    model = model_zoo._keras_model(spec.name, spec.size, training=True)  # pylint: disable=protected-access
    images, out = model.inputs[0], model.outputs[0]
    logits = out.op.inputs[0] if out.op.type == "Softmax" else out
    graph = tf.compat.v1.get_default_graph()
    times["build_model_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if quantize:
        decent_q.CreateQuantizeTrainingGraph(config=model_zoo._config(  # pylint: disable=protected-access
            spec, images.op.name, logits.op.name, tempfile.mkdtemp(prefix="dq_qat_big_")))
    times["rewrite_s"] = time.perf_counter() - start
    start = time.perf_counter()
    labels = tf.compat.v1.placeholder(tf.int64, [None])
    name = f"{logits.op.name}/aquant"
    output = graph.get_tensor_by_name(name + ":0") if edit.has_op(graph, name) else logits
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        labels, tf.reshape(output, [-1, model_zoo.CLASSES]))
    updates = list(model.updates) + tf.compat.v1.get_collection(
        tf.compat.v1.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(updates):
        train = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss)
    times["train_op_s"] = time.perf_counter() - start
    start = time.perf_counter()
    sess = tf.compat.v1.Session(graph=graph, config=model_zoo.session_config())
    sess.run(tf.compat.v1.global_variables_initializer())
    times["init_s"] = time.perf_counter() - start
    feed = {images: model_zoo.batch(spec, 0), labels: np.arange(model_zoo.BATCH) % 10}
    start = time.perf_counter()
    sess.run(train, feed)
    times["first_step_s"] = time.perf_counter() - start
    start = time.perf_counter()
    sess.run(train, feed)
    times["second_step_s"] = time.perf_counter() - start
    times["ops"] = len(graph.get_operations())
    return times


def run_startup():
    """Import times of one fresh process (seconds)."""
    start = time.perf_counter()
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    tf_done = time.perf_counter()
    import decent_q  # pylint: disable=import-outside-toplevel
    decent_q.ops.load_library()
    dq_done = time.perf_counter()
    from tensorflow.contrib import decent_q as _  # noqa: F401  pylint: disable=import-outside-toplevel,import-error
    alias_done = time.perf_counter()
    return {"tensorflow": tf_done - start, "decent_q": dq_done - tf_done,
            "contrib_alias": alias_done - dq_done}


def _spawn(argv, legacy_keras=False):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    return common.run_json(__file__, argv, env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("qat", "ptq", "fast_ft", "startup", "qat_big"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--models", default=None,
                        help="comma-separated; ptq / fast_ft: of " + ",".join(PTQ_MODELS) +
                        " (default: both); qat_big: model_zoo names (default: "
                        "NASNetMobile,InceptionResNetV2)")
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker == "decent_q_qat":
            result = run_qat(args)
        elif args.worker == "tfmot_qat":
            result = run_tfmot(args)
        elif args.worker == "startup":
            result = run_startup()
        elif args.worker in ("qat_big_float", "qat_big_decent_q"):
            result = run_qat_big(args.models, args.worker == "qat_big_decent_q")
        elif args.worker == "prepare":
            ptq_prepare(args.work_dir, args.models)
            result = {}
        else:
            with open(os.path.join(args.work_dir, "info.json"), encoding="utf-8") as f:
                info = json.load(f)
            start = time.perf_counter()
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
            result = PTQ_WORKERS[args.worker](args.work_dir, info, time.perf_counter() - start)
        print(json.dumps(result))
        return 0
    common = ["--rounds", str(args.rounds), "--steps", str(args.steps)]
    if args.what == "qat":
        dq = _spawn(["qat", "--worker", "decent_q_qat", *common])
        tm = _spawn(["qat", "--worker", "tfmot_qat", *common], legacy_keras=True)
        print(json.dumps({"decent_q": dq, "tfmot": tm}, indent=1))
        for v in ("qat_freeze_-1", "qat_freeze_0", "qat_bn_inference", "qat_freeze_-1_tqt",
                  "qat_freeze_0_tqt"):
            print(f"decent_q {v}: {dq[v]:.1f} ms / float {dq['float']:.1f} ms = "
                  f"{dq[v] / dq['float']:.2f}x (median of per-round ratios "
                  f"{dq['median_round_ratio_' + v]:.2f}x)")
        for freeze in ("-1", "0"):
            print(f"pof2s_tqt / pof2s QAT step, fold_bn_freeze_step {freeze}: "
                  f"{dq[f'qat_freeze_{freeze}_tqt'] / dq[f'qat_freeze_{freeze}']:.3f}x (median "
                  f"of per-round ratios {dq['median_round_ratio_tqt_' + freeze]:.3f}x)")
        print(f"TFMOT quantize_model: {tm['tfmot_qat']:.1f} ms / float {tm['float']:.1f} ms = "
              f"{tm['tfmot_qat'] / tm['float']:.2f}x (median of per-round ratios "
              f"{tm['median_round_ratio']:.2f}x)")
        return 0
    if args.what == "qat_big":
        for model in (args.models or "NASNetMobile,InceptionResNetV2").split(","):
            for _ in range(args.repeats):
                run = {kind: _spawn(["qat_big", "--worker", f"qat_big_{kind}", "--models", model])
                       for kind in ("float", "decent_q")}
                print(json.dumps({model: run}), flush=True)
                total = {kind: sum(run[kind][k] for k in ("rewrite_s", "train_op_s", "init_s",
                                                          "first_step_s")) for kind in run}
                print(f"{model}: rewrite + train op + init + first step: decent_q "
                      f"{total['decent_q']:.1f} s (target <= 60), float {total['float']:.1f} s",
                      flush=True)
        return 0
    if args.what == "startup":
        _spawn(["startup", "--worker", "startup"])  # builds the kernel if not cached
        runs = [_spawn(["startup", "--worker", "startup"]) for _ in range(args.repeats)]
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(json.dumps({"runs": runs, "median": med}, indent=1))
        print(f"import tensorflow {med['tensorflow']:.2f} s; import decent_q (kernel cached, "
              f"loaded) adds {med['decent_q']:.3f} s (target <= 0.3); the tensorflow.contrib "
              f"alias {med['contrib_alias']:.3f} s")
        return 0
    root = args.work_dir or tempfile.mkdtemp(prefix="dq_speed_ptq_")
    names = ("float", "decent_q", "tflite") if args.what == "ptq" else ("decent_q", "fast_ft")
    for model in (args.models or ",".join(PTQ_MODELS)).split(","):
        work = os.path.join(root, model)
        os.makedirs(work, exist_ok=True)
        if not os.path.exists(os.path.join(work, "info.json")):
            _spawn(["ptq", "--worker", "prepare", "--work_dir", work, "--models", model])
        for _ in range(args.repeats):
            run = {}
            for name in names:
                if name == "tflite" and model != "resnet50":
                    continue  # TFLite's converter on VGG16 takes many minutes; not compared
                run[name] = _spawn(["ptq", "--worker", name, "--work_dir", work],
                                   legacy_keras=name == "tflite")
            print(json.dumps({model: run}), flush=True)
            if args.what == "fast_ft":
                print(f"{model}: fast_ft / decent_q = "
                      f"{run['fast_ft']['wall_s'] / run['decent_q']['wall_s']:.2f}x", flush=True)
                continue
            dq, fl = run["decent_q"], run["float"]
            line = (f"{model}: decent_q / float = {dq['wall_s'] / fl['wall_s']:.2f}x "
                    f"(with the imports {(dq['wall_s'] + dq['import_s']) / (fl['wall_s'] + fl['import_s']):.2f}x), "
                    f"peak memory {dq['peak_rss_mb'] / fl['peak_rss_mb'] - 1:+.0%}")
            if "tflite" in run:
                line += f", decent_q / tflite = {dq['wall_s'] / run['tflite']['wall_s']:.2f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
