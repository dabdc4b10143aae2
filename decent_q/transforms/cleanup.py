"""Inference clean-up of a frozen GraphDef: function calls, Identity/CheckNumerics, dropout,
constant folding.

Each function is pure: it never changes the GraphDef it is given, and returns a new one, or the
same one when it has nothing to change (no copy of the weights for a no-op). Nodes named in
``keep`` (the user's input and output nodes) are never removed or renamed.
"""

import numpy as np
import tensorflow as tf

from decent_q import registry
from decent_q.graph import utils
from decent_q.graph.utils import is_control, node_name, tensor_name
from decent_q.transforms import inline_functions

_PASS_OPS = frozenset({"Identity", "IdentityN", "CheckNumerics", "StopGradient", "Snapshot"})
# Ops never folded although their inputs are constant.
_NOT_FOLDABLE = registry.VARIABLE_OPS | frozenset({
    "Const", "Placeholder",
    "PlaceholderWithDefault", "RandomUniform", "RandomStandardNormal",
    "TruncatedNormal", "RandomUniformInt", "FixNeuron",
    "FixNeuronDynamic", "Assign", "AssignAdd", "NoOp",
    # control flow: evaluating one outside its frame is wrong
    "Enter", "RefEnter", "Exit", "RefExit", "Switch", "RefSwitch",
    "Merge", "RefMerge", "NextIteration", "RefNextIteration",
    "LoopCond", "ControlTrigger"
})


def _bypass(graph_def, replace):
    """Drops nodes in `replace` and rewires their consumers. replace: name -> the tensor that
    stands for its output 0, or a list of tensors, one per output (IdentityN)."""
    def resolve(inp):
        seen = 0
        while node_name(inp) in replace and seen < 10000:
            target = replace[node_name(inp)]
            if isinstance(target, list):
                target = target[int(tensor_name(inp).rsplit(":", 1)[1])]
            inp = ("^" + node_name(target)) if is_control(inp) else target
            seen += 1
        return inp

    nodes, changed = [], False
    for node in graph_def.node:
        if node.name in replace:
            continue
        inputs = []
        for inp in node.input:
            resolved = resolve(inp)
            # A data input may repeat (Switch(pred, pred) of tf.cond); a control input not.
            if not is_control(resolved) or resolved not in inputs:
                inputs.append(resolved)
        if inputs != list(node.input):  # with_nodes copies the rest (a Const's weights) once
            new = tf.compat.v1.NodeDef()
            new.CopyFrom(node)
            del new.input[:]
            new.input.extend(inputs)
            node, changed = new, True
        nodes.append(node)
    if not replace and not changed:  # nothing bypassed, no repeated control input dropped
        return graph_def
    return utils.with_nodes(graph_def, nodes)


def remove_identities(graph_def, keep=()):
    """Removes Identity / IdentityN / CheckNumerics / StopGradient nodes (not those in
    `keep`)."""
    keep = set(keep)
    replace = {}
    for node in graph_def.node:
        if node.op in _PASS_OPS and node.name not in keep:
            data = [i for i in node.input if not is_control(i)]
            if node.op == "IdentityN":
                replace[node.name] = data
            elif len(data) == 1:
                replace[node.name] = data[0]
    return _bypass(graph_def, replace)


def remove_dropout(graph_def, keep=()):
    """Replaces each dropout (a data path multiplied by a random mask) by its input.

    Recognized: TF1 ``x / keep_prob * floor(keep_prob + uniform)`` and TF2
    ``x * scale`` selected / multiplied by ``uniform >= rate``; the mask is whatever depends on
    a RandomUniform node.
    """
    nm = utils.NodeMap(graph_def)
    random = {n.name for n in graph_def.node if n.op.startswith("Random")}
    if not random:
        return graph_def
    # Nodes downstream of a random op (the mask), up to the ops that apply a mask to data
    # (a Mul / Select with masked and unmasked inputs): their output is data again, so the
    # next dropout of a chain (fc6 -> dropout6 -> fc7 -> dropout7) still finds its data input.
    masked, appliers = set(), []
    for name in utils.topological_order(graph_def):
        node = nm[name]
        ins = [node_name(i) for i in node.input if not is_control(i)]
        hit = [i for i in ins if i in masked]
        if name in random:
            masked.add(name)
        elif hit and node.op in ("Mul", "SelectV2", "Select") and len(hit) < len(ins):
            appliers.append(name)
        elif hit:
            masked.add(name)
    replace = {}
    for name in appliers:
        node = nm[name]
        if name in keep:
            continue
        data = [i for i in nm.data_inputs(node) if node_name(i) not in masked]
        if node.op.startswith("Select"):
            data = data[:1]
        if len(data) != 1:
            continue
        x = data[0]
        scaled = nm.producer(x)
        # x / keep_prob or x * (1 / keep_prob): take the unscaled x.
        if scaled is not None and scaled.op in ("RealDiv", "Mul"):
            ins = nm.data_inputs(scaled)
            consts = [i for i in ins if nm.producer(i) is not None and
                      nm.producer(i).op == "Const"]
            rest = [i for i in ins if i not in consts]
            if len(consts) == 1 and len(rest) == 1 and "dropout" in scaled.name.lower():
                x = rest[0]
        replace[name] = x
    if not replace:
        return graph_def
    out = _bypass(graph_def, replace)
    return remove_dead(out, keep=list(keep) + sinks(graph_def, exclude=masked))


