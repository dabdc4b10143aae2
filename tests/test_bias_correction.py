"""bias_correction.py: bias_correction=1 (docs/passes.md "Bias correction")."""

import logging
import re

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import bias_correction, cli, ptq, qat
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError
from decent_q.graph import utils

CALIB = 3
# 4-bit weights (a compute op's nodes_bit entry sets its weights only), 16-bit biases: a bias
# is then stored as corrected, to within 2^-15 of its range.
WIDE_BIASES = dict(weight_bit=16, nodes_bit={name: 4 for name in (
    "conv1/Conv2D", "dw2/depthwise", "conv3/Conv2D", "fc/MatMul")})


def _calibrated(correct, **kwargs):
    kwargs.setdefault("weight_bit", 4)
    config = helpers.config(calib_iter=CALIB, bias_correction=correct, **kwargs)
    return ptq.calibrate_frozen(helpers.small_cnn(), helpers.input_fn, config, progress=False)


@pytest.fixture(scope="module")
def wide():
    """The small CNN with 4-bit weights and 16-bit biases: uncorrected, bias_correction=1,
    bias_correction=2."""
    return tuple(_calibrated(mode, **WIDE_BIASES) for mode in (0, 1, 2))


def _const(graph_def, name):
    return utils.const_value(utils.NodeMap(graph_def)[name])


def _layer_errors(done, original):
    """{compute: per-channel mean over the calibration batches of the layer's quantized output
    (after its bias op) minus the float layer's on the same (quantized) input}, with
    {compute: (Q(b), b)} of the model in `done`. The float layer reads the float weights and
    the bias of `original` (the uncorrected eval model)."""
    graph = utils.import_graph(done.eval_graph_def)
    errors, biases = {}, {}
    with tf.compat.v1.Session(graph=graph) as sess:
        for layer in done.plan.layers:
            bias_op = done.plan.point(layer.bias_point).consumers[0][0]
            weight_const = graph.get_operation_by_name(layer.weight_point).inputs[0]
            bias_fix = graph.get_tensor_by_name(layer.bias_point + ":0")
            bias_const = bias_fix.op.inputs[0]
            float_feed = {graph.get_tensor_by_name(layer.weight_point + ":0"):
                          sess.run(weight_const),
                          bias_fix: _const(original.eval_graph_def, bias_const.op.name)}
            out = graph.get_tensor_by_name(bias_op + ":0")
            total = 0.0
            for step in range(CALIB):
                feed = {"input:0": helpers.batch(step)}
                quant = sess.run(out, feed)
                ref = sess.run(out, {**feed, **float_feed})
                total = total + (quant - ref).reshape(-1, quant.shape[-1]).mean(axis=0)
            errors[layer.compute] = total / CALIB
            biases[layer.compute] = tuple(sess.run([bias_fix, bias_const]))
    return errors, biases


def _assert_only_bias_rounding_left(corrected, before, after, biases):
    """Every corrected layer's mean error is the rounding of its corrected bias to its 16-bit
    grid, and small; before the correction it was not."""
    assert sorted(corrected.bias_correction.shifts) == sorted(before)
    for compute, error in after.items():
        quantized, stored = biases[compute]
        np.testing.assert_allclose(error, quantized - stored, atol=2e-6, err_msg=compute)
        assert np.abs(error).max() < 1e-3, compute
        assert np.abs(before[compute]).max() > 0.02, compute


def test_weights_mode_leaves_no_mean_weight_error_on_the_calibration_data(wide):
    plain, corrected, _ = wide
    before, _ = _layer_errors(plain, plain)
    after, biases = _layer_errors(corrected, plain)
    _assert_only_bias_rounding_left(corrected, before, after, biases)
    # The first layer sees the same input in both models: its error was exactly the shift.
    np.testing.assert_allclose(before["conv1/Conv2D"],
                               corrected.bias_correction.shifts["conv1/Conv2D"], atol=1e-4)


def _output_errors(done):
    """{compute: per-channel mean over the calibration batches of the layer's output (after
    its bias op) in the eval model minus the float model's}, with {compute: (Q(b), b)}."""
    names = {l.compute: done.plan.point(l.bias_point).consumers[0][0]
             for l in done.plan.layers}
    eval_map = utils.NodeMap(done.eval_graph_def)
    errors = {}
    for step in range(CALIB):
        images = helpers.batch(step)
        want = helpers.run(done.float_graph_def, [n + ":0" for n in names.values()], images)
        got = helpers.run(done.eval_graph_def, [n + ":0" for n in names.values()], images)
        for compute, a, b in zip(names, got, want):
            errors[compute] = errors.get(compute, 0.0) + \
                (a - b).reshape(-1, a.shape[-1]).mean(axis=0) / CALIB
    biases = {}
    for layer in done.plan.layers:
        const = eval_map[layer.bias_point].input[0]
        biases[layer.compute] = (
            helpers.run(done.eval_graph_def, layer.bias_point + ":0", helpers.batch(0)),
            _const(done.eval_graph_def, const))
    return errors, biases


