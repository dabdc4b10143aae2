"""Reading and editing an eval model: a GraphDef whose FixNeuron nodes are in EVAL phase.

The position passes (align_concat, adjust_shift_cut, adjust_shift_bias) and the deploy writer
reason about FixNeurons and compute layers of such a graph. A compute layer is the declared
form of :mod:`decent_q.layers` (the planner's), with FixNeurons around it, as
:func:`decent_q.appliers.apply_to_graph_def` writes it::

    input FixNeuron --[Reshape | ExpandDims | Squeeze | Identity | SpaceToBatchND]--+
    weight FixNeuron --[Identity]--> compute op [-> BatchToSpaceND]
    bias FixNeuron (mode WEIGHT)  --> [bias op] -> [activation] -> output FixNeuron

A parameter here is a Const or a weight / bias FixNeuron (through Identity). Positions are read from and written to the FixNeuron ``quantize_pos`` attr.
"""

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from decent_q import layers
from decent_q import registry
from decent_q.graph import pattern
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name
from decent_q.ops import Mode

FIX_OP = "FixNeuron"

# Ops that pass their input through without changing values: a tensor behind them has the
# position of the tensor in front of them. SpaceToBatchND only pads with zeros (atrous conv).
POSITION_PRESERVING_OPS = registry.SHAPE_ONLY_OPS | frozenset({"SpaceToBatchND",
                                                               "BatchToSpaceND"})


@dataclasses.dataclass(frozen=True)
class QuantizedLayer:
    """A compute layer of an eval model and the FixNeurons around it (names, or None).

    ``kernel`` is (kh, kw) (1, 1 for MatMul); ``in_channels`` is the number of input channels
    each output sums over (1 for depthwise). Both are None when the weights are not a Const.
    """
    compute: str
    op: str
    kind: str  # 'conv', 'depthwise', 'transposed' or 'matmul'
    nodes: Tuple[str, ...]
    kernel: Optional[Tuple[int, int]]
    in_channels: Optional[int]
    input_fix: Optional[str]
    weight_fix: Optional[str]
    bias_fix: Optional[str]
    output_fix: Optional[str]
    activation: Optional[layers.Activation] = None  # its kind, nodes and alpha tensor

    @property
    def accumulations(self):
        """kh * kw * in_channels: the number of products summed per output, or None."""
        if self.kernel is None or self.in_channels is None:
            return None
        return self.kernel[0] * self.kernel[1] * self.in_channels


_KINDS = {"Conv2D": "conv", "DepthwiseConv2dNative": "depthwise",
          "Conv2DBackpropInput": "transposed", "MatMul": "matmul"}


def is_fix_neuron(node):
    return node is not None and node.op == FIX_OP


def fix_neurons(graph_def):
    """{name: NodeDef} of every FixNeuron, in GraphDef order."""
    return {n.name: n for n in graph_def.node if n.op == FIX_OP}


def position(node):
    """The quantize_pos of a FixNeuron NodeDef."""
    return int(node.attr["quantize_pos"].i)


def bit_width(node):
    """The bit_width of a FixNeuron NodeDef (8 when unset)."""
    return int(node.attr["bit_width"].i) if "bit_width" in node.attr else 8


def mode(node):
    return int(node.attr["mode"].i)


def fix_attributes(node):
    """The quantization attributes of a FixNeuron NodeDef: {mode, bit_width, method,
    arch_type}, with the op's defaults where one is unset."""
    attr = node.attr
    return {"mode": mode(node), "bit_width": bit_width(node),
            "method": int(attr["method"].i) if "method" in attr else 1,
            "arch_type": attr["arch_type"].s.decode() if "arch_type" in attr else "DEFAULT"}


def set_position(graph_def, name, pos):
    """Sets FixNeuron `name`'s quantize_pos in `graph_def` IN PLACE; returns the old position.

    Raises:
      KeyError: no FixNeuron `name` in graph_def.
    """
    for node in graph_def.node:
        if node.name == name and node.op == FIX_OP:
            old = position(node)
            node.attr["quantize_pos"].i = int(pos)
            return old
    raise KeyError(f"no FixNeuron named {name!r} in the graph")


