"""Bad input, CLI and Python API: one clear line naming the problem and the fix, exit status 2
for usage errors and 1 for failures, no traceback unless --debug, no output file created or
changed.

Cases already covered elsewhere are not repeated here: loader unit cases (test_graph_utils),
input_fn through the API (test_inputs), the first CLI matrix (test_cli), QAT misuse
(test_qat).
"""

import hashlib
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

import decent_q
import helpers
from decent_q import cli, ptq
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils

BASE = ["--input_nodes", "input", "--output_nodes", "logits", "--input_shapes", "?,8,8,3",
        "--input_fn", "my_input_fn.calib_input", "--calib_iter", "1", "--output_dir", "out"]

# input_fn modules: bad_<case>.f
_INPUT_FNS = {
    "raises": "def f(i):\n    return {'input': undefined_name}\n",
    "non_dict": "def f(i):\n    return None\n",
    "wrong_key": "import numpy as np\ndef f(i):\n    return {'images': np.zeros([1, 8, 8, 3])}\n",
    "dtype": "import numpy as np\ndef f(i):\n    return {'input': np.zeros([1, 8, 8, 3], bool)}\n",
    "shape": "import numpy as np\ndef f(i):\n    return {'input': np.zeros([1, 8, 8])}\n",
    "nan": "import numpy as np\ndef f(i):\n    return {'input': np.full([1, 8, 8, 3], np.nan)}\n",
    "inf": "import numpy as np\ndef f(i):\n    return {'input': np.full([1, 8, 8, 3], np.inf)}\n",
    "exits": "import sys\ndef f(i):\n    sys.exit(3)\n",
    "import_fails": "import numpy as np\nraise RuntimeError('no data folder /data')\n",
    "later_step": "import numpy as np\ndef f(i):\n    if i == 1:\n        raise IOError("
                  "'batch 1 missing')\n    return {'input': np.zeros([1, 8, 8, 3], "
                  "np.float32)}\n",
}


def _variables_graph(use_resource):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.compat.v1.get_variable("conv/weights", [3, 3, 3, 4], use_resource=use_resource)
        tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="logits")
    return graph.as_graph_def()


def _custom_op_graph():
    graph_def = helpers.small_cnn()
    for node in graph_def.node:
        if node.name == "pool1":
            node.op = "MyVendorPool"  # not registered in this TensorFlow
    return graph_def


