"""simulate_dpu: make a float graph compute what the DPU computes (before planning).

The DPU divides by shifts, not by arbitrary numbers. Three rewrites, each found then applied:

1. Global average pooling as Mean becomes AvgPool (the DPU has no Mean)::

       Mean(x, axes [1, 2], keep_dims)  ->  AvgPool(x, ksize [1, H, W, 1], VALID)
                                            [-> Squeeze(axis [1, 2]) without keep_dims]

2. AvgPool's ``1/k`` (k = kh * kw) is the DPU's ``m / 2^n``, so the output is multiplied by
   ``factor = k * m / 2^n``::

       3x3: 9*7/64   5x5: 25*10/256   6x6: 36*7/256   7x7: 49*21/1024   14x14: 196*21/4096

   With scale_all_avgpool, any other k <= 256 uses the m / 2^n nearest to 1/k with
   ``m = round(2^n / k)`` over ``n = 0 .. ceil(log2(128 k)) - 1`` (the smallest error, ties to
   the smaller n): m then stays within 8 bits (m <= 128). k = 1 gives factor 1 (no Mul)::

       AvgPool --> Mul(pool, Const <name>/dpu_scale)

   The last node of a rewrite keeps the original node's name (the AvgPool becomes
   ``<name>/pool``, a Squeeze or the Mul takes ``<name>``), so consumers and the user's output
   nodes keep reading the DPU's value. plan.py quantizes AvgPool + Mul-by-constant once, after
   the Mul.

3. LeakyRelu alpha 0.1 becomes 26/256 (fused op attr; the constant of the multi-op forms of
   :data:`decent_q.layers.ACTIVATIONS`, Maximum(Mul(a, x), x) and Keras'
   Sub(Relu(x), Mul(a, Relu(Neg(x)))), whose Mul only the form's last op reads).

4. Hard-sigmoid ``Relu6(x + 3) / 6`` is ``Relu6(x + 3) * 2731 / 16384`` on the DPU: the 1/6
   constant of ``Mul(Relu6(x + 3), 1/6)``, of hard-swish ``Mul(Mul(x, Relu6(x + 3)), 1/6)`` and
   the divisor 6 of the same with RealDiv (the forms of :data:`decent_q.layers.HARD_SIGMOIDS`)
   get the extra factor 6 * 2731 / 16384. Keras 2's ``clip(0.2 x + 0.5, 0, 1)`` is a different
   function (slope 0.2) and is left alone.

Constants are replaced by new Const nodes named after their consumer (``<mul>/dpu_alpha``,
``<mul>/dpu_scale``), so shared constants are never changed for other users. Running the pass
twice equals running it once.

QAT applies the same rewrites to its live training and evaluation graphs
(:mod:`decent_q.live.simulate_dpu`), so it trains with what the DPU computes.
"""

import logging
import math

import numpy as np
import tensorflow as tf

from decent_q import layers
from decent_q.graph import pattern as pt
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name
from decent_q.transforms import cleanup

log = logging.getLogger("decent_q")

# kernel (kh, kw) -> the DPU's factor k * m / 2^n for the kernel sizes it special-cases
SPECIAL_AVGPOOL = {
    (3, 3): 9.0 * 7.0 / 64.0,
    (5, 5): 25.0 * 10.0 / 256.0,
    (6, 6): 36.0 * 7.0 / 256.0,
    (7, 7): 49.0 * 21.0 / 1024.0,
    (14, 14): 196.0 * 21.0 / 4096.0,
}
MAX_SCALED_AREA = 256
LEAKY_ALPHA = 0.1
DPU_LEAKY_ALPHA = 26.0 / 256.0
HARD_SIGMOID_FACTOR = 6.0 * 2731.0 / 16384.0
SCALE_SUFFIX = "dpu_scale"


