"""analysis_report.py: suggestions, Markdown, JSON and PNG from hand-made rows."""

import importlib.util
import json
import logging
import math
import os

import pytest

from decent_q import analysis_report as ar
from decent_q.errors import QuantizeError

PNG = b"\x89PNG\r\n\x1a\n"


def _row(index, both, into, weights=None, activations=None, weight_bit=8, output_bit=8):
    """A layer `l<index>` whose SQNR (both) falls from `into` to `both`; the weights-only and
    activations-only copies lose (into - weights) and (into - activations)."""
    sqnr = {"weights": weights if weights is not None else both,
            "activations": activations if activations is not None else both, "both": both}
    drop = into - both if math.isfinite(into - both) else None
    return ar.LayerRow(index, f"l{index}/Conv2D", "Conv2D", f"l{index}/Relu",
                       f"l{index}/w/wquant", weight_bit, 7, None, None, None,
                       f"l{index}/Relu/aquant" if output_bit else None, output_bit, 4, sqnr,
                       {"weights": into, "activations": into, "both": into}, drop)


def _report(rows, suggestions=()):
    suggestions = list(suggestions)
    return ar.Report(rows, [ar.OutputRow("out", "out/aquant:0", dict(rows[-1].sqnr))]
                     if rows else [], suggestions,
                     ",".join(e for s in suggestions for e in s.entries), "model.pb",
                     "m.f", 2)


def test_suggest_ranks_by_drop_and_names_the_noisier_kind():
    rows = [_row(0, 30, 40, weights=31, activations=39),     # drop 10, weights
            _row(1, 28, 30, weights=29.9, activations=28.1),  # drop 2, activations
            _row(2, 20, 28, weights=24, activations=24),     # drop 8, both alike
            _row(3, 21, 20),                                  # a gain: never suggested
            _row(4, 15, math.inf)]                            # no finite drop
    found = ar.suggest(rows, 3)
    assert [(s.layer, s.source, s.entries) for s in found] == [
        ("l0/Conv2D", "weights", ["l0/Conv2D:16"]),
        ("l2/Conv2D", "both", ["l2/Conv2D:16", "l2/Relu:16"]),
        ("l1/Conv2D", "activations", ["l1/Relu:16"])]
    assert [s.drop for s in found] == [10, 8, 2]
    assert [s.layer for s in ar.suggest(rows, 1)] == ["l0/Conv2D"]
    assert ar.suggest(rows, 0) == []


def test_suggest_skips_wide_or_unknown_names():
    wide = _row(0, 30, 40, weights=31, activations=39, weight_bit=16)
    unnamed = _row(1, 30, 35, weights=31, activations=34.9, output_bit=None)
    found = ar.suggest([wide, unnamed], 3)
    # the weights are 16 bits already: the output instead; no output point: the weights
    assert [s.entries for s in found] == [["l0/Relu:16"], ["l1/Conv2D:16"]]
    assert ar.suggest([wide], 3, names={"l0/Conv2D"}) == []
    assert ar.suggest([_row(0, 30, 40, weight_bit=16, output_bit=16)], 3) == []


def test_markdown_and_json():
    rows = [_row(0, 30, math.inf, weights=35, activations=31), _row(1, 25.04, 30)]
    report = _report(rows, ar.suggest(rows, 3))
    text = ar.markdown(report)
    assert "| 0 | `l0/Conv2D` | Conv2D | `l0/Relu` | 8 / 7 | 8 / 4 | 35.0 | 31.0 | 30.0 | " \
           "inf | — |" in text
    assert "| 1 | `l1/Conv2D` | Conv2D | `l1/Relu` | 8 / 7 | 8 / 4 | 25.0 | 25.0 | 25.0 | " \
           "30.0 | 5.0 |" in text
    assert "| `out` | `out/aquant:0` | 25.0 | 25.0 | 25.0 |" in text
    assert "--nodes_bit l1/Conv2D:16,l1/Relu:16" in text
    data = json.loads(ar.to_json(report))
    assert data["layers"][0]["input_sqnr"] == {"weights": None, "activations": None,
                                               "both": None}
    assert data["layers"][0]["drop"] is None and data["layers"][1]["drop"] == pytest.approx(4.96)
    assert data["suggestions"][0]["entries"] == ["l1/Conv2D:16", "l1/Relu:16"]
    assert "files" not in data and data["sqnr_unit"] == "dB"
    assert "No layer loses" in ar.markdown(_report(rows))
    assert "No compute layer has quantized weights." in ar.markdown(_report([]))


@pytest.mark.parametrize("count", [0, 3, 50])
def test_plot(count):
    rows = [_row(i, 30 - i * 0.1, 31) for i in range(count)]
    rows[:1] = [_row(0, math.nan, 31, weights=math.inf)] if rows else []
    data = ar.plot_png(_report(rows, ar.suggest(rows, 2)))
    assert data.startswith(PNG) and len(data) > 1000


def test_write(tmp_path):
    report = _report([_row(0, 30, 40)])
    paths = ar.write(report, str(tmp_path / "a"), with_plot=False)
    assert sorted(os.listdir(tmp_path / "a")) == ["analyze_report.json", "analyze_report.md"]
    assert paths["markdown"] == str(tmp_path / "a" / "analyze_report.md")
    assert ar.write(report, str(tmp_path / "b"))["plot"].endswith(".png")
    second = ar.write(report, str(tmp_path / "c"))
    for kind, path in second.items():  # the same report gives the same bytes
        with open(path, "rb") as f, open(os.path.join(tmp_path, "b", ar.FILES[kind]),
                                         "rb") as g:
            assert f.read() == g.read(), kind
    (tmp_path / "f").write_text("x")
    with pytest.raises(QuantizeError, match="cannot create output_dir"):
        ar.write(report, str(tmp_path / "f" / "out"))


def test_plot_available(monkeypatch, caplog):
    assert ar.plot_available()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        assert not ar.plot_available()
    assert "analyze_report.png is not written" in caplog.text
