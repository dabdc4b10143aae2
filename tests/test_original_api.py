"""The original's public API through its own import paths (decent_q.python, aliased as
tensorflow.contrib.decent_q.python).

Ports of the public-API assertions of the 1.4.1 release's decent_q_test.py and
quantize_graph_test.py: their tiny graph (input 4x4x3 -> 1x3x3x3 conv -> bias -> relu, all-ones
input, method 0, simulate_dpu 1) and their golden numbers. Differences, by design: positions
travel with checkpoints (the QAT evaluation graph reads them from the checkpoint it runs with,
where the original wrote them as attributes from temp files), and quantize_frozen also writes
deploy_model.pb (1.4.1 skipped it; its test still expected it).
"""

import inspect as pyinspect
import os

import numpy as np
import pytest
import tensorflow as tf

import decent_q  # noqa: F401  (installs the tensorflow.contrib alias)
from tensorflow.contrib.decent_q.python import decent_q as dq  # pylint: disable=wrong-import-order
from tensorflow.contrib.decent_q.python import quantize_graph as q_lib
from tensorflow.contrib.decent_q.python.ops import fix_neuron_ops
from tensorflow.contrib.decent_q.python.quantize_graph import QuantizeConfig

WEIGHTS = [[[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]] * 3]
BIAS = [0.1, 0.2, 0.3]
# The golden positions of the original's tests.
POSITIONS = {"input/aquant": 6, "w/read/wquant": 7, "b/read/wquant": 8, "relu/aquant": 4}
RELU_INTS = [40, 51, 62, 59, 75, 91, 59, 75, 91, 40, 51, 62] * 4


def build(frozen):
    """The original tests' graph in the default graph; frozen: constants named w/read, b/read;
    else ref variables w, b (read through w/read, b/read)."""
    images = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 3], name="input")
    if frozen:
        w = tf.constant(WEIGHTS, tf.float32, [1, 3, 3, 3], name="w/read")
        b = tf.constant(BIAS, tf.float32, [3], name="b/read")
    else:
        w = tf.compat.v1.Variable(WEIGHTS, dtype=tf.float32, name="w", use_resource=False)
        b = tf.compat.v1.Variable(BIAS, dtype=tf.float32, name="b", use_resource=False)
    conv = tf.nn.conv2d(images, w, [1, 1, 1, 1], "SAME", name="conv2d")
    tf.nn.relu(tf.nn.bias_add(conv, b, name="bias"), name="relu")


def config(tmp_path):
    return QuantizeConfig(input_nodes=["input"], output_nodes=["relu"],
                          input_shapes=[[-1, 4, 4, 3]], ignore_nodes=[], weight_bit=8,
                          activation_bit=8, nodes_bit=[], method=0, calib_iter=10,
                          output_dir=str(tmp_path), align_concat=0, simulate_dpu=1)


def session_config():
    s_config = tf.compat.v1.ConfigProto()
    s_config.gpu_options.per_process_gpu_memory_fraction = 0.5
    s_config.graph_options.optimizer_options.opt_level = -1
    s_config.graph_options.rewrite_options.disable_meta_optimizer = True
    return s_config


def input_fn(iter):  # pylint: disable=redefined-builtin  (the original's keyword)
    del iter
    return {"input": np.ones([1, 4, 4, 3], np.float32)}


def graph_def(frozen=True):
    graph = tf.Graph()
    with graph.as_default():
        build(frozen)
    return graph.as_graph_def()


def meta_graph():
    graph = tf.Graph()
    with graph.as_default():
        build(frozen=False)
        return tf.compat.v1.train.export_meta_graph()


def load(path, proto=tf.compat.v1.GraphDef):
    message = proto()
    with open(path, "rb") as f:
        message.ParseFromString(f.read())
    return message


def check_deploy_conv(deploy_gd, weights, bias):
    conv = next(n for n in deploy_gd.node if n.name == "conv2d")
    assert list(conv.attr["ipos"].list.i) == [8, 6]
    assert list(conv.attr["wpos"].list.i) == [8, 7]
    assert list(conv.attr["bpos"].list.i) == [8, 8]
    assert list(conv.attr["opos"].list.i) == [8, 4]
    np.testing.assert_allclose(tf.make_ndarray(conv.attr["weights"].tensor), weights, atol=1e-6)
    np.testing.assert_allclose(tf.make_ndarray(conv.attr["bias"].tensor), bias, atol=1e-6)


