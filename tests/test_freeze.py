"""freeze.py: the freeze_graph command (graph + checkpoint, or SavedModel -> frozen graph)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from decent_q import freeze
from decent_q.graph import utils

IMAGES = np.random.default_rng(0).uniform(size=[2, 4, 4, 3]).astype(np.float32)


def _model(use_resource):
    x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 3], name="input")
    with tf.compat.v1.variable_scope("net", use_resource=use_resource):
        w = tf.compat.v1.get_variable("w", [3, 3, 3, 2])
        b = tf.compat.v1.get_variable("b", [2], initializer=tf.compat.v1.ones_initializer())
    return tf.identity(tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME") + b), name="out")


def _train_files(folder, use_resource, as_text=False):
    graph = tf.Graph()
    with graph.as_default():
        out = _model(use_resource)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            expected = sess.run(out, {"input:0": IMAGES})
            ckpt = saver.save(sess, str(folder / "model.ckpt"), global_step=7)
        name = "graph.pbtxt" if as_text else "graph.pb"
        tf.io.write_graph(graph.as_graph_def(), str(folder), name, as_text=as_text)
    return str(folder / name), ckpt, expected


def _run_frozen(path):
    gd = utils.load_graph_def(path)
    assert not [n.op for n in gd.node if "Variable" in n.op or n.op == "VarHandleOp"]
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run("out:0", {"input:0": IMAGES})


@pytest.mark.parametrize("use_resource", [False, True])
def test_freeze_binary_graph(tmp_path, use_resource):
    graph, ckpt, expected = _train_files(tmp_path, use_resource)
    out = str(tmp_path / "frozen.pb")
    assert freeze.main(["--input_graph", graph, "--input_checkpoint", ckpt, "--input_binary",
                        "true", "--output_graph", out, "--output_node_names", "out"]) == 0
    np.testing.assert_allclose(_run_frozen(out), expected, rtol=1e-6)


def test_freeze_text_graph_and_checkpoint_folder(tmp_path):
    graph, _, expected = _train_files(tmp_path, False, as_text=True)
    out = str(tmp_path / "sub" / "frozen.pb")
    assert freeze.main(["--input_graph", graph, "--input_checkpoint", str(tmp_path),
                        "--output_graph", out, "--output_node_names", "out"]) == 0
    np.testing.assert_allclose(_run_frozen(out), expected, rtol=1e-6)


def test_freeze_saved_model(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        out = _model(False)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            expected = sess.run(out, {"input:0": IMAGES})
            tf.compat.v1.saved_model.simple_save(
                sess, str(tmp_path / "sm"), {"input": graph.get_tensor_by_name("input:0")},
                {"out": out})
    path = str(tmp_path / "frozen.pb")
    assert freeze.main(["--input_saved_model_dir", str(tmp_path / "sm"), "--output_graph",
                        path, "--output_node_names", "out"]) == 0
    np.testing.assert_allclose(_run_frozen(path), expected, rtol=1e-6)


def test_errors(tmp_path, capsys):
    graph, ckpt, _ = _train_files(tmp_path, False)
    out = str(tmp_path / "frozen.pb")
    cases = [
        (["--input_graph", graph, "--input_checkpoint", ckpt, "--input_binary", "true",
          "--output_graph", out, "--output_node_names", "outt"], 1, "did you mean 'out'"),
        (["--input_graph", graph, "--input_checkpoint", ckpt, "--input_binary", "false",
          "--output_graph", out, "--output_node_names", "out"], 1, "try --input_binary true"),
        (["--input_graph", graph, "--input_checkpoint", str(tmp_path / "nope"),
          "--input_binary", "true", "--output_graph", out, "--output_node_names", "out"], 1,
         "does not exist"),
        (["--output_graph", out, "--output_node_names", "out"], 2, "give either"),
        (["--input_graph", graph, "--input_binary", "true", "--output_graph", out,
          "--output_node_names", "out"], 2, "needs --input_checkpoint"),
        (["--input_graph", graph], 2, "required"),
        (["--input_graph", graph, "--input_binary", "maybe", "--output_graph", out,
          "--output_node_names", "out"], 2, "expected true or false"),
    ]
    for argv, code, message in cases:
        assert freeze.main(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "frozen.pb").exists()


@pytest.mark.parametrize("use_resource, tensorflow_used", [(False, True), (True, False)])
def test_tensorflow_freeze_graph_is_used_for_ref_variables(tmp_path, monkeypatch, use_resource,
                                                           tensorflow_used):
    from tensorflow.python.tools import freeze_graph as tf_freeze  # pylint: disable=import-outside-toplevel,no-name-in-module
    calls = []
    real = tf_freeze.freeze_graph_with_def_protos

    def spy(*args, **kwargs):
        calls.append(kwargs["input_checkpoint"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tf_freeze, "freeze_graph_with_def_protos", spy)
    graph_path, ckpt, expected = _train_files(tmp_path, use_resource)
    frozen = freeze.freeze("out", graph_path, ckpt, input_binary=True)
    assert bool(calls) == tensorflow_used
    assert not [n for n in frozen.node if n.op in ("VariableV2", "VarHandleOp")]
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen, name="")
        with tf.compat.v1.Session() as sess:
            np.testing.assert_allclose(sess.run("out:0", {"input:0": IMAGES}), expected,
                                       rtol=1e-6)


def test_checkpoint_of_another_graph_gets_decent_q_error(tmp_path):
    graph_path, _, _ = _train_files(tmp_path, use_resource=False)
    other = tf.Graph()
    with other.as_default():
        tf.compat.v1.get_variable("unrelated", [2])
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "other" / "m.ckpt"))
    with pytest.raises(freeze.QuantizeError, match="holds none of the graph's variables"):
        freeze.freeze("out", graph_path, ckpt, input_binary=True)


def test_freeze_graph_help_answers_without_tensorflow():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, _decent_q_entry\n"
            "sys.argv = ['freeze_graph', '--help']\n"
            "try:\n"
            "    code = _decent_q_entry.freeze_graph()\n"
            "finally:\n"
            "    print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
            "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=root),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--output_node_names" in result.stdout
    assert "tensorflow imported: False" in result.stderr