def test_output_mode_leaves_no_mean_output_error_on_the_calibration_data(wide):
    plain, _, corrected = wide
    before, _ = _output_errors(plain)
    after, biases = _output_errors(corrected)
    _assert_only_bias_rounding_left(corrected, before, after, biases)


@pytest.mark.parametrize("mode", [1, 2])
def test_held_out_logits_error_decreases(mode):
    images = np.concatenate([helpers.batch(step, 16) for step in range(50, 53)])
    want = helpers.run(helpers.small_cnn(), "logits:0", images)
    mse, mean = {}, {}
    for correct in (0, mode):  # 4-bit weights and biases
        got = helpers.run(_calibrated(correct).eval_graph_def, "logits/aquant:0", images)
        mse[correct] = float(np.mean(np.square(got - want)))
        mean[correct] = float(np.abs((got - want).mean(axis=0)).mean())
    # measured: mse 0.032 -> 0.0048 (mode 1), 0.0032 (mode 2); mean |per-logit mean error|
    # 0.147 -> 0.045, 0.011
    assert mse[mode] < 0.5 * mse[0], mse
    assert mean[mode] < 0.5 * mean[0], mean


def test_off_by_default_and_byte_identical(tmp_path):
    def model(name, **kwargs):
        config = helpers.config(weight_bit=4, output_dir=str(tmp_path / name), **kwargs)
        paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, config,
                                    progress=False)
        with open(paths["quantize_eval_model"], "rb") as f:
            return f.read()

    assert QuantizeConfig().bias_correction == 0
    default = model("default")
    assert model("off", bias_correction=0) == default
    corrected = model("on", bias_correction=1)
    assert corrected != default
    assert model("again", bias_correction=1) == corrected  # deterministic


def test_layer_forms_and_a_layer_without_bias(caplog):
    config = helpers.config(["out"], weight_bit=4, calib_iter=CALIB, bias_correction=1)
    with caplog.at_level(logging.INFO, logger="decent_q"):
        done = ptq.calibrate_frozen(helpers.forms_graph(), helpers.input_fn, config, progress=False)
    result = done.bias_correction
    assert sorted(result.shifts) == ["b/conv", "c/conv"] and result.passes == 2
    assert "no bias" in result.skipped["a/conv"]
    assert "a/conv left alone: no bias" in caplog.text
    assert result.shifts["c/conv"].shape == (2,)
    plain = ptq.calibrate_frozen(helpers.forms_graph(), helpers.input_fn,
                                 helpers.config(["out"], weight_bit=4, calib_iter=CALIB),
                                 progress=False)
    for const, compute in (("b/b", "b/conv"), ("c/b", "c/conv")):
        np.testing.assert_allclose(_const(done.eval_graph_def, const),
                                   _const(plain.eval_graph_def, const)
                                   - result.shifts[compute], rtol=1e-6, atol=1e-6)
    assert _const(done.eval_graph_def, "a/w").tobytes() == \
        _const(plain.eval_graph_def, "a/w").tobytes()


def test_new_bias_position_is_the_calibration_search():
    fix = utils.make_node("FixNeuron", "b/wquant", ["b"], mode=0, bit_width=4, method=1,
                          phase=1, quantize_pos=0, arch_type="DEFAULT")
    found = bias_correction.search_positions(
        {"b/wquant": (np.array([0.9, -0.3, 0.05], np.float32), fix)})
    # method 1 at 4 bit: codes -8..7; position 3 (step 1/8) holds 0.9 as 7/8
    assert found == {"b/wquant": 3}


def test_option_on_the_command_line_and_its_checks(capsys):
    parser = cli.build_parser()
    for value in ("1", "2"):
        args = parser.parse_args(["quantize", "--input_frozen_graph", "g.pb",
                                  "--bias_correction", value])
        assert cli._config(args).bias_correction == int(value)
    assert cli._config(parser.parse_args(["quantize", "--input_frozen_graph", "g.pb"])) \
        .bias_correction == 0
    assert cli.main(["quantize", "--input_frozen_graph", "g.pb", "--bias_correction", "3"]) == 2
    assert "--bias_correction: invalid choice: 3 (choose from 0, 1, 2)" in \
        capsys.readouterr().err
    with pytest.raises(ConfigError,
                       match=r"bias_correction=3 is not allowed; use one of 0, 1, 2"):
        QuantizeConfig(bias_correction=3)
    with pytest.raises(ConfigError, match=r"bias_correction='yes' must be an integer"):
        QuantizeConfig(bias_correction="yes")
    assert QuantizeConfig(bias_correction="1").bias_correction == 1


def test_qat_warns_that_it_ignores_the_option(caplog):
    config = helpers.config(bias_correction=1)
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        qat._check_config(config)
    assert re.search(r"QAT ignores .*bias_correction=1", caplog.text)
