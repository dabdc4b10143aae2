"""The per-layer error report: suggestions, and the Markdown, JSON and PNG files
(docs/analyze.md "The report").

Everything is rendered in memory first; then the files are written, each atomically, so a
failure leaves no partial report. The plot uses matplotlib's Agg canvas directly (no pyplot,
so the caller's backend and figures are left alone).
"""

import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
from typing import Dict, List, Optional

from decent_q.graph import utils

log = logging.getLogger("decent_q")

FILES = {"markdown": "analyze_report.md", "json": "analyze_report.json",
         "plot": "analyze_report.png"}
# The quantized copies of docs/analyze.md "What is measured", in report order, and their labels.
LABELS = {"weights": "weights only", "activations": "activations only", "both": "both"}
VARIANTS = tuple(LABELS)
SUGGESTED_BITS = 16
_NAMED_TICKS = 40  # up to this many layers, the plot names them on the x axis


@dataclasses.dataclass
class LayerRow:
    """One quantized compute layer (docs/analyze.md "The report"); SQNRs in dB by variant."""
    index: int
    layer: str            # the compute op (nodes_bit of this name sets its weights)
    op: str
    output_node: str      # the layer's last node (nodes_bit of this name sets its output)
    weight_point: Optional[str]
    weight_bit: Optional[int]
    weight_pos: Optional[int]
    bias_point: Optional[str]
    bias_bit: Optional[int]
    bias_pos: Optional[int]
    output_point: Optional[str]
    output_bit: Optional[int]
    output_pos: Optional[int]
    sqnr: Dict[str, float]        # of the layer's output
    input_sqnr: Dict[str, float]  # of the layer's data input
    drop: Optional[float]         # input_sqnr["both"] - sqnr["both"]; None if not finite


@dataclasses.dataclass
class OutputRow:
    """An output node: the float node against `tensor` of the quantized copies."""
    node: str
    tensor: str
    sqnr: Dict[str, float]


@dataclasses.dataclass
class Suggestion:
    """nodes_bit entries for a layer that loses much (docs/analyze.md "Suggestions")."""
    layer: str
    drop: float
    source: str           # 'weights', 'activations' or 'both': which copy loses more there
    entries: List[str]    # 'name:bits'


@dataclasses.dataclass
class Report:
    """What :func:`analyze` returns and writes."""
    layers: List[LayerRow]
    outputs: List[OutputRow]
    suggestions: List[Suggestion]
    nodes_bit: str        # the suggested entries in the CLI's form, '' if none
    model: str
    input_fn: str
    batches: int
    files: Dict[str, str] = dataclasses.field(default_factory=dict)


def plot_available():
    """Whether matplotlib can be imported; warns (the PNG is skipped) when not."""
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    log.warning("matplotlib is not installed, so analyze_report.png is not written; "
                "pip install matplotlib (or decent_q[analyze]) for the plot")
    return False


def suggest(rows, count, names=None, bits=SUGGESTED_BITS):
    """Suggestions for the `count` layers with the largest positive drop (docs/analyze.md
    "Suggestions"): their weights (the compute op's name), their output (the last node's
    name) or both at `bits`, by which quantized copy adds more noise across the layer. With
    `names` (the nodes of the user's graph), only entries naming one of them."""
    ranked = sorted((r for r in rows if r.drop is not None and r.drop > 0),
                    key=lambda r: (-r.drop, r.index))
    found = []
    for row in ranked:
        if len(found) >= count:
            break
        weights, activations = _added_noise(row, "weights"), _added_noise(row, "activations")
        source = ("weights" if weights > 2 * activations else
                  "activations" if activations > 2 * weights else "both")
        entries = _entries(row, source, bits, names) or _entries(row, "both", bits, names)
        if entries:
            found.append(Suggestion(row.layer, row.drop, source, entries))
    return found


def _added_noise(row, name):
    """Noise-to-signal power ratio at the layer's output minus at its input, >= 0."""
    def ratio(db):
        return 0.0 if db == math.inf else 10.0 ** (-db / 10.0)
    added = ratio(row.sqnr[name]) - ratio(row.input_sqnr[name])
    return added if math.isfinite(added) and added > 0 else 0.0


def _entries(row, source, bits, names):
    """'name:bits' for the row's weights and / or output (by `source`) that are narrower than
    `bits`, named by a node in `names` (None: any)."""
    wanted = []
    if source in ("weights", "both") and row.weight_bit is not None and row.weight_bit < bits:
        wanted.append(row.layer)
    if source in ("activations", "both") and row.output_bit is not None and \
            row.output_bit < bits:
        wanted.append(row.output_node)
    return [f"{name}:{bits}" for name in wanted if names is None or name in names]


def _db(value):
    if value is None:
        return "—"
    return f"{value:.1f}" if math.isfinite(value) else str(value)


def _bit_pos(bit, pos):
    return "—" if bit is None else f"{bit} / {pos}"


