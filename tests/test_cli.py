"""cli.py: options, exit codes, messages; the guide's command lines end to end."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

import helpers
from decent_q import __version__, cli
from decent_q.config import DEFAULTS, OPTIONS
from decent_q.graph import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "ptq")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with frozen.pb and my_input_fn.py, as the current folder."""
    utils.save_graph_def(helpers.small_cnn(), str(tmp_path / "frozen.pb"))
    helpers.write_input_fn_module(tmp_path, "my_input_fn")
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_input_fn", None)
    yield tmp_path
    sys.modules.pop("my_input_fn", None)


QUANTIZE = ["quantize", "--input_frozen_graph", "frozen.pb", "--input_nodes", "input",
            "--output_nodes", "logits", "--input_shapes", "?,8,8,3", "--input_fn",
            "my_input_fn.calib_input", "--calib_iter", "2"]


def test_options_come_from_config():
    parser = cli.build_parser()
    args = parser.parse_args(["quantize", "--input_frozen_graph", "g.pb"])
    for field in OPTIONS:
        if field.metadata["cli"]:
            value = getattr(args, field.name)
            assert cli._config(args).__dict__[field.name] == getattr(DEFAULTS, field.name), \
                field.name
            assert value is not None
        else:
            assert not hasattr(args, field.name)
    for name in ("inspect", "dump"):
        assert parser.parse_args([name, "--input_frozen_graph", "g.pb"]).command == name


def test_list_and_shape_syntax():
    parser = cli.build_parser()
    argv = cli._negative_values(["quantize", "--input_frozen_graph", "g.pb", "--input_nodes",
                                 "a,b", "--input_shapes", "-1,8,8,3:?,4,4,1", "--nodes_bit",
                                 "conv1:16", "--ignore_nodes", "x,y"])
    cfg = cli._config(parser.parse_args(argv))
    assert cfg.input_nodes == ["a", "b"]
    assert cfg.input_shapes == [[-1, 8, 8, 3], [-1, 4, 4, 1]]
    assert cfg.nodes_bit == {"conv1": 16} and cfg.ignore_nodes == ["x", "y"]


def test_quantize_ok(workdir, capsys):
    assert cli.main(QUANTIZE) == 0
    assert sorted(os.listdir(workdir / "quantize_results")) == ["deploy_model.pb",
                                                                "quantize_eval_model.pb"]
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("[decent_q]")]
    assert any("wrote quantize_results" in l or "wrote ./quantize_results" in l for l in lines)
    assert "done in" in err and "batches/s" not in err  # stderr is not a terminal here


def test_quiet_and_negative_batch(workdir, capsys):
    argv = [a if a != "?,8,8,3" else "-1,8,8,3" for a in QUANTIZE] + ["--quiet",
                                                                       "--output_dir", "q"]
    assert cli.main(argv) == 0
    assert "[decent_q]" not in capsys.readouterr().err
    assert os.path.exists(workdir / "q" / "deploy_model.pb")


def test_options_reach_the_model(workdir):
    argv = QUANTIZE + ["--weight_bit", "4", "--activation_bit", "6", "--method", "0",
                       "--ignore_nodes", "pool1", "--gpu", "0", "--gpu_memory_fraction", "0.3",
                       "--output_dir", "o"]
    assert cli.main(argv) == 0
    gd = utils.load_graph_def(str(workdir / "o" / "quantize_eval_model.pb"))
    fixes = {n.name: n for n in gd.node if n.op == "FixNeuron"}
    assert fixes["conv1/weights/wquant"].attr["bit_width"].i == 4
    assert fixes["conv1/Relu/aquant"].attr["bit_width"].i == 6
    assert fixes["conv1/Relu/aquant"].attr["method"].i == 0
    assert "pool1/aquant" not in fixes


