"""Inspect a frozen graph: op types, estimated input / output nodes, what would be quantized.

``vai_q_tensorflow inspect --input_frozen_graph frozen.pb`` prints :func:`format_report` of
:func:`inspect_graph`. (The module is not named ``inspect`` so that it never shadows the
standard library's module.)
"""

import collections
import dataclasses
import os

from decent_q import registry
from decent_q.config import QuantizeConfig
from decent_q.graph import utils

# Sinks that are not outputs: bookkeeping ops.
_NOT_OUTPUTS = registry.VARIABLE_OPS | frozenset({"Const", "NoOp", "Assign", "AssignVariableOp",
                                                  "SaveV2", "RestoreV2"})


def inspect_graph(input_frozen_graph, config=None):
    """What decent_q sees in a frozen graph.

    Args:
      input_frozen_graph: a path or a GraphDef.
      config: optional QuantizeConfig; its input_nodes / output_nodes (else the estimated ones)
        define the range whose quantization is reported.

    Returns:
      A dict: ``num_nodes``; ``op_types`` {op: count}; ``input_nodes`` (placeholders with their
      dtype and shape); ``output_nodes`` (sinks that are not constants); ``quantized``
      {FixNeuron name: kind} and ``layers`` (compute op names) of the plan; ``float_nodes``
      {node: why it stays float}; ``range`` (the input and output nodes used); ``error`` (why
      no plan could be made, or None).
    """
    from decent_q import checks, transforms  # pylint: disable=import-outside-toplevel
    from decent_q import plan as plan_lib  # pylint: disable=import-outside-toplevel
    from decent_q.errors import QuantizeError  # pylint: disable=import-outside-toplevel

    graph_def = (utils.load_graph_def(input_frozen_graph)
                 if isinstance(input_frozen_graph, (str, os.PathLike)) else input_frozen_graph)
    node_map = utils.NodeMap(graph_def)
    inputs = [n for n in graph_def.node if n.op in ("Placeholder", "PlaceholderWithDefault")]
    outputs = [n.name for n in graph_def.node
               if not node_map.node_consumers(n.name) and n.op not in _NOT_OUTPUTS and
               not node_map.control_consumers.get(n.name)]
    info = {
        "num_nodes": len(graph_def.node),
        "op_types": dict(sorted(collections.Counter(n.op for n in graph_def.node).items())),
        "input_nodes": [{"name": n.name, "dtype": _dtype(n), "shape": _shape(n)}
                        for n in inputs],
        "output_nodes": outputs,
        "quantized": {}, "layers": [], "float_nodes": {}, "range": None, "error": None,
    }
    config = config or QuantizeConfig()
    in_nodes = config.input_nodes or [n.name for n in inputs]
    out_nodes = config.output_nodes or outputs
    info["range"] = {"input_nodes": in_nodes, "output_nodes": out_nodes}
    if not in_nodes or not out_nodes:
        info["error"] = "no input or output nodes found"
        return info
    try:
        # The shapes the graph gives its 4-D input placeholders; without them simulate_dpu
        # cannot size global poolings, so it is left off.
        shapes = [_shape4(node_map.get(n)) for n in in_nodes]
        extra = {} if all(shapes) else {"simulate_dpu": 0}
        cfg = dataclasses.replace(config, input_nodes=in_nodes, output_nodes=out_nodes,
                                  input_shapes=[s or [-1, 1, 1, 1] for s in shapes], **extra)
        checks.check_config_nodes(graph_def, cfg)
        plan = plan_lib.plan_quantization(transforms.prepare_float_graph(graph_def, cfg), cfg)
    except QuantizeError as err:
        info["error"] = str(err)
        return info
    info["quantized"] = {p.name: p.kind for p in plan.points}
    info["layers"] = [layer.compute for layer in plan.layers]
    info["float_nodes"] = dict(sorted(plan.float_nodes.items()))
    return info


def format_report(info):
    """The inspect dict as readable text."""
    lines = [f"nodes: {info['num_nodes']}", "op types:"]
    lines += [f"  {op:<28} {count}" for op, count in info["op_types"].items()]
    lines.append("estimated input nodes (placeholders):")
    lines += [f"  {i['name']}  {i['dtype']}  {i['shape']}" for i in info["input_nodes"]] \
        or ["  none"]
    lines.append("estimated output nodes:")
    lines += [f"  {name}" for name in info["output_nodes"]] or ["  none"]
    rng = info["range"]
    if rng:
        lines.append(f"quantization range: {','.join(rng['input_nodes'])} -> "
                     f"{','.join(rng['output_nodes'])}")
    if info["error"]:
        lines.append(f"no quantization plan: {info['error']}")
        return "\n".join(lines)
    lines.append(f"would quantize: {len(info['quantized'])} FixNeurons, "
                 f"{len(info['layers'])} compute layers")
    lines += [f"  {name}  ({kind})" for name, kind in info["quantized"].items()]
    lines.append(f"would leave float: {len(info['float_nodes'])} nodes in range")
    lines += [f"  {name}: {why}" for name, why in info["float_nodes"].items()]
    lines.append("note: estimated inputs/outputs may include pre- and post-processing; set "
                 "--input_nodes / --output_nodes to the quantizable part")
    return "\n".join(lines)


def _shape4(node):
    """The node's 4-D placeholder shape as a list (-1 unknown), or None."""
    if node is None or node.op != "Placeholder" or "shape" not in node.attr or \
            node.attr["shape"].shape.unknown_rank or len(node.attr["shape"].shape.dim) != 4:
        return None
    return [d.size if d.size > 0 else -1 for d in node.attr["shape"].shape.dim]


def _dtype(node):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.as_dtype(node.attr["dtype"].type).name if "dtype" in node.attr else "?"


def _shape(node):
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return "unknown"
    return "[" + ",".join("?" if d.size < 0 else str(d.size)
                          for d in node.attr["shape"].shape.dim) + "]"


__all__ = ["inspect_graph", "format_report"]
