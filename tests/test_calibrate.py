"""calibrate.py: quantize_frozen, write_models, input_fn loading and the checks."""

import io
import logging
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import calibrate
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized, utils


@pytest.fixture(scope="module")
def quantized_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    cfg = helpers.config(output_dir=str(out))
    paths = calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)
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
    again = calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                      helpers.config(output_dir=str(tmp_path)), progress=False)
    for key, path in paths.items():
        with open(path, "rb") as a, open(again[key], "rb") as b:
            assert a.read() == b.read(), key


def test_input_fn_by_import_path(tmp_path, monkeypatch):
    helpers.write_input_fn_module(tmp_path, "calib_mod_a")
    monkeypatch.chdir(tmp_path)
    path = os.path.join(str(tmp_path), "frozen.pb")
    utils.save_graph_def(helpers.small_cnn(), path)
    paths = calibrate.quantize_frozen(path, "calib_mod_a.calib_input",
                                      helpers.config(output_dir="out"), progress=False)
    assert os.path.exists(paths["deploy_model"])
    assert paths["quantize_eval_model"] == os.path.join("out", "quantize_eval_model.pb")


_BAD_FNS = {
    "raises": ("def f(i):\n    x = 1\n    return {'input': undefined_name}\n",
               r"raised at .*bad_\w+\.py:3 in f \(return .*NameError"),
    "non_dict": ("def f(i):\n    return [1, 2]\n", "returned list; it must return a dict"),
    "wrong_key": ("import numpy as np\ndef f(i):\n    return {'inputz': np.zeros([1, 8, 8, 3], "
                  "np.float32)}\n", "key 'inputz', which is not in the graph; the "
                                    "placeholders are: input"),
    "dtype": ("import numpy as np\ndef f(i):\n    return {'input': np.array([['a'] * 3] * 8)}\n",
              "dtype <U1; the placeholder wants float32"),
    "shape": ("import numpy as np\ndef f(i):\n    return {'input': np.zeros([2, 8, 8, 1], "
              "np.float32)}\n", r"shape \[2, 8, 8, 1\]; the placeholder wants \['\?', 8, 8, 3\]"),
    "nan": ("import numpy as np\ndef f(i):\n    return {'input': np.full([1, 8, 8, 3], np.nan, "
            "np.float32)}\n", "holds NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FNS))
def test_bad_input_fn_gives_one_clear_error_and_no_files(case, tmp_path, monkeypatch):
    body, pattern = _BAD_FNS[case]
    module = f"bad_{case}"
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match=pattern) as info:
        calibrate.quantize_frozen(helpers.small_cnn(), f"{module}.f",
                                  helpers.config(output_dir="out"), progress=False)
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "out")


def test_missing_module_and_function(tmp_path, monkeypatch):
    helpers.write_input_fn_module(tmp_path, "calib_mod_b")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match="module 'no_such_mod' is not found in"):
        calibrate.load_input_fn("no_such_mod.calib_input")
    with pytest.raises(QuantizeError, match="has no function 'calib'; its functions: "
                                            "calib_input, dump_input"):
        calibrate.load_input_fn("calib_mod_b.calib")
    with pytest.raises(ConfigError, match="not 'module_name.function_name'"):
        calibrate.load_input_fn("calib_input")
    with pytest.raises(ConfigError, match="input_fn is required"):
        calibrate.load_input_fn("")


def test_module_importing_a_missing_package_names_it(tmp_path, monkeypatch):
    (tmp_path / "calib_mod_c.py").write_text("import not_installed_pkg\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QuantizeError, match="importing input_fn module 'calib_mod_c' failed "
                                            r"at .*calib_mod_c.py:1.*not_installed_pkg"):
        calibrate.load_input_fn("calib_mod_c.f")


def test_unknown_node_suggests_close_names():
    cfg = helpers.config(output_nodes=["logit"])
    with pytest.raises(QuantizeError, match="output node 'logit' is not in the graph; did you "
                                            "mean 'logits'"):
        calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)


def test_required_options():
    cfg = helpers.config()
    cfg.input_shapes = []
    with pytest.raises(ConfigError, match="input_shapes is required"):
        calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg)


def test_already_quantized_graph_is_refused(quantized_small):
    _, paths = quantized_small
    with pytest.raises(QuantizeError, match="already holds FixNeuron"):
        calibrate.quantize_frozen(paths["quantize_eval_model"], helpers.input_fn,
                                  helpers.config(), progress=False)


