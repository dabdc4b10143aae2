"""plan.py: where FixNeurons go, on tiny frozen graphs built in code."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from decent_q import ops
from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.errors import QuantizeError

RNG = np.random.default_rng(0)


def const(shape, name):
    return tf.constant(RNG.standard_normal(shape).astype(np.float32), name=name)


def conv(x, cout, name, act=tf.nn.relu, bias=True, depthwise=False):
    cin = x.shape[-1]
    if depthwise:
        y = tf.nn.depthwise_conv2d(x, const([3, 3, cin, 1], f"{name}/weights"), [1, 1, 1, 1],
                                   "SAME", name=f"{name}/conv")
        cout = cin
    else:
        y = tf.nn.conv2d(x, const([3, 3, cin, cout], f"{name}/weights"), 1, "SAME",
                         name=f"{name}/conv")
    if bias:
        y = tf.nn.bias_add(y, const([cout], f"{name}/biases"), name=f"{name}/bias")
    return act(y, name=f"{name}/act") if act else y


def build(fn):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        fn(x)
    return graph.as_graph_def()


def plan_of(graph_def, outputs, **kw):
    cfg = QuantizeConfig(input_nodes=["input"], output_nodes=outputs,
                         input_shapes=[[-1, 8, 8, 3]], **kw)
    return plan_lib.plan_quantization(graph_def, cfg)


def names(plan):
    return [p.name for p in plan.points]


def test_conv_bias_relu_layer():
    gd = build(lambda x: conv(x, 4, "c1"))
    plan = plan_of(gd, ["c1/act"])
    assert names(plan) == ["input/aquant", "c1/weights/wquant", "c1/biases/wquant",
                           "c1/act/aquant"]
    inp = plan.point("input/aquant")
    assert (inp.method, inp.mode, inp.kind) == (0, ops.Mode.ACTIVATION, "input")
    w = plan.point("c1/weights/wquant")
    assert w.consumers == (("c1/conv", 1),) and w.mode == ops.Mode.WEIGHT
    assert plan.layers[0].nodes == ("c1/conv", "c1/bias", "c1/act")


@pytest.mark.parametrize("act", [tf.nn.relu, tf.nn.relu6, tf.nn.leaky_relu, None])
def test_activation_variants_end_the_layer(act):
    gd = build(lambda x: conv(x, 4, "c1", act=act))
    last = "c1/act" if act else "c1/bias"
    plan = plan_of(gd, [last])
    assert names(plan)[-1] == f"{last}/aquant"
    assert len(plan.layers) == 1 and plan.layers[0].output_point == f"{last}/aquant"


def test_leaky_relu_maximum_form():
    def net(x):
        y = conv(x, 4, "c1", act=None)
        return tf.maximum(tf.multiply(0.1, y, name="c1/leaky/mul"), y, name="c1/leaky")
    plan = plan_of(build(net), ["c1/leaky"])
    assert plan.layers[0].nodes[-2:] == ("c1/leaky/mul", "c1/leaky")
    assert "c1/bias/aquant" not in names(plan)


def test_keras_leaky_relu_form():
    def net(x):
        y = conv(x, 4, "c1", act=None)
        pos = tf.nn.relu(y, name="k/Relu")
        neg = tf.nn.relu(tf.negative(y, name="k/Neg"), name="k/Relu_1")
        return tf.subtract(pos, tf.multiply(0.3, neg, name="k/mul"), name="k/sub")
    plan = plan_of(build(net), ["k/sub"])
    assert names(plan)[-1] == "k/sub/aquant"
    assert plan.layers[0].nodes[-1] == "k/sub"


def test_depthwise_weights_use_dw_mode_and_method2():
    gd = build(lambda x: conv(x, 3, "dw", depthwise=True))
    plan = plan_of(gd, ["dw/act"], method=2)
    assert plan.point("dw/weights/wquant").mode == ops.Mode.DW_WEIGHT
    assert plan.point("dw/weights/wquant").method == 2


def test_dense_and_softmax_left_float():
    def net(x):
        flat = tf.reshape(conv(x, 2, "c1"), [-1, 128], name="flat")
        logits = tf.nn.bias_add(tf.matmul(flat, const([128, 10], "fc/weights"), name="fc/mm"),
                                const([10], "fc/b"), name="fc/out")
        return tf.nn.softmax(logits, name="prob")
    plan = plan_of(build(net), ["prob"])
    assert "flat/aquant" in names(plan) and "fc/out/aquant" in names(plan)
    assert "prob/aquant" not in names(plan)
    assert "Softmax" in plan.float_nodes["prob"]


def test_residual_add_relu_quantized_once():
    def net(x):
        a = conv(x, 3, "c1")
        b = conv(a, 3, "c2", act=None)
        return tf.nn.relu(tf.add(a, b, name="res/add"), name="res/relu")
    plan = plan_of(build(net), ["res/relu"])
    assert "res/add/aquant" not in names(plan)
    assert "res/relu/aquant" in names(plan)


def test_pooling_quantized_when_input_is():
    def net(x):
        a = tf.nn.max_pool2d(conv(x, 3, "c1"), 2, 2, "VALID", name="pool")
        return tf.nn.avg_pool2d(a, 2, 2, "VALID", name="avg")
    plan = plan_of(build(net), ["avg"])
    assert names(plan)[-2:] == ["pool/aquant", "avg/aquant"]


def test_avgpool_followed_by_dpu_scale_is_quantized_after_the_scale():
    def net(x):
        a = tf.nn.avg_pool2d(conv(x, 3, "c1"), 2, 2, "VALID", name="avg")
        return tf.multiply(a, tf.constant(1.0, name="scale"), name="avg/mul")
    plan = plan_of(build(net), ["avg/mul"])
    assert "avg/aquant" not in names(plan) and "avg/mul/aquant" in names(plan)


def test_concat_constant_input_gets_its_own_point():
    def net(x):
        a = conv(x, 3, "c1")
        return tf.concat([a, tf.constant(np.ones([1, 8, 8, 3], np.float32), name="k")], 0,
                         name="cat")
    plan = plan_of(build(net), ["cat"])
    k = plan.point("k/aquant")
    assert k.consumers == (("cat", 1),)
    assert "cat/aquant" in names(plan)


def test_atrous_conv_is_one_layer():
    def net(x):
        y = tf.nn.atrous_conv2d(x, const([3, 3, 3, 4], "a/weights"), 2, "SAME", name="a/conv")
        return tf.nn.relu(tf.nn.bias_add(y, const([4], "a/b"), name="a/bias"), name="a/act")
    gd = build(net)
    plan = plan_of(gd, ["a/act"])
    assert len(plan.layers) == 1
    ops_in_layer = {n.name: n.op for n in gd.node if n.name in plan.layers[0].nodes}
    assert sorted(ops_in_layer.values()) == ["BatchToSpaceND", "BiasAdd", "Conv2D", "Relu",
                                             "SpaceToBatchND"]


def test_ignore_nodes_and_nodes_bit():
    def net(x):
        return conv(conv(x, 3, "c1"), 3, "c2")
    gd = build(net)
    plan = plan_of(gd, ["c2/act"], ignore_nodes=["c1/act"],
                   nodes_bit=["c2/conv:4", "c2/act:16", "c1/biases:6"])
    assert "c1/act/aquant" not in names(plan)
    assert plan.float_nodes["c1/act"] == "in ignore_nodes"
    # c2's input is not quantized yet: it gets its own aquant
    assert "c1/act/aquant" not in names(plan)
    assert plan.point("c2/weights/wquant").bit_width == 4  # a conv name sets its weights only
    assert plan.point("c2/biases/wquant").bit_width == 8
    assert plan.point("c2/act/aquant").bit_width == 16
    assert plan.point("c1/biases/wquant").bit_width == 6


def test_ignored_conv_is_left_float():
    gd = build(lambda x: conv(conv(x, 3, "c1"), 3, "c2"))
    plan = plan_of(gd, ["c2/act"], ignore_nodes=["c1/conv"])
    assert "c1/weights/wquant" not in names(plan) and "c1/biases/wquant" not in names(plan)
    assert plan.float_nodes["c1/conv"] == "in ignore_nodes"
    # c2's input was not quantized by its producer: c2 quantizes it itself
    assert plan.layers[1].input_point == "c1/act/aquant"


def test_nodes_outside_range_untouched():
    def net(x):
        y = conv(x, 3, "c1")
        post = tf.nn.relu(conv(y, 3, "post"), name="post/out")  # after the output node
        return post
    plan = plan_of(build(net), ["c1/act"])
    assert not any(n.startswith("post") for n in names(plan))
    assert all(not n.startswith("post") for n in plan.range_nodes)


def test_unsupported_op_left_float_with_warning(caplog):
    def net(x):
        y = conv(x, 3, "c1")
        return tf.math.floor(y, name="odd")
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        plan = plan_of(build(net), ["odd"])
    assert "not supported" in plan.float_nodes["odd"]
    assert "odd" in caplog.text


def test_missing_node_suggests_close_names():
    gd = build(lambda x: conv(x, 3, "c1"))
    with pytest.raises(QuantizeError, match="did you mean 'c1/act'"):
        plan_of(gd, ["c1/actt"])
    with pytest.raises(QuantizeError, match="ignore_nodes entry 'nope'"):
        plan_of(gd, ["c1/act"], ignore_nodes=["nope"])


def test_plan_is_deterministic():
    gd = build(lambda x: conv(conv(x, 3, "c1"), 3, "c2"))
    assert plan_of(gd, ["c2/act"]).points == plan_of(gd, ["c2/act"]).points


def _run(graph_def, fetch, feed):
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetch, {"input:0": feed})


def test_apply_to_graph_def_rewires_and_keeps_output_names():
    gd = build(lambda x: conv(conv(x, 3, "c1"), 3, "c2"))
    plan = plan_of(gd, ["c2/act"])
    positions = {p.name: 4 for p in plan.points}
    out = appliers.apply_to_graph_def(gd, plan, positions)
    nodes = {n.name: n for n in out.node}
    assert nodes["c2/conv"].input[0] == "c1/act/aquant"
    assert nodes["c2/conv"].input[1] == "c2/weights/wquant"
    assert nodes["c2/act/aquant"].attr["quantize_pos"].i == 4
    assert nodes["c2/act/aquant"].attr["phase"].i == ops.Phase.EVAL
    x = RNG.standard_normal([2, 8, 8, 3]).astype(np.float32)
    y = _run(out, "c2/act/aquant:0", x)
    assert np.array_equal(y, np.clip(np.floor(y * 16 + 0.5), -128, 127) / 16)
    assert appliers.output_aliases(plan, ["c2/act"]) == {"c2/act": "c2/act/aquant"}


def test_apply_to_graph_live_matches_apply_to_graph_def():
    gd = build(lambda x: conv(conv(x, 3, "c1"), 3, "c2"))
    plan = plan_of(gd, ["c2/act"])
    x = RNG.standard_normal([2, 8, 8, 3]).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(gd, name="")
        built = appliers.apply_to_graph(graph, plan, ops.Phase.CALIB)
        assert graph.get_operation_by_name("c2/conv").inputs[0].name == "c1/act/aquant:0"
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            live = sess.run(built["c2/act/aquant"], {"input:0": x})
            hists = sess.run(ops.histogram_variables(graph))
    assert sorted(hists) == sorted(names(plan))
    positions = {k: ops.kept_position_np(v) for k, v in hists.items()}
    frozen = _run(appliers.apply_to_graph_def(gd, plan, positions), "c2/act/aquant:0", x)
    assert np.array_equal(live, frozen)


def test_shape_arithmetic_is_not_flagged():
    def net(x):
        y = conv(x, 3, "c1")
        return tf.reshape(y, tf.stack([tf.shape(y)[0], -1]), name="flat")
    plan = plan_of(build(net), ["flat"])
    assert "flat/aquant" in names(plan)
    assert not any("not supported" in r for r in plan.float_nodes.values())
    assert "shape computation" in plan.float_nodes.values()


def test_batch_norm_without_compute_op_is_folded_to_scale_offset_and_quantized_once():
    from decent_q.transforms import fold_batch_norms  # pylint: disable=import-outside-toplevel

    def net(x):
        y = conv(x, 3, "c1")
        bn = tf.compat.v1.nn.fused_batch_norm(
            y, const([3], "g"), const([3], "b"), mean=const([3], "m"),
            variance=tf.constant(np.ones(3, np.float32) * 2, name="v"), is_training=False,
            name="pre_bn")[0]
        return tf.nn.relu(bn, name="pre_relu")
    gd = fold_batch_norms.fold_batch_norms(build(net), keep=["input", "pre_relu"])
    assert "FusedBatchNormV3" not in {n.op for n in gd.node}
    plan = plan_of(gd, ["pre_relu"])
    assert "pre_bn/mul/aquant" not in names(plan)
    assert "pre_bn/aquant" in names(plan) and "pre_relu/aquant" in names(plan)


def test_identity_n_is_removed():
    from decent_q.transforms import cleanup  # pylint: disable=import-outside-toplevel

    def net(x):
        a, b = tf.identity_n([tf.nn.relu(x, name="r"), tf.nn.relu6(x, name="r6")], name="idn")
        return tf.add(a, b, name="sum")
    gd = cleanup.remove_identities(build(net), keep=["input", "sum"])
    nodes = {n.name: n for n in gd.node}
    assert "idn" not in nodes and list(nodes["sum"].input) == ["r", "r6"]


def shared_weights_graph():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = const([3, 3, 3, 3], "w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="c1"), name="r1")
        tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME", name="c2"), name="out")
    return graph.as_graph_def()


def test_a_weight_shared_by_two_layers_is_one_point_for_both(tmp_path):
    import decent_q  # pylint: disable=import-outside-toplevel
    from decent_q.graph import utils  # pylint: disable=import-outside-toplevel
    plan = plan_of(shared_weights_graph(), ["out"])
    point = plan.point("w/wquant")
    assert point.consumers == (("c1", 1), ("c2", 1))
    assert [p.name for p in plan.points].count("w/wquant") == 1
    config = QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                            input_shapes=[[-1, 8, 8, 3]], calib_iter=1,
                            output_dir=str(tmp_path))
    paths = decent_q.quantize_frozen(
        shared_weights_graph(), lambda step: {"input": np.ones([2, 8, 8, 3], np.float32)},
        config, progress=False)
    deployed = {n.name: n for n in utils.load_graph_def(paths["deploy_model"]).node}
    assert "weights" in deployed["c1"].attr and "weights" in deployed["c2"].attr


def test_a_shared_weight_quantized_differently_is_a_clear_error():
    with pytest.raises(QuantizeError, match="w:0 is read by c1, c2, which quantize it "
                                            "differently"):
        plan_of(shared_weights_graph(), ["out"], nodes_bit={"c2": 4})
