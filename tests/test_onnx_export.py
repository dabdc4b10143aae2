"""ONNX export (decent_q.onnx_export, docs/onnx.md): ONNX Runtime runs the exported model with
the eval model's numbers: bit for bit with rounding "dpu", against TensorFlow and against the
NumPy reference; "half_even" differs only at ties and runs integer kernels."""

import collections
import importlib.util
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import decent_q
from decent_q import onnx_export
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils
from decent_q.ops import Mode, Phase

import numpy_reference as ref

tf.compat.v1.disable_v2_behavior()  # tf_keras models in graph mode (model_zoo), as the guide's
onnx = pytest.importorskip("onnx")
import onnx.numpy_helper  # noqa: E402  pylint: disable=wrong-import-position
ort = pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "ptq")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import model_zoo  # noqa: E402  pylint: disable=wrong-import-position


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + str(cwd), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "decent_q", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _ort(model, feeds):
    """Outputs of an ONNX model (path or ModelProto) as {name: array}."""
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _tf(graph_def, fetches, feeds):
    graph = utils.import_graph(graph_def)
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run([f + ":0" for f in fetches], {k + ":0": v for k, v in feeds.items()})


def _optimized(model, tmp_path):
    """ONNX Runtime's optimized graph of `model` (what its CPU provider runs)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def _optimized_ops(model, tmp_path):
    return collections.Counter(n.op_type for n in _optimized(model, tmp_path).graph.node)


# -- the guide's post-training example --------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """examples/ptq: trained, frozen and quantized with the guide's command plus
    --output_format onnx; and its 540 held-out digits."""
    folder = tmp_path_factory.mktemp("digits_onnx")
    for name in ("my_input_fn.py", "make_frozen_graph.py"):
        shutil.copy(os.path.join(EXAMPLE, name), folder)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "make_frozen_graph.py", "--steps", "400"], cwd=folder,
                   env=env, check=True, capture_output=True, timeout=300)
    proc = _cli(["quantize", "--input_frozen_graph", "frozen_graph.pb", "--input_nodes", "input",
                 "--output_nodes", "logits", "--input_shapes", "?,8,8,1", "--input_fn",
                 "my_input_fn.calib_input", "--output_format", "onnx", "--quiet"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # By path: other tests import modules named my_input_fn of their own.
    spec = importlib.util.spec_from_file_location("ptq_example_input_fn",
                                                  folder / "my_input_fn.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    _, _, test_x, test_y = example.load_split()
    return folder, test_x, test_y


def test_ptq_example_onnx_equals_the_eval_model(digits):
    """Every one of the 540 held-out digits: the written .onnx gives TensorFlow's top-1 and
    probabilities; exported with the last FixNeuron as an output, that is bit-exact."""
    folder, x, y = digits
    results = folder / "quantize_results"
    assert sorted(os.listdir(results)) == ["deploy_model.pb", "quantize_eval_model.onnx",
                                           "quantize_eval_model.pb"]
    eval_gd = utils.load_graph_def(str(results / "quantize_eval_model.pb"))
    tf_logits, tf_prob = _tf(eval_gd, ["logits/aquant", "prob"], {"input": x})
    onnx_prob = _ort(str(results / "quantize_eval_model.onnx"), {"input": x})["prob"]
    assert x.shape[0] == 540
    np.testing.assert_array_equal(onnx_prob.argmax(1), tf_prob.argmax(1))
    np.testing.assert_allclose(onnx_prob, tf_prob, atol=1e-6)  # softmax in float: not exact
    model = onnx_export.to_onnx(eval_gd, output_nodes=["logits/aquant", "prob"])
    out = _ort(model, {"input": x})
    np.testing.assert_array_equal(out["logits/aquant"], tf_logits)
    accuracy = float((out["prob"].argmax(1) == y).mean())
    print(f"digits: TF eval model and ONNX Runtime agree on 540/540; accuracy {accuracy:.4f}")
    assert accuracy > 0.9


def test_export_command_writes_the_same_file(digits, tmp_path):
    """`export` of quantize_eval_model.pb == the file quantize wrote (same bytes: the export is
    deterministic), and the input/output names and the free batch size are kept."""
    folder, x, _ = digits
    proc = _cli(["export", "--input_frozen_graph", "quantize_results/quantize_eval_model.pb",
                 "--output_dir", str(tmp_path)], folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = tmp_path / "quantize_eval_model.onnx"
    assert written.read_bytes() == (folder / "quantize_results" /
                                    "quantize_eval_model.onnx").read_bytes()
    model = onnx.load(str(written))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["prob"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [8, 8, 1]
    for n in (1, 7):
        assert _ort(str(written), {"input": x[:n]})["prob"].shape == (n, 10)


def test_the_same_model_gives_the_same_bytes_in_one_process(digits):
    """tf2onnx's name counter keeps counting and its optimizers' order varies between calls;
    the export's canonical names and order do not."""
    folder, _, _ = digits
    eval_gd = utils.load_graph_def(str(folder / "quantize_results" / "quantize_eval_model.pb"))
    for rounding in ("dpu", "half_even"):
        first, second = (onnx_export.to_onnx(eval_gd, rounding=rounding)
                         .SerializeToString(deterministic=True) for _ in range(2))
        assert first == second


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="ONNX Runtime's integer kernels and their fusion are x86's here")
def test_half_even_runs_integer_kernels(digits, tmp_path):
    """rounding half_even: ONNX Runtime fuses every conv and matmul into integer kernels; the
    answers stay those of the eval model on nearly every digit (ties round to even)."""
    folder, x, _ = digits
    eval_gd = utils.load_graph_def(str(folder / "quantize_results" / "quantize_eval_model.pb"))
    model = onnx_export.to_onnx(eval_gd, rounding="half_even")
    ops = _optimized_ops(model, tmp_path)
    print("optimized half_even ops:", dict(ops))
    assert ops["QLinearConv"] == 2 and ops["Conv"] == ops["FusedConv"] == 0
    assert ops["QLinearMatMul"] + ops["QGemm"] + ops["MatMulInteger"] == 2
    assert ops["MatMul"] == ops["Gemm"] == 0
    tf_prob, = _tf(eval_gd, ["prob"], {"input": x})
    agree = float((_ort(model, {"input": x})["prob"].argmax(1) == tf_prob.argmax(1)).mean())
    print(f"half_even top-1 agreement with the eval model: {agree:.4f}")
    assert agree >= 0.99
    dpu_ops = _optimized_ops(onnx_export.to_onnx(eval_gd), tmp_path)
    assert dpu_ops["QLinearConv"] == 0  # "dpu" rounds in float ops between conv and Q


