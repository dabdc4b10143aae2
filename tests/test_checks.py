"""checks.py: node names, an already quantized graph, input shapes, the float check and the
output folder, as quantize_frozen reports them."""

import os

import pytest

import helpers
from decent_q import checks, ptq
from decent_q.errors import QuantizeError


def test_unknown_node_suggests_close_names():
    cfg = helpers.config(output_nodes=["logit"])
    with pytest.raises(QuantizeError, match="output node 'logit' is not in the graph; did you "
                                            "mean 'logits'"):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)


def test_already_quantized_graph_is_refused(tmp_path):
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path)), progress=False)
    with pytest.raises(QuantizeError, match="already holds FixNeuron"):
        ptq.quantize_frozen(paths["quantize_eval_model"], helpers.input_fn,
                            helpers.config(), progress=False)


def test_set_input_shapes():
    gd = helpers.small_cnn()
    out = checks.set_input_shapes(gd, helpers.config())
    shape = next(n for n in out.node if n.name == "input").attr["shape"].shape
    assert [d.size for d in shape.dim] == [-1, 8, 8, 3]
    fixed = helpers.config()
    fixed.input_shapes = [[1, 8, 8, 3]]
    out = checks.set_input_shapes(gd, fixed)
    shape = next(n for n in out.node if n.name == "input").attr["shape"].shape
    assert [d.size for d in shape.dim] == [1, 8, 8, 3]
    wrong = helpers.config()
    wrong.input_shapes = [[-1, 16, 16, 3]]
    with pytest.raises(QuantizeError, match=r"gives \?,16,16,3 for 'input' but the graph says "
                                            r"\?,8,8,3"):
        checks.set_input_shapes(gd, wrong)


def test_float_check_rejects_nan_outputs_unless_skipped(tmp_path):
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path / "a"))
    with pytest.raises(QuantizeError, match="NaN or Inf at output node 'out'"):
        ptq.quantize_frozen(helpers.nan_graph(), helpers.input_fn, cfg, progress=False)
    assert not os.path.exists(tmp_path / "a")
    cfg = helpers.config(output_nodes=["out"], output_dir=str(tmp_path / "b"), skip_check=1)
    paths = ptq.quantize_frozen(helpers.nan_graph(), helpers.input_fn, cfg, progress=False)
    assert os.path.exists(paths["quantize_eval_model"])


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(QuantizeError, match="is a file"):
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                            helpers.config(output_dir=str(target)), progress=False)
