"""cross_layer_equalize (CLE): balance per-channel weight ranges of consecutive layers.

Run on a float graph after batch-norm folding. A chain link, found forwards from a head::

    head: Conv2D | DepthwiseConv2dNative (W1 Const) -> [BiasAdd | Add | AddV2 (b1 Const)]
          -> (Relu | Relu6 | AvgPool | MaxPool | Mul by a Const | Pad)*
          -> tail: Conv2D | DepthwiseConv2dNative (W2 Const, reading the link as data)

Every node from the head to the tail has exactly one consumer and weights are not shared, so
scaling channel c of the head's output by 1/s_c and the tail's input channel c by s_c leaves
the tail's output unchanged: ReLU, max / average pooling, zero padding and multiplication by
a constant commute with a positive per-channel scale. Relu6 does not (it clips at 6): with
replace_relu6=1 it becomes Relu inside a chain (changing outputs only where they exceed 6);
with replace_relu6=0 it ends the chain.

Per channel c (docs/passes.md "Cross-layer equalization")::

    r1_c = max(max|W1[..., c]|, |b1_c|)     head range (output channel c; bias included)
    r2_c = max|W2[..., c, :]|               tail range (input channel c)
    s_c  = clip(sqrt(r2_c / r1_c), 0.01, 100);  s_c = 1 where r1_c + r2_c < 0.5
    W1[..., c] *= s_c;  b1_c *= s_c;  W2[..., c, :] /= s_c

(s_c = 1 also where r1_c = 0: a dead head channel is left alone), so both ranges become
sqrt(r1_c * r2_c) (the head is multiplied by s = 1/s' where
s' = sqrt(r1 / r2) is the usual "head divided by s'" form). Depthwise heads own output channel
c = i * multiplier + m at W1[:, :, i, m]; depthwise tails read input channel i at
W2[:, :, i, :]. The pairs are swept 10 times (a layer is the tail of one pair and the head of
the next, so one sweep does not settle).
"""

import logging

import numpy as np

from decent_q import layers
from decent_q import registry
from decent_q.graph import pattern as pt
from decent_q.graph import utils
from decent_q.graph.utils import node_name

log = logging.getLogger("decent_q")

# Heads and tails: the compute ops whose weights are [kh, kw, in, out | multiplier] (input
# channels on axis 2): Conv2D and DepthwiseConv2dNative.
_EQUALIZED_OPS = frozenset(op for op, spec in registry.COMPUTE_OPS.items() if spec.in_axis == 2)
_LINK_OPS = frozenset({"Relu", "Relu6", "AvgPool", "MaxPool", "Mul", "Pad"})
ROUNDS = 10
S_MIN, S_MAX = 0.01, 100.0
SMALL_RANGE = 0.5

# A head or tail: a compute op (layers.compute) with unshared Const weights, and a head's
# optional bias op with an unshared Const (layers.bias).
_CONV = layers.compute(pt.Tensor("input"))
_BIASED_CONV = layers.bias(_CONV)


class _Pair:
    def __init__(self, head, bias, links, tail):
        self.head, self.bias, self.links, self.tail = head, bias, links, tail


def _single(nm, name):
    users = nm.node_consumers(name)
    if len(users) != 1 or nm.control_consumers.get(name):
        return None
    return users[0]


def _context(nm):
    """Parameters: Consts that only one node reads (scaling them changes no other node)."""
    return pt.Context(is_param=lambda tensor: nm.const(tensor) is not None and
                      len(nm.users(node_name(tensor))) == 1)


def _conv(nm, graph_view, context, name):
    """The match of an equalized compute op `name` (NHWC, unshared Const weights), or None."""
    found = pt.match(_CONV, name, graph_view, context)
    return found if found is not None and nm[name].op in _EQUALIZED_OPS and \
        _nhwc(nm[name]) else None


def _head_end(nm, graph_view, context, head):
    """(bias op or None, the head's last op) of `head`: its bias op if it has a 1-D one."""
    nxt = _single(nm, head.name)
    if nxt is None:
        return None, head
    found = pt.match(_BIASED_CONV, nxt.name, graph_view, context)
    if found is None or found["compute"] != head.name or \
            utils.const_value(nm.producer(found["bias"])).ndim != 1:
        return None, head
    return nxt, nxt


