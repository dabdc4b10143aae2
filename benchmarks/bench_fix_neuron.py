"""Times the FixNeuron kernel against TensorFlow's fake_quant and a plain copy, in one process.

    python benchmarks/bench_fix_neuron.py [--malloc tuned|default] [--runs 40] [--tf_ops_runs 5]

All ops read the same 64x56x56x64 float32 tf.Variable (nothing is fed per run) and are run
as ops (no output is fetched to Python), round-robin so that machine noise hits all of them
alike; each figure is the median of ``--runs`` steady-state runs after warm-up.

Every op allocates a fresh 51 MB output per run. With glibc's default malloc such a buffer is
mmap'ed and unmapped each run, and first-touch page faults then cost more than the arithmetic.
``--malloc tuned`` (the default) re-executes the script with MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ raised, so freed buffers are reused; ``--malloc default`` measures
glibc's defaults. Both settings apply to every op alike.

The TF-op implementation (decent_q/ops_tf.py, the GPU path) is timed on the same tensor and
in the same rounds, as a plain graph and compiled with XLA (tf.function(jit_compile=True)),
and reported as a ratio to the kernel. It is far slower on a CPU (it computes in float64,
one op at a time unless XLA fuses them), so it runs in the first ``--tf_ops_runs`` rounds only.

Measured, not asserted: see benchmarks/README.md for figures.
"""

import argparse
import math
import os
import statistics
import sys
import time

TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),  # serve big buffers from the heap, not mmap
    "MALLOC_TRIM_THRESHOLD_": str(1 << 31),  # and do not give them back to the OS each run
}
SHAPE = (64, 56, 56, 64)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="glibc malloc settings for the whole process (default: tuned)")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per op (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per op first")
    parser.add_argument("--tf_ops_runs", type=int, default=5,
                        help="timed runs of the TF-op path (0: leave it out)")
    return parser


def _reexec_with_malloc(mode):
    """glibc reads its malloc settings at start-up: set them and start the script again."""
    want = TUNED_MALLOC if mode == "tuned" else {k: None for k in TUNED_MALLOC}
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    env = dict(os.environ)
    for key, value in want.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def _build_tf_ops(tf, ops, xv, upstream):
    """The TF-op path's ops: {name: op to run} (plain graph and XLA), reading x."""
    train_fwd = ops.quantize(xv, "train_tf/aquant", mode=ops.Mode.ACTIVATION,
                             phase=ops.Phase.TRAIN, method=1, impl="tf_ops")
    (train_grad,) = tf.gradients(train_fwd, [xv], grad_ys=upstream)

    def compiled(phase):
        @tf.function(jit_compile=True)
        def fn(t):
            y, _ = ops.fix_neuron_dynamic(t, tf.constant(4), mode=ops.Mode.ACTIVATION,
                                          phase=phase, method=1, impl="tf_ops")
            return y
        return fn(xv)

    return {
        "tf_ops EVAL fwd": [ops.fix_neuron(xv, mode=ops.Mode.ACTIVATION, phase=ops.Phase.EVAL,
                                           quantize_pos=4, impl="tf_ops").op],
        "tf_ops TRAIN m1 fwd": [train_fwd.op],
        "tf_ops TRAIN m1 fwd+bwd": [train_fwd.op, train_grad.op],
        "tf_ops XLA EVAL fwd": [compiled(ops.Phase.EVAL).op],
        "tf_ops XLA TRAIN m1 fwd": [compiled(ops.Phase.TRAIN).op],
    }


def _build_ops(tf, ops):
    """Returns {name: op to run}, all reading the same variable x."""
    rng_init = tf.random.stateless_normal(SHAPE, seed=(1, 2)) * 2.0
    x = tf.compat.v1.Variable(rng_init, name="x")
    upstream = tf.compat.v1.Variable(tf.random.stateless_normal(SHAPE, seed=(3, 4)), name="g")
    qmin = tf.compat.v1.Variable(-6.0, name="qmin")
    qmax = tf.compat.v1.Variable(6.0, name="qmax")
    xv = x.value()

    copy = xv * 1.0
    eval_fwd = ops.fix_neuron(xv, mode=ops.Mode.ACTIVATION, phase=ops.Phase.EVAL,
                              quantize_pos=4)
    train_fwd = ops.quantize(xv, "train/aquant", mode=ops.Mode.ACTIVATION,
                             phase=ops.Phase.TRAIN, method=1)
    (train_grad,) = tf.gradients(train_fwd, [xv], grad_ys=upstream.value())
    # A trained-threshold point (quantize_strategy pof2s_tqt) after its first run: quantize at
    # the threshold's position; its backward computes the gradients of x and the threshold.
    tqt_fwd = ops.quantize(xv, "tqt/aquant", mode=ops.Mode.ACTIVATION, phase=ops.Phase.TRAIN,
                           method=1, trained_threshold=True)
    tqt_grads = tf.gradients(tqt_fwd, [xv, ops.threshold_variables(xv.graph)["tqt/aquant"]],
                             grad_ys=upstream.value())
    fq_fwd = tf.quantization.fake_quant_with_min_max_vars(xv, qmin, qmax, num_bits=8)
    fq_grads = tf.gradients(fq_fwd, [xv, qmin, qmax], grad_ys=upstream.value())
    # Ops to run as targets: a target always executes, and nothing is copied out to Python.
    return {
        "copy (x*1.0)": [copy.op],
        "FixNeuron EVAL fwd": [eval_fwd.op],
        "FixNeuron TRAIN m1 fwd": [train_fwd.op],
        "FixNeuron TRAIN m1 fwd+bwd": [train_fwd.op, train_grad.op],
        "FixNeuron TRAIN tqt fwd": [tqt_fwd.op],
        "FixNeuron TRAIN tqt fwd+bwd": [tqt_fwd.op] + [g.op for g in tqt_grads],
        "fake_quant fwd": [fq_fwd.op],
        "fake_quant fwd+bwd": [fq_fwd.op] + [g.op for g in fq_grads],
        "_inputs": (xv, upstream.value()),  # for _build_tf_ops; not timed
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    _reexec_with_malloc(args.malloc)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from decent_q import ops  # pylint: disable=import-outside-toplevel

    with tf.Graph().as_default() as graph:
        targets = _build_ops(tf, ops)
        xv, upstream = targets.pop("_inputs")
        slow = _build_tf_ops(tf, ops, xv, upstream) if args.tf_ops_runs > 0 else {}
        # Grappler off: it would rewrite x*1.0 into an identity (no copy left to time).
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        with tf.compat.v1.Session(graph=graph, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, op in list(targets.items()) + list(slow.items()):
                for _ in range(args.warmup if name in targets else 1):
                    sess.run(op)
            times = {name: [] for name in list(targets) + list(slow)}
            for run in range(args.runs):
                todo = dict(targets, **slow) if run < args.tf_ops_runs else targets
                for name, op in todo.items():
                    start = time.perf_counter()
                    sess.run(op)
                    times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}

    n_bytes = 4 * math.prod(SHAPE)
    copy_bw = 2 * n_bytes / med["copy (x*1.0)"]  # read x + write y
    print(f"tensor {'x'.join(map(str, SHAPE))} float32 ({n_bytes / 1e6:.1f} MB), "
          f"malloc {args.malloc}, {args.runs} runs, nproc {os.cpu_count()}")
    for name, t in med.items():
        print(f"  {name:28s} {t * 1e3:8.2f} ms")
    print(f"copy bandwidth {copy_bw / 1e9:.2f} GB/s (read + write)")
    bound = 2 * n_bytes / copy_bw
    print(f"EVAL fwd / fake_quant fwd            {med['FixNeuron EVAL fwd'] / med['fake_quant fwd']:.2f}"
          "  (target <= 1.0)")
    print(f"TRAIN m1 fwd+bwd / fake_quant fwd+bwd "
          f"{med['FixNeuron TRAIN m1 fwd+bwd'] / med['fake_quant fwd+bwd']:.2f}  (target <= 1.5)")
    print(f"TRAIN tqt fwd+bwd / fake_quant fwd+bwd "
          f"{med['FixNeuron TRAIN tqt fwd+bwd'] / med['fake_quant fwd+bwd']:.2f}")
    print(f"EVAL fwd / bandwidth bound ({bound * 1e3:.2f} ms, 8 bytes/element) "
          f"{med['FixNeuron EVAL fwd'] / bound:.2f}  (target <= 1.5)")
    # min/max reads x, the candidate costs (which need p0 from the global min/max) read it
    # again, the quantization reads x and writes y: 16 bytes per element at least.
    train_bound = 4 * n_bytes / copy_bw
    print(f"TRAIN m1 fwd / its bandwidth bound ({train_bound * 1e3:.2f} ms, 16 bytes/element) "
          f"{med['FixNeuron TRAIN m1 fwd'] / train_bound:.2f}")
    if slow:
        print(f"TF-op path (decent_q/ops_tf.py) / kernel, {min(args.runs, args.tf_ops_runs)} "
              "runs each:")
        for name in slow:
            kernel = "FixNeuron " + name.replace("tf_ops ", "").replace("XLA ", "")
            print(f"  {name:28s} / {kernel:28s} {med[name] / med[kernel]:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
