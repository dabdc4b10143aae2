"""Bias correction benchmark: post-training quantization with and without ``bias_correction``.

    python benchmarks/bias_correction.py [--work_dir /tmp/dq_biascorr] [--float_steps 600]

The models, data and float training are benchmarks/accuracy.py's (``cnn`` and ``resnet`` on
the 5,000 MNIST digits of examples/data.py; float weights are reused from --work_dir when
accuracy.py or an earlier run left them there). For each model, weight width 8 / 6 / 4 and
activations at 8 bit or at the weight width, ``quantize_frozen`` (method 1, 10 calibration
batches of 50 training images) runs with bias_correction 0 (off), 1 (weights) and 2 (output). On the 1,000 held-out images
it reports the eval model's accuracy, the SQNR of its logits against the float model's, and the
mean over the 10 logits of |mean error| (quantized minus float), the bias that the correction
targets; and the quantize time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import accuracy  # noqa: E402  (benchmarks/accuracy.py; puts examples/ on sys.path)
import common  # noqa: E402  (benchmarks/common.py)
import data  # noqa: E402  (examples/data.py)

MODELS = ("cnn", "resnet")  # of accuracy.MODELS: the models of the README's tables
WEIGHT_BITS = (8, 6, 4)
ACTIVATIONS = ("8", "same")
MODES = (0, 1, 2)  # bias_correction
MODE_NAMES = {0: "off", 1: "1 (weights)", 2: "2 (output)"}  # activations at 8 bit, or at the weight width


def _cases():
    return [(bits, act) for bits in WEIGHT_BITS for act in ACTIVATIONS
            if act == "8" or bits != 8]


def _logits(tf, graph_def, images):
    names = {n.name for n in graph_def.node}
    out = accuracy.OUTPUT_NODE + ("/aquant" if accuracy.OUTPUT_NODE + "/aquant" in names
                                  else "")
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(out + ":0", {accuracy.INPUT_NODE + ":0": images})


def _metrics(logits, want, labels):
    error = logits.astype(np.float64) - want
    return {"acc": float((logits.argmax(1) == labels).mean()),
            "sqnr_db": float(10 * np.log10(np.sum(np.square(want)) / np.sum(np.square(error)))),
            "mean_err": float(np.abs(error.mean(axis=0)).mean())}


def worker(args):
    """TF1 graph mode: every case of one model; results as JSON on the last stdout line."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import tf_keras  # pylint: disable=import-outside-toplevel
    import decent_q  # pylint: disable=import-outside-toplevel
    _, _, test_x, test_y = data.load()
    calib = accuracy.calibration_images(args.calib_batches * accuracy.CALIB_BATCH)

    def input_fn(step):
        size = accuracy.CALIB_BATCH
        return {accuracy.INPUT_NODE: calib[step * size:(step + 1) * size]}

    kind = args.model
    frozen = accuracy.frozen_float(tf, tf_keras, kind, accuracy._load_weights(args.work_dir,
                                                                              kind))
    want = _logits(tf, frozen, test_x).astype(np.float64)
    rows = {"float": {"acc": float((want.argmax(1) == test_y).mean())}}
    for bits, act in _cases():
        for correct in MODES:
            config = decent_q.QuantizeConfig(
                input_nodes=[accuracy.INPUT_NODE], output_nodes=[accuracy.OUTPUT_NODE],
                input_shapes=[[-1, 28, 28, 1]], weight_bit=bits,
                activation_bit=8 if act == "8" else bits, method=1,
                calib_iter=args.calib_batches, bias_correction=correct,
                output_dir=os.path.join(args.work_dir, f"bc_{kind}_{bits}_{act}_{correct}"))
            eval_gd, seconds = common.quantize_timed(decent_q, tf, frozen, input_fn, config)
            row = _metrics(_logits(tf, eval_gd, test_x), want, test_y)
            row["quantize_s"] = seconds
            rows[f"w{bits}_a{act}_bc{correct}"] = row
            print(f"{kind} w{bits} a{act} bc{correct}: {row}", file=sys.stderr, flush=True)
    print(json.dumps(rows))


def _spawn_float(args, kind):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    steps = ["--float_steps", str(args.float_steps)] if args.float_steps else []
    subprocess.run([sys.executable, os.path.join(HERE, "accuracy.py"), "--worker", "float",
                    "--model", kind, "--work_dir", args.work_dir, *steps],
                   env=env, check=True)


def markdown(results):
    lines = []
    for kind, rows in results.items():
        flt = rows["float"]
        lines += [f"**{kind}** (float: {100 * flt['acc']:.1f} %; 1,000 held-out images)", "",
                  "| weights | activations | bias correction | accuracy % | logits SQNR dB | "
                  "mean logit bias | quantize s |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for bits, act in _cases():
            for correct in MODES:
                row = rows[f"w{bits}_a{act}_bc{correct}"]
                lines.append(f"| {bits} | {8 if act == '8' else bits} | "
                             f"{MODE_NAMES[correct]} | {100 * row['acc']:.1f} | "
                             f"{row['sqnr_db']:.1f} | {row['mean_err']:.3f} | "
                             f"{row['quantize_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--float_steps", type=int, default=None,
                        help="float training steps (default: accuracy.FLOAT_STEPS, 600)")
    parser.add_argument("--calib_batches", type=int, default=10)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--model", choices=accuracy.MODELS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="dq_biascorr_")
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"work dir: {args.work_dir}", flush=True)
    for kind in MODELS:
        if not os.path.exists(accuracy._weights_path(args.work_dir, kind)):
            _spawn_float(args, kind)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    results = {}
    for kind in MODELS:
        results[kind] = accuracy.common.run_json(
            __file__, ["--worker", "--model", kind, "--work_dir", args.work_dir,
                       "--calib_batches", str(args.calib_batches)], env)
    with open(os.path.join(args.work_dir, "bias_correction.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