def markdown(report):
    """The report as Markdown: a header, the layer table, the outputs, the suggestions."""
    lines = [
        "# Quantization error per layer", "",
        f"- model: `{report.model}`; batches: input_fn `{report.input_fn}` steps 0 to "
        f"{report.batches - 1} (the calibration batches)",
        "- SQNR (dB, higher is better) of each tensor against the float graph (after "
        "inference clean-up, batch-norm folding and the other float passes), over all batches",
        "- each column quantizes the whole network up to the tensor, so errors accumulate "
        "down the table: *weights only* has only weight and bias FixNeurons, *activations "
        "only* only the input and activation ones, *both* is quantize_eval_model.pb",
        "- *drop*: the layer's input SQNR minus its output SQNR (both), what the layer itself "
        "loses", "",
        "## Layers", ""]
    if report.layers:
        lines += ["| # | layer | op | output node | weights bit / pos | output bit / pos | "
                  "weights only | activations only | both | input (both) | drop |",
                  "| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r.index} | `{r.layer}` | {r.op} | `{r.output_node}` | "
                  f"{_bit_pos(r.weight_bit, r.weight_pos)} | "
                  f"{_bit_pos(r.output_bit, r.output_pos)} | "
                  + " | ".join(_db(r.sqnr[v]) for v in LABELS)
                  + f" | {_db(r.input_sqnr['both'])} | {_db(r.drop)} |" for r in report.layers]
    else:
        lines.append("No compute layer has quantized weights.")
    lines += ["", "## Outputs", "",
              "| output node | quantized tensor | weights only | activations only | both |",
              "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| `{o.node}` | `{o.tensor}` | " + " | ".join(_db(o.sqnr[v]) for v in LABELS)
              + " |" for o in report.outputs]
    return "\n".join(lines + [""] + _suggestion_lines(report)) + "\n"


def _suggestion_lines(report):
    lines = ["## Suggestions", ""]
    if not report.suggestions:
        return lines + ["No layer loses SQNR that a wider `nodes_bit` entry could keep."]
    why = {"weights": "mostly its weights", "activations": "mostly its output",
           "both": "weights and output alike"}
    lines += ["The layers with the largest drop, and `nodes_bit` entries that keep more of "
              "their precision (not applied):", ""]
    lines += [f"{i}. `{s.layer}`: drop {_db(s.drop)} dB, {why[s.source]} -> "
              + ", ".join(f"`{e}`" for e in s.entries)
              for i, s in enumerate(report.suggestions, start=1)]
    entries = report.nodes_bit.split(",")
    return lines + ["", f"Try `--nodes_bit {report.nodes_bit}` (Python: "
                        f"`nodes_bit={entries!r}`) with `vai_q_tensorflow quantize` or "
                        "`analyze`, and check that your target runs layers of that width."]


def to_json(report):
    """The report as JSON text: every field but ``files``; non-finite SQNRs are null."""
    data = dataclasses.asdict(report)
    data.pop("files")
    data["sqnr_unit"] = "dB"
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plot_png(report):
    """PNG bytes: the three SQNR curves over the layers in graph order."""
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = report.layers
    figure = Figure(figsize=(min(max(6.0, 0.35 * len(rows) + 2.5), 40.0), 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = list(range(len(rows)))
    for (name, label), style in zip(LABELS.items(), ("o-", "s-", "^-")):
        axes.plot(x, [r.sqnr[name] if math.isfinite(r.sqnr[name]) else math.nan
                      for r in rows], style, label=label, markersize=4)
    label = "suggested for nodes_bit"
    for i, row in enumerate(rows):
        if row.layer in {s.layer for s in report.suggestions}:
            axes.axvspan(i - 0.4, i + 0.4, color="tab:red", alpha=0.12, linewidth=0,
                         label=label)
            label = "_nolegend_"
    if len(rows) <= _NAMED_TICKS:
        axes.set_xticks(x)
        axes.set_xticklabels([_short(r.layer) for r in rows], rotation=60, ha="right",
                             fontsize=8)
    axes.set_xlabel("layer (graph order)")
    axes.set_ylabel("SQNR (dB), higher is better")
    axes.set_title(f"Quantization error per layer: {os.path.basename(report.model)}")
    axes.grid(True, alpha=0.3)
    if rows:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _short(name, width=32):
    return name if len(name) <= width else "..." + name[-(width - 3):]


def write(report, output_dir, with_plot=True):
    """Renders the files, then writes them into output_dir; returns {kind: path}."""
    contents = {"markdown": markdown(report).encode(), "json": to_json(report).encode()}
    if with_plot:
        contents["plot"] = plot_png(report)
    utils.prepare_output_dir(output_dir)
    paths = {}
    for kind, data in contents.items():
        paths[kind] = os.path.join(output_dir, FILES[kind])
        utils.write_atomic(paths[kind], data)
    return paths


def log_summary(report):
    """Logs the output SQNRs, the largest drop, the suggestion and the files."""
    for row in report.outputs:
        log.info("output %s: SQNR %s dB (weights only %s, activations only %s)", row.node,
                 _db(row.sqnr["both"]), _db(row.sqnr["weights"]),
                 _db(row.sqnr["activations"]))
    if report.suggestions:
        top = report.suggestions[0]
        log.info("largest drop: %s, %s dB; suggested --nodes_bit %s", top.layer, _db(top.drop),
                 report.nodes_bit)
    for path in report.files.values():
        log.info("wrote %s", path)
