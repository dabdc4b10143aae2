"""Graph passes: each a pure GraphDef -> GraphDef function, one pass a module.

Two ordered pass lists, shared by post-training quantization and QAT deploy::

    float frozen graph --prepare_float_graph--> clean_for_inference -> fold_batch_norms
                                                 -> [cross_layer_equalize] -> [simulate_dpu]
    eval model --adjust_positions--> align_concat -> [adjust_shift_cut] -> [adjust_shift_bias]
"""

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


def prepare_float_graph(graph_def, config):
    """The float passes before planning, in order (see the module docstring).

    Args:
      graph_def: a frozen float GraphDef.
      config: QuantizeConfig (input_nodes / output_nodes are kept; do_cle, replace_relu6,
        simulate_dpu and scale_all_avgpool select and tune the optional passes).

    Returns:
      A new GraphDef, ready for :func:`decent_q.plan.plan_quantization`.
    """
    keep = keep_nodes(config)
    graph_def = cleanup.clean_for_inference(graph_def, keep)
    graph_def = _fold.fold_batch_norms(graph_def, keep)
    if config.do_cle:
        graph_def = _cle.cross_layer_equalize(graph_def, config)
    if config.simulate_dpu:
        graph_def = _simulate.simulate_dpu(graph_def, config)
    return graph_def


def adjust_positions(eval_graph_def, config):
    """The position passes on an eval model, in order; they only change ``quantize_pos``.

    align_concat (config.align_concat: 0 all, 1 output concats, 2 none), then
    adjust_shift_cut if config.adjust_shift_cut, then adjust_shift_bias if
    config.adjust_shift_bias (1 static, 2 dynamic constraints).
    """
    graph_def = _align.align_concat(eval_graph_def, config)
    if config.adjust_shift_cut:
        graph_def = _shifts.adjust_shift_cut(graph_def, config)
    if config.adjust_shift_bias:
        graph_def = _shifts.adjust_shift_bias(graph_def, config)
    return graph_def


__all__ = ["keep_nodes", "prepare_float_graph", "adjust_positions"]
