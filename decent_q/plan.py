"""Where FixNeurons go: find the quantization points of a graph, then apply them.

One finder (:func:`plan_quantization`) serves every flow: it reads a GraphDef (a frozen float
graph for post-training quantization, or the live graph of a QAT script) and returns a
:class:`Plan`. Two appliers write it (:mod:`decent_q.appliers`): ``apply_to_graph_def``
(frozen, EVAL FixNeurons with known positions) and ``apply_to_graph`` (a live ``tf.Graph``;
CALIB / TRAIN / EVAL points with position histograms, see :func:`decent_q.ops.quantize`).

A compute layer, found forwards from its compute op (docs/placement.md "Layer forms")::

    data --(aquant if not quantized yet)--+
    weights --wquant--> Conv2D | DepthwiseConv2dNative | Conv2DBackpropInput | MatMul
                          |  (atrous: SpaceToBatchND -> conv -> BatchToSpaceND)
    bias --wquant-->  [BiasAdd | Add | AddV2]
                          |
                      [Relu | Relu6 | LeakyRelu | Maximum(Mul(a, x), x)
                       | Sub(Relu(x), Mul(a, Relu(Neg(x))))]  --aquant-->

Every intermediate op must have one consumer; the last op gets ``aquant``. The layers that
QAT's batch-norm fold builds in a training graph are declared by the fold instead
(:class:`decent_q.live.fold_batch_norms.FoldedLayer`: conv -> unscale -> batch norm
-> ...); the activation after them is matched as above.
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Tuple

from decent_q import layers as layers_lib
from decent_q import config_names as names_lib
from decent_q import registry
from decent_q.errors import QuantizeError
from decent_q.graph import pattern
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name
from decent_q.ops import Mode

log = logging.getLogger("decent_q")

@dataclasses.dataclass(frozen=True)
class QuantPoint:
    """One FixNeuron: ``name`` quantizes ``tensor``."""
    name: str
    tensor: str
    kind: str  # 'input', 'weight', 'bias' or 'activation'
    mode: int
    bit_width: int
    method: int
    # Rewire only these (consumer node, input index) pairs; None rewires every consumer.
    consumers: Optional[Tuple[Tuple[str, int], ...]] = None


@dataclasses.dataclass(frozen=True)
class Layer:
    """A matched compute layer, for the passes that reason per layer (shifts, deploy)."""
    compute: str
    op: str
    nodes: Tuple[str, ...]
    input_point: Optional[str]
    weight_point: Optional[str]
    bias_point: Optional[str]
    output_point: Optional[str]


@dataclasses.dataclass
class Plan:
    points: List[QuantPoint]
    layers: List[Layer]
    float_nodes: Dict[str, str]  # node in range left float -> why
    range_nodes: frozenset

    def point(self, name):
        return next(p for p in self.points if p.name == name)

    def point_of_tensor(self, tensor):
        """The point quantizing `tensor` for all its consumers, or None."""
        tensor = tensor_name(tensor)
        return next((p for p in self.points if p.tensor == tensor and p.consumers is None), None)


def point_name(tensor, suffix):
    """'conv1/Relu:0' -> 'conv1/Relu/aquant'; output k > 0 gets '_k'."""
    base, index = node_name(tensor), int(tensor_name(tensor).rsplit(":", 1)[1])
    return f"{base}/{suffix}" + (f"_{index}" if index else "")


def _weight_base(node_map, tensor):
    """The variable behind a weight tensor read through ``w/read`` or a ReadVariableOp (so
    nodes_bit / nodes_method may name the variable); else the tensor itself."""
    producer = node_map.producer(tensor)
    if producer is not None and producer.op in registry.READ_OPS and producer.input:
        source = node_map.producer(producer.input[0])
        if source is not None and source.op in registry.PARAMETER_OPS:
            return tensor_name(source.name)
    return tensor_name(tensor)


class _Finder:
    """Walks the range in topological order and records points and layers."""

    def __init__(self, graph_def, config, parameters, exclude, layers, aliases=None):
        self.nm = utils.NodeMap(graph_def)
        self.config = config
        utils.check_nodes_exist(self.nm, config.input_nodes, "input node")
        utils.check_nodes_exist(self.nm, config.output_nodes, "output node")
        for what, names in (("ignore_nodes entry", config.ignore_nodes),
                            ("nodes_bit entry", list(config.nodes_bit)),
                            ("nodes_method entry", list(config.nodes_method))):
            utils.check_nodes_exist(self.nm, names, what)
        self.range = frozenset(utils.range_nodes(self.nm, config.input_nodes,
                                                 config.output_nodes)) - frozenset(exclude)
        self.parameters = frozenset(tensor_name(t) for t in parameters)
        self.declared = dict(layers)  # F/conv -> FoldedLayer (QAT training folds)
        self.view = pattern.GraphDefView(self.nm)
        self.context = pattern.Context(is_param=self.is_param,
                                       allowed=lambda name: name in self.range)
        # ignore_nodes, nodes_bit, nodes_method; aliases: the user's names of folded nodes
        self.names = names_lib.NameTables(config, aliases)
        self.points: List[QuantPoint] = []
        self.point_index: Dict[str, int] = {}  # point name -> its index in self.points
        self.layers: List[Layer] = []
        self.float_nodes: Dict[str, str] = {}
        self.quantized = {}  # tensor -> name of the point that quantizes it for all consumers
        self.done = set()  # nodes handled as part of a layer
        self.output_names = {}  # declared layer output -> its point's name in both QAT graphs
        self.shape_nodes = set()  # integer shape arithmetic (from Shape ops)

    # -- classification -------------------------------------------------------------------
    def is_param(self, tensor):
        tensor = tensor_name(tensor)
        return tensor in self.parameters or node_name(tensor) not in self.range

    def single_consumer(self, name):
        users = [u for u in self.nm.node_consumers(name) if u.name in self.range]
        return users[0] if len(users) == 1 and len(self.nm.node_consumers(name)) == 1 else None

    def other_input(self, node, tensor):
        ins = self.nm.data_inputs(node)
        if len(ins) != 2:
            return None
        a, b = (tensor_name(i) for i in ins)
        return b if a == tensor else a if b == tensor else None

    # -- recording ------------------------------------------------------------------------
    def add(self, tensor, kind, mode, bits, method, consumers=None, name=None):
        tensor = tensor_name(tensor)
        suffix = "aquant" if kind in ("input", "activation") else "wquant"
        name = name or point_name(tensor, suffix)
        if consumers is None and tensor in self.quantized:
            return self.quantized[tensor]
        point = QuantPoint(name, tensor, kind, int(mode), bits, method, consumers)
        index = self.point_index.get(name)
        if index is not None:
            return self.share(index, point)
        self.point_index[name] = len(self.points)
        self.points.append(point)
        if consumers is None:
            self.quantized[tensor] = name
        return name

    def share(self, index, point):
        """One point for a weight or bias that several layers read (shared constant or
        variable): its consumers are joined; the layers must quantize it alike."""
        first = self.points[index]
        if (first.tensor, first.kind, first.mode, first.bit_width, first.method) != \
                (point.tensor, point.kind, point.mode, point.bit_width, point.method) or \
                first.consumers is None or point.consumers is None:
            users = sorted({c for c, _ in (first.consumers or ()) + (point.consumers or ())})
            raise QuantizeError(
                f"{point.tensor} is read by {', '.join(users)}, which quantize it differently "
                f"(bit width, method or mode); give them the same nodes_bit / nodes_method "
                "entries, or give each layer its own copy of the weights")
        self.points[index] = dataclasses.replace(
            first, consumers=first.consumers + tuple(c for c in point.consumers
                                                     if c not in first.consumers))
        return first.name

    def add_activation(self, name, point=None):
        if self.names.ignored(name):
            self.float_nodes[name] = "in ignore_nodes"
            return None
        return self.add(name, "activation", Mode.ACTIVATION,
                        self.names.bits(name, self.config.activation_bit),
                        self.names.method(name), name=point)

    # -- the walk -------------------------------------------------------------------------
    def run(self):
        order = [n for n in utils.topological_order(self.nm.graph_def) if n in self.range]
        inputs = set(self.config.input_nodes)
        for name in order:
            node = self.nm[name]
            if name in inputs:
                if not self.names.ignored(name):
                    self.add(name, "input", Mode.ACTIVATION,
                             self.names.bits(name, self.config.activation_bit),
                             registry.INPUT_METHOD)
                continue
            if name in self.done:
                continue
            if node.op in registry.SHAPE_OPS or self.is_shape_math(node):
                self.shape_nodes.add(name)
                self.float_nodes[name] = "shape computation"
                continue
            if node.op in registry.COMPUTE_OPS and self.match_layer(node):
                continue
            if node.op in registry.FLOAT_OPS:
                self.float_nodes[name] = f"{node.op} is not quantized by design"
            elif node.op in registry.PASS_THROUGH_OPS:
                self.pass_through(node)
            elif node.op in registry.COMPUTE_OPS:
                self.float_nodes[name] = "its weights are not parameters (constants/variables)"
            else:
                self.float_nodes[name] = f"op type {node.op} is not supported; left float"
        return Plan(self.points, self.layers, self.float_nodes, self.range)

    def is_shape_math(self, node):
        data = [node_name(i) for i in self.nm.data_inputs(node) if not self.is_param(i)]
        return bool(data) and all(d in self.shape_nodes for d in data)

    def data_ready(self, node):
        """Data inputs of node (parameters and shape inputs excluded) and whether all are
        quantized."""
        ins = registry.data_inputs(node.op, self.nm.data_inputs(node))
        data = [tensor_name(i) for i in ins if not self.is_param(i)]
        return data, bool(data) and all(t in self.quantized for t in data)

    def pass_through(self, node):
        data, ready = self.data_ready(node)
        if not ready:
            self.float_nodes[node.name] = "an input is not quantized"
            return
        if self.names.ignored(node.name):
            self.float_nodes[node.name] = "in ignore_nodes"
            return
        if node.op in registry.CONCAT_AXIS_INPUT:
            axis_index = registry.CONCAT_AXIS_INPUT[node.op] % len(self.nm.data_inputs(node))
            for i, inp in enumerate(self.nm.data_inputs(node)):
                producer = self.nm.producer(inp)
                if i != axis_index and producer is not None and producer.op == "Const":
                    self.add(inp, "activation", Mode.ACTIVATION,
                             self.names.bits(producer.name, self.config.activation_bit),
                             self.names.method(producer.name),
                             consumers=((node.name, i),))
        follower = self.single_consumer(node.name)
        if follower is not None and self.fuses(node, follower):
            # Quantized once after the follower (Add+Relu, AvgPool*DPU factor).
            self.quantized[tensor_name(node.name)] = None
            return
        self.add_activation(node.name)

    def param_other(self, node, tensor):
        """Whether node's input other than `tensor` is a parameter."""
        other = self.other_input(node, tensor)
        return other is not None and self.is_param(other)

    def fuses(self, node, follower):
        """Whether `node` is quantized once after `follower` (registry.FUSIONS)."""
        out = tensor_name(node.name)
        for ops, followers, condition in registry.FUSIONS:
            if node.op not in ops or follower.op not in followers:
                continue
            if condition == "always":
                return True
            if condition == "follower_scales":
                return self.param_other(follower, out)
            data = self.data_ready(node)[0]  # scale_offset
            return len(data) == 1 and self.param_other(node, data[0]) and \
                self.param_other(follower, out)
        return False

    def match_layer(self, conv):
        """Records the layer whose compute op is `conv` (declared or matched); False if none."""
        declared = self.declared.get(conv.name)
        if declared is not None:
            found = self.declared_layer(conv, declared)
        else:
            found = layers_lib.match_layer(self.view, conv.name, self.context)
        if found is None:
            return False
        ignored = self.names.ignored(conv.name)
        input_point = None if ignored else self.input_point(found.input)
        weight_point = bias_point = None
        if not ignored:
            weight_point = self.weight_point(conv, found.weight, declared)
            if found.bias is not None:
                bias_point = self.bias_point(conv, found)
        output_name = None
        if declared is not None and found.last == declared.nodes[-1]:
            # No activation: named as the evaluation graph's point on F/BiasAdd (also where
            # the next layer quantizes it as its input, if this layer is ignored).
            output_name = point_name(declared.output_name, "aquant")
            self.output_names[tensor_name(found.last)] = output_name
        output_point = None if ignored else self.add_activation(found.last, output_name)
        if ignored:
            self.float_nodes[conv.name] = "in ignore_nodes"
        self.done.update(found.nodes)
        self.layers.append(Layer(conv.name, conv.op, found.nodes, input_point, weight_point,
                                 bias_point, output_point))
        return True

    def input_point(self, tensor):
        """The point quantizing a layer's input `tensor`, added if there is none yet."""
        if self.is_param(tensor):
            return None
        point = self.quantized.get(tensor)
        producer = node_name(tensor)
        if point is None and tensor not in self.quantized and not self.names.ignored(producer):
            point = self.add(tensor, "activation", Mode.ACTIVATION,
                             self.names.bits(producer, self.config.activation_bit),
                             self.names.method(producer), name=self.output_names.get(tensor))
        return point

    def weight_point(self, conv, weight, declared):
        """A weight point is named after the tensor the compute op reads, as in the original:
        a ref variable w read through w/read gives w/read/wquant, a resource variable the name
        of its ReadVariableOp. (Frozen graphs have no reads left after clean-up.)"""
        cfg = self.config
        names = (node_name(weight), node_name(_weight_base(self.nm, weight)), conv.name)
        consumers = declared.weights_consumers if declared is not None else \
            ((conv.name, registry.COMPUTE_OPS[conv.op].weight_index),)
        return self.add(weight, "weight", registry.COMPUTE_OPS[conv.op].mode,
                        self.names.bits(names, cfg.weight_bit), self.names.method(names),
                        consumers=consumers, name=point_name(weight, "wquant"))

    def bias_point(self, conv, found):
        cfg = self.config
        base = node_name(_weight_base(self.nm, found.bias))
        names = (node_name(found.bias), base)
        return self.add(found.bias, "bias", Mode.WEIGHT, self.names.bits(names, cfg.weight_bit),
                        self.names.method(names),
                        consumers=self.bias_consumers(conv, found.nodes, found.bias),
                        name=point_name(found.bias, "wquant"))

    def bias_consumers(self, conv, nodes, bias):
        """The (op, input index) pairs that read the bias of the layer at `conv`: () for a
        declared layer whose forward pass does not read it."""
        declared = self.declared.get(conv.name)
        if declared is not None:
            return (declared.bias_consumer,) if declared.bias_consumer else ()
        user = next(n for n in nodes if self.nm[n].op in registry.BIAS_OPS and
                    bias in [tensor_name(i) for i in self.nm[n].input])
        index = [tensor_name(i) for i in self.nm.data_inputs(self.nm[user])].index(bias)
        return ((user, index),)

    def declared_layer(self, conv, declared):
        """The layer QAT's fold built at `conv` (see live.fold_batch_norms.FoldedLayer), with
        the activation matched after it; its bias point is placed by bias_consumer."""
        spec = registry.COMPUTE_OPS[conv.op]
        ins = self.nm.data_inputs(conv)
        if len(ins) <= max(spec.data_index, spec.weight_index):
            return None
        weight, data = tensor_name(ins[spec.weight_index]), tensor_name(ins[spec.data_index])
        if not self.is_param(weight) or self.is_param(data):
            return None
        act = layers_lib.match_activation(self.view, declared.nodes[-1], self.context)
        nodes = list(declared.nodes) + list(act.nodes if act else ())
        producer = self.nm.producer(data)
        space_to_batch = None
        if producer is not None and producer.op == "SpaceToBatchND":  # atrous
            nodes.insert(0, producer.name)
            data, space_to_batch = tensor_name(producer.input[0]), producer.name
        return layers_lib.LayerMatch(conv.name, conv.op, tuple(nodes), data,
                                 tensor_name(declared.weights), tensor_name(declared.bias), act,
                                 space_to_batch)


