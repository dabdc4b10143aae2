"""The QAT clean-up of a live graph, in place: function calls inlined, dropout and Identity
aliases bypassed, inside the quantized range only.

Both QAT phases run the same clean-up, so the training and evaluation graphs get the same
quantization points. What to change is found with the pure passes of
:mod:`decent_q.transforms.cleanup` / :mod:`decent_q.transforms.inline_functions` where they
apply; here it is applied by rewiring.
"""

import logging

import tensorflow as tf

from decent_q import ops
from decent_q.graph import utils
from decent_q.live import edit
from decent_q.transforms import cleanup as pure
from decent_q.transforms import inline_functions

log = logging.getLogger("decent_q")


def clean_for_training(graph, config, phase):
    """The live clean-up, in order: inline calls, remove dropout, bypass Identity aliases.
    The graph is read again only after a step changed it (a copy of a big graph and its
    NodeMap take ~0.5 s at 150 k ops)."""
    found = _in_range(graph, config)
    if inline_calls(graph, config, found):
        found = _in_range(graph, config)
    if remove_dropout(graph, config, phase, found):
        found = _in_range(graph, config)
    bypass_identities(graph, config, found)


def _in_range(graph, config):
    """(NodeMap of a copy of the live graph, names of the nodes in the quantized range)."""
    nm = utils.NodeMap(graph.as_graph_def())
    return nm, utils.range_nodes(nm, config.input_nodes, config.output_nodes)


def inline_calls(graph, config, found=None):
    """Inlines the function calls in the range (Keras' grouped convolutions), so their
    convolutions are folded and quantized like any other. `found`: :func:`_in_range` of the
    graph as it is now, if known. Returns whether the graph changed."""
    nm, in_range = found or _in_range(graph, config)
    calls = sorted(n for n in in_range - set(config.output_nodes)
                   if nm[n].op in inline_functions.CALL_OPS)
    if calls:
        inline_calls_in_graph(graph, calls)
        log.info("inlined %d function call(s)", len(calls))
    return bool(calls)


def inline_calls_in_graph(graph, names):
    """Inlines the function calls among ops `names` of the live `graph`.

    The body of each call is imported next to it (scope ``<call>_inlined``) with the call's
    inputs mapped onto its arguments, and the call's consumers are rewired to the body's
    outputs, so gradients flow through the inlined ops. The call op is left in the graph,
    dead: no consumers, and its inputs moved to the body's unused argument placeholders.
    Returns the names of the inlined calls.
    """
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    inlined = []
    for _ in range(inline_functions.MAX_DEPTH):
        calls = [graph.get_operation_by_name(n) for n in sorted(names)]
        calls = [op for op in calls if inline_functions.called_function(op.node_def, library)
                 is not None and any(out.consumers() for out in op.outputs)]
        if not calls:
            break
        names = set()
        for op in calls:
            _inline_call(graph, op, inline_functions.called_function(op.node_def, library))
            inlined.append(op.name)
            names.update(o.name for o in graph.get_operations()
                         if o.name.startswith(f"{op.name}_inlined/"))
    return inlined


def _inline_call(graph, op, fdef):
    body, rets = inline_functions.function_body(fdef)
    args = [a.name for a in fdef.signature.input_arg]
    with graph.as_default(), tf.control_dependencies(op.control_inputs):
        new = tf.graph_util.import_graph_def(
            body, input_map={f"{a}:0": t for a, t in zip(args, op.inputs)},
            return_elements=rets + args, name=f"{op.name}_inlined")
    new, placeholders = new[:len(rets)], new[len(rets):]
    # The call is dead now; it reads the body's unused argument placeholders instead of the
    # data, so it no longer counts as a consumer of the data.
    for index, placeholder in enumerate(placeholders):
        edit.set_input(op, index, placeholder.outputs[0])
    for out, replacement in zip(op.outputs, new):
        edit.rewire_consumers(out, replacement)


def bypass_identities(graph, config, found=None):
    """Rewires the consumers of each Identity in the range (Keras' inference dropout,
    tf.identity aliases) to its input, so no quantization point lands on an alias. `found`:
    :func:`_in_range` of the graph as it is now, if known."""
    _, in_range = found or _in_range(graph, config)
    keep = set(config.input_nodes) | set(config.output_nodes)
    for name in sorted(in_range - keep):
        op = graph.get_operation_by_name(name)
        if op.type != "Identity" or op.control_inputs or len(op.inputs) != 1:
            continue
        edit.rewire_consumers(op.outputs[0], op.inputs[0])


def remove_dropout(graph, config, phase, found=None):
    """Rewires consumers of each dropout in the range to the dropout's input.

    QAT fine-tunes without dropout (guide 4.2.2.3), and the evaluation graph has none: removing
    it from both graphs also gives them the same quantization points. The dropout is found on
    a copy of the GraphDef by transforms.cleanup.remove_dropout; its rewiring is applied here.
    `found`: :func:`_in_range` of the graph as it is now, if known. Returns whether the graph
    changed.
    """
    nm, in_range = found or _in_range(graph, config)
    if not any(nm[n].op.startswith("Random") for n in nm.nodes):
        return False
    changed = False
    cleaned = pure.remove_dropout(nm.graph_def, keep=list(config.output_nodes))
    new_inputs = {n.name: list(n.input) for n in cleaned.node}
    for name in sorted(in_range):
        if name not in new_inputs:
            continue
        op = graph.get_operation_by_name(name)
        data = [i for i in new_inputs[name] if not utils.is_control(i)]
        for index, (old, new) in enumerate(zip(op.inputs, data)):
            if old.name != utils.tensor_name(new):
                edit.set_input(op, index, graph.get_tensor_by_name(utils.tensor_name(new)))
                changed = True
                (log.warning if phase == ops.Phase.TRAIN else log.info)(
                    "dropout removed in front of %s (QAT fine-tunes without dropout)", name)
    return changed
