"""GPU check: FixNeuron's TF-op path on the GPU against the kernel, and QAT with points on the GPU.

    pip install -q '.[test,examples]' && python benchmarks/gpu_check.py

On a machine without a GPU it says so and exits 0. With one (the first GPU is used):

1. equality -- the inputs of tests/test_ops_tf.py (random tensors at three scales, a tensor of
   several kernel blocks, the edge cases, EVAL positions) through FixNeuronDynamic for every
   combination there: the TF-op path on /GPU:0 (a plain graph; on a subset also in an XLA
   jit_scope, the default with a GPU, and under tf.function(jit_compile=True)) against the
   kernel on the CPU, bit for bit. Also where the plain TF ops ran (RunMetadata).
2. placement -- the QAT training graph of the example (examples/model.py, the rewrite with the
   default fix_neuron_impl=auto, which picks tf_ops with a GPU visible): one traced step, and
   for every quantization point the devices its ops ran on.
3. timing -- median step time (Adam, batch 64 and 256) of the float training graph, the QAT
   graph with the TF-op points on the GPU (each point an XLA cluster: the default), the same
   without XLA (DECENT_Q_TF_OPS_JIT=0), with XLA auto-clustering of the whole step, and the
   QAT graph with the kernel (points on the CPU: every activation to host memory and back).
4. the example end to end (examples/run_qat_example.py: float training, train.py, eval.py in
   their own processes, points on the GPU); skip it with --skip_example.

Exit status 1 if any equality check fails, else 0. Measured, not asserted.
``--cpu_dry_run`` runs steps 1-3 with the CPU standing in for the GPU (to try the script on a
machine without one; its figures mean nothing).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (os.path.join(ROOT, "examples"), os.path.join(ROOT, "tests"), ROOT):
    sys.path.insert(0, path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

GPU = "/device:GPU:0"
CPU = "/device:CPU:0"
AUTO = "auto"  # the implementation the placement check asks for (tf_ops in a CPU dry run)


def _session_config(jit=False):
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    if jit:
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return config


def _devices(run_metadata):
    """{node name: short device name} of a traced run."""
    placed = {}
    for dev in run_metadata.step_stats.dev_stats:
        short = "GPU" if "GPU" in dev.device.upper() else "CPU" if "CPU" in dev.device.upper() \
            else dev.device
        for node in dev.node_stats:
            placed.setdefault(node.node_name.split(":")[0], set()).add(short)
    return placed


def _trace():
    return tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)


# -- 1. equality ------------------------------------------------------------------------------

def check_equality():
    """Returns the number of failed comparisons."""
    import test_ops_tf as cases  # pylint: disable=import-outside-toplevel
    from decent_q import ops  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(20)
    inputs = [(f"random x{s:g}", cases._random_tensor(rng, (2, 6, 5, 3), s), 4)
              for s in (1.0, 3e-4, 7e3)]
    inputs.append(("several blocks", cases._random_tensor(rng, (3, 131, 127), 0.37), -2))
    inputs += [(name, x, pos) for name, x in sorted(cases._edge_inputs().items())
               for pos in (0, 3, -127, 127, -128)]
    wide = np.concatenate([cases._random_tensor(rng, (300,), 10.0 ** e) for e in (-30, 0, 30)])
    inputs += [(f"eval pos {p}", wide, p) for p in (-1000, -128, -127, -5, 0, 127, 500)]

    # XLA compiles once per function and input shape: fewer attribute sets and two shapes.
    xla_combos = [c for c in cases.COMBOS
                  if c[2] == 8 or (c[2] in (2, 16) and c[3] == 1 and c[1] == 2)]
    edges = np.concatenate([inputs[3][1].reshape(-1)] + [
        v.reshape(-1) for _, v in sorted(cases._edge_inputs().items())])
    xla_inputs = [inputs[0]] + [("several blocks + edge values", edges, p)
                                for p in (0, -127, 127, -128)]
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None])
        pos = tf.compat.v1.placeholder(tf.int32, [])
        fetches = {"graph": [], "jit_scope": [], "xla": []}
        for mode, phase, bits, method, arch in cases.COMBOS:
            kw = dict(mode=mode, phase=phase, bit_width=bits, method=method, arch_type=arch)
            with tf.device(CPU):
                kernel = ops.fix_neuron_dynamic(x, pos, impl="kernel", **kw)
            with tf.device(GPU):
                plain = ops.fix_neuron_dynamic(x, pos, impl="tf_ops", name="tfop", jit=False,
                                               **kw)
            fetches["graph"].append((kernel, plain))
            if (mode, phase, bits, method, arch) in xla_combos:
                @tf.function(jit_compile=True)
                def compiled(t, p, kw=kw):
                    return ops.fix_neuron_dynamic(t, p, impl="tf_ops", **kw)
                with tf.device(GPU):
                    fetches["xla"].append((kernel, compiled(x, pos)))
                    fetches["jit_scope"].append((kernel, ops.fix_neuron_dynamic(
                        x, pos, impl="tf_ops", jit=True, **kw)))
    failures = 0
    with tf.compat.v1.Session(graph=graph, config=_session_config()) as sess:
        meta = tf.compat.v1.RunMetadata()
        sess.run(fetches["graph"], {x: inputs[0][1].reshape(-1), pos: 0}, options=_trace(),
                 run_metadata=meta)
        placed = _devices(meta)
        tfop_nodes = {n: d for n, d in placed.items() if "tfop" in n.split("/")[0]}
        counts = {}
        for devs in tfop_nodes.values():
            for d in devs:
                counts[d] = counts.get(d, 0) + 1
        print(f"  TF-op FixNeuron nodes by device (one traced run): {counts}")
        on_cpu = sorted({n.split("/", 1)[-1].rstrip("_0123456789")
                         for n, d in tfop_nodes.items() if "CPU" in d})
        if on_cpu:
            print(f"  ran on the CPU (int32 scalars live in host memory): {on_cpu[:12]}")
        start = time.time()
        for kind in ("graph", "jit_scope", "xla"):
            combos, feeds = (cases.COMBOS, inputs) if kind == "graph" else (xla_combos,
                                                                              xla_inputs)
            bad = 0
            for name, value, p in feeds:
                got = sess.run(fetches[kind], {x: value.reshape(-1), pos: p})
                for combo, ((yk, pk), (yt, pt)) in zip(combos, got):
                    try:
                        assert int(pt) == int(pk), f"position {pt} vs kernel {pk}"
                        cases.assert_bits_equal(yt, yk)
                    except AssertionError as err:
                        bad += 1
                        if bad <= 5:
                            print(f"  MISMATCH {kind} {name} pos={p} {combo}: {err}")
            total = len(feeds) * len(combos)
            print(f"  {kind:9s}: {total - bad}/{total} comparisons bit-exact "
                  f"({len(feeds)} inputs x {len(combos)} attribute sets)")
            failures += bad
        print(f"  ({time.time() - start:.0f} s)")
    return failures


# -- 2. placement and 3. timing -----------------------------------------------------------------

def _qat_graph(impl, seed=0, tf_ops_jit=None):
    """The example's QAT training graph; returns (graph, train_op, net)."""
    import decent_q  # pylint: disable=import-outside-toplevel
    import model  # pylint: disable=import-outside-toplevel
    if tf_ops_jit is None:
        os.environ.pop("DECENT_Q_TF_OPS_JIT", None)
    else:
        os.environ["DECENT_Q_TF_OPS_JIT"] = tf_ops_jit
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        net = model.model_fn(is_training=True)
        if impl is not None:
            work = tempfile.mkdtemp(prefix="gpu_check_")
            decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(
                input_nodes=[model.INPUT_NODE], output_nodes=[model.OUTPUT_NODE],
                input_shapes=[model.INPUT_SHAPE], output_dir=work, fix_neuron_impl=impl))
        train_op = model.train_op(net["loss"], 1e-3)
    return graph, train_op, net


