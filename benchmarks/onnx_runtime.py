"""ONNX export: export time, and ONNX Runtime latency of the exported int8 models against the
float model exported the same way.

    python benchmarks/onnx_runtime.py [--repeats 7] [--models resnet50,resnet]

Models (random weights: speed does not depend on them): ``resnet50``, tf_keras ResNet50 at
224x224x3 with He-normal kernels (benchmarks/model_zoo.py), output its logits; ``resnet``, the
7-conv residual net of benchmarks/accuracy.py (28x28x1). Each is frozen, quantized by
``decent_q.quantize_frozen`` (2 batches of 8 random images) and exported three ways:
``float`` (the frozen float graph through tf2onnx, opset 13), ``dpu`` and ``half_even``
(``decent_q.export_onnx`` of quantize_eval_model.pb with each rounding). Export time is the
wall time of one ``export_onnx`` call. ONNX Runtime sessions use the default CPU provider
settings (all graph optimizations, one thread per core); batches 1 and 32 of random images
run in rounds that visit every variant in turn (one warm-up run each first); the figure is the
median over ``--repeats`` rounds, and the ratio is float / variant from the same rounds.
Top-1 agreement: each variant's answers on the last batch of 32 against ``dpu``'s (which are
the eval model's, bit for bit).
The op counts are those of ONNX Runtime's optimized graph (SessionOptions.optimized_model_filepath):
QLinearConv / QLinearMatMul / QGemm / MatMulInteger are integer kernels; Conv / FusedConv /
MatMul / Gemm are float.
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
               "QLinearAdd")
FLOAT_OPS = ("Conv", "FusedConv", "MatMul", "Gemm", "FusedMatMul")
BATCHES = (1, 32)


def _frozen(name):
    """(frozen float GraphDef, input node, output node, input shape without the batch)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_eager_execution()
    if name == "resnet50":
        import model_zoo  # pylint: disable=import-outside-toplevel
        graph_def, images, logits = model_zoo.build_inference(
            model_zoo.Spec("keras", "ResNet50", 224))
        return graph_def, images, logits, (224, 224, 3)
    import tf_keras  # pylint: disable=import-outside-toplevel
    import accuracy  # pylint: disable=import-outside-toplevel
    tf_keras.backend.clear_session()
    tf.compat.v1.set_random_seed(0)
    weights = accuracy.build(tf_keras, "resnet").get_weights()
    graph_def = accuracy.frozen_float(tf, tf_keras, "resnet", weights)
    return graph_def, accuracy.INPUT_NODE, accuracy.OUTPUT_NODE, (28, 28, 1)


def _export_all(name, work):
    """{variant: (onnx path, export seconds)} and the input node name."""
    import decent_q  # pylint: disable=import-outside-toplevel
    import tf2onnx  # pylint: disable=import-outside-toplevel
    graph_def, images, logits, shape = _frozen(name)
    rng = np.random.default_rng(0)
    config = decent_q.QuantizeConfig(input_nodes=[images], output_nodes=[logits],
                                     input_shapes=[[-1, *shape]], calib_iter=2,
                                     output_dir=os.path.join(work, name))
    paths = decent_q.quantize_frozen(
        graph_def, lambda step: {images: rng.uniform(0, 1, (8, *shape)).astype(np.float32)},
        config, progress=False)
    out = {}
    start = time.perf_counter()
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=[f"{images}:0"],
                                              output_names=[f"{logits}:0"], opset=13)
    out["float"] = (os.path.join(work, name, "float.onnx"), time.perf_counter() - start)
    with open(out["float"][0], "wb") as f:
        f.write(model.SerializeToString())
    for rounding in ("dpu", "half_even"):
        path = os.path.join(work, name, f"{rounding}.onnx")
        start = time.perf_counter()
        decent_q.export_onnx(paths["quantize_eval_model"], path, rounding=rounding)
        out[rounding] = (path, time.perf_counter() - start)
    return out, shape


def _op_counts(path, work):
    import onnx  # pylint: disable=import-outside-toplevel
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    options = ort.SessionOptions()
    options.optimized_model_filepath = os.path.join(work, "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath)
                                 .graph.node)
    return {op: counts[op] for op in INTEGER_OPS + FLOAT_OPS if counts[op]}


def _latencies(paths, shape, repeats):
    """({batch: {variant: median ms}}, {variant: top-1 agreement with dpu on batch 32})."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    sessions = {v: ort.InferenceSession(p, providers=["CPUExecutionProvider"])
                for v, (p, _) in paths.items()}
    result, top1 = {}, {}
    for batch in BATCHES:
        x = np.random.default_rng(1).uniform(0, 1, (batch, *shape)).astype(np.float32)
        feeds = {v: {s.get_inputs()[0].name: x} for v, s in sessions.items()}
        times = collections.defaultdict(list)
        for v, s in sessions.items():
            s.run(None, feeds[v])
        for _ in range(repeats):
            for v, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds[v])
                times[v].append(time.perf_counter() - start)
        result[batch] = {v: 1000 * float(np.median(t)) for v, t in times.items()}
    answers = {v: s.run(None, feeds[v])[0].argmax(-1) for v, s in sessions.items()}
    top1 = {v: float((a == answers["dpu"]).mean()) for v, a in answers.items()}
    return result, top1


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default="resnet50,resnet")
    args = parser.parse_args(argv)
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    report = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
              "cpu_flags": _cpu_flags(), "cores": os.cpu_count(), "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            os.makedirs(os.path.join(work, name))
            paths, shape = _export_all(name, work)
            latencies, top1 = _latencies(paths, shape, args.repeats)
            report["models"][name] = {
                "export_s": {v: round(s, 2) for v, (_, s) in paths.items()},
                "ops": {v: _op_counts(p, work) for v, (p, _) in paths.items()},
                "median_ms": latencies, "top1_agreement_with_dpu": top1}
    print(json.dumps(report, indent=1))
    for name, row in report["models"].items():
        for batch, ms in row["median_ms"].items():
            print(f"{name} batch {batch}: " + ", ".join(
                f"{v} {t:.1f} ms ({ms['float'] / t:.2f}x)" for v, t in ms.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
