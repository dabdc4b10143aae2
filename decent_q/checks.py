"""Checks of what post-training quantization is given, before anything runs or is written.

The output folder, the session options, the node names of the config, that the graph is a
frozen float graph, the input shapes, and (unless skip_check) that the float graph runs on
input_fn(0) and gives finite outputs. Each failure is one QuantizeError (ConfigError for a
usage error) that says what to fix.
"""

import os

import numpy as np
import tensorflow as tf

from decent_q import calibrate, inputs, registry
from decent_q.errors import ConfigError, QuantizeError, op_error_text
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name


def check_session_config(s_config):
    """s_config if it is None or a ConfigProto; else a ConfigError naming what to pass."""
    if s_config is None or isinstance(s_config, tf.compat.v1.ConfigProto):
        return s_config
    hint = " (progress is a keyword argument: progress=False)" if isinstance(s_config, bool) \
        else ""
    raise ConfigError(f"s_config must be a tf.compat.v1.ConfigProto (the session options), got "
                      f"{type(s_config).__name__}{hint}")


def check_output_dir(path):
    """Raises QuantizeError if output_dir cannot be created or written; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise QuantizeError(f"output_dir {path} is a file; give a folder path")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QuantizeError(f"output_dir {path} is not writable ({parent} is not); choose a "
                            "writable folder")


def check_config_nodes(graph_def, config):
    """Every node the config names exists in the graph (did-you-mean otherwise)."""
    node_map = utils.NodeMap(graph_def)
    if any(n.op == "FixNeuron" for n in graph_def.node):
        raise QuantizeError("the input graph already holds FixNeuron nodes (it is quantized); "
                            "give the float frozen graph")
    for what, names in (("input node", config.input_nodes),
                        ("output node", config.output_nodes),
                        ("ignore_nodes entry", config.ignore_nodes),
                        ("nodes_bit entry", list(config.nodes_bit)),
                        ("nodes_method entry", list(config.nodes_method))):
        utils.check_nodes_exist(node_map, names, what)
    _check_output_indexes(graph_def, config)


def _output_index(name):
    return int(tensor_name(name).rsplit(":", 1)[1])


def _check_output_indexes(graph_def, config):
    """An input node must be named as a node (output 0 is fed); an output node given as
    'node:k' must have output k. Either is a ConfigError (was an internal KeyError)."""
    for name in config.input_nodes:
        if _output_index(name):
            raise ConfigError(f"input node {name!r} names output {_output_index(name)} of node "
                              f"{node_name(name)!r}; input_nodes takes node names (the node's "
                              "output 0 is what input_fn feeds)")
    indexed = [n for n in config.output_nodes if _output_index(n)]
    if indexed:
        graph = utils.import_graph(graph_def)
        for name in indexed:
            count = len(graph.get_operation_by_name(node_name(name)).outputs)
            if _output_index(name) >= count:
                raise ConfigError(f"output node {name!r}: node {node_name(name)!r} has "
                                  f"{count} output(s)")


def check_frozen(graph_def, config):
    """Raises QuantizeError if the output nodes depend on variables (the graph is not
    frozen); variables nothing uses, like a left-over global_step, are allowed."""
    node_map = utils.NodeMap(graph_def)
    seen, stack, variables = set(), list(config.output_nodes), []
    while stack:
        name = node_name(stack.pop())
        if name in seen or name not in node_map:
            continue
        seen.add(name)
        node = node_map[name]
        if node.op in registry.VARIABLE_OPS:
            variables.append(name)
        stack.extend(node.input)
    if variables:
        shown = ", ".join(sorted(variables)[:3]) + (
            f" and {len(variables) - 3} more" if len(variables) > 3 else "")
        raise QuantizeError(
            f"the graph is not frozen: the output nodes read {len(variables)} variable(s) "
            f"({shown}); freeze it first, e.g. 'freeze_graph --input_graph graph.pb "
            "--input_checkpoint model.ckpt --input_binary true --output_graph frozen.pb "
            f"--output_node_names {','.join(config.output_nodes)}'")



def set_input_shapes(graph_def, config):
    """A copy of graph_def whose input placeholders have config.input_shapes (-1: unknown).

    Input nodes that are not placeholders (in-graph preprocessing) are left alone.

    Raises:
      QuantizeError: a shape contradicts a known dimension of the placeholder.
    """
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}
    for name, shape in zip(config.input_nodes, config.input_shapes):
        node = nodes[name]
        if node.op != "Placeholder":
            continue
        if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            old = [d.size for d in node.attr["shape"].shape.dim]
            if len(old) != len(shape) or any(o >= 0 and s >= 0 and o != s
                                             for o, s in zip(old, shape)):
                raise QuantizeError(
                    f"input_shapes gives {_shape_text(shape)} for {name!r} but the graph "
                    f"says {_shape_text(old)}; fix --input_shapes")
            shape = [s if s >= 0 else o for s, o in zip(shape, old)]
        node.attr["shape"].shape.CopyFrom(
            tf.TensorShape([None if s < 0 else s for s in shape]).as_proto())
    return out


def _shape_text(shape):
    return ",".join("?" if d < 0 else str(d) for d in shape)


def check_float_model(graph_def, config, batch, fn_name, s_config=None):
    """Runs the float graph on one batch; its output nodes must give finite values."""
    graph = utils.import_graph(graph_def)
    feed = inputs.feed_dict(graph, batch, 0, fn_name)
    fetches = [graph.get_tensor_by_name(tensor_name(n)) for n in config.output_nodes]
    options = calibrate.session_config(config, s_config)
    with tf.compat.v1.Session(graph=graph, config=options) as sess:
        try:
            values = sess.run(fetches, feed)
        except tf.errors.OpError as err:
            raise QuantizeError(
                f"the float graph fails on {fn_name}(0): {op_error_text(err)}; check "
                "the input_fn data and that the graph is an inference graph (skip_check=1 "
                "skips this check)") from err
    for name, value in zip(config.output_nodes, values):
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise QuantizeError(
                f"the float graph gives NaN or Inf at output node {name!r} on {fn_name}(0); "
                "check the float model and the input_fn preprocessing")
