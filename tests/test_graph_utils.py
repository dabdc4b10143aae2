"""graph/utils.py: names, node maps, ranges, loading with clear errors, atomic writes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from decent_q.errors import QuantizeError
from decent_q.graph import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_graph():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="inputs")
        pre = tf.multiply(x, 2.0, name="pre")
        a = tf.nn.relu(pre, name="a")
        b = tf.nn.relu6(a, name="b")
        tf.identity(b, name="post")
    return graph.as_graph_def()


def test_names():
    assert utils.node_name("^a/b") == "a/b"
    assert utils.node_name("a/b:1") == "a/b"
    assert utils.node_name("a:b") == "a:b"
    assert utils.tensor_name("a") == "a:0"
    assert utils.tensor_name("a:2") == "a:2"


def test_node_map_consumers():
    nm = utils.NodeMap(small_graph())
    assert [n.name for n in nm.node_consumers("a")] == ["b"]
    assert nm.consumers["a:0"][0][1] == 0
    assert nm.producer("a:0").op == "Relu"


def test_topological_order_respects_edges():
    gd = small_graph()
    order = utils.topological_order(gd)
    pos = {n: i for i, n in enumerate(order)}
    for node in gd.node:
        for inp in node.input:
            assert pos[utils.node_name(inp)] < pos[node.name]


def test_range_nodes_between_inputs_and_outputs():
    nm = utils.NodeMap(small_graph())
    assert utils.range_nodes(nm, ["pre"], ["b"]) == {"pre", "a", "b"}


def test_check_nodes_exist_suggests():
    nm = utils.NodeMap(small_graph())
    with pytest.raises(QuantizeError, match="input node 'input' is not in the graph; did you "
                                            "mean 'inputs'"):
        utils.check_nodes_exist(nm, ["input"], "input node")


def test_load_graph_def_binary_and_text(tmp_path):
    gd = small_graph()
    binary = tmp_path / "g.pb"
    binary.write_bytes(gd.SerializeToString())
    text = tmp_path / "g.pbtxt"
    text.write_text(str(gd))
    assert utils.load_graph_def(str(binary)) == gd
    assert utils.load_graph_def(str(text)) == gd


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (os.urandom(64), "not a TensorFlow GraphDef"),
    (b"hello, this is a text file\n", "not a TensorFlow GraphDef"),
])
def test_load_graph_def_bad_files(tmp_path, content, words):
    path = tmp_path / "bad.pb"
    path.write_bytes(content)
    with pytest.raises(QuantizeError, match=words):
        utils.load_graph_def(str(path))


def test_load_graph_def_truncated(tmp_path):
    data = small_graph().SerializeToString()
    path = tmp_path / "cut.pb"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QuantizeError):
        utils.load_graph_def(str(path))


def test_load_graph_def_missing_and_saved_model(tmp_path):
    with pytest.raises(QuantizeError, match="does not exist"):
        utils.load_graph_def(str(tmp_path / "nope.pb"))
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(QuantizeError, match="SavedModel folder.*freeze"):
        utils.load_graph_def(str(tmp_path / "sm"))


def test_write_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.pb"
    target.write_bytes(b"old")

    def boom(_fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        utils.write_atomic(str(target), b"new content")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pb"]


def test_prepare_output_dir(tmp_path):
    assert utils.prepare_output_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(QuantizeError, match="is a file"):
        utils.prepare_output_dir(str(afile))


def test_save_graph_def_is_deterministic(tmp_path):
    gd = small_graph()
    a, b = tmp_path / "a.pb", tmp_path / "b.pb"
    utils.save_graph_def(gd, str(a))
    utils.save_graph_def(gd, str(b))
    assert a.read_bytes() == b.read_bytes()


def test_const_node_roundtrip():
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    node = utils.const_node("c", value)
    assert np.array_equal(utils.const_value(node), value)
    assert node.attr["dtype"].type == tf.float32.as_datatype_enum


UMASK_CODE = """
import os, stat, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import helpers
from decent_q import dump, ptq
def modes(files):
    return sorted({oct(stat.S_IMODE(os.stat(f).st_mode)) for f in files})
os.umask(0o022)
cfg = helpers.config(output_dir=sys.argv[2], calib_iter=1)
paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)
print("quantize 0o22", modes(paths.values()))
os.umask(0o027)
folder = dump.dump(paths["quantize_eval_model"], helpers.input_fn, output_dir=sys.argv[2])[0]
print("dump 0o27", modes(os.path.join(folder, f) for f in os.listdir(folder)))
"""


def test_output_files_follow_the_umask(tmp_path):
    """Atomic writes go through mkstemp (0600); files end up as open() would make them."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", UMASK_CODE, ROOT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["quantize 0o22 ['0o644']", "dump 0o27 ['0o640']"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.int16,
                                   np.int32, np.int64, np.uint8, np.uint16, np.bool_])
@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 3, 4), (0,), (5, 0)])
def test_const_node_is_make_tensor_protos_node_and_const_value_reads_it(dtype, shape):
    """const_node writes a weight's bytes once, yet gives the very NodeDef that
    tf.make_tensor_proto's tensor gives; const_value reads every form back (a read-only view of
    raw bytes)."""
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 10).astype(dtype)
    for value in (array, np.asfortranarray(array)):
        expected = utils.make_node("Const", "c", dtype=tf.as_dtype(value.dtype),
                                   value=tf.compat.v1.AttrValue(
                                       tensor=tf.make_tensor_proto(value)))
        node = utils.const_node("c", value)
        assert node.SerializeToString(deterministic=True) == \
            expected.SerializeToString(deterministic=True)
        read = utils.const_value(node)
        assert read.dtype == value.dtype and read.shape == value.shape
        np.testing.assert_array_equal(read, value)
        np.testing.assert_array_equal(utils.const_value(expected), tf.make_ndarray(
            expected.attr["value"].tensor))
