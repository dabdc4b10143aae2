"""Folds inference batch norms into the preceding compute layer of a frozen GraphDef.

Matched (constants only; run after constant folding)::

    x -> [SpaceToBatchND] -> conv(x, W) -> [BatchToSpaceND] -> [BiasAdd(b)] -> BN -> ...
    conv = Conv2D | DepthwiseConv2dNative | Conv2DBackpropInput | MatMul
    BN   = FusedBatchNorm{,V2,V3} (is_training=False) | BatchNormWithGlobalNormalization
         | Add(Mul(y, scale), offset)   (the unfused form, after constant folding)

Math, per output channel c::

    scale_c  = gamma_c / sqrt(var_c + eps)
    offset_c = beta_c - mean_c * scale_c
    W'[..., c] = W[..., c] * scale_c          (channel axis from registry.COMPUTE_OPS)
    b'_c       = b_c * scale_c + offset_c      (b = 0 where there was no bias)

The weight Const is replaced by the folded one (copied first if another node shares it); the
batch norm becomes ``BiasAdd(y, b')`` under the batch norm's own name, so its consumers and the
user's output names stay valid.
"""

import numpy as np
import tensorflow as tf

from decent_q import registry
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name
from decent_q.transforms import cleanup


def batch_norm_params(node, nm):
    """(scale, offset) of an inference batch-norm node, or None if not constant/inference."""
    def value(i):
        producer = nm.producer(nm.data_inputs(node)[i])
        return None if producer is None or producer.op != "Const" else \
            utils.const_value(producer).astype(np.float64)

    # Read attrs with their op defaults: a GraphDef may omit default-valued attrs, and
    # node.attr[key] on a missing key would insert an empty value into the caller's graph.
    def attr(key, kind, default):
        return getattr(node.attr[key], kind) if key in node.attr else default

    if node.op.startswith("FusedBatchNorm"):
        if attr("is_training", "b", True):  # the op's default is training mode
            return None
        if attr("data_format", "s", b"NHWC") not in (b"", b"NHWC"):
            return None
        gamma, beta, mean, var = (value(i) for i in range(1, 5))
        eps = attr("epsilon", "f", 0.0001)
    elif node.op == "BatchNormWithGlobalNormalization":
        mean, var, beta, gamma = (value(i) for i in range(1, 5))
        eps = attr("variance_epsilon", "f", 0.0)
        if gamma is not None and not attr("scale_after_normalization", "b", False):
            gamma = np.ones_like(gamma)
    else:
        return None
    if any(v is None or v.size == 0 for v in (gamma, beta, mean, var)):
        return None
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _const_input(nm, node, tensor):
    """The Const value of `node`'s other input than `tensor`, or None."""
    others = [i for i in nm.data_inputs(node) if tensor_name(i) != tensor_name(tensor)]
    if len(others) != 1:
        return None
    producer = nm.producer(others[0])
    return None if producer is None or producer.op != "Const" else \
        (producer.name, utils.const_value(producer).astype(np.float64))


def _single_consumer(nm, name):
    users = nm.node_consumers(name)
    return users[0] if len(users) == 1 else None


def scale_weights(weights, scale, op, transpose_b=False):
    """Multiplies `weights` by a per-output-channel `scale` (see module docstring)."""
    spec = registry.COMPUTE_OPS[op]
    w = weights.astype(np.float64)
    if op == "DepthwiseConv2dNative":
        kh, kw, cin, mult = w.shape
        return (w * scale.reshape(cin, mult)).astype(weights.dtype)
    axis = 0 if (op == "MatMul" and transpose_b) else spec.out_axis
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * scale.reshape(shape)).astype(weights.dtype)