def sinks(graph_def, exclude=()):
    """Nodes nothing consumes (the graph's ends), except `exclude`."""
    used = {node_name(i) for n in graph_def.node for i in n.input}
    return [n.name for n in graph_def.node if n.name not in used and n.name not in exclude]


def remove_dead(graph_def, keep):
    """Keeps only `keep` nodes and their ancestors."""
    nodes = live_nodes(graph_def.node, keep)
    if len(nodes) == len(graph_def.node):
        return graph_def
    return utils.with_nodes(graph_def, nodes)


def live_nodes(nodes, keep):
    """Of the NodeDefs `nodes` (a graph's, in order), the `keep` nodes and their ancestors
    (data and control), in order: :func:`remove_dead` on nodes not yet in a GraphDef."""
    inputs = {node.name: node.input for node in nodes}
    alive, stack = set(), [name for name in keep if name in inputs]
    while stack:
        name = stack.pop()
        if name not in alive:
            alive.add(name)
            stack.extend(n for n in map(node_name, inputs[name]) if n in inputs)
    return [node for node in nodes if node.name in alive]


def fold_constants(graph_def, keep=()):
    """Evaluates every node whose inputs are all constant and replaces it by a Const.

    Only the frontier (constant nodes that feed a non-constant node or are kept) is evaluated,
    in one session run; the constant subgraphs behind it are then dropped.
    """
    nm = utils.NodeMap(graph_def)
    const = set()
    for name in utils.topological_order(graph_def):
        node = nm[name]
        if node.op == "Const":
            const.add(name)
        elif node.op not in _NOT_FOLDABLE and node.input and \
                all(node_name(i) in const for i in node.input) and \
                not node.op.startswith(("Random", "Stateful", "Assign", "Save", "Restore")):
            const.add(name)
    frontier = []
    for name in const:
        node = nm[name]
        if node.op == "Const":
            continue
        users = nm.node_consumers(name) + nm.control_consumers.get(name, [])
        if name in keep or any(u.name not in const for u in users) or not users:
            frontier.append(name)
    if not frontier:
        return graph_def
    frontier.sort()
    graph = utils.import_graph(graph_def)
    tensors = [list(graph.get_operation_by_name(name).outputs) for name in frontier]
    flat = [t for ts in tensors for t in ts]
    with tf.compat.v1.Session(graph=graph) as sess:
        values = sess.run(flat)
    it = iter(values)
    folded = {}
    for name, ts in zip(frontier, tensors):
        folded[name] = [next(it) for _ in ts]
    nodes = []
    extra_outputs = {}
    for node in graph_def.node:
        if node.name in folded:
            outs = folded[node.name]
            nodes.append(utils.const_node(node.name, np.asarray(outs[0])))
            for k, value in enumerate(outs[1:], start=1):
                extra_outputs[f"{node.name}:{k}"] = f"{node.name}/output_{k}"
                nodes.append(utils.const_node(f"{node.name}/output_{k}", np.asarray(value)))
        else:
            new = tf.compat.v1.NodeDef()
            new.CopyFrom(node)
            for i, inp in enumerate(new.input):
                if tensor_name(inp) in extra_outputs and not is_control(inp):
                    new.input[i] = extra_outputs[tensor_name(inp)]
            nodes.append(new)
    return remove_dead(utils.with_nodes(graph_def, nodes), keep=list(keep) + sinks(graph_def))


def clean_for_inference(graph_def, keep):
    """The inference clean-up pass list, in order."""
    graph_def = inline_functions.inline_functions(graph_def, keep)
    graph_def = remove_identities(graph_def, keep)
    graph_def = remove_dropout(graph_def, keep)
    graph_def = fold_constants(graph_def, keep)
    return graph_def