# -- numerics against the NumPy reference ---------------------------------------------------------

def _edge_values(pos):
    """Ties (even and odd floors, both signs), values next to ties, 0.49999997, saturation,
    zeros and large values, on the grid of `pos`."""
    step = 2.0 ** -pos
    codes = np.concatenate([np.arange(-140, 141) + 0.5, np.arange(-140, 141),
                            np.arange(-140, 141) + 0.25, [0.49999997, -0.49999997, 0.0, -0.0,
                                                          1e6, -1e6, 40000.5, -40000.5]])
    x = (codes * step).astype(np.float32)
    return np.concatenate([x, np.nextafter(x, np.float32(np.inf)),
                           np.nextafter(x, np.float32(-np.inf))]).astype(np.float32)


def _points_graph(specs, n):
    """Input x (n values) -> one FixNeuron per spec (mode, bit_width, pos, arch_type) -> an
    Identity output each."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, n], name="x")
        for i, (mode, bits, pos, arch) in enumerate(specs):
            fixed = decent_q.fix_neuron(x, mode, Phase.EVAL, bit_width=bits, quantize_pos=pos,
                                        arch_type=arch, name=f"fix{i}")
            tf.identity(fixed, name=f"out{i}")
    return graph.as_graph_def()


SPECS = [(Mode.ACTIVATION, 8, 4, "DEFAULT"), (Mode.ACTIVATION, 8, 0, "DEFAULT"),
         (Mode.ACTIVATION, 8, -3, "DEFAULT"), (Mode.ACTIVATION, 8, 20, "DEFAULT"),
         (Mode.ACTIVATION, 4, 2, "DEFAULT"), (Mode.ACTIVATION, 6, 5, "DEFAULT"),
         (Mode.ACTIVATION, 2, 1, "DEFAULT"), (Mode.ACTIVATION, 8, 3, "DPUCADF8H"),
         (Mode.ACTIVATION, 16, 6, "DEFAULT"), (Mode.ACTIVATION, 12, -2, "DEFAULT"),
         (Mode.WEIGHT, 8, 5, "DEFAULT"), (Mode.DW_WEIGHT, 4, 1, "DEFAULT"),
         (Mode.WEIGHT, 16, 9, "DEFAULT")]


@pytest.mark.parametrize("rounding", ["dpu", "half_even"])
def test_points_equal_the_numpy_reference(rounding, caplog):
    """Each FixNeuron's ONNX form on ties, near-ties, saturation and zeros at 2-16 bits,
    negative and large positions, DPUCADF8H, activations and weight modes of a computed
    tensor: "dpu" equals the reference bit for bit; "half_even" equals clamp(round half to
    even) up to 8 bits, which differs from the reference at ties only, and is the reference
    above 8 bits."""
    columns = [_edge_values(pos) for _, _, pos, _ in SPECS]
    n = max(len(c) for c in columns)
    graph_def = _points_graph(SPECS, n)
    model = onnx_export.to_onnx(graph_def, rounding=rounding,
                                output_nodes=[f"out{i}" for i in range(len(SPECS))])
    assert "3 quantization points are wider than 8 bits (fix12, fix8, fix9)" in caplog.text
    pairs = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert pairs == sum(bits <= 8 for _, bits, _, _ in SPECS)  # wider: float ops only
    for i, (mode, bits, pos, arch) in enumerate(SPECS):
        x = np.resize(columns[i], (1, n)).astype(np.float32)
        got = _ort(model, {"x": x})[f"out{i}"]
        want = ref.quantize(x, pos, int(mode), bits, arch)
        assert np.array_equal(_tf(graph_def, [f"out{i}"], {"x": x})[0], want)
        if rounding == "dpu" or bits > 8:
            np.testing.assert_array_equal(got, want, err_msg=str(SPECS[i]))
            continue
        v = x.astype(np.float64) * 2.0 ** pos
        lo, hi = ref.quant_range(bits, int(mode), arch)
        half_even = (np.clip(np.rint(v), lo, hi) * 2.0 ** -pos).astype(np.float32)
        np.testing.assert_array_equal(got, half_even, err_msg=str(SPECS[i]))
        ties = v - np.floor(v) == 0.5
        assert np.array_equal(got[~ties], want[~ties]) and (got[ties] != want[ties]).any()


@pytest.mark.parametrize("rounding", ["dpu", "half_even"])
def test_relu_before_a_fix_neuron(rounding):
    """half_even moves a QuantizeLinear in front of the Relu a FixNeuron reads (for integer
    convs): the values stay clamp(round(relu(x))) of each rounding, ties included."""
    pos = 3
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 512], name="x")
        decent_q.fix_neuron(tf.nn.relu(x), Mode.ACTIVATION, Phase.EVAL, quantize_pos=pos,
                            name="relu_fix")
    model = onnx_export.to_onnx(graph.as_graph_def(), rounding=rounding)
    x = (np.arange(-256, 256) / 2.0 ** (pos + 1)).astype(np.float32)[None]  # every half step
    got = _ort(model, {"x": x})["relu_fix"]
    v = np.maximum(x.astype(np.float64), 0) * 2.0 ** pos
    codes = np.floor(v + 0.5) if rounding == "dpu" else np.rint(v)
    np.testing.assert_array_equal(got, np.clip(codes, -128, 127) * 2.0 ** -pos)
    if rounding == "half_even":
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        assert producer[relu.input[0]] == "DequantizeLinear"


def test_weights_and_biases_are_exact_and_integer(tmp_path):
    """Weights become int8 initializers read by DequantizeLinear (after ONNX Runtime folds
    QuantizeLinear of the on-grid constant); biases stay float on their grid; a conv net's
    outputs equal TensorFlow's bit for bit."""
    graph_def = _small_cnn_eval_model(tmp_path)
    x = np.random.default_rng(3).uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    model = onnx_export.to_onnx(graph_def, output_nodes=["logits/aquant"])
    want, = _tf(graph_def, ["logits/aquant"], {"input": x})
    np.testing.assert_array_equal(_ort(model, {"input": x})["logits/aquant"], want)
    exported = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(exported[n.input[2]].data_type == onnx.TensorProto.FLOAT
                         for n in convs)
    optimized = _optimized(model, tmp_path)
    inits = {t.name: t for t in optimized.graph.initializer}
    weights = [n for n in optimized.graph.node if n.op_type == "DequantizeLinear" and
               n.input[0] in inits and len(inits[n.input[0]].dims) >= 2]
    assert weights and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8
                           for n in weights)


