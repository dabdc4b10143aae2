"""graph/quantized.py: reading eval models (EVAL FixNeurons) built by appliers.apply_to_graph_def."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.graph import quantized

RNG = np.random.default_rng(0)


def const(shape, name):
    return tf.constant(RNG.standard_normal(shape).astype(np.float32), name=name)


def conv(x, cout, name, act=tf.nn.relu, bias=True, op="conv", k=3):
    cin = x.shape[-1]
    if op == "depthwise":
        y = tf.nn.depthwise_conv2d(x, const([k, k, cin, 1], f"{name}/weights"), [1, 1, 1, 1],
                                   "SAME", name=f"{name}/conv")
        cout = cin
    elif op == "atrous":
        y = tf.nn.atrous_conv2d(x, const([k, k, cin, cout], f"{name}/weights"), 2, "SAME",
                                name=f"{name}/conv")
    else:
        y = tf.nn.conv2d(x, const([k, k, cin, cout], f"{name}/weights"), 1, "SAME",
                         name=f"{name}/conv")
    if bias:
        y = tf.nn.bias_add(y, const([cout], f"{name}/biases"), name=f"{name}/bias")
    if act == "leaky_max":
        return tf.maximum(tf.multiply(0.1, y, name=f"{name}/leaky/mul"), y, name=f"{name}/act")
    return act(y, name=f"{name}/act") if act else y


def eval_model(fn, outputs, shape=(None, 8, 8, 3)):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, list(shape), name="input")
        fn(x)
    gd = graph.as_graph_def()
    cfg = QuantizeConfig(input_nodes=["input"], output_nodes=outputs,
                         input_shapes=[[-1] + list(shape[1:])])
    plan = plan_lib.plan_quantization(gd, cfg)
    positions = {p.name: i for i, p in enumerate(plan.points)}
    return appliers.apply_to_graph_def(gd, plan, positions), plan


@pytest.mark.parametrize("act", [tf.nn.relu, tf.nn.relu6, tf.nn.leaky_relu, "leaky_max", None])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_fix_neurons(act, bias):
    gd, plan = eval_model(lambda x: conv(x, 4, "c1", act=act, bias=bias),
                          ["c1/act" if act else ("c1/bias" if bias else "c1/conv")])
    layers = quantized.find_layers(gd)
    assert len(layers) == 1
    layer = layers[0]
    expected = plan.layers[0]
    assert layer.compute == "c1/conv" and layer.kind == "conv"
    assert layer.input_fix == expected.input_point == "input/aquant"
    assert layer.weight_fix == expected.weight_point == "c1/weights/wquant"
    assert layer.bias_fix == expected.bias_point
    assert layer.output_fix == expected.output_point
    assert layer.kernel == (3, 3) and layer.in_channels == 3 and layer.accumulations == 27


def test_depthwise_atrous_and_dense_geometry():
    def net(x):
        y = conv(x, 4, "c1", op="atrous")
        y = conv(y, None, "dw", op="depthwise", act=tf.nn.relu6, k=5)
        y = tf.reshape(y, [-1, 8 * 8 * 4], name="flat")
        w = const([256, 10], "fc/weights")
        return tf.nn.bias_add(tf.matmul(y, w, name="fc/matmul"), const([10], "fc/b"),
                              name="fc/bias")
    gd, _ = eval_model(net, ["fc/bias"])
    layers = {l.compute: l for l in quantized.find_layers(gd)}
    atrous = next(l for name, l in layers.items() if name.startswith("c1/conv"))
    assert atrous.input_fix == "input/aquant" and atrous.output_fix == "c1/act/aquant"
    assert atrous.kernel == (3, 3) and atrous.in_channels == 3
    dw = layers["dw/conv"]
    assert (dw.kind, dw.kernel, dw.in_channels) == ("depthwise", (5, 5), 1)
    assert dw.input_fix == "c1/act/aquant" and dw.output_fix == "dw/act/aquant"
    fc = layers["fc/matmul"]
    assert (fc.kind, fc.kernel, fc.in_channels) == ("matmul", (1, 1), 256)
    assert fc.bias_fix == "fc/b/wquant" and fc.output_fix == "fc/bias/aquant"
    model = quantized.EvalModel(gd)
    # The Reshape's output position: its own FixNeuron (plan quantizes it).
    assert model.output_fix("flat") == "flat/aquant"


def test_output_fix_walks_back_through_shape_only_ops():
    def net(x):
        y = conv(x, 4, "c1")
        return tf.identity(tf.expand_dims(y, 1, name="expand"), name="ident")
    gd, _ = eval_model(net, ["c1/act"])
    model = quantized.EvalModel(gd)
    assert model.output_fix("c1/act") == "c1/act/aquant"
    assert model.output_fix("c1/act/aquant") == "c1/act/aquant"
    assert model.output_fix("ident") == "c1/act/aquant"
    assert model.output_fix("c1/conv") is None


def test_set_position_and_with_positions():
    gd, _ = eval_model(lambda x: conv(x, 4, "c1"), ["c1/act"])
    before = quantized.positions(gd)
    copy = quantized.with_positions(gd, {"c1/act/aquant": 42})
    assert quantized.positions(gd) == before  # pure
    assert quantized.positions(copy)["c1/act/aquant"] == 42
    old = quantized.set_position(gd, "c1/act/aquant", 41)
    assert old == before["c1/act/aquant"]
    assert quantized.positions(gd)["c1/act/aquant"] == 41
    with pytest.raises(KeyError):
        quantized.set_position(gd, "c1/act", 3)
    with pytest.raises(KeyError):
        quantized.with_positions(gd, {"c1/act": 3})
