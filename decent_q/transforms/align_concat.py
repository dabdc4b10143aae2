"""align_concat: give a Concat's inputs the position of its output (eval model pass).

The DPU concatenates by writing each input into place, with no requantization: every input
must already have the output's position. Matched::

    FixNeuron_i --[Reshape | ExpandDims | Squeeze | Identity ...]--+
                                                                   +--> Concat(V2) --> FixNeuron_out
    FixNeuron_j -------------------------------------------------+

Each input FixNeuron gets FixNeuron_out's position. Where a shape-only op that is quantized
itself (the plan puts ``aquant`` after Reshape) sits between, the FixNeuron in front of it gets
the position too, so the chain has one position end to end.

Modes (config.align_concat): 0 aligns every Concat; 1 only Concats that are output nodes or
feed an output node through shape-only ops and FixNeurons; 2 none. Concats are aligned from
the outputs backwards, repeated until nothing changes, so a Concat feeding a Concat ends with
the outer position throughout.
"""

import logging

from decent_q import registry
from decent_q.graph import quantized, utils
from decent_q.graph.utils import node_name

log = logging.getLogger("decent_q")

_CONCAT_OPS = frozenset(registry.CONCAT_AXIS_INPUT)
_MAX_ROUNDS = 100


def _data_indices(node, nm):
    """Indices of a Concat's data inputs (the axis input excluded)."""
    return registry.data_inputs(node.op, range(len(nm.data_inputs(node))))


def output_concats(model, output_nodes):
    """Concats that are output nodes, or reach one through FixNeurons / shape-only ops."""
    found = set()
    stack = [node_name(n) for n in output_nodes]
    seen = set()
    while stack:
        name = stack.pop()
        node = model.nm.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op in _CONCAT_OPS:
            found.add(name)
        elif node.op == quantized.FIX_OP or node.op in quantized.POSITION_PRESERVING_OPS:
            stack.extend(node_name(i) for i in model.nm.data_inputs(node)[:1])
    return found


def _chain_fixes(model, node, index):
    """FixNeurons that hold the position of `node`'s data input `index`: the first one found
    walking back, and those further back through shape-only ops."""
    fixes = []
    fix = model.input_fix(node, index)
    while fix is not None and fix not in fixes:
        fixes.append(fix)
        producer = model.nm.producer(model.fixes[fix].input[0])
        if producer is None or producer.op not in registry.SHAPE_ONLY_OPS:
            break
        fix = model.input_fix(producer, 0)
    return fixes


def align_concat(graph_def, config):
    """Aligns Concat input positions per config.align_concat; returns a new GraphDef."""
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    if config.align_concat == 2:
        return out
    model = quantized.EvalModel(out)
    concats = [n for n in out.node if n.op in _CONCAT_OPS]
    if config.align_concat == 1:
        wanted = output_concats(model, config.output_nodes)
        concats = [n for n in concats if n.name in wanted]
    order = {name: i for i, name in enumerate(utils.topological_order(out))}
    concats.sort(key=lambda n: -order[n.name])  # outputs first
    for _ in range(_MAX_ROUNDS):
        changed = False
        for concat in concats:
            target = model.output_fix(concat.name)
            if target is None:
                continue
            pos = model.position(target)
            for index in _data_indices(concat, model.nm):
                for fix in _chain_fixes(model, concat, index):
                    old = model.position(fix)
                    if old != pos:
                        model.set_position(fix, pos)
                        log.info("align_concat: %s position %d -> %d (input of concat %s)",
                                 fix, old, pos, concat.name)
                        changed = True
        if not changed:
            break
    return out
