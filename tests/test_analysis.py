"""analysis.py: the per-layer SQNR of small_cnn with weights only, activations only and both
quantized, against the eval model quantize_frozen writes; the analyze command and its errors."""

import json
import math
import os
import re
import sys

import pytest

import helpers
from decent_q import analysis, cli, ptq
from decent_q.analysis_report import FILES
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized, utils
from decent_q.ops import Mode

LAYERS = ["conv1/Conv2D", "dw2/depthwise", "conv3/Conv2D", "fc/MatMul"]
PNG = b"\x89PNG\r\n\x1a\n"


def _analyze(folder, **options):
    return analysis.analyze(helpers.small_cnn(), helpers.input_fn, helpers.config(**options),
                            output_dir=str(folder), progress=False)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{weight_bit: Report} of small_cnn at 8 (with files), 4 and 16 bit weights."""
    return {bits: _analyze(tmp_path_factory.mktemp(f"w{bits}"), weight_bit=bits)
            for bits in (8, 4, 16)}


def test_rows_are_the_quantized_layers_in_graph_order(reports):
    report = reports[8]
    assert [r.layer for r in report.layers] == LAYERS
    assert [r.index for r in report.layers] == [0, 1, 2, 3]
    assert [r.output_node for r in report.layers] == ["conv1/Relu", "dw2/Relu6", "conv3/Relu",
                                                      "logits"]
    assert [o.node for o in report.outputs] == ["logits"]
    assert report.outputs[0].tensor == "logits/aquant:0"
    assert report.batches == 2 and report.input_fn == "input_fn"


def test_widths_and_positions_are_those_of_the_eval_model(reports, tmp_path):
    paths = ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                                helpers.config(output_dir=str(tmp_path)), progress=False)
    fixes = quantized.fix_neurons(utils.load_graph_def(paths["quantize_eval_model"]))
    for row in reports[8].layers:
        for kind in ("weight", "bias", "output"):
            point = getattr(row, f"{kind}_point")
            assert getattr(row, f"{kind}_pos") == quantized.position(fixes[point]), point
            assert getattr(row, f"{kind}_bit") == 8


def test_sqnr_is_finite_and_both_adds_the_two_noises(reports):
    for row in reports[8].layers:
        assert all(math.isfinite(v) and 15 < v < 60 for v in row.sqnr.values()), row
        # Independent errors add their noise powers: both ~ weights (+) activations.
        combined = -10 * math.log10(10 ** (-row.sqnr["weights"] / 10) +
                                    10 ** (-row.sqnr["activations"] / 10))
        assert abs(row.sqnr["both"] - combined) < 1.5, row
        assert row.drop == pytest.approx(row.input_sqnr["both"] - row.sqnr["both"])
    first = reports[8].layers[0]
    assert first.input_sqnr["weights"] == math.inf  # the graph input is not a weight
    assert math.isfinite(first.input_sqnr["activations"])
    assert reports[8].outputs[0].sqnr == reports[8].layers[-1].sqnr


def test_weight_width_moves_the_weights_only_sqnr(reports):
    for narrow, wide in zip(reports[4].layers, reports[16].layers):
        assert wide.sqnr["weights"] > 70 and narrow.sqnr["weights"] < 25
        assert wide.sqnr["weights"] > narrow.sqnr["weights"] + 40
        assert narrow.weight_bit == 4 and wide.weight_bit == 16


def test_the_suggestion_helps_when_applied(reports, tmp_path):
    narrow = reports[4]
    assert narrow.suggestions and all(s.source == "weights" for s in narrow.suggestions)
    assert narrow.nodes_bit == ",".join(f"{s.layer}:16" for s in narrow.suggestions)
    drops = [s.drop for s in narrow.suggestions]
    assert drops == sorted(drops, reverse=True)
    assert min(drops) >= max(r.drop for r in narrow.layers
                             if r.layer not in {s.layer for s in narrow.suggestions})
    applied = _analyze(tmp_path, weight_bit=4, nodes_bit=narrow.nodes_bit)
    assert applied.outputs[0].sqnr["both"] > narrow.outputs[0].sqnr["both"] + 6
    for row in applied.layers:
        assert row.weight_bit == (16 if row.layer in narrow.nodes_bit else 4)
    # 16-bit weights: only the outputs are left to widen
    assert all(s.source == "activations" for s in reports[16].suggestions)
    assert re.fullmatch(r"([\w/]+:16,?)+", reports[16].nodes_bit)


def test_files(reports):
    report = reports[8]
    assert sorted(report.files) == ["json", "markdown", "plot"]
    folder = os.path.dirname(report.files["markdown"])
    assert sorted(os.listdir(folder)) == sorted(FILES.values())
    with open(report.files["plot"], "rb") as f:
        assert f.read(8) == PNG
    with open(report.files["json"]) as f:
        data = json.load(f)
    assert [row["layer"] for row in data["layers"]] == LAYERS
    assert data["layers"][0]["input_sqnr"]["weights"] is None  # +inf
    assert data["layers"][1]["sqnr"]["both"] == pytest.approx(report.layers[1].sqnr["both"])
    assert data["nodes_bit"] == report.nodes_bit
    with open(report.files["markdown"]) as f:
        text = f.read()
    rows = [l for l in text.splitlines() if l.startswith("| ") and "`" in l]
    assert [re.match(r"\| \d+ \| `([^`]+)`", l).group(1) for l in rows[:4]] == LAYERS
    assert f"--nodes_bit {report.nodes_bit}" in text


def test_variant_bypasses_the_other_kind():
    done = ptq.calibrate_frozen(helpers.small_cnn(), helpers.input_fn, helpers.config(),
                                progress=False)
    kinds = {}
    for keep in analysis.VARIANTS:
        copy = analysis.variant(done.eval_graph_def, keep)
        assert [n.name for n in copy.node] == [n.name for n in done.eval_graph_def.node]
        modes = [quantized.mode(n) for n in copy.node if quantized.is_fix_neuron(n)]
        kinds[keep] = (sum(m == Mode.ACTIVATION for m in modes),
                       sum(m != Mode.ACTIVATION for m in modes))
    total = kinds["both"]
    assert total[0] > 0 and total[1] > 0
    assert kinds["weights"] == (0, total[1]) and kinds["activations"] == (total[0], 0)
    with pytest.raises(ValueError, match="use one of weights, activations, both"):
        analysis.variant(done.eval_graph_def, "all")


def test_sqnr_db():
    assert analysis.sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert analysis.sqnr_db(1.0, 0.0) == math.inf
    assert analysis.sqnr_db(0.0, 0.0) == math.inf
    assert analysis.sqnr_db(0.0, 1.0) == -math.inf
    assert math.isnan(analysis.sqnr_db(1.0, math.nan))


def test_api_errors_write_nothing(tmp_path):
    with pytest.raises(ConfigError, match="config is required"):
        analysis.analyze(helpers.small_cnn(), helpers.input_fn, None)
    with pytest.raises(ConfigError, match="suggest=-1 must be a non-negative integer"):
        analysis.analyze(helpers.small_cnn(), helpers.input_fn, helpers.config(), suggest=-1)
    calls = []

    def fails_in_the_analysis(step):  # calls 1-2 calibrate, 3-4 are measured
        calls.append(step)
        if len(calls) == 4:
            raise RuntimeError("no more data")
        return helpers.input_fn(step)

    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match=r"fails_in_the_analysis\(1\) raised.*no more data"):
        analysis.analyze(helpers.small_cnn(), fails_in_the_analysis, helpers.config(),
                         output_dir=str(out), progress=False)
    assert calls == [0, 1, 0, 1] and not out.exists()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with frozen.pb and my_input_fn.py, as the current folder."""
    utils.save_graph_def(helpers.small_cnn(), str(tmp_path / "frozen.pb"))
    helpers.write_input_fn_module(tmp_path, "my_input_fn")
    (tmp_path / "broken.pb").write_bytes(b"not a graph")
    (tmp_path / "a_file").write_text("x")
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_input_fn", None)
    yield tmp_path
    sys.modules.pop("my_input_fn", None)