@pytest.mark.parametrize("rounding", ["dpu", "half_even"])
def test_a_bias_finer_than_the_accumulator(rounding):
    """A bias at position 10 after inputs at 2 and weights at 3 (accumulator grid 2^-5): it
    stays a float Const of its on-grid values in both roundings (an int8 pair would keep the
    layer out of ONNX Runtime's integer kernels). dpu: the sum equals TensorFlow's; half_even:
    ONNX Runtime's integer Gemm rounds the bias to the accumulator grid, within half a step."""
    rng = np.random.default_rng(0)
    bias = rng.uniform(-0.1, 0.1, 8).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 16], name="x")
        w = tf.constant(rng.uniform(-4, 4, (16, 8)).astype(np.float32), name="w")
        fix = decent_q.fix_neuron
        y = tf.matmul(fix(x, Mode.ACTIVATION, Phase.EVAL, quantize_pos=2, name="x_fix"),
                      fix(w, Mode.WEIGHT, Phase.EVAL, quantize_pos=3, name="w_fix"))
        y = tf.nn.bias_add(y, fix(tf.constant(bias), Mode.WEIGHT, Phase.EVAL,
                                  quantize_pos=10, name="b_fix"), name="sum")
        fix(y, Mode.ACTIVATION, Phase.EVAL, quantize_pos=1, name="out")
    graph_def = graph.as_graph_def()
    model = onnx_export.to_onnx(graph_def, rounding=rounding, output_nodes=["sum", "out"])
    x = rng.uniform(-30, 30, (64, 16)).astype(np.float32)
    got, want = _ort(model, {"x": x})["sum"], _tf(graph_def, ["sum"], {"x": x})[0]
    if rounding == "dpu":
        np.testing.assert_array_equal(got, want)
    else:  # the integer kernel rounds the bias to the accumulator grid 2^-5
        assert 0 < np.abs(got - want).max() <= 2.0 ** -6
    pairs = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert pairs == 3  # x, w, out: not the bias
    on_grid = ref.quantize(bias, 10, ref.WEIGHT, 8)
    assert any(np.array_equal(onnx.numpy_helper.to_array(t), on_grid)
               for t in model.graph.initializer)