@pytest.mark.parametrize("argv, code, message", [
    (["quantize"], 2, "the following arguments are required: --input_frozen_graph"),
    (QUANTIZE + ["--method", "5"], 2, "invalid choice: 5"),
    (QUANTIZE + ["--input_shapes", "8,8"], 2, "is not a 4-D shape"),
    (QUANTIZE + ["--weight_bit", "40"], 2, "weight_bit=40 is not allowed"),
    ([a for a in QUANTIZE if a not in ("--input_fn", "my_input_fn.calib_input")], 2,
     "quantize needs --input_fn"),
    ([a if a != "my_input_fn.calib_input" else "calib_input" for a in QUANTIZE], 2,
     "not 'module_name.function_name'"),
    ([a if a != "logits" else "logit" for a in QUANTIZE], 1, "did you mean 'logits'"),
    ([a if a != "frozen.pb" else "nothere.pb" for a in QUANTIZE], 1,
     "input graph nothere.pb does not exist"),
    ([a if a != "my_input_fn.calib_input" else "my_input_fn.nope" for a in QUANTIZE], 1,
     "has no function 'nope'"),
    ([a if a != "my_input_fn.calib_input" else "other_mod.f" for a in QUANTIZE], 1,
     "module 'other_mod' is not found"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ([a if a != "input" else "input:1" for a in QUANTIZE], 2,
     "input node 'input:1' names output 1 of node 'input'"),
    ([a if a != "logits" else "logits:3" for a in QUANTIZE], 2,
     "output node 'logits:3': node 'logits' has 1 output(s)"),
])
def test_bad_inputs(workdir, capsys, argv, code, message):
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    if code == 1:
        assert len([l for l in err.splitlines() if "ERROR" in l]) == 1
        assert re.search(r"^\[decent_q\] ERROR: ", err, re.M)
    assert not os.path.exists(workdir / "quantize_results")


def test_unexpected_errors_and_debug(workdir, capsys, monkeypatch):
    from decent_q import ptq

    def boom(*_, **__):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ptq, "quantize_frozen", boom)
    assert cli.main(QUANTIZE) == 1
    err = capsys.readouterr().err
    assert "[decent_q] ERROR: internal error: RuntimeError: disk on fire (rerun with --debug" \
        in err and "Traceback" not in err
    assert cli.main(QUANTIZE + ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_help_and_version(capsys):
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert "{quantize,inspect,dump,analyze,export}" in capsys.readouterr().out
    assert cli.main(["quantize", "--help"]) == 0
    out = capsys.readouterr().out
    for field in OPTIONS:
        assert (f"--{field.name}" in out) == field.metadata["cli"], field.name


def test_inspect_and_dump(workdir, capsys):
    assert cli.main(["inspect", "--input_frozen_graph", "frozen.pb"]) == 0
    out = capsys.readouterr().out
    assert "estimated output nodes:\n  prob" in out
    assert cli.main(QUANTIZE) == 0
    assert cli.main(["dump", "--input_frozen_graph", "quantize_results/quantize_eval_model.pb",
                     "--input_fn", "my_input_fn.dump_input", "--max_dump_batches", "2",
                     "--dump_float", "1", "--output_dir", "quantize_results"]) == 0
    assert sorted(f for f in os.listdir(workdir / "quantize_results") if "dump" in f) == [
        "dump_results_1", "dump_results_2"]
    assert "prob_float.txt" in os.listdir(workdir / "quantize_results" / "dump_results_1")


# -- the guide's flow, end to end, in fresh processes -------------------------------------

def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits example: train, freeze, then the guide's quantize command."""
    folder = tmp_path_factory.mktemp("digits")
    for name in ("my_input_fn.py", "make_frozen_graph.py", "evaluate.py"):
        shutil.copy(os.path.join(EXAMPLE, name), folder)
    _run(["make_frozen_graph.py", "--steps", "400"], folder)
    _run(["-m", "decent_q.cli", "quantize", "--input_frozen_graph", "frozen_graph.pb",
          "--input_nodes", "input", "--output_nodes", "logits", "--input_shapes", "?,8,8,1",
          "--input_fn", "my_input_fn.calib_input"], folder)
    return folder


def test_guide_flow_accuracy(digits):
    """8-bit post-training quantization keeps top-1 accuracy within 1 point of float."""
    float_acc = float(_run(["evaluate.py", "frozen_graph.pb"], digits).stdout.split()[-1])
    quant_acc = float(_run(["evaluate.py", "quantize_results/quantize_eval_model.pb"],
                           digits).stdout.split()[-1])
    print(f"digits accuracy: float {float_acc:.4f}, quantized {quant_acc:.4f}")
    assert float_acc > 0.9
    assert quant_acc >= float_acc - 0.01


def test_guide_dump_command(digits):
    _run(["-m", "decent_q.cli", "dump", "--input_frozen_graph",
          "quantize_results/quantize_eval_model.pb", "--input_fn", "my_input_fn.dump_input",
          "--max_dump_batches", "1", "--dump_float", "0", "--output_dir", "quantize_results"],
         digits)
    files = os.listdir(digits / "quantize_results" / "dump_results_1")
    assert "conv1_weights_wquant_int8.bin" in files and "logits_aquant_int8.txt" in files


@pytest.mark.parametrize("importer", ["import decent_q",
                                      "from tensorflow.contrib import decent_q"])
def test_eval_model_runs_in_a_fresh_process(digits, importer):
    code = (f"{importer}\n"
            "import numpy as np, tensorflow as tf\n"
            "gd = tf.compat.v1.GraphDef()\n"
            "gd.ParseFromString(open('quantize_results/quantize_eval_model.pb', 'rb').read())\n"
            "g = tf.Graph()\n"
            "with g.as_default(): tf.graph_util.import_graph_def(gd, name='')\n"
            "with tf.compat.v1.Session(graph=g) as s:\n"
            "    p = s.run('prob:0', {'input:0': np.zeros([2, 8, 8, 1], np.float32)})\n"
            "print('shape', p.shape)\n")
    if importer.startswith("from tensorflow.contrib"):
        code = "import _decent_q_contrib; _decent_q_contrib.install()\n" + code
    assert "shape (2, 10)" in _run(["-c", code], digits).stdout


def _fresh(code, *args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must mute TensorFlow by itself
    return subprocess.run([sys.executable, *args] + (["-c", code] if code else []), env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


HELP = ("import sys, time, _decent_q_entry\n"
        "sys.argv = ['vai_q_tensorflow'] + sys.argv[1:]\n"
        "start = time.time()\n"
        "try:\n"
        "    code = _decent_q_entry.vai_q_tensorflow()\n"
        "finally:\n"
        "    print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
        "print('seconds:', time.time() - start, file=sys.stderr)\n"
        "sys.exit(code)\n")


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["quantize", "--help"], 0),
                                        (["--version"], 0), (["quantize", "--bogus"], 2)])