ANALYZE = ["analyze", "--input_frozen_graph", "frozen.pb", "--input_nodes", "input",
           "--output_nodes", "logits", "--input_shapes", "?,8,8,3", "--input_fn",
           "my_input_fn.calib_input", "--calib_iter", "2", "--output_dir", "out"]


def _with(argv, old, new):
    return [new if a == old else a for a in argv]


def test_cli_analyze(workdir, capsys):
    assert cli.main(ANALYZE + ["--weight_bit", "4"]) == 0
    assert sorted(os.listdir(workdir / "out")) == sorted(FILES.values())
    captured = capsys.readouterr()
    assert "| 0 | `conv1/Conv2D` | Conv2D | `conv1/Relu` | 4 / " in captured.out
    assert "--nodes_bit conv1/Conv2D:16" in captured.out
    assert "[decent_q] wrote out/analyze_report.png" in captured.err
    assert cli.main(_with(ANALYZE, "out", "quiet") + ["--quiet"]) == 0
    assert capsys.readouterr().out == "" and os.path.exists(workdir / "quiet" / FILES["json"])


@pytest.mark.parametrize("argv, message", [
    (_with(ANALYZE, "logits", "logit"), "output node 'logit' is not in the graph"),
    (_with(ANALYZE, "out", "a_file"), "output_dir a_file is a file; give a folder path"),
    (_with(ANALYZE, "out", "a_file/out"), "output_dir a_file/out is not writable"),
    (_with(ANALYZE, "frozen.pb", "broken.pb"), "broken.pb"),
    (_with(ANALYZE, "?,8,8,3", "?,9,9,3"), "fix --input_shapes"),
    (_with(ANALYZE, "my_input_fn.calib_input", "my_input_fn.nope"), "has no function 'nope'"),
])
def test_cli_bad_inputs(workdir, capsys, argv, message):
    def files():
        return sorted(set(os.listdir(workdir)) - {"__pycache__"})

    before = files()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([l for l in err.splitlines() if "ERROR" in l]) == 1
    assert files() == before
