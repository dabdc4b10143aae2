"""Inlines function calls (PartitionedCall / StatefulPartitionedCall) into the graph.

Keras emits some layers as calls into the graph's function library: a grouped convolution
(``Conv2D(groups=g)``, RegNet, ConvNeXt) is a ``PartitionedCall`` to a ``jit_compile``
function holding the ``Conv2D``. Neither the planner nor batch-norm folding looks inside a
function, so the convolution would stay float and unfolded. Inlining puts the body's nodes in
the graph::

    x, W -> call/PartitionedCall(f) -> y      becomes      x, W -> call/PartitionedCall/Conv2D
                                                                 -> call/PartitionedCall/Identity -> y

Body node ``n`` of call ``c`` becomes ``c/n``; argument placeholders are replaced by the call's
inputs; the call's control inputs are added to every inlined node. A kept call node (a user's
input or output node) is replaced by an Identity of its first output under its own name.
Nested calls are inlined too. Calls whose function is not in the library are left alone.
"""

import tensorflow as tf
from tensorflow.python.framework import function_def_to_graph  # pylint: disable=no-name-in-module

from decent_q.graph import utils
from decent_q.graph.utils import is_control, node_name, tensor_name

CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
MAX_DEPTH = 32  # nesting levels inlined


def called_function(node, functions):
    """The FunctionDef `node` calls, or None."""
    if node.op in CALL_OPS and "f" in node.attr:
        return functions.get(node.attr["f"].func.name)
    return functions.get(node.op)  # a direct call: the op type is the function name


def function_body(fdef):
    """(body GraphDef, output k -> body tensor) of a FunctionDef."""
    body, flat = function_def_to_graph.function_def_to_graph_def(fdef)
    outputs = [tensor_name(flat.get(fdef.ret[arg.name], fdef.ret[arg.name]))
               for arg in fdef.signature.output_arg]
    # The body's return Identities (tf.function adds one per output) would sit between the
    # convolution and its batch norm; return their inputs instead and drop them.
    nodes = {n.name: n for n in body.node}
    used = {node_name(i) for n in body.node for i in n.input}
    args = {a.name for a in fdef.signature.input_arg}
    for k, out in enumerate(outputs):
        node = nodes.get(node_name(out))
        if node is not None and node.op == "Identity" and len(node.input) == 1 and \
                not is_control(node.input[0]) and node.name not in used and \
                node_name(node.input[0]) not in args:
            outputs[k] = tensor_name(node.input[0])
    dropped = {node_name(o) for o in outputs}
    dropped = {n for n in nodes if nodes[n].op == "Identity" and n not in used and
               n not in dropped and n not in args}
    kept = [n for n in body.node if n.name not in dropped]
    del body.node[:]
    body.node.extend(kept)
    return body, outputs


def _inline_once(graph_def, keep):
    functions = {f.signature.name: f for f in graph_def.library.function}
    calls = {n.name: called_function(n, functions) for n in graph_def.node}
    calls = {name: f for name, f in calls.items() if f is not None}
    if not calls:
        return graph_def, False
    nodes, outputs = [], {}  # outputs: call name -> [tensor per output]
    for node in graph_def.node:
        if node.name not in calls:
            nodes.append(node)
            continue
        body, rets = function_body(calls[node.name])
        args = [a.name for a in calls[node.name].signature.input_arg]
        data = [i for i in node.input if not is_control(i)]
        controls = [i for i in node.input if is_control(i)]
        arg_map = dict(zip(args, data))
        prefix = node.name + "/"
        for inner in body.node:
            if inner.name in arg_map:
                continue
            new = tf.compat.v1.NodeDef()
            new.CopyFrom(inner)
            new.name = prefix + inner.name
            new.device = node.device
            if "_class" in new.attr:  # colocation with body names that no longer exist
                del new.attr["_class"]
            del new.input[:]
            for inp in inner.input:
                src = node_name(inp)
                if src in arg_map:
                    target = arg_map[src]
                    new.input.append(("^" + node_name(target)) if is_control(inp) else target)
                else:
                    new.input.append(("^" if is_control(inp) else "") + prefix +
                                     inp.lstrip("^"))
            new.input.extend(controls)
            nodes.append(new)
        outputs[node.name] = [arg_map.get(node_name(t), prefix + t) for t in rets]
        if node.name in keep and outputs[node.name]:
            nodes.append(utils.make_node("Identity", node.name, [outputs[node.name][0]],
                                         T=tf.float32))
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in nodes:
        new = out.node.add()
        new.CopyFrom(node)
        for i, inp in enumerate(node.input):
            call = node_name(inp)
            if call not in outputs or call in keep or not outputs[call]:
                continue
            if is_control(inp):
                new.input[i] = "^" + node_name(outputs[call][0])
            else:
                new.input[i] = outputs[call][int(tensor_name(inp).rsplit(":", 1)[1])]
    return out, True


def _prune_library(graph_def):
    """Drops library functions that no node (or used function) calls any more."""
    functions = {f.signature.name: f for f in graph_def.library.function}

    def refs(nodes):
        for node in nodes:
            if node.op in functions:
                yield node.op
            for value in node.attr.values():
                if value.HasField("func"):
                    yield value.func.name
                for func in value.list.func:
                    yield func.name

    used, stack = set(), list(refs(graph_def.node))
    while stack:
        name = stack.pop()
        if name in used or name not in functions:
            continue
        used.add(name)
        stack.extend(refs(functions[name].node_def))
    if len(used) == len(functions):
        return graph_def
    kept = [f for f in graph_def.library.function if f.signature.name in used]
    del graph_def.library.function[:]
    graph_def.library.function.extend(kept)
    return graph_def


def inline_functions(graph_def, keep=()):
    """Inlines every call of a library function (see the module docstring). Pure.

    Args:
      graph_def: a GraphDef whose library holds the called functions.
      keep: node names that must keep their names (input / output nodes).

    Returns:
      A new GraphDef without those calls; unused library functions are dropped.
    """
    keep = set(keep)
    changed_any = False
    for _ in range(MAX_DEPTH):
        graph_def, changed = _inline_once(graph_def, keep)
        changed_any |= changed
        if not changed:
            break
    return _prune_library(graph_def) if changed_any else graph_def
