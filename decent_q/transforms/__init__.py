"""Graph passes: each a pure GraphDef -> GraphDef function, one pass a module.

Two ordered pass lists, registered by name below and shared by post-training quantization and
QAT deploy::

    FLOAT_PASSES (float frozen graph, before planning):
        clean_for_inference -> fold_batch_norms -> [cross_layer_equalize] -> [simulate_dpu],
        then restore_outside (the range's outside as it was)
    POSITION_PASSES (eval model, only ``quantize_pos`` changes):
        align_concat -> [adjust_shift_cut] -> [adjust_shift_bias]

A pass in brackets runs when its config option asks for it. Live-graph rewrites (QAT) are in
:mod:`decent_q.live`.
"""

import collections
import dataclasses
from typing import Callable

from decent_q.graph import utils
# Submodules first: fold_batch_norms imports cleanup through this package.
from decent_q.transforms import cleanup
from decent_q.transforms import fold_batch_norms as _fold
from decent_q.transforms import cross_layer_equalize as _cle
from decent_q.transforms import simulate_dpu as _simulate
from decent_q.transforms import align_concat as _align
from decent_q.transforms import adjust_shifts as _shifts


def keep_nodes(config):
    """The nodes no float pass may remove or rename: the user's input and output nodes."""
    return list(dict.fromkeys(list(config.input_nodes) + list(config.output_nodes)))


@dataclasses.dataclass(frozen=True)
class Pass:
    """A registered pass: ``run(graph_def, config, keep)`` when ``enabled(config)``."""
    name: str
    run: Callable
    enabled: Callable = lambda config: True


FLOAT_PASSES = (
    Pass("clean_for_inference", lambda gd, config, keep: cleanup.clean_for_inference(gd, keep)),
    Pass("fold_batch_norms", lambda gd, config, keep: _fold.fold_batch_norms(gd, keep)),
    Pass("cross_layer_equalize", lambda gd, config, keep: _cle.cross_layer_equalize(gd, config),
         lambda config: bool(config.do_cle)),
    Pass("simulate_dpu", lambda gd, config, keep: _simulate.simulate_dpu(gd, config),
         lambda config: bool(config.simulate_dpu)),
)

POSITION_PASSES = (
    Pass("align_concat", lambda gd, config, keep: _align.align_concat(gd, config)),
    Pass("adjust_shift_cut", lambda gd, config, keep: _shifts.adjust_shift_cut(gd, config),
         lambda config: bool(config.adjust_shift_cut)),
    Pass("adjust_shift_bias", lambda gd, config, keep: _shifts.adjust_shift_bias(gd, config),
         lambda config: bool(config.adjust_shift_bias)),
)


@utils.gc_paused
def run_passes(passes, graph_def, config):
    """Runs the enabled passes of `passes` in order."""
    keep = keep_nodes(config)
    for registered in passes:
        if registered.enabled(config):
            graph_def = registered.run(graph_def, config, keep)
    return graph_def


@utils.gc_paused
def prepare_float_graph(graph_def, config):
    """:data:`FLOAT_PASSES` on a frozen float GraphDef, then :func:`restore_outside`.

    Args:
      graph_def: a frozen float GraphDef.
      config: QuantizeConfig (input_nodes / output_nodes are kept; do_cle, replace_relu6,
        simulate_dpu and scale_all_avgpool select and tune the optional passes).

    Returns:
      A GraphDef ready for :func:`decent_q.plan.plan_quantization`: a new one, or
      `graph_def` itself when no pass changed anything (passes never change their input).
    """
    return restore_outside(graph_def, run_passes(FLOAT_PASSES, graph_def, config), config)


def quantize_scope(graph_def, config):
    """The nodes the float passes may change: the range input_nodes..output_nodes and what feeds
    it (weights), but not the preprocessing in front of the input nodes."""
    nm = utils.NodeMap(graph_def)
    in_range = utils.range_nodes(nm, config.input_nodes, config.output_nodes)

    before_inputs = nm.ancestors(config.input_nodes)
    return in_range | (nm.ancestors(in_range, stop=set(config.input_nodes)) - before_inputs)


def restore_outside(original, prepared, config):
    """`prepared` with every node outside :func:`quantize_scope` of `original` as it was there:
    post-processing after the output nodes (NMS, while loops, conds) and preprocessing before
    the input nodes are never rewritten. A node whose inputs no longer exist keeps its
    prepared form."""
    scope = quantize_scope(original, config)
    outside = [n for n in original.node if n.name not in scope]
    if not outside:
        return prepared
    nodes = collections.OrderedDict((n.name, n) for n in prepared.node)
    restored = {n.name: n for n in outside}
    while True:  # drop restorations whose inputs are gone (rewritten in-scope nodes)
        names = set(nodes) | set(restored)
        broken = [name for name, node in restored.items()
                  if any(utils.node_name(i) not in names for i in node.input)]
        if not broken:
            break
        for name in broken:
            del restored[name]
    nodes.update(restored)
    out = type(prepared)()
    out.versions.CopyFrom(prepared.versions)
    out.library.CopyFrom(prepared.library)
    out.node.extend(nodes.values())
    return out


def adjust_positions(eval_graph_def, config):
    """:data:`POSITION_PASSES` on an eval model; they only change ``quantize_pos``.

    align_concat (config.align_concat: 0 all, 1 output concats, 2 none), then
    adjust_shift_cut if config.adjust_shift_cut, then adjust_shift_bias if
    config.adjust_shift_bias (1 static, 2 dynamic constraints).
    """
    return run_passes(POSITION_PASSES, eval_graph_def, config)


__all__ = ["Pass", "FLOAT_PASSES", "POSITION_PASSES", "run_passes", "keep_nodes",
           "prepare_float_graph", "quantize_scope", "restore_outside",
           "adjust_positions"]
