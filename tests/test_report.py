"""report.py: the calibration progress bar and the logged summary."""

import io
import logging

import helpers
from decent_q import ptq, report


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    tty = _Tty()
    bar = report.Progress(4, stream=tty)
    for step in range(4):
        bar.update(step)
    bar.close()
    assert "4/4" in tty.getvalue() and "batches/s" in tty.getvalue()
    assert "[decent_q] calibration [" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
    plain = io.StringIO()
    bar = report.Progress(4, stream=plain)
    bar.update(0)
    bar.close()
    assert plain.getvalue() == ""
    quiet = _Tty()
    bar = report.Progress(4, enabled=False, stream=quiet)
    bar.update(0)
    assert quiet.getvalue() == ""
    labelled = _Tty()
    bar = report.Progress(2, stream=labelled, label="analysis")
    bar.update(0)
    assert labelled.getvalue().startswith("\r[decent_q] analysis [")


def test_summary_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="decent_q")
    cfg = helpers.config(output_dir=str(tmp_path), ignore_nodes=["conv3/Conv2D"])
    ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "decent_q")
    assert "quantized:" in text and "compute layers" in text
    assert "left float:" in text and "in ignore_nodes" in text
    assert f"wrote {tmp_path}" in text and "done in" in text
