"""The run report of post-training quantization: the calibration progress bar and the summary.

The bar is drawn on stderr only when it is a terminal; the summary is logged (logger
``decent_q``): what was quantized, what stayed float and why, the files, the time.
"""

import collections
import logging
import sys
import time

from decent_q.graph.utils import node_name

log = logging.getLogger("decent_q")


class Progress:
    """A one-line progress bar with batches/s on stderr, shown only on a terminal."""

    def __init__(self, total, enabled=True, stream=None, label="calibration"):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = bool(enabled) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.time()
        self.shown = False

    def update(self, step):
        if not self.enabled:
            return
        done = step + 1
        rate = done / max(time.time() - self.start, 1e-9)
        width = 30
        filled = int(width * done / self.total)
        self.stream.write(f"\r[decent_q] {self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{self.total} {rate:.1f} batches/s")
        self.stream.flush()
        self.shown = True

    def close(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def log_summary(plan, paths, seconds):
    """Logs what was quantized, what stayed float and why, the files and the time."""
    quantized = {node_name(p.tensor) for p in plan.points}
    log.info("quantized: %d FixNeurons on %d nodes, %d compute layers", len(plan.points),
             len(quantized), len(plan.layers))
    reasons = collections.Counter(_reason_kind(r) for r in plan.float_nodes.values())
    if reasons:
        log.info("left float: %d nodes (%s)", len(plan.float_nodes),
                 ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    for path in paths.values():
        log.info("wrote %s", path)
    log.info("done in %.1f s", seconds)


def _reason_kind(reason):
    """'Softmax is not quantized by design' -> 'not quantized by design' (groups reasons)."""
    for key in ("not quantized by design", "not supported", "in ignore_nodes",
                "an input is not quantized", "not parameters"):
        if key in reason:
            return key
    return reason