def test_set_input_shapes():
    gd = helpers.small_cnn()
    out = calibrate.set_input_shapes(gd, helpers.config())
    shape = next(n for n in out.node if n.name == "input").attr["shape"].shape
    assert [d.size for d in shape.dim] == [-1, 8, 8, 3]
    fixed = helpers.config()
    fixed.input_shapes = [[1, 8, 8, 3]]
    out = calibrate.set_input_shapes(gd, fixed)
    shape = next(n for n in out.node if n.name == "input").attr["shape"].shape
    assert [d.size for d in shape.dim] == [1, 8, 8, 3]
    wrong = helpers.config()
    wrong.input_shapes = [[-1, 16, 16, 3]]
    with pytest.raises(QuantizeError, match=r"gives \?,16,16,3 for 'input' but the graph says "
                                            r"\?,8,8,3"):
        calibrate.set_input_shapes(gd, wrong)


def _nan_graph():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.full([1, 1, 3, 2], 0.5, np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="relu")
        tf.math.log(y - 10.0, name="out")  # log of a negative number: NaN
    return graph.as_graph_def()


def test_float_check_rejects_nan_outputs_unless_skipped(tmp_path):
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path / "a"))
    with pytest.raises(QuantizeError, match="NaN or Inf at output node 'out'"):
        calibrate.quantize_frozen(_nan_graph(), helpers.input_fn, cfg, progress=False)
    assert not os.path.exists(tmp_path / "a")
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path / "b"), skip_check=1)
    paths = calibrate.quantize_frozen(_nan_graph(), helpers.input_fn, cfg, progress=False)
    assert os.path.exists(paths["quantize_eval_model"])


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(QuantizeError, match="is a file"):
        calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                  helpers.config(output_dir=str(target)), progress=False)


def test_write_models_suffix(quantized_small, tmp_path):
    _, paths = quantized_small
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    out = calibrate.write_models(eval_gd, helpers.config(output_dir=str(tmp_path)),
                                 suffix="_2000_20200611000000")
    assert sorted(os.listdir(tmp_path)) == ["deploy_model_2000_20200611000000.pb",
                                            "quantize_eval_model_2000_20200611000000.pb"]
    assert out["deploy_model"].endswith("deploy_model_2000_20200611000000.pb")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    tty = _Tty()
    bar = calibrate.Progress(4, stream=tty)
    for step in range(4):
        bar.update(step)
    bar.close()
    assert "4/4" in tty.getvalue() and "batches/s" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
    plain = io.StringIO()
    bar = calibrate.Progress(4, stream=plain)
    bar.update(0)
    bar.close()
    assert plain.getvalue() == ""
    quiet = _Tty()
    bar = calibrate.Progress(4, enabled=False, stream=quiet)
    bar.update(0)
    assert quiet.getvalue() == ""


def test_summary_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="decent_q")
    cfg = helpers.config(output_dir=str(tmp_path), ignore_nodes=["conv3/Conv2D"])
    calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "decent_q")
    assert "quantized:" in text and "compute layers" in text
    assert "left float:" in text and "in ignore_nodes" in text
    assert f"wrote {tmp_path}" in text and "done in" in text


def test_user_frame_points_at_user_code(tmp_path, monkeypatch):
    (tmp_path / "frame_mod.py").write_text(textwrap.dedent("""
        def helper():
            raise ValueError("no images in /data")

        def f(i):
            return helper()
        """))
    monkeypatch.chdir(tmp_path)
    fn, name = calibrate.load_input_fn("frame_mod.f")
    with pytest.raises(QuantizeError) as info:
        calibrate.call_input_fn(fn, 3, name)
    assert "frame_mod.f(3) raised at" in str(info.value)
    assert "frame_mod.py:3 in helper" in str(info.value)
    assert str(info.value).endswith("ValueError: no images in /data")


def test_session_config_is_the_fourth_argument(tmp_path, monkeypatch):
    """quantize_frozen(graph, input_fn, config, s_config): every session uses s_config."""
    seen = []
    real = tf.compat.v1.Session

    def session(*args, **kwargs):
        seen.append(kwargs.get("config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(calibrate.tf.compat.v1, "Session", session)
    s_config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=3)
    cfg = helpers.config(output_dir=str(tmp_path), calib_iter=2)
    paths = calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, s_config)
    assert os.path.exists(paths["deploy_model"])
    # The sessions that run the graph (the float check, calibration) use it; the passes'
    # constant folding runs small sessions of its own.
    ours = [c.intra_op_parallelism_threads for c in seen if c is not None]
    assert ours == [3, 3]
    # Keyword callers keep working; a bool where s_config goes says what is meant.
    calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, config=cfg, progress=False)
    with pytest.raises(ConfigError, match="progress is a keyword argument"):
        calibrate.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, False)


def test_skip_check_argument(tmp_path):
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path), calib_iter=1)
    with pytest.raises(QuantizeError, match="NaN or Inf"):
        calibrate.quantize_frozen(_nan_graph(), helpers.input_fn, cfg, None, 0)
    calibrate.quantize_frozen(_nan_graph(), helpers.input_fn, cfg, None, 1)
