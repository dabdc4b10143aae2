"""simulate_dpu on a live graph (QAT): the rewrites of :mod:`decent_q.transforms.simulate_dpu`,
found on a GraphDef copy and applied in place, so QAT trains with what the DPU computes.

A live op cannot be renamed: the node that ends a rewrite is ``<name>/dpu`` and the consumers
of ``<name>`` are rewired to it. A rewrite that only changes an attribute (LeakyRelu's alpha)
changes it on the op itself.
"""

import tensorflow as tf

from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name
from decent_q.live import edit
from decent_q.live import gradients
from decent_q.transforms import simulate_dpu as pure


def simulate_dpu(graph, config, scope, training=False, nm=None):
    """Rewrites the live `graph` in place to compute as the DPU does; only nodes in `scope`
    (the quantized range) are changed, never the user's output nodes. In a `training` graph a
    scale by the rewrite's constant gets decent_q.live.gradients' gradient. `nm`: a NodeMap of
    the graph as it is now, if known; the graph is read again only after a step changed it.

    Returns:
      The number of rewrites applied.
    """
    done = 0
    for step in pure.rewrite_steps(config):
        rw = pure.Rewrite(nm.graph_def if nm else graph.as_graph_def(), nm)
        step(rw)
        nm = None if rw.replace or rw.consts else rw.nm
        for consumer, index, const in rw.consts:
            if consumer not in scope:
                continue
            with graph.as_default(), graph.name_scope(None):
                value = tf.constant(utils.const_value(const),
                                    name=edit.free_name(graph, const.name))
            edit.set_input(graph.get_operation_by_name(consumer), index, value)
            done += 1
        for name, nodes in sorted(rw.replace.items()):
            if name in scope and name not in config.output_nodes:
                _replace(graph, name, nodes, training)
                done += 1
    return done


def _replace(graph, name, nodes, training):
    """Puts `nodes` (the last one named `name`, as the GraphDef pass writes them) into the live
    graph and rewires the consumers of op `name` to the last one."""
    old = graph.get_operation_by_name(name)
    if len(nodes) == 1 and nodes[0].name == name and nodes[0].op == old.type:
        for key in sorted(nodes[0].attr):  # an attribute change (LeakyRelu alpha)
            if old.node_def.attr[key] != nodes[0].attr[key]:
                old._set_attr(key, nodes[0].attr[key])  # pylint: disable=protected-access
        return
    renamed = {n.name: edit.free_name(graph, f"{name}/dpu" if n.name == name else n.name)
               for n in nodes}
    gd = tf.compat.v1.GraphDef()
    external = {}
    constants = {n.name for n in nodes if n.op == "Const"}
    for node in nodes:
        new = gd.node.add()
        new.CopyFrom(node)
        new.name = renamed[node.name]
        if training and node.op == "Mul" and constants & {node_name(i) for i in node.input}:
            # A scale by the rewrite's constant (AvgPool's DPU factor): the gradient of
            # decent_q.live.gradients, which builds none for the constant.
            new.attr["_gradient_op_type"].s = gradients.MUL.encode()
        del new.input[:]
        for inp in node.input:
            if utils.is_control(inp):
                continue  # the replaced op's control inputs stay on the (dead) old op
            if node_name(inp) in renamed:
                new.input.append(inp.replace(node_name(inp), renamed[node_name(inp)], 1))
            else:
                external[tensor_name(inp)] = graph.get_tensor_by_name(tensor_name(inp))
                new.input.append(inp)
    with graph.as_default(), graph.name_scope(None):
        tf.graph_util.import_graph_def(gd, input_map=external, name="")
    last = graph.get_operation_by_name(renamed[nodes[-1].name])
    skip = [graph.get_operation_by_name(n) for n in renamed.values()]
    edit.rewire_consumers(old.outputs[0], last.outputs[0], skip=skip)
