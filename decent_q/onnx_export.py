"""ONNX export of a quantized eval model (docs/onnx.md).

    quantize_eval_model.pb (EVAL FixNeurons)
      -> each FixNeuron over a Const runs once in TensorFlow; a Const of its on-grid values
         takes the FixNeuron's name                                     (_weights_on_grid)
      -> tf2onnx converts the float ops; decent_q's rewriter turns each FixNeuron into
         QuantizeLinear -> DequantizeLinear, scale 2^-pos               (_FixNeuronRewriter)
      -> onnx.checker, then the file is written atomically              (export)
"""

import contextlib
import dataclasses
import hashlib
import heapq
import logging
import os
import re

import numpy as np
import tensorflow as tf

from decent_q.config import DEFAULT_ONNX_OPSET as DEFAULT_OPSET
from decent_q.config import MIN_ONNX_OPSET as MIN_OPSET
from decent_q.config import ONNX_ROUNDINGS as ROUNDINGS
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized
from decent_q.graph import utils
from decent_q.graph.utils import node_name
from decent_q.ops import MAX_POS, MIN_POS, Mode
from decent_q.transforms import cleanup

# ROUNDINGS: "dpu", FixNeuron's rounding, exactly (the eval model's numbers); "half_even",
# QuantizeLinear's own, in the form ONNX Runtime runs with integer kernels (_FixNeuronRewriter).

_NOT_OUTPUTS = frozenset({"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert"})
log = logging.getLogger("decent_q")
_INSTALL = "ONNX export needs tf2onnx, onnx and onnxruntime: pip install 'decent_q[onnx]'"


@dataclasses.dataclass(frozen=True)
class _Point:
    """A FixNeuron as ONNX sees it: scale 2^-pos, integer codes in [lo, hi]."""
    name: str
    bit_width: int
    pos: int
    mode: int
    lo: int
    hi: int

    @property
    def scale(self):
        return np.float32(2.0 ** -self.pos)

    @property
    def wide(self):
        """Codes that no QuantizeLinear type of opsets up to 20 holds (int16 came in 21)."""
        return self.bit_width > 8


def max_opset():
    """The newest opset the installed tf2onnx writes."""
    try:
        from tf2onnx import constants  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise QuantizeError(_INSTALL) from err
    return max(constants.OPSET_TO_IR_VERSION)


def _tf2onnx_version():
    import tf2onnx  # pylint: disable=import-outside-toplevel
    return tf2onnx.__version__


def check_options(opset, rounding):
    """Raises ConfigError naming the option unless both are values decent_q exports with."""
    if rounding not in ROUNDINGS:
        raise ConfigError(f"onnx_rounding must be one of {', '.join(ROUNDINGS)}, got "
                          f"{rounding!r}")
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ConfigError(f"onnx_opset must be an integer from {MIN_OPSET} to {top} (tf2onnx "
                          f"sets QuantizeLinear's axis, an opset {MIN_OPSET} attribute; the "
                          f"installed tf2onnx writes up to {top}), got {opset!r}")


def to_onnx(eval_graph_def, opset=DEFAULT_OPSET, rounding="dpu", input_nodes=None,
            output_nodes=None):
    """The ONNX model (onnx.ModelProto) of an eval model's GraphDef; writes nothing.

    Args:
      eval_graph_def: a quantize eval model (FixNeurons in EVAL phase).
      opset: ONNX opset, MIN_OPSET .. max_opset().
      rounding: "dpu" (default; the eval model's numbers exactly) or "half_even" (ONNX
        Runtime's integer kernels; ties of activations round to even), see docs/onnx.md.
      input_nodes: the model's inputs (default: every Placeholder).
      output_nodes: the model's outputs (default: every node nothing reads).

    Raises:
      ConfigError: a bad opset or rounding.
      QuantizeError: not a quantized eval model, a missing node, or an op tf2onnx cannot
        convert; the message names it.
    """
    check_options(opset, rounding)
    points = _points(eval_graph_def)
    nm = utils.NodeMap(eval_graph_def)
    inputs = list(input_nodes or [n.name for n in eval_graph_def.node if n.op == "Placeholder"])
    outputs = list(output_nodes or [n for n in cleanup.sinks(eval_graph_def)
                                    if nm[n].op not in _NOT_OUTPUTS])
    if not inputs:
        raise QuantizeError("the eval model has no Placeholder; give input_nodes")
    utils.check_nodes_exist(nm, inputs, "input node")
    utils.check_nodes_exist(nm, outputs, "output node")
    wide = sorted(name for name, point in points.items() if point.wide)
    if wide:
        log.warning("%d quantization points are wider than 8 bits (%s%s): the ONNX model "
                    "computes their values with float ops, without QuantizeLinear (int16 "
                    "needs opset 21, which tf2onnx %s does not write)", len(wide),
                    ", ".join(wide[:3]), ", ..." if len(wide) > 3 else "", _tf2onnx_version())
    graph_def = _weights_on_grid(eval_graph_def, points)
    return _convert(graph_def, points, opset, rounding, inputs, outputs)