def train_and_save(tmp_path, meta=None):
    """Runs the QAT training graph (from `meta`, else built in code) once on the all-ones input
    and saves checkpoint step 0; returns (checkpoint, quantized w, quantized b)."""
    graph = tf.Graph()
    with graph.as_default():
        if meta is not None:
            saver = tf.compat.v1.train.import_meta_graph(meta)
        else:
            build(frozen=False)
            q_lib.CreateQuantizeTrainingGraph(config=config(tmp_path))
            saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            _, w, b = sess.run(["relu/aquant:0", "w/read/wquant:0", "b/read/wquant:0"],
                               {"input:0": np.ones([1, 4, 4, 3], np.float32)})
            path = saver.save(sess, str(tmp_path / "ckpt" / "saved_checkpoint"), global_step=0,
                              latest_filename="checkpoint_state")
    return path, w, b


# -- decent_q_test.py --------------------------------------------------------------------------

def test_quantize_frozen_golden_positions(tmp_path):
    original = graph_def()
    dq.quantize_frozen(original, input_fn, config(tmp_path), session_config())
    eval_gd = load(tmp_path / "quantize_eval_model.pb")
    new = {n.name for n in eval_gd.node} - {n.name for n in original.node}
    assert new == set(POSITIONS)
    fixes = {n.name: n for n in eval_gd.node if n.op == "FixNeuron"}
    assert {name: fixes[name].attr["quantize_pos"].i for name in new} == POSITIONS
    deploy_gd = load(tmp_path / "deploy_model.pb")
    assert not [n.name for n in deploy_gd.node if n.op == "FixNeuron"]


def test_dump_writes_the_original_files_and_integers(tmp_path):
    dq.quantize_frozen(graph_def(), input_fn, config(tmp_path), session_config())
    quantized = load(tmp_path / "quantize_eval_model.pb")
    dq.dump(quantized, input_fn, str(tmp_path), 1, 0, session_config())

    def ints(name):
        with open(tmp_path / "dump_results_0" / name, "rb") as f:
            return [int(line) for line in f.readlines()]

    assert ints("input_aquant.txt") == [64] * 48
    assert ints("relu_aquant.txt") == RELU_INTS
    raw = np.fromfile(tmp_path / "dump_results_0" / "relu_aquant.bin", np.int8)
    assert raw.tolist() == RELU_INTS
    assert sorted(os.listdir(tmp_path / "dump_results_weights")) == [
        "b_read_wquant.bin", "b_read_wquant.txt", "w_read_wquant.bin", "w_read_wquant.txt"]


def test_quantize_train_adds_only_quantization_points(tmp_path):
    original = {n.name for n in meta_graph().graph_def.node}
    dq.quantize_train(meta_graph(), config(tmp_path))
    meta = load(tmp_path / "quantize_train" / "quantize_train.ckpt.meta",
                tf.compat.v1.MetaGraphDef)
    # the points, and the one op grouping their counters for UPDATE_OPS
    new = {n.name for n in meta.graph_def.node} - original - {"decent_q_counters"}
    points = {name.split("/aquant")[0] + "/aquant" if "/aquant" in name else
              name.split("/wquant")[0] + "/wquant" for name in new}
    assert points == set(POSITIONS)
    assert {n.op for n in meta.graph_def.node if n.name in POSITIONS} == {"Identity"}
    assert {n.op for n in meta.graph_def.node if n.name.endswith("/fix")} == {
        "FixNeuronDynamic"}


def test_quantize_evaluate_and_deploy_checkpoint(tmp_path):
    train_meta = dq.quantize_train(meta_graph(), config(tmp_path))
    checkpoint, w, b = train_and_save(tmp_path, train_meta)
    q_config = config(tmp_path)
    dq.quantize_evaluate(train_meta, q_config)
    eval_meta = load(tmp_path / "quantize_eval" / "quantize_eval.ckpt.meta",
                     tf.compat.v1.MetaGraphDef)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(eval_meta)
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, checkpoint)
            used = sess.run({name: f"{name}/fix:1" for name in POSITIONS},
                            {"input:0": np.ones([1, 4, 4, 3], np.float32)})
    assert used == POSITIONS
    q_config.output_nodes = ["relu/aquant"]
    dq.deploy_checkpoint(eval_meta, checkpoint, q_config)
    check_deploy_conv(load(tmp_path / "deploy" / "deploy_model.pb"), w, b)


def test_inspect(tmp_path, capsys):
    path = tmp_path / "float.pb"
    path.write_bytes(graph_def().SerializeToString())
    info = dq.inspect(graph_def(), str(path))
    assert set(info["quantized"]) == set(POSITIONS)
    assert "Conv2D" in capsys.readouterr().out


# -- quantize_graph_test.py --------------------------------------------------------------------