def _unsupported_op_graph():
    """conv -> relu -> Sin (no quantization rule) -> conv -> relu 'logits'."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.full([3, 3, 3, 4], 0.1, np.float32), name="w1")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="c1"), name="r1")
        y = tf.math.sin(y, name="odd")
        w = tf.constant(np.full([1, 1, 4, 4], 0.1, np.float32), name="w2")
        tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME", name="c2"), name="logits")
    return graph.as_graph_def()


def _nan_graph():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.full([1, 1, 3, 2], 0.5, np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="relu")
        tf.math.sqrt(-1.0 - y, name="logits")  # NaN
    return graph.as_graph_def()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every bad input of the matrix, and 'out' holding the complete files of an earlier run."""
    root = tmp_path_factory.mktemp("bad")
    frozen = helpers.small_cnn()
    utils.save_graph_def(frozen, str(root / "frozen.pb"))
    utils.save_graph_def(_variables_graph(False), str(root / "variables.pb"))
    utils.save_graph_def(_variables_graph(True), str(root / "resource_variables.pb"))
    utils.save_graph_def(_custom_op_graph(), str(root / "custom_op.pb"))
    utils.save_graph_def(_unsupported_op_graph(), str(root / "unsupported.pb"))
    utils.save_graph_def(_nan_graph(), str(root / "nan.pb"))
    data = frozen.SerializeToString()
    (root / "truncated.pb").write_bytes(data[: len(data) // 3])
    (root / "random.pb").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "text.pb").write_text("this is a README, not a graph\n")
    (root / "empty.pb").write_bytes(b"")
    (root / "saved_model").mkdir()
    (root / "saved_model" / "saved_model.pb").write_bytes(b"\x00")
    (root / "a_file").write_text("not a folder")
    helpers.write_input_fn_module(root, "my_input_fn")
    for case, body in _INPUT_FNS.items():
        (root / f"bad_{case}.py").write_text(body)
    (root / "out").mkdir()
    (root / "out" / "quantize_eval_model.pb").write_bytes(b"earlier eval model")
    (root / "out" / "deploy_model.pb").write_bytes(b"earlier deploy model")
    return root


@pytest.fixture
def in_folder(folder, monkeypatch):
    monkeypatch.chdir(folder)
    for name in list(sys.modules):
        if name == "my_input_fn" or name.startswith("bad_"):
            sys.modules.pop(name)
    return folder


def snapshot(root):
    """{relative path: (sha256, mtime_ns)} of every file under root."""
    state = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            if name.endswith(".pyc"):
                continue
            with open(path, "rb") as f:
                state[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(),
                                                      os.stat(path).st_mtime_ns)
    return state


def _fn(case):
    return ["--input_frozen_graph", "frozen.pb", "--input_fn", f"bad_{case}.f"]


# (case id, extra argv, exit status, message)
CLI_CASES = [
    # the graph file
    ("random_bytes", ["--input_frozen_graph", "random.pb"], 1, "not a TensorFlow GraphDef"),
    ("text_file", ["--input_frozen_graph", "text.pb"], 1, "not a TensorFlow GraphDef"),
    ("truncated", ["--input_frozen_graph", "truncated.pb"], 1, "may be truncated"),
    ("empty", ["--input_frozen_graph", "empty.pb"], 1, "is empty; re-export"),
    ("saved_model", ["--input_frozen_graph", "saved_model"], 1,
     "is a SavedModel folder, not a frozen graph; freeze it first"),
    ("a_folder", ["--input_frozen_graph", "."], 1, "is a folder; give the path of a frozen"),
    ("variables", ["--input_frozen_graph", "variables.pb"], 1,
     "the graph is not frozen: the output nodes read 1 variable(s) (conv/weights); freeze it "
     "first, e.g. 'freeze_graph"),
    ("resource_variables", ["--input_frozen_graph", "resource_variables.pb"], 1,
     "the graph is not frozen"),
    ("custom_op", ["--input_frozen_graph", "custom_op.pb"], 1,
     "the graph uses op type 'MyVendorPool', which this TensorFlow does not know; load the "
     "library"),
    ("float_check_nan", ["--input_frozen_graph", "nan.pb"], 1,
     "the float graph gives NaN or Inf at output node 'logits'"),
    # node names
    ("input_node", ["--input_frozen_graph", "frozen.pb", "--input_nodes", "inputs"], 1,
     "input node 'inputs' is not in the graph; did you mean 'input'?"),
    ("nodes_bit_absent", ["--input_frozen_graph", "frozen.pb", "--nodes_bit", "conv9/Conv2D:4"],
     1, "nodes_bit entry 'conv9/Conv2D' is not in the graph"),
    ("nodes_method_absent", ["--input_frozen_graph", "frozen.pb", "--nodes_method", "conv:0"],
     1, "nodes_method entry 'conv' is not in the graph"),
    ("ignore_nodes_absent", ["--input_frozen_graph", "frozen.pb", "--ignore_nodes",
                             "conv1/Relu,pool2"], 1,
     "ignore_nodes entry 'pool2' is not in the graph; did you mean 'pool1'?"),
    ("not_reached", ["--input_frozen_graph", "frozen.pb", "--output_nodes", "fc/weights"], 1,
     "nothing to quantize between input_nodes"),
    # option values
    ("shapes_count", ["--input_frozen_graph", "frozen.pb", "--input_shapes",
                      "?,8,8,3:?,8,8,3"], 2, "input_shapes has 2 shape(s) but input_nodes has 1"),
    ("shapes_rank", ["--input_frozen_graph", "frozen.pb", "--input_shapes", "?,8,8"], 2,
     "is not a 4-D shape"),
    ("shapes_dim", ["--input_frozen_graph", "frozen.pb", "--input_shapes", "?,8,x,3"], 2,
     "has dimension 'x'; use a positive integer"),
    ("shapes_graph", ["--input_frozen_graph", "frozen.pb", "--input_shapes", "?,16,16,3"], 1,
     "input_shapes gives ?,16,16,3 for 'input' but the graph says ?,8,8,3"),
    ("calib_iter_zero", ["--input_frozen_graph", "frozen.pb", "--calib_iter", "0"], 2,
     "calib_iter=0 must be a positive integer"),
    ("calib_iter_negative", ["--input_frozen_graph", "frozen.pb", "--calib_iter", "-3"], 2,
     "calib_iter=-3 must be a positive integer"),
    ("calib_iter_text", ["--input_frozen_graph", "frozen.pb", "--calib_iter", "ten"], 2,
     "argument --calib_iter: invalid int value: 'ten'"),
    ("align_concat", ["--input_frozen_graph", "frozen.pb", "--align_concat", "3"], 2,
     "argument --align_concat: invalid choice: 3"),
    ("simulate_dpu", ["--input_frozen_graph", "frozen.pb", "--simulate_dpu", "2"], 2,
     "argument --simulate_dpu: invalid choice: 2"),
    ("adjust_shift_bias", ["--input_frozen_graph", "frozen.pb", "--adjust_shift_bias", "-1"],
     2, "argument --adjust_shift_bias: invalid choice: -1"),
    ("arch_type", ["--input_frozen_graph", "frozen.pb", "--arch_type", "DPUCZDX8G"], 2,
     "argument --arch_type: invalid choice: 'DPUCZDX8G'"),
    ("activation_bit", ["--input_frozen_graph", "frozen.pb", "--activation_bit", "1"], 2,
     "activation_bit=1 is not allowed; use an integer bit width from 2 to 16"),
    ("nodes_bit_value", ["--input_frozen_graph", "frozen.pb", "--nodes_bit", "conv1/Conv2D:17"],
     2, "nodes_bit entry 'conv1/Conv2D'=17 is not allowed"),
    ("nodes_bit_syntax", ["--input_frozen_graph", "frozen.pb", "--nodes_bit", "conv1/Conv2D"],
     2, "nodes_bit entry 'conv1/Conv2D' is not 'name:bit width'"),
    ("nodes_method_value", ["--input_frozen_graph", "frozen.pb", "--nodes_method",
                            "conv1/Conv2D:5"], 2, "has method 5; use 0, 1 or 2"),
    ("gpu_memory_fraction", ["--input_frozen_graph", "frozen.pb", "--gpu_memory_fraction",
                             "1.5"], 2, "gpu_memory_fraction=1.5 must be in (0, 1]"),
    ("gpu", ["--input_frozen_graph", "frozen.pb", "--gpu", "first"], 2,
     "gpu='first' must be GPU ids separated by commas"),
    ("unknown_option", ["--input_frozen_graph", "frozen.pb", "--calib_iters", "3"], 2,
     "unrecognized arguments: --calib_iters 3"),
    # output_dir
    ("output_dir_is_a_file", ["--input_frozen_graph", "frozen.pb", "--output_dir", "a_file"],
     1, "output_dir a_file is a file; give a folder path"),
    ("output_dir_under_a_file", ["--input_frozen_graph", "frozen.pb", "--output_dir",
                                 "a_file/q"], 1, "output_dir a_file/q is not writable"),
    # input_fn
    ("input_fn_raises", _fn("raises"), 1,
     "input_fn bad_raises.f(0) raised at "),
    ("input_fn_non_dict", _fn("non_dict"), 1, "bad_non_dict.f(0) returned NoneType; it must "
                                              "return a dict"),
    ("input_fn_wrong_key", _fn("wrong_key"), 1, "returned key 'images', which is not in the "
                                                "graph; the placeholders are: input"),
    ("input_fn_dtype", _fn("dtype"), 1, "has dtype bool; the placeholder wants float32"),
    ("input_fn_shape", _fn("shape"), 1, "has shape [1, 8, 8]; the placeholder wants "
                                        "['?', 8, 8, 3]"),
    ("input_fn_nan", _fn("nan"), 1, "holds NaN or Inf; calibration needs finite inputs"),
    ("input_fn_inf", _fn("inf"), 1, "holds NaN or Inf; calibration needs finite inputs"),
    ("input_fn_exits", _fn("exits"), 1, "bad_exits.f(0) raised at "),
    ("input_fn_import_fails", _fn("import_fails"), 1,
     "importing input_fn module 'bad_import_fails' failed at "),
    ("input_fn_later_step", _fn("later_step") + ["--calib_iter", "3"], 1,
     "bad_later_step.f(1) raised at "),
]


@pytest.mark.parametrize("case, extra, code, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(in_folder, capsys, case, extra, code, message):
    before = snapshot(in_folder)
    assert cli.main(["quantize"] + BASE + extra) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    if "argument" in message or "unrecognized" in message:  # argparse: usage + one error
        assert re.search(r"^vai_q_tensorflow( quantize)?: error: ", err, re.M)
    else:
        errors = [l for l in err.splitlines() if "ERROR" in l]
        assert len(errors) == 1 and errors[0].startswith("[decent_q] ERROR: "), err
        assert "internal error" not in err
    assert snapshot(in_folder) == before, f"{case} changed files"


def test_input_fn_error_shows_the_user_frame_then_the_reason(in_folder, capsys):
    assert cli.main(["quantize"] + BASE + _fn("raises")) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"raised at .*bad_raises\.py:2 in f \(return \{'input': undefined_name\}\): "
                     r"NameError: name 'undefined_name' is not defined$", line), line


def test_debug_flag_adds_the_traceback(in_folder, capsys):
    assert cli.main(["quantize"] + BASE + ["--input_frozen_graph", "variables.pb",
                                           "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "the graph is not frozen" in err


def test_custom_op_with_skip_check(in_folder, capsys):
    assert cli.main(["quantize"] + BASE + ["--input_frozen_graph", "custom_op.pb",
                                           "--skip_check", "1"]) == 1
    assert "op type 'MyVendorPool', which this TensorFlow does not know" in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "dump"])
@pytest.mark.parametrize("graph", ["random.pb", "missing.pb", "custom_op.pb"])
def test_inspect_and_dump_bad_graph(in_folder, capsys, command, graph):
    if command == "inspect" and graph == "custom_op.pb":
        # inspect still lists the op types, and says why there is no plan
        assert cli.main([command, "--input_frozen_graph", graph]) == 0
        out = capsys.readouterr().out
        assert "MyVendorPool" in out and "no quantization plan: the graph uses op type" in out
        return
    before = snapshot(in_folder)
    argv = [command, "--input_frozen_graph", graph]
    if command == "dump":
        argv += ["--input_fn", "my_input_fn.dump_input", "--output_dir", "out"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("[decent_q] ERROR: ") == 1 and "Traceback" not in err
    assert "internal error" not in err
    assert snapshot(in_folder) == before


def test_dump_needs_input_fn(in_folder, capsys):
    assert cli.main(["dump", "--input_frozen_graph", "frozen.pb"]) == 2
    assert "dump needs --input_fn" in capsys.readouterr().err


def test_unsupported_op_in_range_is_left_float_with_a_warning(in_folder, capsys, tmp_path):
    out = str(tmp_path / "q")
    assert cli.main(["quantize"] + BASE + ["--input_frozen_graph", "unsupported.pb",
                                           "--output_dir", out]) == 0
    err = capsys.readouterr().err
    assert "[decent_q] WARNING: node odd: op type Sin is not supported; left float" in err
    eval_gd = utils.load_graph_def(os.path.join(out, "quantize_eval_model.pb"))
    by_name = {n.name: n for n in eval_gd.node}
    # Sin runs in float on quantized values; its output is quantized for the conv it feeds.
    assert by_name["odd"].op == "Sin" and list(by_name["odd"].input) == ["r1/aquant"]
    assert by_name["c2"].input[0] == "odd/aquant"


# -- the Python API ----------------------------------------------------------------------------

@pytest.mark.parametrize("use_resource", [False, True])
def test_api_variables_graph(tmp_path, use_resource):
    with pytest.raises(QuantizeError, match=r"not frozen.*\(conv/weights\); freeze it first"):
        ptq.quantize_frozen(_variables_graph(use_resource), helpers.input_fn,
                                  helpers.config(output_dir=str(tmp_path / "q")),
                                  progress=False)
    assert not os.path.exists(tmp_path / "q")


def test_api_unused_variable_is_allowed(tmp_path):
    """A left-over variable nothing reads (a global_step in a frozen graph) is no error."""
    graph_def = helpers.small_cnn()
    step = tf.Graph()
    with step.as_default():
        tf.compat.v1.train.get_or_create_global_step()
    graph_def.node.extend(step.as_graph_def().node)
    paths = ptq.quantize_frozen(graph_def, helpers.input_fn,
                                      helpers.config(output_dir=str(tmp_path)), progress=False)
    assert os.path.exists(paths["deploy_model"])


def test_api_custom_op(tmp_path):
    with pytest.raises(QuantizeError, match="op type 'MyVendorPool'.*tf.load_op_library"):
        ptq.quantize_frozen(_custom_op_graph(), helpers.input_fn,
                                  helpers.config(output_dir=str(tmp_path / "q")),
                                  progress=False)
    assert not os.path.exists(tmp_path / "q")


@pytest.mark.parametrize("field, value, message", [
    ("nodes_bit", {"conv7/Conv2D": 4}, "nodes_bit entry 'conv7/Conv2D' is not in the graph"),
    ("nodes_method", {"dw2/depthwis": 2}, "nodes_method entry 'dw2/depthwis' is not in the "
                                          "graph; did you mean 'dw2/depthwise'"),
    ("ignore_nodes", ["pool"], "ignore_nodes entry 'pool' is not in the graph"),
])
def test_api_absent_node_names(tmp_path, field, value, message):
    with pytest.raises(QuantizeError, match=re.escape(message)):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                  helpers.config(output_dir=str(tmp_path / "q"), **{field: value}),
                                  progress=False)
    assert not os.path.exists(tmp_path / "q")


@pytest.mark.parametrize("value, message", [
    (np.full([2, 8, 8, 3], np.inf, np.float32), "holds NaN or Inf"),
    (np.zeros([2, 8, 8, 3], np.complex64), "has dtype complex64"),
    (np.zeros([2, 3, 8, 8], np.float32), r"has shape \[2, 3, 8, 8\]"),
])
def test_api_input_fn_data(tmp_path, value, message):
    with pytest.raises(QuantizeError, match=message):
        ptq.quantize_frozen(helpers.small_cnn(), lambda step: {"input": value},
                                  helpers.config(output_dir=str(tmp_path / "q")),
                                  progress=False)
    assert not os.path.exists(tmp_path / "q")


def test_api_input_fn_calling_sys_exit(tmp_path):
    def leaves(step):
        sys.exit("no more data")
    with pytest.raises(QuantizeError, match="leaves\\(0\\) raised at .*SystemExit: no more data"):
        ptq.quantize_frozen(helpers.small_cnn(), leaves,
                                  helpers.config(output_dir=str(tmp_path / "q")),
                                  progress=False)


def test_api_output_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(QuantizeError, match="is not writable"):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                  helpers.config(output_dir=str(tmp_path / "f" / "q")),
                                  progress=False)
    with pytest.raises(QuantizeError, match="cannot create output_dir"):
        utils.prepare_output_dir(str(tmp_path / "f" / "q"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; the path-under-a-file case "
                           "covers unwritable output_dir")
def test_api_output_dir_read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(QuantizeError, match="is not writable"):
            ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                      helpers.config(output_dir=str(folder / "q")),
                                      progress=False)
    finally:
        folder.chmod(0o700)


