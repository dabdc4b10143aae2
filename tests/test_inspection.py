"""inspection.py: the inspect report (dict and text)."""

import pytest

import helpers
from decent_q import inspect_graph
from decent_q.config import QuantizeConfig
from decent_q.errors import QuantizeError
from decent_q.graph import utils
from decent_q.inspection import format_report


def test_estimated_nodes_and_op_counts(tmp_path):
    path = utils.save_graph_def(helpers.small_cnn(), str(tmp_path / "g.pb"))
    info = inspect_graph(path)
    assert info["input_nodes"] == [{"name": "input", "dtype": "float32", "shape": "[?,8,8,3]"}]
    assert info["output_nodes"] == ["prob"]
    assert info["op_types"]["Conv2D"] == 2 and info["op_types"]["FusedBatchNormV3"] == 1
    assert info["num_nodes"] == sum(info["op_types"].values())
    assert info["float_nodes"] == {"prob": "Softmax is not quantized by design"}
    assert info["layers"] == ["conv1/Conv2D", "dw2/depthwise", "conv3/Conv2D", "fc/MatMul"]
    assert info["quantized"]["input/aquant"] == "input"
    assert info["quantized"]["conv1/weights/wquant"] == "weight"
    assert info["error"] is None


def test_config_range_and_ignored_nodes():
    cfg = QuantizeConfig(input_nodes=["input"], output_nodes=["logits"],
                         ignore_nodes=["pool1"])
    info = inspect_graph(helpers.small_cnn(), cfg)
    assert info["range"] == {"input_nodes": ["input"], "output_nodes": ["logits"]}
    assert info["float_nodes"]["pool1"] == "in ignore_nodes"
    assert "prob" not in info["float_nodes"]


def test_report_text():
    text = format_report(inspect_graph(helpers.small_cnn()))
    for part in ("op types:", "estimated input nodes", "  input  float32  [?,8,8,3]",
                 "estimated output nodes:\n  prob", "would quantize: 16 FixNeurons, 4 compute",
                 "prob: Softmax is not quantized by design"):
        assert part in text, part


def test_unknown_node_is_reported_not_raised():
    info = inspect_graph(helpers.small_cnn(), QuantizeConfig(output_nodes=["logit"]))
    assert "did you mean 'logits'" in info["error"]
    assert "no quantization plan" in format_report(info)


def test_bad_file(tmp_path):
    (tmp_path / "bad.pb").write_bytes(b"\x00\x01garbage")
    with pytest.raises(QuantizeError, match="not a TensorFlow GraphDef"):
        inspect_graph(str(tmp_path / "bad.pb"))
