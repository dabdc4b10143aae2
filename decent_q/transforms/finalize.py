"""Frozen QAT evaluation graph -> eval model: one EVAL FixNeuron per quantization point.

Freezing a QAT evaluation graph turns each live quantization group (see :mod:`decent_q.ops`)
into constants and small ops::

    Q/pos_hist (Const)  ->  Q/pos (kept position)  --+
    x ---------------------------------------------> Q/fix (FixNeuronDynamic, EVAL) -> Q (Identity)

:func:`finalize_fix_neurons` replaces each group by ``Q = FixNeuron(x, quantize_pos=p)`` with
``p`` = the histogram's most frequent position (ties to the smaller; ops.kept_position_np), the
same position the live ``Q/pos`` computes. :func:`finalize` then runs the inference clean-up,
which folds the batch-norm folding arithmetic (``BatchNorm_Fold/weights``, ``.../bias``) into
constants. Pure: GraphDef in, new GraphDef out.
"""

import tensorflow as tf

from decent_q import ops
from decent_q.errors import QuantizeError
from decent_q.graph import utils
from decent_q.transforms import cleanup

_FIX_SUFFIX = "/fix"


def quantization_groups(graph_def):
    """{point name Q: its FixNeuronDynamic NodeDef}, sorted by name."""
    return {n.name[:-len(_FIX_SUFFIX)]: n for n in sorted(graph_def.node, key=lambda n: n.name)
            if n.op == "FixNeuronDynamic" and n.name.endswith(_FIX_SUFFIX)}


def kept_positions(graph_def):
    """{point name: kept position} read from the frozen histograms of `graph_def`.

    Raises:
      QuantizeError: a histogram is not a constant (not frozen) or is empty (never trained).
    """
    nm = utils.NodeMap(graph_def)
    positions = {}
    for name in quantization_groups(graph_def):
        hist = nm.get(f"{name}/{ops.HIST_SUFFIX}")
        if hist is None or hist.op != "Const":
            raise QuantizeError(f"quantization point {name} has no frozen histogram "
                                f"{name}/{ops.HIST_SUFFIX}; freeze the evaluation graph with "
                                "its checkpoint first")
        pos = ops.kept_position_np(utils.const_value(hist))
        if pos is None:
            raise QuantizeError(f"quantization point {name} has an empty position histogram in "
                                "the checkpoint: it never ran during training. Train at least "
                                "one step with the graph of CreateQuantizeTrainingGraph, using "
                                "the same input_nodes / output_nodes")
        positions[name] = pos
    return positions


def finalize_fix_neurons(graph_def, keep=()):
    """Replaces every quantization group by one EVAL FixNeuron named like the point."""
    groups = quantization_groups(graph_def)
    positions = kept_positions(graph_def)
    for name, fix in groups.items():
        if fix.attr["phase"].i != ops.Phase.EVAL:
            raise QuantizeError(f"quantization point {name} is in phase "
                                f"{ops.Phase(fix.attr['phase'].i).name}, not EVAL: freeze the "
                                "graph of CreateQuantizeEvaluationGraph, not the training graph")
    nodes = []
    for node in graph_def.node:
        if node.name in groups:
            fix = groups[node.name]
            new = utils.make_node("FixNeuron", node.name, [fix.input[0]],
                                  T=tf.float32, quantize_pos=positions[node.name], phase=1,
                                  output_dir="")
            for key in ("bit_width", "method", "mode", "arch_type"):
                new.attr[key].CopyFrom(fix.attr[key])
            nodes.append(new)
        else:
            nodes.append(node)
    out = utils.with_nodes(graph_def, nodes)
    return cleanup.remove_dead(out, keep=list(keep))


def finalize(graph_def, keep):
    """The frozen evaluation graph -> eval model (FixNeurons finalized, constants folded).

    Args:
      graph_def: the frozen QAT evaluation graph.
      keep: node names to keep (inputs, outputs); everything they do not need is dropped.
    """
    graph_def = finalize_fix_neurons(graph_def, keep)
    return cleanup.clean_for_inference(graph_def, keep)