def _traced_step(impl, tf_ops_jit):
    """Builds the example's QAT graph, runs two steps (the second traced); returns
    (graph, quantization point names, {node name: devices})."""
    from decent_q import ops  # pylint: disable=import-outside-toplevel
    graph, train_op, net = _qat_graph(impl, tf_ops_jit=tf_ops_jit)
    with graph.as_default():
        points = sorted(ops.histogram_variables(graph))
        init = tf.compat.v1.global_variables_initializer()
    rng = np.random.default_rng(0)
    feed = {net["images"]: rng.uniform(0, 1, (64, 28, 28, 1)).astype(np.float32),
            net["labels"]: rng.integers(0, 10, 64)}
    with tf.compat.v1.Session(graph=graph, config=_session_config()) as sess:
        sess.run(init)
        sess.run(train_op, feed)
        meta = tf.compat.v1.RunMetadata()
        sess.run(train_op, feed, options=_trace(), run_metadata=meta)
    os.environ.pop("DECENT_Q_TF_OPS_JIT", None)
    return graph, points, _devices(meta)


def report_placement():
    """Per point: the devices of its TF ops (built without XLA, so that every op shows under
    its own name); then, with the default XLA jit scope, where the clusters and Q/fix ran."""
    graph, points, placed = _traced_step(AUTO, "0")
    print(f"  {len(points)} quantization points; fix op type "
          f"{graph.get_operation_by_name(points[0] + '/fix').type}; without XLA:")
    print(f"  {'point':44s} {'fix ops (device: count)':28s} histogram update")
    all_gpu = True
    for point in points:
        counts = {}
        for name, devs in placed.items():
            if name == point + "/fix" or name.startswith(point + "/fix_ops/"):
                for d in devs:
                    counts[d] = counts.get(d, 0) + 1
        count_dev = sorted(placed.get(point + "/AssignAdd", set()))
        all_gpu &= counts.get("GPU", 0) > counts.get("CPU", 0)
        text = ", ".join(f"{d}: {n}" for d, n in sorted(counts.items()))
        print(f"  {point:44s} {text:28s} {'/'.join(count_dev) or '-'}")
    print(f"  every point computed mostly on the GPU: {'yes' if all_gpu else 'NO'}")
    _, points, placed = _traced_step(AUTO, None)
    clusters = {}
    for name, devs in placed.items():
        if "xla_run" in name.lower() or "xlarun" in name.lower():
            for d in devs:
                clusters[d] = clusters.get(d, 0) + 1
    left = {}
    for name, devs in placed.items():
        if "/fix_ops/" in name:
            for d in devs:
                left[d] = left.get(d, 0) + 1
    print(f"  default (points in XLA jit scopes): XLA cluster runs by device {clusters}; "
          f"fix ops outside clusters by device {left}")