def find_pairs(graph_def, replace_relu6=True):
    """Head/tail pairs (see the module docstring), in graph order."""
    nm = utils.NodeMap(graph_def)
    graph_view, context = pt.GraphDefView(nm), _context(nm)
    pairs = []
    for head in graph_def.node:
        if _conv(nm, graph_view, context, head.name) is None:
            continue
        bias, cur = _head_end(nm, graph_view, context, head)
        links = []
        nxt = _single(nm, cur.name)
        while nxt is not None and nxt.op in _LINK_OPS and _link_ok(nm, nxt, cur, replace_relu6):
            links.append(nxt)
            cur, nxt = nxt, _single(nm, nxt.name)
        tail = None if nxt is None else _conv(nm, graph_view, context, nxt.name)
        if tail is None or node_name(tail["input"]) != cur.name:
            continue
        pairs.append(_Pair(head, bias, links, nxt))
    return pairs


def _nhwc(node):
    return "data_format" not in node.attr or node.attr["data_format"].s in (b"", b"NHWC")


def _link_ok(nm, node, prev, replace_relu6):
    if node.op == "Relu6":
        return replace_relu6
    if node.op == "Mul":
        others = [i for i in nm.data_inputs(node) if node_name(i) != prev.name]
        return len(others) == 1 and nm.const(others[0]) is not None
    if node.op == "Pad":  # zero padding of the data input
        return node_name(nm.data_inputs(node)[0]) == prev.name
    return node.op == "Relu" or _nhwc(node)


def _head_ranges(op, w):
    """Per output channel max |w| of a head's weights."""
    if op == "DepthwiseConv2dNative":
        return np.abs(w).max(axis=(0, 1)).reshape(-1)
    return np.abs(w).max(axis=(0, 1, 2))


def _scale_head(op, w, s):
    return w * s.reshape(layers.channel_shape(op, w.shape))


def _tail_ranges(op, w):
    """Per input channel max |w| of a tail's weights."""
    axis = registry.COMPUTE_OPS[op].in_axis
    return np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis))


def _scale_tail_inverse(op, w, s):
    return w / s.reshape(layers.in_channel_shape(op, w.shape))


def equalize_scales(r1, r2):
    """The per-channel s of docs/passes.md "Cross-layer equalization" (module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r2 / r1)
    s = np.where(np.isfinite(s), s, 1.0)
    s = np.clip(s, S_MIN, S_MAX)
    return np.where(r1 + r2 < SMALL_RANGE, 1.0, s)


def cross_layer_equalize(graph_def, config=None):
    """Equalizes the chains of `graph_def` (see the module docstring); returns a new GraphDef.

    Args:
      graph_def: a float GraphDef after batch-norm folding.
      config: QuantizeConfig; replace_relu6 is read (None: 1).
    """
    replace_relu6 = bool(config.replace_relu6) if config is not None else True
    pairs = find_pairs(graph_def, replace_relu6)
    if not pairs:
        return graph_def
    nm = utils.NodeMap(graph_def)
    values = {}  # const name -> float64 array

    def weight_name(conv):
        return node_name(nm.data_inputs(conv)[1])

    def bias_name(bias_node, cur):
        return next(node_name(i) for i in nm.data_inputs(bias_node) if node_name(i) != cur)

    for pair in pairs:
        for conv in (pair.head, pair.tail):
            name = weight_name(conv)
            values.setdefault(name, utils.const_value(nm[name]).astype(np.float64))
        if pair.bias is not None:
            name = bias_name(pair.bias, pair.head.name)
            values.setdefault(name, utils.const_value(nm[name]).astype(np.float64))
    for _ in range(ROUNDS):
        for pair in pairs:
            w1, w2 = weight_name(pair.head), weight_name(pair.tail)
            r1 = _head_ranges(pair.head.op, values[w1])
            b = bias_name(pair.bias, pair.head.name) if pair.bias is not None else None
            if b is not None:
                r1 = np.maximum(r1, np.abs(values[b]))
            r2 = _tail_ranges(pair.tail.op, values[w2])
            if r1.shape != r2.shape:
                continue
            s = equalize_scales(r1, r2)
            values[w1] = _scale_head(pair.head.op, values[w1], s)
            if b is not None:
                values[b] = values[b] * s
            values[w2] = _scale_tail_inverse(pair.tail.op, values[w2], s)
    relu6 = {n.name for p in pairs for n in p.links if n.op == "Relu6"}
    out = utils.with_nodes(graph_def)
    for node in graph_def.node:
        new = out.node.add()
        if node.name in values:
            dtype = utils.const_value(node).dtype
            new.CopyFrom(utils.const_node(node.name, values[node.name].astype(dtype)))
        else:
            new.CopyFrom(node)
            if node.name in relu6:
                new.op = "Relu"
    for pair in pairs:
        log.info("cross_layer_equalize: %s -> %s equalized", pair.head.name, pair.tail.name)
    return out
