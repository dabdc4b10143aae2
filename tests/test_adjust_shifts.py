"""transforms/adjust_shifts.py: shift_cut / shift_bias ranges on eval models."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from decent_q import calibrate
from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.graph import quantized, utils
from decent_q.transforms import adjust_positions
from decent_q.transforms import adjust_shifts

# Calibration builds ref-variable histograms (graph flows run with v2 behaviour off).
tf.compat.v1.disable_v2_behavior()
RNG = np.random.default_rng(0)
LAYER = {"input": "input/aquant", "weight": "c1/weights/wquant", "bias": "c1/biases/wquant",
         "output": "c1/act/aquant"}


def float_graph(op="conv", zero_bias=False):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        if op == "conv":
            w = tf.constant(RNG.standard_normal([3, 3, 3, 4]).astype(np.float32),
                            name="c1/weights")
            y = tf.nn.conv2d(x, w, 1, "SAME", name="c1/conv")
            n = 4
        elif op == "depthwise":
            w = tf.constant(RNG.standard_normal([3, 3, 3, 1]).astype(np.float32),
                            name="c1/weights")
            y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", name="c1/conv")
            n = 3
        else:
            flat = tf.reshape(x, [-1, 192], name="flat")
            w = tf.constant(RNG.standard_normal([192, 4]).astype(np.float32),
                            name="c1/weights")
            y = tf.matmul(flat, w, name="c1/conv")
            n = 4
        b = np.zeros(n, np.float32) if zero_bias else RNG.standard_normal(n).astype(np.float32)
        y = tf.nn.bias_add(y, tf.constant(b, name="c1/biases"), name="c1/bias")
        tf.nn.relu(y, name="c1/act")
    return graph.as_graph_def()


def cfg(**kw):
    return QuantizeConfig(input_nodes=["input"], output_nodes=["c1/act"],
                          input_shapes=[[-1, 8, 8, 3]], calib_iter=2, **kw)


def eval_model(pi, pw, pb, po, op="conv"):
    gd = float_graph(op)
    plan = plan_lib.plan_quantization(gd, cfg())
    positions = {p.name: 0 for p in plan.points}
    positions.update({LAYER["weight"]: pw, LAYER["bias"]: pb, LAYER["output"]: po})
    input_point = next(l.input_point for l in plan.layers)
    positions[input_point] = pi
    return appliers.apply_to_graph_def(gd, plan, positions), input_point


def pos(graph_def, name):
    return quantized.positions(graph_def)[name]


@pytest.mark.parametrize("op", ["conv", "depthwise", "matmul"])
@pytest.mark.parametrize("pi,pw,po,want_pw", [
    (6, 8, 4, 8),      # shift_cut 10: in range
    (6, 20, 4, 14),    # 22 > 16: pw down to 16 + po - pi
    (2, 1, 6, 4),      # -3 < 0: pw up to po - pi
    (6, 4, 10, 4),     # exactly 0
    (6, 14, 4, 14),    # exactly 16
    (6, 127, 4, 14),   # all-zero weights: any position, moved into range
])
def test_shift_cut(op, pi, pw, po, want_pw):
    gd, _ = eval_model(pi, pw, 5, po, op)
    out = adjust_shifts.adjust_shift_cut(gd, cfg())
    assert pos(out, LAYER["weight"]) == want_pw
    assert pos(gd, LAYER["weight"]) == pw  # pure
    before, after = quantized.positions(gd), quantized.positions(out)
    assert {k for k in before if before[k] != after[k]} <= {LAYER["weight"]}
    assert adjust_shifts.adjust_shift_cut(out, cfg()).SerializeToString(deterministic=True) \
        == out.SerializeToString(deterministic=True)


@pytest.mark.parametrize("mode,pb,want_pb", [
    (1, 5, 5),      # shift_cut 10 -> min -6; shift_bias 9 in range
    (1, 30, 20),    # shift_bias -16 < -6: pb = pw + pi + 6
    (1, -5, -2),    # shift_bias 19 > 16: pb = pw + pi - 16
    (1, 127, 20),   # all-zero bias: moved into range, no overflow
    (2, 30, 25),    # conv 3x3x3: ceil(log2 27) = 5 -> min -11: pb = 14 + 11
    (2, -5, -2),
    (2, 127, 25),
])
def test_shift_bias(mode, pb, want_pb, caplog):
    gd, _ = eval_model(6, 8, pb, 4)
    with caplog.at_level(logging.INFO, logger="decent_q"):
        out = adjust_shifts.adjust_shift_bias(gd, cfg(adjust_shift_bias=mode))
    assert pos(out, LAYER["bias"]) == want_pb
    lines = [r.getMessage() for r in caplog.records if "adjust_shift_bias" in r.getMessage()]
    assert len(lines) == (pb != want_pb)
    if pb == 127:
        assert "all-zero bias" in lines[0]
    again = adjust_shifts.adjust_shift_bias(out, cfg(adjust_shift_bias=mode))
    assert again.SerializeToString(deterministic=True) == \
        out.SerializeToString(deterministic=True)


def test_shift_bias_mode_2_uses_kernel_geometry():
    layer = quantized.find_layers(eval_model(6, 8, 5, 4, "matmul")[0])[0]
    assert layer.accumulations == 192
    # ceil(log2 192) = 8 -> min(0, -(24 - 16)) = -8
    assert adjust_shifts.shift_bias_min(layer, 10, 2) == -8
    assert adjust_shifts.shift_bias_min(layer, 10, 1) == -6
    dw = quantized.find_layers(eval_model(6, 8, 5, 4, "depthwise")[0])[0]
    assert dw.accumulations == 9 and adjust_shifts.shift_bias_min(dw, 10, 2) == -12


@pytest.mark.parametrize("zero", ["input", "output"])
def test_all_zero_activation_skips_layer(zero, caplog):
    values = {"input": 6, "output": 4}
    values[zero] = 127
    gd, _ = eval_model(values["input"], 40, 90, values["output"])
    with caplog.at_level(logging.INFO, logger="decent_q"):
        out = adjust_positions(gd, cfg())
    assert quantized.positions(out) == quantized.positions(gd)
    assert any("skipped" in r.getMessage() and "all zero" in r.getMessage()
               for r in caplog.records)


def test_mode_0_and_switches_leave_positions():
    gd, _ = eval_model(6, 30, 90, 4)
    out = adjust_positions(gd, cfg(adjust_shift_cut=0, adjust_shift_bias=0))
    assert quantized.positions(out) == quantized.positions(gd)
    out = adjust_positions(gd, cfg(adjust_shift_bias=0))
    assert pos(out, LAYER["weight"]) == 14 and pos(out, LAYER["bias"]) == 90
    out = adjust_positions(gd, cfg())
    # shift_cut first (pw 14 -> shift_cut 16, min 0), then the bias: pb = 20 - 0
    assert pos(out, LAYER["weight"]) == 14 and pos(out, LAYER["bias"]) == 20


def test_calibrated_zero_bias_gets_a_valid_position():
    """The original overflowed int32 on an all-zero bias (position 127)."""
    gd = float_graph(zero_bias=True)
    config = cfg()
    plan = plan_lib.plan_quantization(gd, config)
    x = RNG.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
    positions = calibrate.calibrate_positions(gd, plan, lambda step: {"input": x}, config)
    assert positions[LAYER["bias"]] == 127
    model = appliers.apply_to_graph_def(gd, plan, positions)
    out = adjust_positions(model, config)
    layer = quantized.find_layers(out)[0]
    p = quantized.positions(out)
    shift_bias = p[layer.weight_fix] + p[layer.input_fix] - p[layer.bias_fix]
    shift_cut = p[layer.weight_fix] + p[layer.input_fix] - p[layer.output_fix]
    assert 0 <= shift_cut <= 16 and min(0, shift_cut - 16) <= shift_bias <= 16
    for graph_def in (model, out):  # the bias stays exactly zero: outputs do not change
        graph = utils.import_graph(graph_def)
        with tf.compat.v1.Session(graph=graph) as sess:
            result = sess.run("c1/act/aquant:0", {"input:0": x})
        if graph_def is model:
            first = result
    np.testing.assert_array_equal(result, first)
