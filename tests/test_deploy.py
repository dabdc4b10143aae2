"""deploy.py: the deploy model agrees with the eval model's FixNeurons, node by node."""

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import calibrate, transforms
from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.deploy import deploy_graph_def
from decent_q.graph import quantized, utils


def eval_model(graph_def, cfg):
    float_gd = transforms.prepare_float_graph(graph_def, cfg)
    plan = plan_lib.plan_quantization(float_gd, cfg)
    positions = calibrate.calibrate_positions(float_gd, plan, helpers.input_fn, cfg)
    return appliers.apply_to_graph_def(float_gd, plan, positions)


def fix_values(eval_gd, names):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(eval_gd, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return dict(zip(names, sess.run([f"{n}:0" for n in names])))


def ints(node, key):
    # `key in attr` first: indexing a proto map would insert the key.
    return list(node.attr[key].list.i) if key in node.attr else None


@pytest.fixture(scope="module")
def cnn():
    cfg = helpers.config(simulate_dpu=0)  # keeps the Mean (simulate_dpu makes it an AvgPool)
    ev = eval_model(helpers.small_cnn(), cfg)
    return cfg, ev, deploy_graph_def(ev, cfg)


def test_fix_neurons_are_folded_away(cnn):
    _, _, dep = cnn
    assert not [n.name for n in dep.node if n.op == "FixNeuron"]
    assert not [n.name for n in dep.node if n.op in ("BiasAdd", "Relu", "Relu6")]
    inputs = {n.name: list(n.input) for n in dep.node}
    assert inputs["conv1/Conv2D"] == ["input"]
    assert inputs["pool1"] == ["conv1/Conv2D"]
    assert inputs["prob"] == ["fc/MatMul"]


def test_fused_layers_match_the_eval_model(cnn):
    _, ev, dep = cnn
    nodes = {n.name: n for n in dep.node}
    em = quantized.EvalModel(ev)
    layers = em.layers()
    assert [l.compute for l in layers] == ["conv1/Conv2D", "dw2/depthwise", "conv3/Conv2D",
                                           "fc/MatMul"]
    values = fix_values(ev, sorted(f for l in layers for f in (l.weight_fix, l.bias_fix)))
    acts = {"conv1/Conv2D": "Relu", "dw2/depthwise": "Relu6", "conv3/Conv2D": "Relu",
            "fc/MatMul": "None"}
    for layer in layers:
        node = nodes[layer.compute]
        assert node.op == layer.op
        for key, fix in (("wpos", layer.weight_fix), ("bpos", layer.bias_fix),
                         ("ipos", layer.input_fix), ("opos", layer.output_fix)):
            fnode = em.fixes[fix]
            assert ints(node, key) == [quantized.bit_width(fnode), quantized.position(fnode)], \
                (layer.compute, key)
        weights = tf.make_ndarray(node.attr["weights"].tensor)
        bias = tf.make_ndarray(node.attr["bias"].tensor)
        np.testing.assert_array_equal(weights, values[layer.weight_fix])
        np.testing.assert_array_equal(bias, values[layer.bias_fix])
        # Quantized values are integers times 2^-pos within the bit range.
        bit, pos = ints(node, "wpos")
        scaled = weights * 2.0 ** pos
        np.testing.assert_array_equal(scaled, np.round(scaled))
        assert scaled.min() >= -2 ** (bit - 1) and scaled.max() <= 2 ** (bit - 1) - 1
        assert node.attr["activation"].s.decode() == acts[layer.compute]
        assert list(node.attr["fused_nodes"].list.s)[0].decode() == layer.compute


def test_other_nodes_carry_positions(cnn):
    _, ev, dep = cnn
    em = quantized.EvalModel(ev)
    nodes = {n.name: n for n in dep.node}
    pos = lambda fix: [quantized.bit_width(em.fixes[fix]), quantized.position(em.fixes[fix])]
    assert ints(nodes["input"], "opos") == pos("input/aquant")
    assert ints(nodes["pool1"], "opos") == pos("pool1/aquant")
    assert ints(nodes["pool1"], "ipos") == pos("conv1/Relu/aquant")
    assert ints(nodes["gap"], "ipos") == pos("conv3/Relu/aquant")
    assert ints(nodes["gap"], "opos") == pos("gap/aquant")
    assert ints(nodes["prob"], "ipos") == pos("logits/aquant")
    assert "opos" not in nodes["prob"].attr  # Softmax output stays float


def test_placeholder_batch_one_and_mean_axis_attr(cnn):
    _, _, dep = cnn
    nodes = {n.name: n for n in dep.node}
    assert [d.size for d in nodes["input"].attr["shape"].shape.dim] == [1, 8, 8, 3]
    assert ints(nodes["gap"], "axis") == [1, 2]
    assert list(nodes["gap"].input) == ["conv3/Conv2D"]
    # No constant is left dangling.
    used = {utils.node_name(i) for n in dep.node for i in n.input}
    assert not [n.name for n in dep.node if n.op == "Const" and n.name not in used]


def test_constant_parameters_become_attributes():
    cfg = helpers.config(output_nodes=["out"], simulate_dpu=0)
    ev = eval_model(helpers.concat_graph(), cfg)
    dep = deploy_graph_def(ev, cfg)
    nodes = {n.name: n for n in dep.node}
    assert nodes["cat"].attr["axis"].i == 3
    assert [utils.node_name(i) for i in nodes["cat"].input] == ["a/Conv2D", "b/Conv2D"]
    assert ints(nodes["cat"], "ipos")[0::2] == [8, 8]
    assert ints(nodes["pad"], "paddings") == [0, 0, 1, 1, 1, 1, 0, 0]
    assert ints(nodes["mean"], "axis") == [1, 2]
    assert ints(nodes["flat"], "shape") == [-1, 8]
    assert nodes["out"].attr["axis"].i == 1
    for name in ("cat", "pad", "mean", "flat", "out"):
        assert len(nodes[name].input) == 1 or name == "cat"
    assert not any(n.op == "Const" for n in dep.node)


def test_ignored_nodes_are_marked():
    cfg = helpers.config(ignore_nodes=["conv3/Conv2D", "pool1"])
    ev = eval_model(helpers.small_cnn(), cfg)
    dep = deploy_graph_def(ev, cfg)
    nodes = {n.name: n for n in dep.node}
    assert nodes["conv3/Conv2D"].attr["quantize_ignored"].b
    assert nodes["pool1"].attr["quantize_ignored"].b
    assert nodes["gap/avgpool"].op == "AvgPool"  # simulate_dpu on by default
    assert "weights" not in nodes["conv3/Conv2D"].attr  # float layer: not collapsed
    assert "quantize_ignored" not in nodes["conv1/Conv2D"].attr


def test_unfused_constant_weights_are_quantized_consts(cnn):
    # An eval model whose conv3 layer is atrous (kept apart): its weights feed a FixNeuron that
    # is not in a collapsible layer.
    cfg, ev, _ = cnn
    gd = tf.compat.v1.GraphDef()
    gd.CopyFrom(ev)
    for node in gd.node:  # SpaceToBatchND -> conv3 -> BatchToSpaceND, block 1
        if node.name == "conv3/BiasAdd":
            node.input[0] = "conv3/b2s"
        if node.name == "conv3/Conv2D":
            data = node.input[0]
            node.input[0] = "conv3/s2b"
    gd.node.extend([utils.const_node("conv3/s2b/pads", np.zeros([2, 2], np.int32)),
                    utils.make_node("SpaceToBatchND", "conv3/s2b",
                                    [data, "conv3/b2s/block", "conv3/s2b/pads"],
                                    T=tf.float32, Tblock_shape=tf.int32, Tpaddings=tf.int32),
                    utils.const_node("conv3/b2s/block", np.ones([2], np.int32)),
                    utils.const_node("conv3/b2s/crops", np.zeros([2, 2], np.int32)),
                    utils.make_node("BatchToSpaceND", "conv3/b2s",
                                    ["conv3/Conv2D", "conv3/b2s/block", "conv3/b2s/crops"],
                                    T=tf.float32, Tblock_shape=tf.int32, Tcrops=tf.int32)])
    dep = deploy_graph_def(gd, cfg)
    nodes = {n.name: n for n in dep.node}
    assert "weights" not in nodes["conv3/Conv2D"].attr
    weights = nodes[utils.node_name(nodes["conv3/Conv2D"].input[1])]
    assert weights.op == "Const" and ints(weights, "wpos")[0] == 8
    em = quantized.EvalModel(ev)
    value = fix_values(ev, ["conv3/weights/wquant"])["conv3/weights/wquant"]
    np.testing.assert_array_equal(tf.make_ndarray(weights.attr["value"].tensor), value)
    assert ints(weights, "wpos") == [8, quantized.position(em.fixes["conv3/weights/wquant"])]


def test_deploy_is_pure_and_deterministic(cnn):
    cfg, ev, dep = cnn
    before = ev.SerializeToString(deterministic=True)
    again = deploy_graph_def(ev, cfg)
    assert ev.SerializeToString(deterministic=True) == before
    assert again.SerializeToString(deterministic=True) == dep.SerializeToString(
        deterministic=True)