def test_api_float_check_names_the_failing_node(tmp_path):
    """A graph that fails to run (here a Reshape to a size the input cannot have) gives the
    TensorFlow reason and the node, not 'Graph execution error'."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.full([1, 1, 3, 2], 0.5, np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="relu")
        tf.reshape(y, [-1, 7], name="logits")
    with pytest.raises(QuantizeError, match=r"the float graph fails on .*: Input to reshape is "
                                            r"a tensor with \d+ values.*\(node logits\)"):
        ptq.quantize_frozen(graph.as_graph_def(), helpers.input_fn,
                                  helpers.config(output_dir=str(tmp_path / "q")),
                                  progress=False)
    assert not os.path.exists(tmp_path / "q")


def test_api_usage_errors_are_config_errors():
    with pytest.raises(ConfigError, match="calib_iter=0"):
        helpers.config(calib_iter=0)
    with pytest.raises(ConfigError, match="gpu='0;1'"):
        helpers.config(gpu="0;1")
    assert helpers.config(gpu="0, 1").gpu == "0, 1"
    assert helpers.config(gpu="").gpu == ""


# -- QAT deploy: checkpoint problems -----------------------------------------------------------

def _qat_eval_graph(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.compat.v1.get_variable("conv/weights", [3, 3, 3, 4])
        tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="logits")
        cfg = helpers.config(output_dir=str(tmp_path / "q"))
        decent_q.CreateQuantizeEvaluationGraph(config=cfg)
    return graph, cfg


def test_qat_deploy_checkpoint_missing(tmp_path):
    graph, cfg = _qat_eval_graph(tmp_path)
    before = snapshot(tmp_path)
    with graph.as_default():
        with pytest.raises(QuantizeError, match=r"checkpoint .*model.ckpt-5 does not exist "
                                                r"\(expected .*model.ckpt-5.index\)"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "model.ckpt-5"),
                                               config=cfg)
        with pytest.raises(ConfigError, match="checkpoint is required"):
            decent_q.CreateQuantizeDeployGraph(config=cfg)
        with pytest.raises(ConfigError, match="config is required"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path))
    assert snapshot(tmp_path) == before


def test_qat_deploy_checkpoint_of_another_shape(tmp_path):
    graph, cfg = _qat_eval_graph(tmp_path)
    other = tf.Graph()
    with other.as_default():
        tf.compat.v1.get_variable("conv/weights", [3, 3, 3, 8])
        tf.compat.v1.get_variable("logits/aquant/pos_hist", [1], dtype=tf.int64)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "o" / "model.ckpt"), 3)
    before = snapshot(tmp_path)
    with graph.as_default():
        with pytest.raises(QuantizeError, match="does not match the evaluation graph"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=cfg)
    assert snapshot(tmp_path) == before

