"""write.py: write_models, the files both post-training quantization and QAT write."""

import os

import pytest

import helpers
from decent_q import ptq, write
from decent_q.graph import utils


def test_write_models_suffix(tmp_path):
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path / "ptq")), progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    out = write.write_models(eval_gd, helpers.config(output_dir=str(tmp_path / "out")),
                             suffix="_2000_20200611000000")
    assert sorted(os.listdir(tmp_path / "out")) == ["deploy_model_2000_20200611000000.pb",
                                                    "quantize_eval_model_2000_20200611000000.pb"]
    assert out["deploy_model"].endswith("deploy_model_2000_20200611000000.pb")


def test_interrupt_while_the_deploy_model_serializes_leaves_no_file(tmp_path, monkeypatch):
    """The eval model's bytes are already on their way to a temporary file: an interrupt while
    the deploy model serializes removes it, and neither model is written."""
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path / "ptq")), progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])

    class Unserializable:
        def SerializeToString(self, deterministic=False):  # pylint: disable=invalid-name
            raise KeyboardInterrupt

    monkeypatch.setattr(write.deploy, "deploy_graph_def", lambda *_: Unserializable())
    with pytest.raises(KeyboardInterrupt):
        write.write_models(eval_gd, helpers.config(output_dir=str(tmp_path / "out")))
    assert os.listdir(tmp_path / "out") == []