def time_steps(batches=(64, 256), rounds=5, steps=20):
    """Median step times of the float, QAT (TF ops, with and without XLA) and QAT (kernel)
    training graphs, round-robin so that machine noise hits all alike."""
    variants = [("float", None, False, None),
                ("QAT tf_ops (GPU), points as XLA", "tf_ops", False, None),
                ("QAT tf_ops (GPU), no XLA", "tf_ops", False, "0"),
                ("QAT tf_ops (GPU), XLA auto-jit", "tf_ops", True, "0"),
                ("float, XLA auto-jit", None, True, None),
                ("QAT kernel (points on CPU)", "kernel", False, None)]
    sessions = []
    for label, impl, jit, tf_ops_jit in variants:
        try:
            graph, train_op, net = _qat_graph(impl, tf_ops_jit=tf_ops_jit)
            with graph.as_default():
                init = tf.compat.v1.global_variables_initializer()
            sess = tf.compat.v1.Session(graph=graph, config=_session_config(jit))
            sess.run(init)
            sessions.append((label, sess, train_op, net))
        except Exception as err:  # pylint: disable=broad-except
            print(f"  {label}: could not build ({type(err).__name__}: {str(err)[:200]})")
    rng = np.random.default_rng(1)
    for batch in batches:
        feed_values = (rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32),
                       rng.integers(0, 10, batch))
        times = {label: [] for label, *_ in sessions}
        for label, sess, train_op, net in sessions:
            feed = {net["images"]: feed_values[0], net["labels"]: feed_values[1]}
            try:
                for _ in range(10):  # warm-up (and XLA compilation)
                    sess.run(train_op, feed)
            except Exception as err:  # pylint: disable=broad-except
                print(f"  {label}: step failed ({type(err).__name__}: {str(err)[:200]})")
                times.pop(label)
        for _ in range(rounds):
            for label, sess, train_op, net in sessions:
                if label not in times:
                    continue
                feed = {net["images"]: feed_values[0], net["labels"]: feed_values[1]}
                start = time.perf_counter()
                for _ in range(steps):
                    sess.run(train_op, feed)
                times[label].append((time.perf_counter() - start) / steps)
        med = {label: statistics.median(t) for label, t in times.items()}
        os.environ.pop("DECENT_Q_TF_OPS_JIT", None)
        base = med.get("float")
        print(f"  batch {batch}: median of {rounds} rounds x {steps} steps")
        for label, t in med.items():
            ratio = f"{t / base:5.2f}x float" if base else ""
            print(f"    {label:34s} {t * 1e3:8.2f} ms  {ratio}")
    for _, sess, _, _ in sessions:
        sess.close()