def _small_cnn_eval_model(tmp_path):
    import helpers  # pylint: disable=import-outside-toplevel
    config = helpers.config(output_dir=str(tmp_path / "q"))
    paths = decent_q.quantize_frozen(helpers.small_cnn(), helpers.input_fn, config,
                                     progress=False)
    return utils.load_graph_def(paths["quantize_eval_model"])


# -- ResNet50 -------------------------------------------------------------------------------------

def test_resnet50_onnx_equals_the_eval_model(tmp_path):
    """tf_keras ResNet50 (random He-normal weights, 32 px), post-training quantized: on 8
    images ONNX Runtime's logits FixNeuron equals TensorFlow's bit for bit."""
    graph_def, images, logits = model_zoo.build_inference(model_zoo.Spec("keras", "ResNet50", 32))
    rng = np.random.default_rng(0)
    config = decent_q.QuantizeConfig(input_nodes=[images], output_nodes=[logits],
                                     input_shapes=[[-1, 32, 32, 3]], calib_iter=2,
                                     output_dir=str(tmp_path), output_format="onnx")
    paths = decent_q.quantize_frozen(
        graph_def, lambda s: {images: rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)},
        config, progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    x = np.random.default_rng(5).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    alias = f"{logits}/aquant"
    want, prob = _tf(eval_gd, [alias, "predictions/Softmax"], {images: x})
    got = _ort(onnx_export.to_onnx(eval_gd, output_nodes=[alias]), {images: x})[alias]
    np.testing.assert_array_equal(got, want)
    written = _ort(paths["quantize_eval_model_onnx"], {images: x})["predictions/Softmax"]
    np.testing.assert_array_equal(written.argmax(1), prob.argmax(1))
    fast = _ort(onnx_export.to_onnx(eval_gd, rounding="half_even", output_nodes=[alias]),
                {images: x})[alias]
    steps = np.abs(fast - want) * 2.0 ** int(next(n.attr["quantize_pos"].i for n in
                                                  eval_gd.node if n.name == alias))
    print(f"ResNet50 half_even: {np.mean(steps > 0):.0%} of the logits differ from the eval "
          f"model's, by up to {steps.max():.0f} steps; top-1 agreement "
          f"{np.mean(fast.argmax(1) == want.argmax(1)):.0%}")
    assert steps.max() > 1  # ties matter (docs/onnx.md "Rounding: dpu or half_even")


# -- bad input ------------------------------------------------------------------------------------

def _lgamma_eval_model():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        y = decent_q.fix_neuron(x, Mode.ACTIVATION, Phase.EVAL, quantize_pos=4, name="x_fix")
        tf.nn.relu(tf.math.lgamma(y, name="special"), name="out")
    return graph.as_graph_def()