def export(eval_model, output_path, opset=DEFAULT_OPSET, rounding="dpu", input_nodes=None,
           output_nodes=None):
    """Writes the ONNX model of `eval_model` (a quantize_eval_model.pb path or its GraphDef)
    to `output_path`; on any error nothing is written. Returns output_path.

    Raises: as :func:`to_onnx`; QuantizeError also for an unreadable input or an unwritable
    folder."""
    graph_def = utils.load_graph_def(os.fspath(eval_model)) \
        if isinstance(eval_model, (str, os.PathLike)) else eval_model
    model = to_onnx(graph_def, opset, rounding, input_nodes, output_nodes)
    utils.prepare_output_dir(os.path.dirname(os.path.abspath(output_path)))
    utils.write_atomic(output_path, model.SerializeToString(deterministic=True))
    return output_path


def _points(graph_def):
    """{FixNeuron name: _Point}; refuses graphs that are not eval models."""
    dynamic = [n.name for n in graph_def.node if n.op == "FixNeuronDynamic"]
    if dynamic:
        raise QuantizeError(f"{dynamic[0]} is a FixNeuronDynamic: this is a calibration or "
                            "training graph, not an eval model; export the "
                            "quantize_eval_model.pb that quantize or CreateQuantizeDeployGraph "
                            "wrote")
    fixes = quantized.fix_neurons(graph_def)
    if not fixes:
        raise QuantizeError("the graph has no FixNeuron, so it is not a quantize eval model "
                            "(a float graph or a deploy_model.pb); export the "
                            "quantize_eval_model.pb that quantize or CreateQuantizeDeployGraph "
                            "wrote")
    points = {}
    for name, node in fixes.items():
        phase = int(node.attr["phase"].i)
        if phase != 1:
            raise QuantizeError(f"FixNeuron {name} is in phase {phase}, not EVAL (1): this is "
                                "not an eval model; export quantize_eval_model.pb")
        attrs = quantized.fix_attributes(node)
        hi = 2 ** (attrs["bit_width"] - 1) - 1
        symmetric = attrs["arch_type"] == "DPUCADF8H" and attrs["mode"] == Mode.ACTIVATION
        points[name] = _Point(name, attrs["bit_width"],
                              max(MIN_POS, min(MAX_POS, quantized.position(node))), attrs["mode"],
                              -hi if symmetric else -hi - 1, hi)
    return points


def _weights_on_grid(graph_def, points):
    """A copy where each FixNeuron whose input is a Const is replaced by a Const of its output
    (the FixNeuron kernel computes it), keeping the FixNeuron's name."""
    model = quantized.EvalModel(graph_def)
    weights = [name for name in points if model.fix_input_const(name) is not None]
    if not weights:
        return graph_def
    graph = utils.import_graph(graph_def)
    options = tf.compat.v1.ConfigProto(device_count={"GPU": 0})  # the kernel is CPU-only
    options.graph_options.rewrite_options.disable_meta_optimizer = True
    with tf.compat.v1.Session(graph=graph, config=options) as sess:
        values = sess.run([graph.get_tensor_by_name(w + ":0") for w in weights])
    on_grid = dict(zip(weights, values))
    nodes = [utils.const_node(n.name, on_grid[n.name]) if n.name in on_grid else n
             for n in graph_def.node]
    return utils.with_nodes(graph_def, nodes)


