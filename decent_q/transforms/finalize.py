"""Frozen QAT evaluation graph -> eval model: one EVAL FixNeuron per quantization point.

Freezing a QAT evaluation graph turns each live quantization group (see :mod:`decent_q.ops`)
into constants and small ops::

    Q/pos_hist (Const)  ->  Q/pos (kept position)  --+
    x ---------------------------------------------> Q/fix (FixNeuronDynamic, EVAL) -> Q (Identity)

(on the TF-op path, ``Q/fix`` is an ``IdentityN(y, used_pos, x)`` carrying the FixNeuron
attributes as ``_fix_*``, fed by the ops under ``Q/fix_ops/``; see :mod:`decent_q.ops_tf`)

:func:`finalize_fix_neurons` replaces each group by ``Q = FixNeuron(x, quantize_pos=p)`` with
``p`` = the histogram's most frequent position (ties to the smaller; ops.kept_position_np), the
same position the live ``Q/pos`` computes; a trained-threshold point (quantize_strategy
pof2s_tqt) gets ``bit_width - 1 - ceil(log_th_init + log_th_trained)`` instead
(ops.threshold_position_np). :func:`finalize` then runs the inference clean-up,
which folds the batch-norm folding arithmetic (``BatchNorm_Fold/weights``, ``.../bias``) into
constants. Pure: GraphDef in, new GraphDef out.
"""

import numpy as np
import tensorflow as tf

from decent_q import ops
from decent_q import ops_tf
from decent_q.errors import QuantizeError
from decent_q.graph import utils
from decent_q.transforms import cleanup

_FIX_SUFFIX = "/fix"


_ATTRS = ("bit_width", "method", "mode", "phase", "arch_type")


def _is_fix(node):
    if not node.name.endswith(_FIX_SUFFIX):
        return False
    return node.op == "FixNeuronDynamic" or (
        node.op == "IdentityN" and ops_tf.ATTR_PREFIX + "mode" in node.attr)


def quantization_groups(graph_def):
    """{point name Q: its FixNeuronDynamic (or TF-op IdentityN) NodeDef}, sorted by name."""
    return {n.name[:-len(_FIX_SUFFIX)]: n for n in sorted(graph_def.node, key=lambda n: n.name)
            if _is_fix(n)}


def fix_attrs(fix):
    """(quantized input x, {FixNeuron attr: AttrValue}) of a group's ``Q/fix`` node."""
    if fix.op == "FixNeuronDynamic":
        return fix.input[0], {key: fix.attr[key] for key in _ATTRS}
    return fix.input[2], {key: fix.attr[ops_tf.ATTR_PREFIX + key] for key in _ATTRS}


def kept_positions(graph_def):
    """{point name: kept position} read from the frozen histograms of `graph_def`.

    Raises:
      QuantizeError: a histogram is not a constant (not frozen) or is empty (never trained).
    """
    nm = utils.NodeMap(graph_def)
    positions = {}
    for name, fix in quantization_groups(graph_def).items():
        parts = [nm.get(f"{name}/{part}") for part in (ops.THRESHOLD_INIT, ops.THRESHOLD_TRAINED)]
        if all(part is not None and part.op == "Const" for part in parts):
            start = utils.const_value(parts[0])
            log_th = start + utils.const_value(parts[1])  # float32, as the graph adds them
            positions[name] = _threshold_position(name, fix, start, log_th)
            continue
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


def _threshold_position(name, fix, start, log_th):
    bit_width = fix_attrs(fix)[1]["bit_width"].i
    pos = ops.threshold_position_np(log_th, bit_width)
    if pos is None and np.isnan(start):
        raise QuantizeError(f"quantization point {name} has no trained threshold in the "
                            "checkpoint: training never ran it on a batch that was not all "
                            "zeros. Train with data that reaches it (same input_nodes / "
                            "output_nodes)")
    if pos is None or not ops.MIN_POS <= pos <= ops.MAX_POS:
        raise QuantizeError(f"quantization point {name} has the trained threshold log2 t = "
                            f"{float(log_th)} in the checkpoint, which gives "
                            f"{'no position' if pos is None else f'position {pos}'} (positions "
                            f"lie in [{ops.MIN_POS}, {ops.MAX_POS}]): the training diverged. "
                            "Deploy an earlier checkpoint, or train again with a lower learning "
                            "rate for the thresholds (decent_q.qat.threshold_variables())")
    return pos


def finalize_fix_neurons(graph_def, keep=()):
    """Replaces every quantization group by one EVAL FixNeuron named like the point."""
    groups = quantization_groups(graph_def)
    positions = kept_positions(graph_def)
    for name, fix in groups.items():
        phase = fix_attrs(fix)[1]["phase"].i
        if phase != ops.Phase.EVAL:
            raise QuantizeError(f"quantization point {name} is in phase "
                                f"{ops.Phase(phase).name}, not EVAL: freeze the "
                                "graph of CreateQuantizeEvaluationGraph, not the training graph")
    nodes = []
    for node in graph_def.node:
        if node.name in groups:
            x, attrs = fix_attrs(groups[node.name])
            new = utils.make_node("FixNeuron", node.name, [x],
                                  T=tf.float32, quantize_pos=positions[node.name], phase=1,
                                  output_dir="")
            for key in ("bit_width", "method", "mode", "arch_type"):
                new.attr[key].CopyFrom(attrs[key])
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
