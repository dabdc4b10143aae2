"""Eval model -> deploy model: the compiler's input, FixNeurons folded into attributes.

``deploy_graph_def`` reads an eval model (EVAL FixNeurons with their positions, as
``quantize_eval_model.pb``) and writes ``deploy_model.pb`` (docs/deploy-model.md "Node by node").
The deploy model is a GraphDef in TensorFlow's extended format for the Vitis AI compiler; it
does NOT run in TensorFlow (fused compute nodes carry their weights as attributes and have no
weight input).

What changes, node by node (``[bit, pos]`` pairs: bit width and fixed position of a tensor,
whose integer value is ``value * 2^pos``)::

    FixNeuron                  folded away; its consumers read its input
    compute layer              one node, op type of the compute op (Conv2D,
      conv [-> bias] [-> act]    DepthwiseConv2dNative, Conv2DBackpropInput, MatMul),
                                 named like the compute op, data input only; attrs:
                                 weights, bias (quantized tensors), wpos, bpos, ipos, opos,
                                 activation ("Relu", "Relu6", "LeakyRelu" or "None"), alpha
                                 (LeakyRelu), fused_nodes (the eval-model nodes it replaces)
                                 and the compute op's own attrs (strides, padding, ...)
    quantized constant         a Const holding the quantized values, attr wpos
    other nodes                opos (position of the output, if quantized) and ipos (of the
                                 data inputs, in order, when all of them are quantized)
    constant parameters        become attrs and leave the inputs: Mean reduction axes ->
                                 axis; Pad/MirrorPad paddings -> paddings (flattened);
                                 Concat/ConcatV2 axis -> axis; Reshape shape -> shape;
                                 ExpandDims dim -> axis
    Placeholder                batch dimension set to 1
    node in ignore_nodes       attr quantize_ignored = true

Atrous convolutions (SpaceToBatchND -> conv -> BatchToSpaceND) are not collapsed: their
weights become quantized constants. Layers and their activations are the forms declared in
:mod:`decent_q.layers`, as :class:`decent_q.graph.quantized.EvalModel` reads them.
"""

import numpy as np
import tensorflow as tf

from decent_q import registry
from decent_q.errors import QuantizeError
from decent_q.graph import quantized
from decent_q.graph import utils
from decent_q.graph.utils import is_control, node_name

# op type -> (index of the constant-parameter input, attr name). Negative: from the end.
_PARAM_ATTRS = {
    "Mean": (1, "axis"),
    "Pad": (1, "paddings"),
    "MirrorPad": (1, "paddings"),
    "Concat": (0, "axis"),
    "ConcatV2": (-1, "axis"),
    "Reshape": (1, "shape"),
    "ExpandDims": (1, "axis"),
}
_NOT_COLLAPSED = frozenset({"BatchToSpaceND"})  # atrous conv


def deploy_graph_def(eval_graph_def, config):
    """The deploy model of an eval model (see the module docstring). Pure.

    Args:
      eval_graph_def: a GraphDef with EVAL FixNeurons (quantize_eval_model).
      config: the QuantizeConfig it was quantized with (ignore_nodes, output_nodes).

    Returns:
      A new GraphDef for the compiler. It does not run in TensorFlow.

    Raises:
      QuantizeError: the quantized constants cannot be evaluated.
    """
    return _Deployer(eval_graph_def, config).run()


def pos_attr(fix_node):
    """[bit, pos] of a FixNeuron NodeDef."""
    return [quantized.bit_width(fix_node), quantized.position(fix_node)]