def _convert(graph_def, points, opset, rounding, inputs, outputs):
    try:
        import onnx  # pylint: disable=import-outside-toplevel
        from tf2onnx import optimizer, tfonnx  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise QuantizeError(_INSTALL) from err
    rename = {f"{n}:0": n for n in inputs + outputs}
    with _tf2onnx_errors() as errors, tf.Graph().as_default() as tf_graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        try:
            graph = tfonnx.process_tf_graph(
                tf_graph, opset=opset, input_names=[f"{n}:0" for n in inputs],
                output_names=[f"{n}:0" for n in outputs], tensors_to_rename=rename,
                custom_rewriter=[_FixNeuronRewriter(points, rounding)])
            graph = optimizer.optimize_graph(graph, catch_errors=False)
        except Exception as err:  # pylint: disable=broad-except
            what = errors[0] if errors else f"{type(err).__name__}: {err}"
            raise QuantizeError(f"tf2onnx cannot convert the eval model: {what}") from err
    model = graph.make_model("decent_q quantize eval model")
    for node in model.graph.node:  # tf2onnx leaves an op it has no handler for as it was
        if not onnx.defs.has(node.op_type, node.domain):
            raise QuantizeError(f"node {node.name}: tf2onnx cannot convert TensorFlow op "
                                f"{node.op_type} to ONNX opset {opset}; try a newer "
                                "onnx_opset, or end the exported model before it "
                                "(output_nodes)")
    model = _canonical(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise QuantizeError(f"the exported ONNX model does not pass onnx.checker: "
                            f"{str(err).splitlines()[0]}") from err
    return model


def _canonical(model):
    """The model with its generated names and its node order derived from its structure.

    tf2onnx names the nodes it adds ``<name>__<counter>`` and its optimizers visit nodes in an
    order that changes from call to call, so the same graph can come out with other names and
    another node order. Here each tensor gets a digest of what computes it (op, attributes,
    input digests; an initializer's content), each generated name (one holding a
    ``__<counter>``) becomes ``<name without counters>__<digest prefix>``, and the nodes are sorted
    topologically, ties by name: the same eval model gives the same bytes. Other names (those
    of the TensorFlow graph) stay. tf2onnx merges equal constants under the name of whichever it met
    first, so an initializer is named by its digest alone.
    """
    import onnx  # pylint: disable=import-outside-toplevel
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        return model  # control flow (If / Loop bodies): left as tf2onnx wrote it
    fixed = {v.name for v in list(graph.input) + list(graph.output)}
    digest, renamed = {name: name for name in fixed}, {}
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}

    def new_name(old, text):
        if old in fixed or not re.search(r"__\d+", old):
            return old
        base = re.sub(r"__\d+|:\d+$", "", old)  # counters can nest: X__145_DequantizeLinear__201
        name = f"{base}__{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    for init in graph.initializer:
        content = _copy(init)
        content.name = ""
        digest[init.name] = hashlib.sha1(
            content.SerializeToString(deterministic=True)).hexdigest()
        name = init.name if init.name in fixed else f"const__{digest[init.name][:12]}"
        while name in taken and name != init.name:
            name += "_"
        taken.add(name)
        renamed[init.name] = init.name = name
    for node in graph.node:  # tf2onnx writes them in a topological order
        attrs = [a.SerializeToString(deterministic=True).hex() for a in node.attribute]
        text = "|".join([node.op_type, node.domain, *attrs,
                         *(digest.get(i, i) for i in node.input)])
        node.name = new_name(node.name, text)
        for index, out in enumerate(node.output):
            digest[out] = hashlib.sha1(f"{text}#{index}".encode()).hexdigest()
            renamed[out] = new_name(out, digest[out])
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed[o] for o in node.output]
    del graph.value_info[:]  # shapes of inner tensors, under the old names; optional in ONNX
    unknown = {}  # tf2onnx's unk__<counter> sizes (a free batch size): unknown_0, unknown_1, ...
    for value in list(graph.input) + list(graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if re.fullmatch(r"unk__\d+", dim.dim_param):
                dim.dim_param = unknown.setdefault(dim.dim_param, f"unknown_{len(unknown)}")
    _sort_nodes(graph)
    graph.initializer.sort(key=lambda t: t.name)
    return model


def _copy(proto):
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy


def _sort_nodes(graph):
    """Topological order, ties broken by node name."""
    producer = {out: node.name for node in graph.node for out in node.output}
    nodes = {node.name: node for node in graph.node}
    waiting = {name: {producer[i] for i in node.input if i in producer}
               for name, node in nodes.items()}
    users = {}
    for name, needs in waiting.items():
        for need in needs:
            users.setdefault(need, []).append(name)
    ready = [name for name, needs in waiting.items() if not needs]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(nodes[name])
        for user in users.get(name, []):
            waiting[user].discard(name)
            if not waiting[user]:
                heapq.heappush(ready, user)
    if len(order) != len(nodes) or len(nodes) != len(graph.node):
        raise QuantizeError("internal error: the exported graph has a cycle or repeats a node "
                            "name; rerun with --debug and report it")
    del graph.node[:]
    graph.node.extend(order)


@contextlib.contextmanager
def _tf2onnx_errors():
    """Silences tf2onnx's log; yields the list its error messages are collected in."""
    errors = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage().splitlines()[0])

    tf2onnx_log = logging.getLogger("tf2onnx")
    saved = tf2onnx_log.handlers[:], tf2onnx_log.propagate, tf2onnx_log.level
    tf2onnx_log.handlers[:] = [Collect()]
    tf2onnx_log.propagate = False
    tf2onnx_log.setLevel(logging.ERROR)
    try:
        yield errors
    finally:
        tf2onnx_log.handlers[:], tf2onnx_log.propagate, level = saved
        tf2onnx_log.setLevel(level)