def avgpool_factor(kh, kw, scale_all=True):
    """The DPU's AvgPool output factor for a kh x kw kernel (1.0 where none applies)."""
    if (kh, kw) in SPECIAL_AVGPOOL:
        return SPECIAL_AVGPOOL[(kh, kw)]
    area = kh * kw
    if not scale_all or area <= 1 or area > MAX_SCALED_AREA:
        return 1.0
    best = None
    for n in range(math.ceil(math.log2(area * 128))):
        m = round(2 ** n / area)
        error = abs(m / 2 ** n - 1.0 / area)
        if best is None or error < best[0]:
            best = (error, m, n)
    _, m, n = best
    return area * m / 2 ** n


def _const_scalar(nm, tensor):
    """The float value of a scalar (or one-element) Const `tensor`, or None."""
    node = nm.const(tensor)
    if node is None:
        return None
    value = utils.const_value(node)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


class Rewrite:
    """Collects the edits of one pass: replaced nodes, nodes added before a node, and inputs
    to swap for new constants."""

    def __init__(self, graph_def, nm=None):
        self.graph_def = graph_def
        self.nm = nm or utils.NodeMap(graph_def)
        self.view = pt.GraphDefView(self.nm)
        self.context = pt.Context(is_param=lambda tensor: self.nm.const(tensor) is not None)
        self.replace = {}   # node name -> [new nodes] put in its place
        self.consts = []    # (consumer name, input index, new Const)

    def set_input_const(self, consumer, index, name, value, dtype):
        self.consts.append((consumer, index, utils.const_node(name, np.asarray(value, dtype))))

    def build(self):
        swap = {}
        for consumer, index, const in self.consts:
            swap.setdefault(consumer, []).append((index, const))
        out = utils.with_nodes(self.graph_def)
        for node in self.graph_def.node:
            for _, const in sorted(swap.get(node.name, ()), key=lambda t: t[0]):
                out.node.append(const)
            for new in self.replace.get(node.name, [node]):
                copy = out.node.add()
                copy.CopyFrom(new)
                if new is node or new.name == node.name:
                    for index, const in swap.get(node.name, ()):
                        copy.input[index] = const.name
        return out


def _pool_scale(pool, scale_all, name=None):
    """Nodes that replace AvgPool `pool` (named `name`, default pool.name): the pool and, if
    the factor is not 1, its DPU scale Const and Mul. The last node carries `name`."""
    name = name or pool.name
    ksize = list(pool.attr["ksize"].list.i)
    fmt = pool.attr["data_format"].s if "data_format" in pool.attr else b"NHWC"
    fmt = fmt or b"NHWC"
    kh, kw = (ksize[1], ksize[2]) if fmt == b"NHWC" else (ksize[2], ksize[3])
    factor = avgpool_factor(kh, kw, scale_all)
    if factor == 1.0:
        return [pool] if pool.name == name else [_renamed(pool, name)], 1.0
    dtype = tf.as_dtype(pool.attr["T"].type).as_numpy_dtype
    scale = utils.const_node(f"{name}/{SCALE_SUFFIX}", np.asarray(factor, dtype))
    pooled = _renamed(pool, f"{name}/pool")
    mul = utils.make_node("Mul", name, [pooled.name, scale.name], T=pool.attr["T"])
    return [pooled, scale, mul], factor


def _renamed(node, name):
    new = tf.compat.v1.NodeDef()
    new.CopyFrom(node)
    new.name = name
    return new


def _already_scaled(rw, pool):
    """True if AvgPool `pool` already feeds the Mul this pass creates."""
    users = rw.nm.node_consumers(pool.name)
    if len(users) != 1 or users[0].op != "Mul":
        return False
    return any(node_name(i) == f"{users[0].name}/{SCALE_SUFFIX}" for i in users[0].input)


