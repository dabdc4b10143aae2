"""write.py: write_models, the files both post-training quantization and QAT write."""

import os

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