def test_quantize_config_to_string_as_the_original_code(tmp_path):
    assert config(tmp_path).to_string() == (
        "input_nodes,input,output_nodes,relu,input_shapes,-1*4*4*3,weight_bit,8,"
        "activation_bit,8,method,0,calib_iter,10,output_dir,{},align_concat,0,"
        "adjust_shift_bias,1,adjust_shift_cut,1,simulate_dpu,1,scale_all_avgpool,1,do_cle,0,"
        "replace_relu6,1,".format(tmp_path)).encode()
    listed = QuantizeConfig(input_nodes=["a", "b"], output_nodes=["y"],
                            input_shapes=[[1, 2, 2, 3], [-1, 4, 4, 1]], ignore_nodes=["c"],
                            nodes_bit=["conv:4"], nodes_method={"conv": 2}).to_string()
    assert listed.startswith(
        b"input_nodes,a,input_nodes,b,output_nodes,y,input_shapes,1*2*2*3,input_shapes,"
        b"-1*4*4*1,ignore_nodes,c,nodes_bit,conv:4,nodes_method,conv:2,weight_bit,8,")


def test_create_quantize_training_graph_names_points_as_the_original(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        build(frozen=False)
        before = {op.name for op in graph.get_operations()}
        q_lib.CreateQuantizeTrainingGraph(config=config(tmp_path))
        new = [op for op in graph.get_operations() if op.name not in before]
    assert {op.name for op in new if op.name in POSITIONS} == set(POSITIONS)
    # every new op belongs to a point, but the one that groups their counters (UPDATE_OPS)
    assert all(any(op.name == p or op.name.startswith(p + "/") for p in POSITIONS)
               for op in new if op.name != "decent_q_counters")
    counters = graph.get_operation_by_name("decent_q_counters")
    assert graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS) == [counters]
    assert sorted(op.name for op in counters.control_inputs) == sorted(
        f"{p}/count" for p in POSITIONS)
    assert graph.get_operation_by_name("conv2d").inputs[1].name == "w/read/wquant:0"


def test_create_quantize_evaluation_graph_positions(tmp_path):
    checkpoint, _, _ = train_and_save(tmp_path)
    graph = tf.Graph()
    with graph.as_default():
        build(frozen=False)
        q_lib.CreateQuantizeEvaluationGraph(graph, config(tmp_path))
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, checkpoint)
            pos = sess.run({name: f"{name}/pos:0" for name in POSITIONS})
    assert pos == POSITIONS


def test_create_quantize_deploy_graph_attributes(tmp_path):
    checkpoint, w, b = train_and_save(tmp_path)
    graph = tf.Graph()
    with graph.as_default():
        build(frozen=False)
        q_lib.CreateQuantizeEvaluationGraph(config=config(tmp_path))
        paths = q_lib.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config(tmp_path))
    check_deploy_conv(load(paths["deploy_model"]), w, b)
    fixes = {n.name: n.attr["quantize_pos"].i for n in load(paths["quantize_eval_model"]).node
             if n.op == "FixNeuron"}
    assert fixes == POSITIONS


def test_fix_neuron_op_wrapper():
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 3], name="input")
        out = fix_neuron_ops.fix_neuron(images, 1, 1, quantize_pos=2, name="input/aquant")
        assert out.op.name == "input/aquant" and out.op.type == "FixNeuron"
        assert (out.op.get_attr("mode"), out.op.get_attr("phase"),
                out.op.get_attr("bit_width")) == (1, 1, 8)
        with tf.compat.v1.Session() as sess:
            value = sess.run(out, {images: np.full([1, 4, 4, 3], 0.3, np.float32)})
    assert np.all(value == 0.25)  # 0.3 at position 2: round(1.2) / 4


@pytest.mark.parametrize("function, names", [
    (dq.quantize_frozen, ["input_graph_def", "input_fn", "q_config", "s_config", "skip_check"]),
    (dq.quantize_train, ["input_meta_graph_def", "q_config"]),
    (dq.quantize_evaluate, ["input_meta_graph_def", "q_config"]),
    (dq.deploy_checkpoint, ["input_meta_graph_def", "input_checkpoint", "q_config"]),
    (dq.inspect, ["input_graph_def", "input_frozen_graph"]),
    (dq.dump, ["input_graph_def", "input_fn", "output_dir", "max_dump_batches", "dump_float",
               "s_config", "dump_input_tensors"]),
    (fix_neuron_ops.fix_neuron, ["x", "mode", "phase", "bit_width", "method"]),
    (q_lib.CreateQuantizeTrainingGraph, ["graph", "config"]),
    (q_lib.CreateQuantizeEvaluationGraph, ["graph", "config"]),
    (q_lib.CreateQuantizeDeployGraph, ["graph", "checkpoint", "config"]),
])
def test_argument_orders_are_the_1_4_1_release(function, names):
    params = list(pyinspect.signature(function).parameters)
    assert params[:len(names)] == names