class _FixNeuronRewriter:
    """A tf2onnx rewriter (it runs before op conversion): each FixNeuron, and each Const that
    took a weight FixNeuron's name, becomes QuantizeLinear -> DequantizeLinear (scale 2^-pos)
    whose output keeps the FixNeuron's tensor name.

    - Weights are on their grid already, so QuantizeLinear's rounding does not change them.
      A bias (of a Conv2D, BiasAdd, Gemm or transposed conv) stays a float Const of its
      on-grid values: ONNX Runtime's integer kernels take a float bias (an int8 pair would
      keep the layer in float) and quantize it to int32 at the accumulator's scale
      2^-(px + pw), exactly unless the bias is finer (pb > px + pw; docs/onnx.md).
    - Activations, rounding "dpu": x * 2^pos is rounded half up (half away from zero for a
      WEIGHT-mode FixNeuron of a computed tensor) to the integer codes, clamped to [lo, hi]
      and scaled back, so that QuantizeLinear only re-encodes grid values. int8, zero point 0.
    - Activations, rounding "half_even": x goes to QuantizeLinear (after a Clip if [lo, hi]
      is narrower than the type's range), as uint8 with zero point 128 (the same codes plus
      128: ONNX Runtime's x86 integer kernels take uint8 activations), and a Relu the
      FixNeuron reads gets a QuantizeLinear -> DequantizeLinear of its input too, so the conv
      before it ends in QuantizeLinear (Q(relu(x)) == relu(Q(x)) for zero point 0).
    - Widths above 8 bits: no integer type holds their codes in the opsets tf2onnx writes
      (int16 QuantizeLinear needs opset 21), so they are only the float ops computing the
      FixNeuron's values exactly, with either rounding (weights: the on-grid Const).
    """

    def __init__(self, points, rounding):
        self.points = points
        self.rounding = rounding

    def __call__(self, g, ops):
        for node in sorted(ops, key=lambda n: n.name):  # names: the same file every time
            point = self.points.get(node.name)
            if point is None or node.type not in ("FixNeuron", "Const"):
                continue
            if node.type == "FixNeuron":
                self._activation(g, point, node)
            elif not point.wide and not self._float_bias(g, node):
                self._weight(g, point, node)
        return g.get_nodes()

    @staticmethod
    def _float_bias(g, node):
        """Whether every reader uses the Const as a layer's bias (it then stays float)."""
        out = node.output[0]
        users = g.find_output_consumers(out)
        return bool(users) and all(_bias_layer(g, user, out) for user in users)

    def _weight(self, g, point, node):
        from tf2onnx.utils import make_name  # pylint: disable=import-outside-toplevel
        out = node.output[0]
        values = g.make_const(make_name(f"{point.name}/on_grid"),
                              node.get_tensor_value(as_list=False)).output[0]
        g.remove_node(node.name)
        self._qdq(g, point, values, out, unsigned=False)

    def _activation(self, g, point, node):
        from tf2onnx.utils import make_name  # pylint: disable=import-outside-toplevel
        out, x = node.output[0], node.input[0]
        g.remove_node(node.name)
        if point.wide:
            g.make_node("Identity", [self._to_grid(g, point, x)], outputs=[out],
                        name=f"{point.name}/identity", shapes=[g.get_shape(x)],
                        dtypes=[g.get_dtype(x)])
            return
        unsigned = self.rounding == "half_even"
        relu = g.get_node_by_output(x)
        if unsigned and relu is not None and relu.type == "Relu" and x not in g.outputs \
                and not g.find_output_consumers(x):
            before = self._qdq(g, point, self._to_grid(g, point, relu.input[0]),
                               make_name(f"{point.name}/before_relu"), unsigned)
            g.replace_input(relu, relu.input[0], before, 0)
        self._qdq(g, point, self._to_grid(g, point, x), out, unsigned)

    @staticmethod
    def _qdq(g, point, x, out, unsigned):
        """QuantizeLinear -> DequantizeLinear of x into tensor `out`; returns out."""
        from onnx import TensorProto  # pylint: disable=import-outside-toplevel
        from tf2onnx.utils import make_name  # pylint: disable=import-outside-toplevel
        zero = np.uint8(128) if unsigned else np.int8(0)
        shape, dtype = g.get_shape(x), g.get_dtype(x)
        q = g.make_node("QuantizeLinear", [x, _const(g, point, "scale", point.scale),
                                           _const(g, point, "zero_point", zero)],
                        name=make_name(f"{point.name}/quantize"), shapes=[shape],
                        dtypes=[TensorProto.UINT8 if unsigned else TensorProto.INT8])
        g.make_node("DequantizeLinear", [q.output[0], q.input[1], q.input[2]], outputs=[out],
                    name=make_name(f"{point.name}/dequantize"), shapes=[shape], dtypes=[dtype])
        return out

    def _to_grid(self, g, point, x):
        """The float ops before QuantizeLinear for an activation (class docstring)."""
        from tf2onnx.utils import make_name  # pylint: disable=import-outside-toplevel
        shape, dtype = g.get_shape(x), g.get_dtype(x)

        def op(kind, *inputs, out_dtype=dtype, **attr):
            return g.make_node(kind, list(inputs), attr=attr, shapes=[shape], dtypes=[out_dtype],
                               name=make_name(f"{point.name}/{kind.lower()}")).output[0]

        def const(what, value):
            return _const(g, point, what, np.float32(value))

        if self.rounding == "half_even" and not point.wide:
            if (point.lo, point.hi) == (-128, 127):
                return x
            return op("Clip", x, const("lo", point.lo * point.scale),
                      const("hi", point.hi * point.scale))
        v = op("Mul", x, const("inverse_scale", 2.0 ** point.pos))
        if point.mode == Mode.ACTIVATION:
            codes = _round_half_up(op, v, const)
        else:  # half away from zero: the sign times |v| rounded half up
            codes = op("Mul", op("Sign", v), _round_half_up(op, op("Abs", v), const))
        codes = op("Clip", codes, const("lo", point.lo), const("hi", point.hi))
        return op("Mul", codes, const("scale", point.scale))


