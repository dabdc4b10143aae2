"""ptq.py: quantize_frozen end to end, its arguments and its session options."""

import os

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import ptq
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized, utils


@pytest.fixture(scope="module")
def quantized_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    cfg = helpers.config(output_dir=str(out))
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)
    return cfg, paths


def test_quantize_frozen_writes_both_models(quantized_small):
    _, paths = quantized_small
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "deploy_model.pb", "quantize_eval_model.pb"]
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    fixes = quantized.fix_neurons(eval_gd)
    assert "input/aquant" in fixes and "logits/aquant" in fixes
    assert all(n.attr["phase"].i == 1 for n in fixes.values())
    assert not any(n.op.startswith("FusedBatchNorm") for n in eval_gd.node)


def test_eval_model_is_close_to_float(quantized_small):
    _, paths = quantized_small
    images = helpers.batch(7)
    float_out = helpers.run(helpers.small_cnn(), "prob:0", images)
    quant_out = helpers.run(utils.load_graph_def(paths["quantize_eval_model"]), "prob:0", images)
    # 8-bit activations and weights: probabilities agree to a few hundredths.
    assert np.abs(float_out - quant_out).max() < 0.05


def test_quantize_is_deterministic(quantized_small, tmp_path):
    cfg, paths = quantized_small
    again = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path)), progress=False)
    for key, path in paths.items():
        with open(path, "rb") as a, open(again[key], "rb") as b:
            assert a.read() == b.read(), key


def test_input_fn_by_import_path(tmp_path, monkeypatch):
    helpers.write_input_fn_module(tmp_path, "calib_mod_a")
    monkeypatch.chdir(tmp_path)
    path = os.path.join(str(tmp_path), "frozen.pb")
    utils.save_graph_def(helpers.small_cnn(), path)
    paths = ptq.quantize_frozen(path, "calib_mod_a.calib_input",
                                helpers.config(output_dir="out"), progress=False)
    assert os.path.exists(paths["deploy_model"])
    assert paths["quantize_eval_model"] == os.path.join("out", "quantize_eval_model.pb")


def test_required_options():
    cfg = helpers.config()
    cfg.input_shapes = []
    with pytest.raises(ConfigError, match="input_shapes is required"):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg)


def test_session_config_is_the_fourth_argument(tmp_path, monkeypatch):
    """quantize_frozen(graph, input_fn, config, s_config): every session uses s_config."""
    seen = []
    real = tf.compat.v1.Session

    def session(*args, **kwargs):
        seen.append(kwargs.get("config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tf.compat.v1, "Session", session)
    s_config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=3)
    cfg = helpers.config(output_dir=str(tmp_path), calib_iter=2)
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, s_config)
    assert os.path.exists(paths["deploy_model"])
    # The session that runs the model (calibration; the float check runs only when its first
    # batch fails) uses it; the deploy model's quantized constants are computed in a small
    # session of their own, as the passes' constant folding is.
    ours = [c.intra_op_parallelism_threads for c in seen if c is not None]
    assert ours == [3, 0]
    # Keyword callers keep working; a bool where s_config goes says what is meant.
    ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, config=cfg, progress=False)
    with pytest.raises(ConfigError, match="progress is a keyword argument"):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, False)


def test_skip_check_argument(tmp_path):
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path), calib_iter=1)
    with pytest.raises(QuantizeError, match="NaN or Inf"):
        ptq.quantize_frozen(helpers.nan_graph(), helpers.input_fn, cfg, None, 0)
    ptq.quantize_frozen(helpers.nan_graph(), helpers.input_fn, cfg, None, 1)
