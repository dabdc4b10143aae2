"""Cross-layer equalization of a traced, batch-norm-folded model (``include_cle``).

The TensorFlow flow's pass (docs/passes.md "Cross-layer equalization") on torch layers: a pair
is a head layer, a chain of links, and a tail layer reading the chain::

    head: Conv1d / Conv2d / Conv3d / Linear (W1, b1)
      -> (ReLU | max or average pooling | zero padding | dropout, identity)*
      -> tail: Conv1d / Conv2d / Conv3d / Linear (W2)

Every node from the head to the last link has one user, each layer is called once, and head
and tail are plain or depthwise (a grouped convolution with 1 < groups < channels is neither).
ReLU6 ends a chain (it clips at 6, so it does not commute with a scale) unless
``convert_relu6_to_relu`` made it a ReLU first. Per channel c of the head's output:

    r1_c = max(max|W1[c]|, |b1_c|),  r2_c = max|W2[:, c]|  (a depthwise tail: its filters of c)
    s_c  = clip(sqrt(r2_c / r1_c), 0.01, 100);  s_c = 1 where r1_c + r2_c < 0.5 or r1_c = 0
    W1[c] *= s_c,  b1_c *= s_c,  W2[:, c] /= s_c

so the tail's output is unchanged and both ranges become sqrt(r1_c * r2_c). The pairs are swept
10 times: a layer can be the tail of one pair and the head of the next.
"""

import torch
import torch.nn.functional as F

ROUNDS = 10
S_MIN, S_MAX = 0.01, 100.0
SMALL_RANGE = 0.5

_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
_LINK_MODULES = (torch.nn.ReLU, torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d,
                 torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d,
                 torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d,
                 torch.nn.AdaptiveAvgPool3d, torch.nn.AdaptiveMaxPool2d, torch.nn.ZeroPad2d,
                 torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout2d)
_LINK_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.max_pool2d, F.avg_pool2d,
                   F.adaptive_avg_pool2d, F.dropout)
_LINK_METHODS = ("relu", "relu_")


def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _kind(layer):
    """'plain', 'depthwise' or None (grouped: not equalized)."""
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        return "plain"
    if groups == layer.in_channels:
        return "depthwise"
    return None


def _is_link(gm, node):
    if node.op == "call_module":
        module = _module(gm, node)
        return isinstance(module, _LINK_MODULES)
    if node.op == "call_function":
        return node.target in _LINK_FUNCTIONS
    return node.op == "call_method" and node.target in _LINK_METHODS


def _layer(gm, node, calls):
    module = _module(gm, node)
    if isinstance(module, _LAYERS) and calls.get(node.target) == 1 and _kind(module):
        return module
    return None


def find_pairs(gm):
    """[(head module, tail module)] of traced ``gm``, in graph order."""
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        head = _layer(gm, node, calls)
        if head is None:
            continue
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.all_input_nodes != [current]:
                break
            tail = _layer(gm, user, calls)
            if tail is not None:
                if _fits(head, tail):
                    pairs.append((head, tail))
                break
            if not _is_link(gm, user):
                break
            current = user
    return pairs


def _fits(head, tail):
    """The head's output channels are the tail's input channels (a Linear tail after a
    convolution reads a flattened tensor: not a pair; spatial links keep channels)."""
    out_channels = head.weight.shape[0]
    if isinstance(tail, torch.nn.Linear):
        return isinstance(head, torch.nn.Linear) and tail.in_features == out_channels
    return not isinstance(head, torch.nn.Linear) and tail.in_channels == out_channels


def _tail_ranges(tail):
    """max|W2| per input channel of ``tail``."""
    w = tail.weight.detach().abs()
    if _kind(tail) == "depthwise":
        per_filter = w.reshape(w.shape[0], -1).amax(dim=1)  # filter j reads channel j // m
        return per_filter.reshape(tail.in_channels, -1).amax(dim=1)
    return w.transpose(0, 1).reshape(w.shape[1], -1).amax(dim=1)


def _scale_tail_inputs(tail, inverse):
    """W2[:, c] *= inverse_c (a depthwise tail: its filters of channel c)."""
    w = tail.weight
    if _kind(tail) == "depthwise":
        per_filter = inverse.repeat_interleave(w.shape[0] // tail.in_channels)
        w.mul_(per_filter.reshape([-1] + [1] * (w.dim() - 1)))
    else:
        w.mul_(inverse.reshape([1, -1] + [1] * (w.dim() - 2)))


def equalize_pair(head, tail):
    """One equalization step of the pair (in place)."""
    with torch.no_grad():
        w1 = head.weight
        r1 = w1.detach().abs().reshape(w1.shape[0], -1).amax(dim=1)
        if head.bias is not None:
            r1 = torch.maximum(r1, head.bias.detach().abs())
        r2 = _tail_ranges(tail)
        s = torch.sqrt(r2 / torch.where(r1 > 0, r1, torch.ones_like(r1))).clamp(S_MIN, S_MAX)
        s = torch.where((r1 + r2 < SMALL_RANGE) | (r1 == 0), torch.ones_like(s), s)
        w1.mul_(s.reshape([-1] + [1] * (w1.dim() - 1)))
        if head.bias is not None:
            head.bias.mul_(s)
        _scale_tail_inputs(tail, 1.0 / s)


def equalize(gm):
    """Equalizes every pair of traced, folded ``gm`` (in place); returns the number of pairs."""
    pairs = find_pairs(gm)
    for _ in range(ROUNDS):
        for head, tail in pairs:
            equalize_pair(head, tail)
    return len(pairs)
