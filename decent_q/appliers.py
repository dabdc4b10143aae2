"""The appliers of a :class:`decent_q.plan.Plan`: FixNeurons written into a frozen GraphDef
(EVAL, known positions) or built in a live ``tf.Graph`` (CALIB / TRAIN / EVAL), each point's
consumers rewired to it (docs/placement.md "Point names").
"""

from decent_q.errors import QuantizeError
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name


def output_aliases(plan, output_nodes):
    """output node -> its FixNeuron (docs/placement.md "Output nodes and their aliases")."""
    aliases = {}
    for name in output_nodes:
        point = plan.point_of_tensor(name)
        if point is not None:
            aliases[name] = point.name
    return aliases


@utils.gc_paused
def apply_to_graph_def(graph_def, plan, positions, arch_type="DEFAULT"):
    """Inserts EVAL FixNeuron nodes (positions given by name) into a copy of `graph_def`.

    Each FixNeuron is placed right after its producer; consumers are rewired to it.
    """
    missing = [p.name for p in plan.points if p.name not in positions]
    if missing:
        raise QuantizeError(f"no position for {len(missing)} FixNeuron(s), e.g. {missing[0]}")
    by_producer = {}
    for point in plan.points:
        by_producer.setdefault(node_name(point.tensor), []).append(point)
    rewire = {}  # tensor -> [((consumer, input index) or None for all, new input)]
    for point in plan.points:
        for target in (None,) if point.consumers is None else point.consumers:
            rewire.setdefault(point.tensor, []).append((target, point.name))
    for targets in rewire.values():
        targets.sort(key=lambda t: t[0] is None)  # consumer-specific points win
    out = utils.with_nodes(graph_def)
    point_names = {p.name for p in plan.points}
    for node in graph_def.node:
        new = out.node.add()
        new.CopyFrom(node)
        if node.name not in point_names:
            _rewire_inputs(new, rewire)
        for point in by_producer.get(node.name, ()):
            out.node.append(utils.make_node(
                "FixNeuron", point.name, [point.tensor if not point.tensor.endswith(":0")
                                          else node_name(point.tensor)],
                T=_float(), bit_width=point.bit_width, method=point.method, mode=point.mode,
                phase=1, quantize_pos=int(positions[point.name]), output_dir="",
                arch_type=arch_type))
    return out


def _float():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.float32


def _rewire_inputs(node, rewire):
    for i, inp in enumerate(node.input):
        if utils.is_control(inp):
            continue
        for target, new in rewire.get(tensor_name(inp), ()):
            if target is None or target == (node.name, i):
                node.input[i] = new
                break


@utils.gc_paused
def apply_to_graph(graph, plan, phase, arch_type="DEFAULT", impl="auto",
                   trained_thresholds=False, histograms=True):
    """Builds every point of `plan` in the live `graph` (in place) and rewires its consumers.

    `impl` chooses the FixNeuron implementation (decent_q.ops.quantize: auto, kernel, tf_ops);
    `trained_thresholds` makes every weight, activation and input point a trained-threshold
    point (quantize_strategy pof2s_tqt); bias points keep the pof2s position choice (they get
    no gradient while batch norms fold with batch statistics, and start at 0 in new nets).
    `histograms` False (CALIB only) builds decent_q.ops.calibration_point: no histogram
    variable; each point's position of a run is the tensor ``<point>/used``.

    Returns:
      {point name: output tensor}.
    """
    from decent_q import ops  # pylint: disable=import-outside-toplevel
    from decent_q.live import edit  # pylint: disable=import-outside-toplevel
    if not histograms and (phase != ops.Phase.CALIB or trained_thresholds):
        raise ValueError("points without histograms are CALIB points of the pof2s strategy")
    built = {}
    for point in plan.points:
        tensor = graph.get_tensor_by_name(point.tensor)
        if point.consumers is None:
            targets = [(op, i) for op in tensor.consumers() for i, t in enumerate(op.inputs)
                       if t is tensor]
        else:
            targets = [(graph.get_operation_by_name(c), i) for c, i in point.consumers]
        if histograms:
            out = ops.quantize(tensor, point.name, mode=point.mode, phase=phase,
                               bit_width=point.bit_width, method=point.method,
                               arch_type=arch_type, impl=impl,
                               trained_threshold=trained_thresholds and point.kind != "bias")
        else:
            out, _ = ops.calibration_point(tensor, point.name, mode=point.mode,
                                           bit_width=point.bit_width, method=point.method,
                                           arch_type=arch_type, impl=impl)
        for op, index in targets:
            edit.set_input(op, index, out)
        built[point.name] = out
    return built