@utils.gc_paused
def plan_quantization(graph_def, config, parameters=(), exclude=(), layers=None, aliases=None):
    """Finds the quantization points of `graph_def` between config's input and output nodes.

    Args:
      graph_def: a GraphDef, batch norms already folded.
      config: a QuantizeConfig (input_nodes and output_nodes set).
      parameters: extra tensors to treat as parameters although computed from data (QAT's
        batch-statistics folding).
      exclude: nodes to leave out of the range (QAT's batch-statistics branch).
      layers: {conv name: FoldedLayer}: layers the QAT fold built, whose chains are declared
        rather than matched.
      aliases: {node: names}: the user's names for nodes a QAT fold built (its conv, weights,
        bias), so that ignore_nodes / nodes_bit / nodes_method entries naming them apply.

    Returns:
      A Plan; points in topological order.

    Raises:
      QuantizeError: a named node is not in the graph, or no compute layer is found.
    """
    config.require_nodes()
    finder = _Finder(graph_def, config, parameters, exclude, layers or {}, aliases)
    plan = finder.run()
    names_lib.warn_unused(finder.names, plan, finder.nm)
    for name, reason in sorted(plan.float_nodes.items()):
        if "not supported" in reason:
            log.warning("node %s: %s", name, reason)
    return plan