def _round_half_up(op, v, const):
    """floor(v) + (v - floor(v) >= 0.5): exact in float32, unlike floor(v + 0.5)
    (0.49999997 + 0.5 rounds to 1.0)."""
    from onnx import TensorProto  # pylint: disable=import-outside-toplevel
    floor = op("Floor", v)
    up = op("GreaterOrEqual", op("Sub", v, floor), const("half", 0.5),
            out_dtype=TensorProto.BOOL)
    return op("Add", floor, op("Cast", up, to=TensorProto.FLOAT))


def _bias_layer(g, user, bias):
    """(input tensor, weight tensor) of the layer whose bias `user` reads `bias` as, or None.
    At rewrite time tf2onnx has merged a BiasAdd into the Conv2D or Conv2DBackpropInput
    before it, and a MatMul + BiasAdd of known shapes into a Gemm."""
    if user.type in ("Conv2D", "Gemm") and user.input[2:] == [bias]:
        return user.input[0], user.input[1]
    if user.type == "Conv2DBackpropInput" and user.input[3:] == [bias]:
        return user.input[2], user.input[1]
    if user.type == "BiasAdd" and user.input[1] == bias:
        layer = g.get_node_by_output(user.input[0])
        if layer is not None and layer.type in ("Conv2D", "MatMul", "DepthwiseConv2dNative"):
            return layer.input[0], layer.input[1]
        if layer is not None and layer.type == "Conv2DBackpropInput":
            return layer.input[2], layer.input[1]
    return None


def _const(g, point, what, value):
    from tf2onnx.utils import make_name  # pylint: disable=import-outside-toplevel
    return g.make_const(make_name(f"{point.name}/{what}"), np.asarray(value)).output[0]