def _global_mean_kernel(rw, mean, shapes):
    """(H, W) if `mean` averages a 4-D NHWC tensor over axes 1 and 2 with known H, W."""
    ins = rw.nm.data_inputs(mean)
    if len(ins) != 2:
        return None
    axes_node = rw.nm.const(ins[1])
    if axes_node is None:
        return None
    shape = shapes.get(tensor_name(ins[0]))
    if shape is None or len(shape) != 4:
        return None
    axes = sorted(int(a) % 4 for a in np.asarray(utils.const_value(axes_node)).reshape(-1))
    if axes != [1, 2] or shape[1] is None or shape[2] is None:
        return None
    return shape[1], shape[2]


# Constants larger than this enter static_shapes' graph as placeholders of their shape: no
# shape inference reads the values of a weight tensor, and copying 100 MB of weights into a
# graph only to read shapes cost ResNet50 0.35 s.
_SHAPE_ONLY_BYTES = 4096


def static_shapes(graph_def, config=None):
    """{tensor name: shape as a list (None for unknown dims), or None for unknown rank},
    with config.input_shapes applied to placeholder input nodes."""
    wanted = dict(zip(config.input_nodes, config.input_shapes)) \
        if config is not None and config.input_shapes else {}
    gd = utils.with_nodes(graph_def)
    for node in graph_def.node:
        if node.op == "Const" and len(node.attr["value"].tensor.tensor_content) > \
                _SHAPE_ONLY_BYTES:
            tensor = node.attr["value"].tensor
            gd.node.append(utils.make_node("Placeholder", node.name, dtype=tf.as_dtype(
                tensor.dtype), shape=tf.compat.v1.AttrValue(shape=tensor.tensor_shape)))
            continue
        new = gd.node.add()
        new.CopyFrom(node)
        if node.op == "Placeholder" and node.name in wanted:
            new.attr["shape"].shape.CopyFrom(
                tf.TensorShape([None if d < 0 else d for d in wanted[node.name]]).as_proto())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(gd, name="")
    shapes = {}
    for op in graph.get_operations():
        for t in op.outputs:
            shapes[t.name] = t.shape.as_list() if t.shape.rank is not None else None
    return shapes


def _rewrite_pools(rw, config):
    scale_all = bool(config.scale_all_avgpool) if config is not None else True
    means = [n for n in rw.graph_def.node if n.op == "Mean"]
    shapes = static_shapes(rw.graph_def, config) if means else {}
    for node in rw.graph_def.node:
        if node.op == "AvgPool" and not _already_scaled(rw, node):
            nodes, factor = _pool_scale(node, scale_all)
            if factor != 1.0:
                rw.replace[node.name] = nodes
                log.info("simulate_dpu: %s output scaled by %.10g (DPU average pooling)",
                         node.name, factor)
        elif node.op == "Mean":
            kernel = _global_mean_kernel(rw, node, shapes)
            if kernel is None:
                continue
            x = rw.nm.data_inputs(node)[0]
            keep_dims = "keep_dims" in node.attr and node.attr["keep_dims"].b
            pool = utils.make_node("AvgPool", node.name, [x], T=node.attr["T"],
                                   ksize=[1, kernel[0], kernel[1], 1], strides=[1, 1, 1, 1],
                                   padding="VALID", data_format="NHWC")
            body = node.name if keep_dims else f"{node.name}/avgpool"
            nodes, factor = _pool_scale(pool, scale_all, name=body)
            if not keep_dims:
                nodes.append(utils.make_node("Squeeze", node.name, [body], T=node.attr["T"],
                                             squeeze_dims=[1, 2]))
            rw.replace[node.name] = nodes
            log.info("simulate_dpu: %s (Mean over H, W) -> AvgPool %dx%d, scaled by %.10g",
                     node.name, kernel[0], kernel[1], factor)


# The multi-op LeakyRelu forms (layers.ACTIVATIONS): their Mul by alpha gets the DPU's alpha.
LEAKY_FORMS = tuple(form for form in layers.ACTIVATIONS if form.kind == "LeakyRelu")