def fold_batch_norms(graph_def, keep=()):
    """Folds every matched batch norm; see the module docstring. Pure: returns a new GraphDef.

    Run it after :func:`decent_q.transforms.cleanup.fold_constants`.
    """
    nm = utils.NodeMap(graph_def)
    new_consts = {}   # const name -> new value
    replaced = {}     # node name -> replacement NodeDef
    dropped = set()
    extra = []
    weight_users = {}
    for node in graph_def.node:
        for inp in node.input:
            weight_users.setdefault(node_name(inp), set()).add(node.name)
    for conv in graph_def.node:
        if conv.op not in registry.COMPUTE_OPS:
            continue
        spec = registry.COMPUTE_OPS[conv.op]
        weight_node = nm.producer(nm.data_inputs(conv)[spec.weight_index])
        if weight_node is None or weight_node.op != "Const":
            continue
        cur = conv
        after = _single_consumer(nm, cur.name)
        if after is not None and after.op == "BatchToSpaceND":
            cur = after
        bias_node, bias = None, None
        nxt = _single_consumer(nm, cur.name)
        if nxt is not None and nxt.op in registry.BIAS_OPS:
            found = _const_input(nm, nxt, cur.name)
            if found is not None and found[1].ndim == 1:
                bias_node, bias = nxt, found[1]
                nxt = _single_consumer(nm, nxt.name)
        if nxt is None:
            continue
        pre = bias_node or cur
        params = None
        bn_nodes = []
        if nxt.op in registry.BATCH_NORM_OPS and \
                tensor_name(nm.data_inputs(nxt)[0]) == tensor_name(pre.name):
            params = batch_norm_params(nxt, nm)
            if params is not None and any(nm.consumers.get(f"{nxt.name}:{k}")
                                          for k in range(1, 6)):
                params = None  # batch statistics are used elsewhere
            bn_nodes = [nxt]
        elif nxt.op == "Mul":
            mul = _const_input(nm, nxt, pre.name)
            add = _single_consumer(nm, nxt.name)
            off = add is not None and add.op in ("Add", "AddV2") and \
                _const_input(nm, add, nxt.name)
            if mul is not None and off and mul[1].ndim <= 1 and off[1].ndim <= 1:
                channels = np.broadcast(mul[1], off[1]).shape
                scale = np.broadcast_to(mul[1], channels or (1,)).astype(np.float64)
                offset = np.broadcast_to(off[1], scale.shape).astype(np.float64)
                params, bn_nodes = (scale, offset), [nxt, add]
        removed = [n.name for n in bn_nodes[:-1]] + ([bias_node.name] if bias_node else [])
        if params is None or any(n in keep for n in removed):
            continue
        scale, offset = params
        weights = utils.const_value(weight_node)
        n_out = weights.shape[spec.out_axis] if conv.op != "DepthwiseConv2dNative" else \
            weights.shape[2] * weights.shape[3]
        if conv.op == "MatMul" and ("transpose_b" in conv.attr and conv.attr["transpose_b"].b):
            n_out = weights.shape[0]
        if scale.size == 1:
            scale, offset = np.full(n_out, scale.item()), np.full(n_out, offset.item())
        if scale.size != n_out:
            continue
        folded = scale_weights(weights, scale, conv.op, ("transpose_b" in conv.attr and conv.attr["transpose_b"].b))
        weight_name = weight_node.name
        if len(weight_users.get(weight_name, ())) > 1:  # shared: give this conv its own copy
            weight_name = f"{conv.name}/folded_weights"
            new = tf.compat.v1.NodeDef()
            new.CopyFrom(conv)
            new.input[spec.weight_index] = weight_name
            replaced[conv.name] = new
            extra.append((weight_node.name, utils.const_node(weight_name, folded)))
        else:
            new_consts[weight_name] = folded
        b = (np.zeros(n_out) if bias is None else bias) * scale + offset
        last = bn_nodes[-1]
        bias_name = f"{last.name}/bias"
        extra.append((last.name, utils.const_node(bias_name, b.astype(np.float32))))
        replaced[last.name] = utils.make_node("BiasAdd", last.name, [cur.name, bias_name],
                                              T=tf.float32)
        dropped.update(removed)
    # Batch norms with no compute op before them become x * scale + offset
    # (docs/batch-norm-folding.md "Batch norms without a compute op").
    for node in graph_def.node:
        if node.op in registry.BATCH_NORM_OPS and node.name not in replaced:
            params = batch_norm_params(node, nm)
            if params is None or any(nm.consumers.get(f"{node.name}:{k}") for k in range(1, 6)):
                continue
            scale, offset = params
            x = nm.data_inputs(node)[0]
            extra.append((node.name, utils.const_node(f"{node.name}/scale",
                                                      scale.astype(np.float32))))
            extra.append((node.name, utils.const_node(f"{node.name}/offset",
                                                      offset.astype(np.float32))))
            extra.append((node.name, utils.make_node("Mul", f"{node.name}/mul",
                                                     [x, f"{node.name}/scale"], T=tf.float32)))
            replaced[node.name] = utils.make_node(
                "BiasAdd", node.name, [f"{node.name}/mul", f"{node.name}/offset"], T=tf.float32)
    if not replaced:
        return graph_def
    nodes = []
    for node in graph_def.node:
        if node.name in dropped:
            continue
        for before, const in extra:
            if before == node.name and const.name.endswith("/folded_weights"):
                nodes.append(const)
        if node.name in new_consts:
            nodes.append(utils.const_node(node.name, new_consts[node.name]))
        elif node.name in replaced:
            for before, const in extra:
                if before == node.name and not const.name.endswith("/folded_weights"):
                    nodes.append(const)
            nodes.append(replaced[node.name])
        else:
            nodes.append(node)
    out = utils.with_nodes(graph_def, nodes)
    return cleanup.remove_dead(out, keep=list(keep) + cleanup.sinks(graph_def))
