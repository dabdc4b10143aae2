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

from decent_q.graph import utils
from decent_q.graph.utils import node_name

log = logging.getLogger("decent_q")

_CONV_OPS = frozenset({"Conv2D", "DepthwiseConv2dNative"})
_BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})
_LINK_OPS = frozenset({"Relu", "Relu6", "AvgPool", "MaxPool", "Mul", "Pad"})
ROUNDS = 10
S_MIN, S_MAX = 0.01, 100.0
SMALL_RANGE = 0.5


class _Pair:
    def __init__(self, head, bias, links, tail):
        self.head, self.bias, self.links, self.tail = head, bias, links, tail


def _const(nm, inp):
    node = nm.producer(inp)
    return node if node is not None and node.op == "Const" else None


def _single(nm, name):
    users = nm.node_consumers(name)
    if len(users) != 1 or nm.control_consumers.get(name):
        return None
    return users[0]


def find_pairs(graph_def, replace_relu6=True):
    """Head/tail pairs (see the module docstring), in graph order."""
    nm = utils.NodeMap(graph_def)
    users = {}
    for node in graph_def.node:
        for inp in node.input:
            users.setdefault(node_name(inp), set()).add(node.name)
    pairs = []
    for head in graph_def.node:
        if head.op not in _CONV_OPS or not _weights_ok(nm, head, users):
            continue
        cur, bias = head, None
        nxt = _single(nm, cur.name)
        if nxt is not None and nxt.op in _BIAS_OPS and len(nm.data_inputs(nxt)) == 2:
            other = [i for i in nm.data_inputs(nxt) if node_name(i) != cur.name]
            const = _const(nm, other[0]) if len(other) == 1 else None
            if const is not None and utils.const_value(const).ndim == 1 and \
                    len(users.get(const.name, ())) == 1:
                bias, cur, nxt = nxt, nxt, _single(nm, nxt.name)
        links = []
        while nxt is not None and nxt.op in _LINK_OPS and _link_ok(nm, nxt, cur, replace_relu6):
            links.append(nxt)
            cur, nxt = nxt, _single(nm, nxt.name)
        if nxt is None or nxt.op not in _CONV_OPS or not nm.data_inputs(nxt) or \
                node_name(nm.data_inputs(nxt)[0]) != cur.name or \
                not _weights_ok(nm, nxt, users):
            continue
        pairs.append(_Pair(head, bias, links, nxt))
    return pairs


def _weights_ok(nm, conv, users):
    ins = nm.data_inputs(conv)
    if len(ins) != 2 or not _nhwc(conv):
        return False
    const = _const(nm, ins[1])
    return const is not None and len(users.get(const.name, ())) == 1


def _nhwc(node):
    return "data_format" not in node.attr or node.attr["data_format"].s in (b"", b"NHWC")


def _link_ok(nm, node, prev, replace_relu6):
    if node.op == "Relu6":
        return replace_relu6
    if node.op == "Mul":
        others = [i for i in nm.data_inputs(node) if node_name(i) != prev.name]
        return len(others) == 1 and _const(nm, others[0]) is not None
    if node.op == "Pad":  # zero padding of the data input
        return node_name(nm.data_inputs(node)[0]) == prev.name
    return node.op == "Relu" or _nhwc(node)


def _head_ranges(op, w):
    """Per output channel max |w| of a head's weights."""
    if op == "DepthwiseConv2dNative":
        return np.abs(w).max(axis=(0, 1)).reshape(-1)
    return np.abs(w).max(axis=(0, 1, 2))


def _scale_head(op, w, s):
    if op == "DepthwiseConv2dNative":
        return w * s.reshape(w.shape[2], w.shape[3])
    return w * s


def _tail_ranges(op, w):
    """Per input channel max |w| of a tail's weights."""
    return np.abs(w).max(axis=(0, 1, 3))


def _scale_tail_inverse(w, s):
    return w / s.reshape(1, 1, -1, 1)


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
            values[w2] = _scale_tail_inverse(values[w2], s)
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
