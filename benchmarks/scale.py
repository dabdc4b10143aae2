"""Rewrite cost against graph size: synthetic conv chains through QAT and post-training quantize.

    python benchmarks/scale.py [--layers 100,1000,5000] [--form plain|bn_residual] [--profile 5000]

Each chain (``--form plain``) is ``input [N,4,4,4] -> (Conv2D 3x3 4->4 + BiasAdd + Relu) x L ->
output``; ``--form bn_residual`` makes each layer Conv2D + batch norm (``slim.batch_norm``, in
training mode for QAT, so the QAT rewrite folds it; frozen inference mode for PTQ) + Relu, with
a residual add around every two layers. For
each L, in a fresh process: (qat) build the float training graph with variables, then time
``CreateQuantizeTrainingGraph`` (fold, plan, live FixNeurons, quantize_train_graph.pb written);
(ptq) build the frozen GraphDef (constants), then time ``quantize_frozen`` with calib_iter 1
(float check, preparation, plan, calibration, eval + deploy models written). Time per layer at
each L; the target is per-layer time at 5,000 within 2x of per-layer time at 100.
``--profile L`` runs cProfile on both for L layers and prints the top functions.
"""

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time

import numpy as np

import common  # noqa: E402  (benchmarks/common.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def _kernel(rng):
    k = rng.normal(0.0, 0.05, (3, 3, 4, 4)).astype(np.float32)
    k[1, 1] += np.eye(4, dtype=np.float32)  # near-identity: activations neither vanish nor blow up
    return k


def build_chain(tf, layers, variables, form="plain"):
    if form == "bn_residual":
        return _build_bn_residual_chain(tf, layers, training=variables)
    rng = np.random.default_rng(0)
    x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 4], name="input")
    for i in range(layers):
        with tf.compat.v1.variable_scope(f"l{i}"):
            k, b = _kernel(rng), rng.normal(0.0, 0.01, 4).astype(np.float32)
            if variables:
                k = tf.compat.v1.get_variable("weights", initializer=k)
                b = tf.compat.v1.get_variable("biases", initializer=b)
            x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b))
    return tf.identity(x, name="output")


def _build_bn_residual_chain(tf, layers, training):
    import tf_slim as slim  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 4], name="input")
    shortcut = x
    for i in range(layers):
        with tf.compat.v1.variable_scope(f"l{i}"):
            kernel = tf.compat.v1.get_variable("weights", initializer=_kernel(rng))
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
            # gamma 0.01: each residual block adds ~1 % to its input (finite at 5,000 layers)
            y = slim.batch_norm(y, is_training=training, scale=True, scope="bn",
                                param_initializers={"gamma": tf.constant_initializer(0.01)})
            if i % 2 == 1:
                y = tf.add(y, shortcut, name="residual")
            x = tf.nn.relu(y)
            if i % 2 == 1:
                shortcut = x
    return tf.identity(x, name="output")


def run_qat(layers, profile=False, form="plain"):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import decent_q  # pylint: disable=import-outside-toplevel
    start = time.perf_counter()
    out = build_chain(tf, layers, variables=True, form=form)
    built = time.perf_counter()
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=[out.op.inputs[0].op.name],
                                     input_shapes=[[-1, 4, 4, 4]],
                                     output_dir=tempfile.mkdtemp(prefix="dq_scale_qat_"))
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    decent_q.CreateQuantizeTrainingGraph(config=config)
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
    return {"build_s": built - start, "rewrite_s": seconds}


def run_ptq(layers, profile=False, form="plain"):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_v2_behavior()
    import decent_q  # pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
        out = build_chain(tf, layers, variables=False, form=form)
        if form == "bn_residual":  # variables (the batch norms') become constants
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                gd = tf.compat.v1.graph_util.convert_variables_to_constants(
                    sess, graph.as_graph_def(), [out.op.name])
        else:
            gd = graph.as_graph_def()
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=[out.op.inputs[0].op.name],
                                     input_shapes=[[-1, 4, 4, 4]], calib_iter=1,
                                     output_dir=tempfile.mkdtemp(prefix="dq_scale_ptq_"))
    batch = np.random.default_rng(1).uniform(0, 1, (4, 4, 4, 4)).astype(np.float32)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    decent_q.quantize_frozen(gd, lambda step: {"input": batch}, config, progress=False)
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
    return {"nodes": len(gd.node), "quantize_s": seconds}


def _spawn(argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return common.run_json(__file__, argv, env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="100,1000,5000")
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--worker", choices=("qat", "ptq"))
    parser.add_argument("--form", choices=("plain", "bn_residual"), default="plain")
    args = parser.parse_args(argv)
    if args.profile:
        run_qat(args.profile, profile=True, form=args.form)
        run_ptq(args.profile, profile=True, form=args.form)
        return 0
    sizes = [int(s) for s in args.layers.split(",")]
    if args.worker:
        fn = run_qat if args.worker == "qat" else run_ptq
        print(json.dumps(fn(sizes[0], form=args.form)))
        return 0
    rows = {}
    for layers in sizes:
        qat = _spawn(["--worker", "qat", "--layers", str(layers), "--form", args.form])
        ptq = _spawn(["--worker", "ptq", "--layers", str(layers), "--form", args.form])
        rows[layers] = {**qat, **ptq}
        print(f"{layers} layers: QAT rewrite {qat['rewrite_s']:.2f} s "
              f"({1000 * qat['rewrite_s'] / layers:.2f} ms/layer), PTQ {ptq['quantize_s']:.2f} s "
              f"({1000 * ptq['quantize_s'] / layers:.2f} ms/layer), graph build "
              f"{qat['build_s']:.1f} s, {ptq['nodes']} nodes", flush=True)
    first, last = sizes[0], sizes[-1]
    for key in ("rewrite_s", "quantize_s"):
        ratio = (rows[last][key] / last) / (rows[first][key] / first)
        print(f"{key}: per-layer time at {last} / at {first} = {ratio:.2f}x")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
