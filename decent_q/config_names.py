"""The per-node options (ignore_nodes, nodes_bit, nodes_method) as the planner reads them, and
the warning for an entry that names an existing node where it cannot take effect.

The planner asks :class:`NameTables` for every node name it could apply an entry to; an entry
it never matched did nothing, e.g. one naming the BiasAdd in front of a Relu (inside a layer:
the layer's output is the Relu), a weight's Const in a QAT graph (the fold quantizes the folded
weights; the layer's compute op sets their bits), or a node outside input_nodes..output_nodes.
:func:`warn_unused` names the node and the name that would work.
"""

import collections
import logging

from decent_q.graph.utils import node_name

log = logging.getLogger("decent_q")

_TABLES = ("ignore_nodes", "nodes_bit", "nodes_method")


class NameTables:
    """Lookups in the config's per-node tables that remember which entries took effect."""

    def __init__(self, config, aliases=None):
        self.config = config
        self.aliases = aliases or {}  # node -> the names the user knows it by (QAT folds)
        self.used = collections.defaultdict(set)

    def _entry(self, table, names):
        """The first of `names` (each followed by its aliases) that `table` has, or None."""
        entries = getattr(self.config, table)
        for name in names:
            for candidate in (name,) + tuple(self.aliases.get(name, ())):
                if candidate in entries:
                    self.used[table].add(candidate)
                    return candidate
        return None

    def ignored(self, name):
        return self._entry("ignore_nodes", (name,)) is not None

    def bits(self, names, default):
        """The nodes_bit entry of the first of `names` (a name or a tuple) that has one."""
        entry = self._entry("nodes_bit", (names,) if isinstance(names, str) else names)
        return default if entry is None else self.config.nodes_bit[entry]

    def method(self, names):
        entry = self._entry("nodes_method", (names,) if isinstance(names, str) else names)
        return self.config.method if entry is None else self.config.nodes_method[entry]

    def unused(self):
        """(table, name) of every entry no lookup matched, in the config's order."""
        entries = {"ignore_nodes": list(self.config.ignore_nodes),
                   "nodes_bit": list(self.config.nodes_bit),
                   "nodes_method": list(self.config.nodes_method)}
        return [(table, name) for table in _TABLES for name in entries[table]
                if name not in self.used[table]]


def _suggestion(table, name, plan, node_map):
    """Why the entry does nothing and the name that would work, as a phrase; None where the
    entry still has an effect (deploy marks every ignore_nodes node outside a layer)."""
    for layer in plan.layers:
        if name in layer.nodes and name != layer.compute:
            if table == "ignore_nodes":
                return (f"it is inside layer {layer.compute!r}; name the compute op "
                        f"{layer.compute!r} to leave the layer float")
            return (f"it is inside layer {layer.compute!r}; name its output "
                    f"{layer.nodes[-1]!r} (the layer's output) or its compute op "
                    f"{layer.compute!r} (its weights)")
    for layer in plan.layers:
        point = layer.weight_point and plan.point(layer.weight_point)
        if point is not None and name in _sources(node_map, point.tensor):
            return (f"it holds the weights of layer {layer.compute!r}, which are quantized as "
                    f"{point.tensor!r}; name that tensor's node or the compute op "
                    f"{layer.compute!r}")
    if table == "ignore_nodes":
        return None
    if name not in plan.range_nodes:
        return "it is not between input_nodes and output_nodes, where decent_q quantizes"
    if name in plan.float_nodes:
        return f"decent_q leaves it float ({plan.float_nodes[name]})"
    return ("it is quantized once together with the op that reads it (e.g. Add + Relu, "
            "AvgPool * DPU factor): name that op")


def _sources(node_map, tensor, depth=4):
    """The node of `tensor` and the nodes it is computed from, `depth` ops back (a folded
    weight W * scale reads W through a Mul and a read)."""
    found, frontier = set(), [node_name(tensor)]
    for _ in range(depth + 1):
        found.update(frontier)
        frontier = [node_name(i) for n in frontier if n in node_map
                    for i in node_map.data_inputs(node_map[n]) if node_name(i) not in found]
    return found


def warn_unused(names, plan, node_map):
    """Warns once per config entry that names a node where it has no effect (module
    docstring); returns the warnings."""
    messages = []
    for table, name in names.unused():
        why = _suggestion(table, name, plan, node_map)
        if why is not None:
            messages.append(f"{table} entry {name!r} has no effect: {why}")
    for message in messages:
        log.warning("%s", message)
    return messages