class _Deployer:

    def __init__(self, graph_def, config):
        self.gd = graph_def
        self.config = config
        self.em = quantized.EvalModel(graph_def)
        self.nm = self.em.nm
        inputs = {n: self.em.fix_input_value(n) for n in self.em.fixes}
        self.const_fixes = sorted(n for n, value in inputs.items() if value is not None)
        self.values = _evaluate({n: (self.em.fixes[n], inputs[n]) for n in self.const_fixes},
                                config)
        self.layers = [l for l in self.em.layers() if self._collapsible(l)]
        self.layer_of = {}  # eval node -> its layer, for nodes absorbed into a fused node
        self.alias = {}  # eval node name -> deploy node name
        for layer in self.layers:
            for name in layer.nodes:
                self.layer_of[name] = layer
            self.alias[layer.nodes[-1]] = layer.compute
        self.absorbed_fixes = {f for l in self.layers for f in (l.weight_fix, l.bias_fix) if f}
        self.replaced_consts = set()
        for name in self.const_fixes:
            if name not in self.absorbed_fixes:
                source = self.em.fix_input_const(name)
                if len(self.nm.node_consumers(source.name)) == 1:
                    self.alias[name] = source.name
                    self.replaced_consts.add(source.name)
                else:
                    self.alias[name] = name

    def _collapsible(self, layer):
        if layer.weight_fix not in self.values:
            return False
        if layer.bias_fix is not None and layer.bias_fix not in self.values:
            return False
        act = set(self._activation_nodes(layer))
        return not any(self.nm[n].op in _NOT_COLLAPSED for n in layer.nodes[1:]
                       if n not in act)

    @staticmethod
    def _activation_nodes(layer):
        """The trailing nodes of `layer` that form its activation (the matched form's)."""
        return layer.activation.nodes if layer.activation is not None else ()

    # -- name resolution -----------------------------------------------------------------
    def resolve(self, inp):
        """The deploy input standing for eval input `inp` (FixNeurons and fused layers)."""
        control = is_control(inp)
        name = node_name(inp)
        for _ in range(len(self.gd.node) + 1):
            node = self.nm.get(name)
            if name in self.alias:
                name = self.alias[name]
                break
            if node is not None and node.op == quantized.FIX_OP and \
                    name not in self.const_fixes:
                inp, name = node.input[0], node_name(node.input[0])
                continue
            break
        if control:
            return "^" + name
        if name != node_name(inp):
            return name
        return inp

    def position_of(self, name):
        """[bit, pos] of eval node `name`'s output, or None."""
        fix = self.em.output_fix(name)
        return pos_attr(self.em.fixes[fix]) if fix else None

    # -- building ------------------------------------------------------------------------
    def run(self):
        nodes = []
        ignored = set(self.config.ignore_nodes)
        for node in self.gd.node:
            if node.name in self.layer_of:
                if node.name == self.layer_of[node.name].compute:
                    nodes.append(self.fused(self.layer_of[node.name]))
                continue
            if node.op == quantized.FIX_OP:
                if node.name in self.const_fixes and node.name not in self.absorbed_fixes:
                    nodes.append(self.quantized_const(node))
                continue
            if node.name in self.replaced_consts:
                continue
            if node.op == "Const" and not node.input and node.name not in ignored:
                nodes.append(node)  # as it is; copied below only if something still reads it
                continue
            new = self.copy(node)
            if new.name in ignored:
                new.attr["quantize_ignored"].b = True
            nodes.append(new)
        return utils.with_nodes(self.gd, _prune_constants(nodes, self.config.output_nodes))

    def copy(self, node):
        new = tf.compat.v1.NodeDef()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(self.resolve(i) for i in node.input)
        if node.op == "Placeholder" and "shape" in node.attr and \
                not node.attr["shape"].shape.unknown_rank and node.attr["shape"].shape.dim:
            new.attr["shape"].shape.dim[0].size = 1
        if node.op in _PARAM_ATTRS:
            self.param_to_attr(node, new)
        if node.op != "Const":
            opos = self.position_of(node.name)
            if opos is not None:
                new.attr["opos"].CopyFrom(utils.attr_value(opos))
            ipos = self.input_positions(node)
            if ipos:
                new.attr["ipos"].CopyFrom(utils.attr_value(ipos))
        return new

    def input_positions(self, node, inputs=None):
        """[bit, pos, bit, pos, ...] of the non-constant data inputs, or [] if one is not
        quantized."""
        flat = []
        for inp in inputs if inputs is not None else self.nm.data_inputs(node):
            producer = self.nm.producer(inp)
            if producer is not None and producer.op == "Const":
                continue
            pos = self.position_of(node_name(inp))
            if pos is None:
                return []
            flat += pos
        return flat

    def param_to_attr(self, node, new):
        index, attr = _PARAM_ATTRS[node.op]
        data = [i for i in node.input if not is_control(i)]
        if len(data) < 2:
            return
        index = index % len(data)
        producer = self.nm.producer(data[index])
        if producer is None or producer.op != "Const":
            return  # computed at run time: stays an input
        value = np.asarray(utils.const_value(producer)).astype(np.int64).reshape(-1)
        new.attr[attr].CopyFrom(
            utils.attr_value(int(value[0]) if attr == "axis" and node.op != "Mean"
                             else [int(v) for v in value]))
        kept = [self.resolve(i) for k, i in enumerate(data) if k != index]
        controls = [i for i in new.input if is_control(i)]
        del new.input[:]
        new.input.extend(kept + controls)

    def quantized_const(self, fix):
        """The Const replacing a constant FixNeuron (named like the FixNeuron's Const when
        it is that Const's only consumer, else like the FixNeuron)."""
        node = utils.const_node(self.alias[fix.name], self.values[fix.name].astype(np.float32))
        node.attr["wpos"].CopyFrom(utils.attr_value(pos_attr(fix)))
        return node

    def fused(self, layer):
        conv = self.nm[layer.compute]
        spec_data = registry.COMPUTE_OPS[conv.op].data_index
        new = tf.compat.v1.NodeDef(op=conv.op, name=conv.name)
        for key in sorted(conv.attr):
            new.attr[key].CopyFrom(conv.attr[key])
        data = self.nm.data_inputs(conv)
        if conv.op == "Conv2DBackpropInput":
            shape = self.nm.producer(data[0])
            if shape is not None and shape.op == "Const":
                new.attr["output_shape"].CopyFrom(utils.attr_value(
                    [int(v) for v in utils.const_value(shape).reshape(-1)]))
            else:
                new.input.append(self.resolve(data[0]))
        new.input.append(self.resolve(data[spec_data]))
        fixes = self.em.fixes
        new.attr["weights"].tensor.CopyFrom(tf.make_tensor_proto(
            self.values[layer.weight_fix].astype(np.float32, copy=False)))
        new.attr["wpos"].CopyFrom(utils.attr_value(pos_attr(fixes[layer.weight_fix])))
        if layer.bias_fix is not None:
            new.attr["bias"].tensor.CopyFrom(tf.make_tensor_proto(
                self.values[layer.bias_fix].astype(np.float32, copy=False)))
            new.attr["bpos"].CopyFrom(utils.attr_value(pos_attr(fixes[layer.bias_fix])))
        if layer.input_fix is not None:
            new.attr["ipos"].CopyFrom(utils.attr_value(pos_attr(fixes[layer.input_fix])))
        if layer.output_fix is not None:
            new.attr["opos"].CopyFrom(utils.attr_value(pos_attr(fixes[layer.output_fix])))
        activation, alpha = self.activation(layer)
        new.attr["activation"].CopyFrom(utils.attr_value(activation))
        if alpha is not None:
            new.attr["alpha"].CopyFrom(utils.attr_value(float(alpha)))
        new.attr["fused_nodes"].CopyFrom(tf.compat.v1.AttrValue(
            list=tf.compat.v1.AttrValue.ListValue(s=[n.encode() for n in layer.nodes])))
        if conv.name in self.config.ignore_nodes:
            new.attr["quantize_ignored"].b = True
        controls = [i for n in layer.nodes for i in self.nm[n].input if is_control(i)]
        new.input.extend(sorted(set(self.resolve(i) for i in controls)))
        return new

    def activation(self, layer):
        """('Relu' | 'Relu6' | 'LeakyRelu' | 'None', alpha or None) of a layer."""
        act = layer.activation
        if act is None:
            return "None", None
        if act.kind in ("Relu", "Relu6"):
            return act.kind, None
        if act.alpha is None:  # the LeakyRelu op: alpha is an attribute
            return "LeakyRelu", self.nm[act.nodes[-1]].attr["alpha"].f
        producer = self.nm.producer(act.alpha)
        if producer is not None and producer.op == "Const":
            return "LeakyRelu", float(np.asarray(utils.const_value(producer)).reshape(-1)[0])
        if producer is not None and producer.name in self.values:
            return "LeakyRelu", float(self.values[producer.name].reshape(-1)[0])
        return "LeakyRelu", None