def test_an_op_tf2onnx_cannot_convert_is_named(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(QuantizeError, match="node special: tf2onnx cannot convert TensorFlow op "
                                            "Lgamma"):
        onnx_export.export(_lgamma_eval_model(), str(target))
    assert os.listdir(tmp_path) == []
    model = onnx_export.to_onnx(_lgamma_eval_model(), output_nodes=["x_fix"])  # ends before it
    assert [o.name for o in model.graph.output] == ["x_fix"]


def test_quantize_with_onnx_writes_nothing_when_the_export_fails(tmp_path):
    """output_format onnx: the ONNX model is built before any file is written."""
    import helpers  # pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(helpers.small_cnn(), name="")
        tf.math.lgamma(graph.get_tensor_by_name("prob:0"), name="special")
    config = helpers.config(output_dir=str(tmp_path / "q"), output_format="onnx")
    with pytest.raises(QuantizeError, match="special"):
        decent_q.quantize_frozen(graph.as_graph_def(), helpers.input_fn, config, progress=False)
    assert not os.path.exists(tmp_path / "q") or os.listdir(tmp_path / "q") == []


@pytest.mark.parametrize("case,message", [
    ("float", "has no FixNeuron, so it is not a quantize eval model"),
    ("deploy", "has no FixNeuron, so it is not a quantize eval model"),
    ("calibration", "is a FixNeuronDynamic: this is a calibration or training graph"),
    ("broken", "is not a TensorFlow GraphDef"),
    ("missing", "does not exist"),
])
def test_not_an_eval_model(digits, tmp_path, case, message):
    """The API and the CLI refuse with one line, exit 1, and write nothing."""
    folder, _, _ = digits
    path = {"float": folder / "frozen_graph.pb",
            "deploy": folder / "quantize_results" / "deploy_model.pb",
            "missing": tmp_path / "nothing.pb"}.get(case, tmp_path / f"{case}.pb")
    if case == "broken":
        path.write_bytes(b"\x08\x01this is not a graph" * 7)
    if case == "calibration":
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
            decent_q.ops.fix_neuron_dynamic(x, tf.constant(-128), Mode.ACTIVATION,
                                            Phase.CALIB, name="calib_fix")
        utils.save_graph_def(graph.as_graph_def(), str(path))
    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match=message):
        onnx_export.export(str(path), str(out / "m.onnx"))
    proc = _cli(["export", "--input_frozen_graph", str(path), "--output_dir", str(out)], folder)
    assert proc.returncode == 1 and message.split(":")[0] in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() or os.listdir(out) == []


def test_bad_options_name_the_option(digits, tmp_path):
    folder, _, _ = digits
    eval_pb = "quantize_results/quantize_eval_model.pb"
    with pytest.raises(ConfigError, match="onnx_opset must be an integer from 13 to 18"):
        decent_q.QuantizeConfig(output_format="onnx", onnx_opset=11)  # before calibration
    with pytest.raises(ConfigError, match="onnx_rounding"):
        decent_q.QuantizeConfig(onnx_rounding="nearest")
    with pytest.raises(ConfigError, match="onnx_opset must be an integer from 13 to 18"):
        onnx_export.export(str(folder / eval_pb), str(tmp_path / "m.onnx"), opset=21)
    with pytest.raises(QuantizeError, match="output node 'logit' is not in the graph; did you "
                                            "mean 'logits'"):
        onnx_export.export(str(folder / eval_pb), str(tmp_path / "m.onnx"),
                           output_nodes=["logit"])
    for args, code in ((["--onnx_opset", "19"], 2), (["--onnx_rounding", "up"], 2),
                       (["--output_nodes", "nope"], 1)):
        proc = _cli(["export", "--input_frozen_graph", eval_pb, "--output_dir",
                     str(tmp_path / "cli"), *args], folder)
        assert proc.returncode == code, (args, proc.stderr)
    assert not (tmp_path / "cli").exists()
    unwritable = tmp_path / "file"
    unwritable.write_text("x")
    with pytest.raises(QuantizeError, match="is a file; give a folder path"):
        onnx_export.export(str(folder / eval_pb), str(unwritable / "m.onnx"))


def test_missing_tf2onnx_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(QuantizeError, match=r"pip install 'decent_q\[onnx\]'"):
        onnx_export.export(_lgamma_eval_model(), str(tmp_path / "m.onnx"))