def with_positions(graph_def, positions):
    """A copy of graph_def with FixNeuron positions changed as {name: pos} says (pure)."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        if node.name in positions:
            if node.op != FIX_OP:
                raise KeyError(f"{node.name!r} is a {node.op}, not a FixNeuron")
            node.attr["quantize_pos"].i = int(positions[node.name])
    return out


def positions(graph_def):
    """{FixNeuron name: quantize_pos}."""
    return {name: position(node) for name, node in fix_neurons(graph_def).items()}


class EvalModel:
    """Queries over an eval model; build once per pass (it indexes the graph)."""

    def __init__(self, graph_def):
        self.graph_def = graph_def
        self.nm = utils.NodeMap(graph_def)
        self.fixes = fix_neurons(graph_def)
        self.view = pattern.GraphDefView(self.nm)
        self._values = {}  # fix_input_value's

    # -- FixNeurons around tensors -------------------------------------------------------
    def fix_of(self, tensor):
        """Name of the FixNeuron that quantizes `tensor` (a consumer of it), or None.

        If several FixNeurons read it (a Concat's constant quantized per consumer), the one
        named ``<node>/aquant`` or ``<node>/wquant`` wins, else the first in name order.
        """
        tensor = tensor_name(tensor)
        names = sorted(c.name for c, _ in self.nm.consumers.get(tensor, ()) if c.op == FIX_OP)
        if not names:
            return None
        base = node_name(tensor)
        for preferred in (f"{base}/aquant", f"{base}/wquant"):
            if preferred in names:
                return preferred
        return names[0]

    def output_fix(self, name):
        """The FixNeuron that holds node `name`'s output 0 position, or None.

        A FixNeuron is its own; otherwise the FixNeuron reading the node; otherwise, for a
        position-preserving op (Reshape, ExpandDims, Squeeze, Identity, ...), the one of its
        data input, walking back.
        """
        seen = set()
        while name not in seen:
            seen.add(name)
            node = self.nm.get(name)
            if node is None:
                return None
            if node.op == FIX_OP:
                return node.name
            fix = self.fix_of(node.name)
            if fix is not None:
                return fix
            if node.op not in POSITION_PRESERVING_OPS or not self.nm.data_inputs(node):
                return None
            name = node_name(self.nm.data_inputs(node)[0])
        return None

    def input_fix(self, node, index=0):
        """The FixNeuron feeding `node`'s data input `index`, walking back through
        position-preserving ops, or None."""
        ins = self.nm.data_inputs(node)
        if index >= len(ins):
            return None
        name = node_name(ins[index])
        seen = set()
        while name not in seen:
            seen.add(name)
            producer = self.nm.get(name)
            if producer is None:
                return None
            if producer.op == FIX_OP:
                return producer.name
            if producer.op not in POSITION_PRESERVING_OPS or not self.nm.data_inputs(producer):
                return None
            name = node_name(self.nm.data_inputs(producer)[0])
        return None

    def position(self, fix_name):
        return position(self.fixes[fix_name])

    def set_position(self, fix_name, pos):
        """Sets a FixNeuron's position IN PLACE in this model's GraphDef; returns the old one."""
        node = self.fixes[fix_name]
        old = position(node)
        node.attr["quantize_pos"].i = int(pos)
        return old

    def behind_identities(self, tensor):
        """The node that produces `tensor`, through Identity nodes; None if absent."""
        node = self.nm.get(tensor)
        while node is not None and node.op == "Identity" and node.input:
            node = self.nm.get(node.input[0])
        return node

    def fix_input_const(self, fix_name):
        """The Const node a (weight/bias) FixNeuron quantizes, through Identity; or None."""
        node = self.behind_identities(self.fixes[fix_name].input[0])
        return None if node is None or node.op != "Const" else node

    def fix_input_value(self, fix_name):
        """The Const value a (weight/bias) FixNeuron quantizes, through Identity; or None.
        Decoded once per model (VGG16's weights: 0.5 GB)."""
        if fix_name not in self._values:
            node = self.fix_input_const(fix_name)
            self._values[fix_name] = None if node is None else utils.const_value(node)
        return self._values[fix_name]

    # -- compute layers --------------------------------------------------------------------
    def _const_like(self, tensor):
        """True if `tensor` is a Const or a non-activation FixNeuron (through Identity)."""
        node = self.behind_identities(tensor)
        if node is None:
            return False
        return node.op == "Const" or (node.op == FIX_OP and mode(node) != Mode.ACTIVATION)

    def layer(self, conv):
        """The QuantizedLayer of compute node `conv` (a NodeDef): the declared layer form
        (decent_q.layers) with constants behind FixNeurons as its parameters."""
        spec = registry.COMPUTE_OPS[conv.op]
        input_fix = self.input_fix(conv, spec.data_index)
        weight_fix = self.input_fix(conv, spec.weight_index)
        if weight_fix is not None and mode(self.fixes[weight_fix]) == Mode.ACTIVATION:
            weight_fix = None  # data x data product: no weights
        context = pattern.Context(is_param=self._const_like, is_data=lambda t: True,
                                  is_weight=lambda t: True)
        found = layers.match_layer(self.view, conv.name, context)
        if found is None:  # too few inputs for its op type: a layer of one op
            found = layers.LayerMatch(conv.name, conv.op, (conv.name,), None, None, None, None,
                                      None)
        nodes = tuple(n for n in found.nodes if n != found.space_to_batch)
        bias_fix = self._fix_behind(found.bias) if found.bias is not None else None
        output_fix = self.fix_of(found.last)
        kernel, in_channels = self._geometry(conv, weight_fix)
        return QuantizedLayer(conv.name, conv.op, _KINDS[conv.op], nodes, kernel,
                              in_channels, input_fix, weight_fix, bias_fix, output_fix,
                              found.activation)

    def _fix_behind(self, tensor):
        """The FixNeuron that is `tensor` or sits behind it through Identity, or None."""
        node = self.behind_identities(tensor)
        return node.name if is_fix_neuron(node) else None

    def _geometry(self, conv, weight_fix):
        weights = self.fix_input_const(weight_fix) if weight_fix else None
        if weights is None:
            return None, None
        shape = [d.size for d in weights.attr["value"].tensor.tensor_shape.dim]
        if conv.op == "Conv2D" and len(shape) == 4:
            return (int(shape[0]), int(shape[1])), int(shape[2])
        if conv.op == "DepthwiseConv2dNative" and len(shape) == 4:
            return (int(shape[0]), int(shape[1])), 1
        if conv.op == "Conv2DBackpropInput" and len(shape) == 4:
            return (int(shape[0]), int(shape[1])), int(shape[3])
        if conv.op == "MatMul" and len(shape) == 2:
            return (1, 1), int(shape[1] if layers.transpose_b(conv) else shape[0])
        return None, None

    def layers(self):
        """QuantizedLayer records of every compute op with quantized weights, in graph order."""
        found = []
        for node in self.graph_def.node:
            if node.op in registry.COMPUTE_OPS:
                layer = self.layer(node)
                if layer.weight_fix is not None:
                    found.append(layer)
        return found


def find_layers(graph_def):
    """QuantizedLayer records of `graph_def`'s compute layers whose weights are quantized."""
    return EvalModel(graph_def).layers()