# -- 4. the example -------------------------------------------------------------------------------

def run_example(timeout):
    work = tempfile.mkdtemp(prefix="gpu_check_example_")
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "run_qat_example.py"),
                           "--work_dir", work], cwd=work, timeout=timeout, check=False,
                          capture_output=True, text=True)
    lines = [l for l in (proc.stdout + proc.stderr).splitlines()
             if any(k in l.lower() for k in ("accuracy", "$ python", " s)", "error", "deploy"))]
    for line in lines[-20:]:
        print(f"  {line}")
    print(f"  exit status {proc.returncode}, {time.time() - start:.0f} s")
    return proc.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--skip_example", action="store_true",
                        help="skip the end-to-end example run (step 4)")
    parser.add_argument("--example_timeout", type=int, default=240)
    parser.add_argument("--cpu_dry_run", action="store_true",
                        help="steps 1-3 with the CPU in place of the GPU (tries the script)")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if args.cpu_dry_run and not gpus:
        global GPU, AUTO  # pylint: disable=global-statement
        GPU, AUTO, args.skip_example = CPU, "tf_ops", True
        gpus = tf.config.list_physical_devices("CPU")
    if not gpus:
        print("gpu_check: no GPU visible to TensorFlow "
              f"{tf.__version__} (built with CUDA: {tf.test.is_built_with_cuda()}): "
              "nothing to check.")
        return 0
    tf.compat.v1.disable_v2_behavior()
    import decent_q  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    details = tf.config.experimental.get_device_details(gpus[0]) if GPU != CPU else {}
    print(f"gpu_check: TensorFlow {tf.__version__}, {len(gpus)} device(s), first: "
          f"{details.get('device_name', gpus[0].name)}")
    print("1. FixNeuron TF ops on the GPU vs the kernel on the CPU")
    failures = check_equality()
    print("2. where the QAT example's quantization points ran (fix_neuron_impl=auto)")
    report_placement()
    print("3. training step time, the example's model, Adam")
    time_steps()
    if not args.skip_example:
        print("4. examples/run_qat_example.py (points on the GPU)")
        try:
            run_example(args.example_timeout)
        except subprocess.TimeoutExpired:
            print(f"  timed out after {args.example_timeout} s")
    print(f"gpu_check: {'all equality checks passed' if not failures else f'{failures} MISMATCHES'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