def _rewrite_leaky_relu(rw):
    for node in rw.graph_def.node:
        if node.op == "LeakyRelu" and "alpha" in node.attr and \
                math.isclose(node.attr["alpha"].f, LEAKY_ALPHA, rel_tol=1e-6):
            new = _renamed(node, node.name)
            new.attr["alpha"].f = DPU_LEAKY_ALPHA
            rw.replace[node.name] = [new]
            log.info("simulate_dpu: %s alpha 0.1 -> 26/256", node.name)
        elif node.op == "Mul":
            index = _leaky_alpha_index(rw, node)
            if index is not None:
                alpha = rw.nm.data_inputs(node)[index]
                dtype = utils.const_value(rw.nm.producer(alpha)).dtype
                rw.set_input_const(node.name, index, f"{node.name}/dpu_alpha",
                                   DPU_LEAKY_ALPHA, dtype)
                log.info("simulate_dpu: %s alpha 0.1 -> 26/256", node.name)


def _leaky_alpha_index(rw, mul):
    """The input index of the alpha 0.1 of `mul`, the Mul of a multi-op LeakyRelu form read
    only by the form's last op, or None."""
    users = rw.nm.node_consumers(mul.name)
    if len(users) != 1:
        return None
    for form in LEAKY_FORMS:
        for found in pt.matches(form.pattern(pt.Tensor()), users[0].name, rw.view, rw.context):
            alpha = _const_scalar(rw.nm, found["alpha"])
            if found["mul"] == mul.name and alpha is not None and \
                    math.isclose(alpha, LEAKY_ALPHA, rel_tol=1e-6):
                return [tensor_name(i) for i in rw.nm.data_inputs(mul)].index(found["alpha"])
    return None


def _rewrite_hard_sigmoid(rw):
    """The 1/6 (or the divisor 6) of each hard-sigmoid form (layers.HARD_SIGMOIDS) gets the
    DPU's factor."""
    for node in rw.graph_def.node:
        found = layers.match_hard_sigmoid(rw.view, node.name)
        if found is None:
            continue
        scale = found[1]["scale"]
        index = [node_name(i) for i in rw.nm.data_inputs(node)].index(scale)
        value = _const_scalar(rw.nm, scale)
        new = value / HARD_SIGMOID_FACTOR if node.op == "RealDiv" else \
            value * HARD_SIGMOID_FACTOR
        dtype = utils.const_value(rw.nm[scale]).dtype
        rw.set_input_const(node.name, index, f"{node.name}/{SCALE_SUFFIX}", new, dtype)
        log.info("simulate_dpu: %s hard-sigmoid scaled by 6*2731/16384", node.name)


def rewrite_steps(config):
    """The rewrites, one kind per round: each reads the graph the previous one wrote. A step
    records its edits in a :class:`Rewrite` (also used by :mod:`decent_q.live.simulate_dpu`)."""
    return (lambda rw: _rewrite_pools(rw, config), _rewrite_leaky_relu, _rewrite_hard_sigmoid)


def simulate_dpu(graph_def, config=None):
    """Rewrites `graph_def` to compute as the DPU does (see the module docstring).

    Args:
      graph_def: a float GraphDef (after clean-up and batch-norm folding).
      config: QuantizeConfig; scale_all_avgpool and input_shapes (to know the H, W of a Mean
        over a placeholder of unknown shape) are read. None: scale_all_avgpool=1.

    Returns:
      A new GraphDef, or `graph_def` itself when there was nothing to rewrite.
    """
    ends = cleanup.sinks(graph_def)
    nm = None
    for step in rewrite_steps(config):
        rw = Rewrite(graph_def, nm)
        step(rw)
        nm = rw.nm
        if rw.replace or rw.consts:
            graph_def, nm = rw.build(), None
    keep = list(config.input_nodes) + list(config.output_nodes) if config is not None else []
    return cleanup.remove_dead(graph_def, keep=keep + ends)