def test_help_version_and_usage_errors_answer_without_tensorflow(args, code):
    result = _fresh(None, "-c", HELP, *args)
    assert result.returncode == code, result.stderr[-2000:]
    assert "tensorflow imported: False" in result.stderr
    assert float(re.search(r"seconds: (\S+)", result.stderr).group(1)) < 1.0
    if args[-1] == "--help":
        assert "--input_frozen_graph" in result.stdout or "quantize" in result.stdout


def test_console_script_help_is_fast():
    script = shutil.which("vai_q_tensorflow", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("no vai_q_tensorflow console script next to this interpreter")
    installed = subprocess.run([sys.executable, "-c", "import _decent_q_entry; "
                                "print(_decent_q_entry.__file__)"], capture_output=True,
                               text=True, timeout=60, cwd="/").stdout.strip()
    with open(installed) as a, open(os.path.join(ROOT, "_decent_q_entry.py")) as b:
        if a.read() != b.read():
            pytest.skip(f"the installed decent_q ({installed}) is not this checkout")
    start = time.time()
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    seconds = time.time() - start
    assert result.returncode == 0 and "quantize" in result.stdout
    assert seconds < 1.0, f"vai_q_tensorflow --help took {seconds:.2f} s"


def test_python_m_decent_q_works_like_the_command(workdir):
    result = _fresh(None, "-m", "decent_q", "--version", cwd=workdir)
    assert result.returncode == 0 and __version__ in result.stdout + result.stderr
    result = _fresh(None, "-m", "decent_q", "inspect", "--input_frozen_graph", "frozen.pb",
                    cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Conv2D" in result.stdout
    for noise in ("oneDNN", "cudart_stub", "absl::InitializeLog"):
        assert noise not in result.stderr