def _evaluate(fixes, config):
    """{FixNeuron name: its output} for FixNeurons of constants, given {name: (NodeDef, value
    of its constant)}: each FixNeuron node runs on its constant fed to a placeholder, in a
    graph without the model (no session over all of the model's constants)."""
    if not fixes:
        return {}
    from decent_q import calibrate, ops  # pylint: disable=import-outside-toplevel
    ops.load_library()
    names = sorted(fixes)
    graph_def = tf.compat.v1.GraphDef()
    feeds = {}
    for k, name in enumerate(names):
        node, value = fixes[name]
        value = np.asarray(value)
        source = graph_def.node.add(name=f"decent_q_constant_{k}", op="Placeholder")
        source.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        source.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
        fix = graph_def.node.add()
        fix.CopyFrom(node)
        del fix.input[:]
        fix.input.append(source.name)
        fix.device = ""
        feeds[f"{source.name}:0"] = value
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    try:
        with tf.compat.v1.Session(graph=graph, config=calibrate.session_config(config)) as sess:
            values = sess.run([f"{n}:0" for n in names], feeds)
    except tf.errors.OpError as err:
        raise QuantizeError(f"cannot evaluate the quantized constants of the eval model: "
                            f"{err.message.splitlines()[0]}") from err
    return dict(zip(names, (np.asarray(v) for v in values)))


def _prune_constants(nodes, keep):
    """`nodes` (NodeDefs) without the Const nodes (and Identity reads of them) that nothing
    reads any more: one pass and a work list (a Const freed by dropping its Identity is
    dropped too)."""
    by_name = {n.name: n for n in nodes}
    readers = {}
    for node in nodes:
        for inp in node.input:
            readers[node_name(inp)] = readers.get(node_name(inp), 0) + 1
    keep = set(keep)

    def droppable(node):
        if node.name in keep or readers.get(node.name, 0):
            return False
        return node.op == "Const" or (node.op == "Identity" and node.input and getattr(
            by_name.get(node_name(node.input[0])), "op", "") == "Const")

    drop = set()
    work = [n for n in nodes if droppable(n)]
    while work:
        node = work.pop()
        if node.name in drop:
            continue
        drop.add(node.name)
        for inp in node.input:
            readers[node_name(inp)] -= 1
            source = by_name.get(node_name(inp))
            if source is not None and source.name not in drop and droppable(source):
                work.append(source)
    return [n for n in nodes if n.name not in drop]
