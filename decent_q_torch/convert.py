"""From a float ``torch.nn.Module`` to the quantized model (torch.fx).

Steps (docs/pytorch.md "Conversion"):

1. ``torch.fx.symbolic_trace`` the model; run the example input through it (ShapeProp) to know
   which nodes carry tensors.
2. Fold each BatchNorm into the Conv / Linear before it (the only user of a layer called once);
   optionally ReLU6 -> ReLU and SiLU -> Hardswish (configuration file); with ``include_cle``,
   post-training only, cross-layer equalization (equalize.py).
3. Plan the quantization points with the TensorFlow flow's rules (docs/placement.md): weights
   and bias of each layer; the layer's output after a ReLU / ReLU6 / LeakyReLU that is its only
   user; every model input (method maxmin); the output of each pass-through op (pooling, add,
   concat, reshapes, ...) whose data inputs are all quantized, an add followed only by a ReLU
   quantized once, after the ReLU; a layer's data input that nothing quantized yet. Softmax,
   sigmoid, tanh and the like stay float; so does any op not listed (with a VAIQ_WARN).
4. Insert the points: layers become their ``decent_q_torch.nn`` classes, the other points are
   ``FixNeuron`` modules under ``points`` called right after the node whose output they
   quantize.

Point names (the keys of Quant_info.json): ``<Model>::input_<i>`` for inputs,
``<Model>::<node>`` for activations (the fx node name, e.g. ``layer1_0_relu_1``), and
``<Model>::<module path>.weight`` / ``.bias`` for parameters.
"""

import copy
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from decent_q_torch import equalize, log
from decent_q_torch import nn as qnn
from decent_q_torch.errors import QuantizeError
from decent_q_torch.points import FixNeuron

_ACTIVATION_MODULES = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU)
_ACTIVATION_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.leaky_relu, torch.relu_)
_ACTIVATION_METHODS = ("relu", "relu_")
_PASS_MODULES = (
    torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d, torch.nn.AvgPool1d,
    torch.nn.AvgPool2d, torch.nn.AvgPool3d, torch.nn.AdaptiveAvgPool1d,
    torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d, torch.nn.AdaptiveMaxPool2d,
    torch.nn.Flatten, torch.nn.Unflatten, torch.nn.Upsample, torch.nn.UpsamplingNearest2d,
    torch.nn.UpsamplingBilinear2d, torch.nn.ZeroPad2d, torch.nn.ConstantPad2d,
    torch.nn.ReflectionPad2d, torch.nn.PixelShuffle, torch.nn.PixelUnshuffle,
    torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d) + _ACTIVATION_MODULES
_IDENTITY_MODULES = (torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d)
_FLOAT_MODULES = (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Sigmoid, torch.nn.Tanh,
                  torch.nn.SiLU, torch.nn.GELU, torch.nn.Softplus, torch.nn.ELU)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_PASS_FUNCTIONS = _ADD_FUNCTIONS + _ACTIVATION_FUNCTIONS + (
    torch.cat, torch.concat, torch.flatten, torch.reshape, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, torch.mean, operator.mul, torch.mul, operator.getitem,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.interpolate, F.pad, F.hardswish,
    F.hardsigmoid, torch.nn.functional.pixel_shuffle, torch.sub, operator.sub)
_PASS_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                 "unsqueeze", "mean", "add", "add_", "mul", "sub", "expand_as") + \
    _ACTIVATION_METHODS
_IDENTITY_FUNCTIONS = (F.dropout,)
_FLOAT_FUNCTIONS = (torch.softmax, F.softmax, F.log_softmax, torch.sigmoid, F.sigmoid,
                    torch.tanh, F.silu, F.gelu, torch.exp, torch.argmax)
_FLOAT_METHODS = ("softmax", "log_softmax", "sigmoid", "tanh", "exp", "argmax", "float",
                  "double")


def model_name(module):
    return type(module).__name__


def trace(module, example_inputs):
    """fx GraphModule of ``module`` (a deep copy, eval mode) with shapes propagated."""
    module = copy.deepcopy(module).eval()
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as e:  # torch.fx raises several types for untraceable Python
        raise QuantizeError(
            f"the model {model_name(module)} cannot be traced by torch.fx ({type(e).__name__}: "
            f"{e}); control flow that depends on tensor values must move out of forward(), or "
            "be wrapped with torch.fx.wrap") from e
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(*example_inputs)
    except Exception as e:
        raise QuantizeError(
            f"the example input does not run through {model_name(module)}: {type(e).__name__}: "
            f"{e}; pass input_args with the shape and device the model takes (e.g. "
            "torch.randn([1, 3, 224, 224]))") from e
    return traced


def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _carries_tensor(node):
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return False
    if isinstance(meta, (list, tuple)):
        return bool(meta)
    return True


def _calls_of(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]


def fold_batch_norms(gm, attach=False):
    """Folds each eval BatchNorm into the Conv / Linear whose only user it is (``attach``:
    QAT, the layer takes the batch norm over and folds it on each forward, nn.attach_batch_norm);
    returns the number folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
                               torch.nn.BatchNorm3d)) or bn.running_mean is None:
            continue
        source = node.args[0]
        layer = _module(gm, source) if isinstance(source, torch.fx.Node) else None
        if not isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                                  torch.nn.Linear)) or len(source.users) != 1 or \
                len(_calls_of(gm, source.target)) != 1:
            continue
        if attach and bn.affine:
            qnn.attach_batch_norm(layer, bn)
        else:
            _fold_into(layer, bn)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def _fold_into(layer, bn):
    """Folds eval batch norm ``bn`` into ``layer``'s weight and bias."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        layer.weight.mul_(scale.reshape([-1] + [1] * (layer.weight.dim() - 1)))
        new_bias = (bias - bn.running_mean) * scale + shift
        layer.bias = torch.nn.Parameter(new_bias.detach().clone())


def replace_modules(gm, old_type, make):
    """Replaces every module of ``old_type`` in the traced model with ``make(old)``."""
    for name, module in list(gm.named_modules()):
        if type(module) is old_type:  # pylint: disable=unidiomatic-typecheck
            parent, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, make(module))


def _classify(gm, node):
    """(role, module): role is one of layer, activation, add, pass, identity, float, unknown."""
    module = _module(gm, node)
    if node.op == "call_module":
        if type(module) in qnn.QUANTIZED:
            return "layer"
        if isinstance(module, _ACTIVATION_MODULES):
            return "activation"
        if isinstance(module, _PASS_MODULES):
            return "pass"
        if isinstance(module, _IDENTITY_MODULES):
            return "identity"
        if isinstance(module, _FLOAT_MODULES):
            return "float"
        return "unknown"
    if node.op == "call_function":
        if node.target in _ACTIVATION_FUNCTIONS:
            return "activation"
        if node.target in _ADD_FUNCTIONS:
            return "add"
        if node.target in _PASS_FUNCTIONS:
            return "pass"
        if node.target in _IDENTITY_FUNCTIONS:
            return "identity"
        if node.target in _FLOAT_FUNCTIONS:
            return "float"
        return "unknown"
    if node.op == "call_method":
        if node.target in _ACTIVATION_METHODS:
            return "activation"
        if node.target in ("add", "add_"):
            return "add"
        if node.target in _PASS_METHODS:
            return "pass"
        if node.target in _FLOAT_METHODS:
            return "float"
        return "unknown"
    return "unknown"


def _op_label(gm, node):
    if node.op == "call_module":
        return type(_module(gm, node)).__name__
    return getattr(node.target, "__name__", str(node.target))


def layer_key(gm, node):
    """(layer type, layer name) that ``layer_quantize_config`` matches for ``node``: the module
    class name and ``<Model>::<module path>`` for a module call, else the function or method
    name and ``<Model>::<node name>``."""
    name = model_name(gm)
    if node.op == "call_module":
        return type(_module(gm, node)).__name__, f"{name}::{node.target}"
    return _op_label(gm, node), f"{name}::{node.name}"


class Plan:
    """Where the points go: ``inputs`` (placeholder nodes), ``outputs`` {node whose output is
    quantized for all users: the node whose layer settings apply}, ``layers`` (layer nodes),
    ``float_nodes`` {node: reason}."""

    def __init__(self):
        self.inputs, self.layers = [], []
        self.outputs, self.float_nodes = {}, {}


def plan(gm, config):
    """The points of traced, folded ``gm`` under QuantConfig ``config``."""
    result = Plan()
    quantized = set()
    data = {n for n in gm.graph.nodes if n.op != "get_attr" and _carries_tensor(n)}
    fused = {}  # an activation finishing a layer or an add: that node
    name = model_name(gm)

    def data_inputs(node):
        return [n for n in node.all_input_nodes if n in data]

    def only_user_finishes(node):
        users = list(node.users)
        return len(users) == 1 and _classify(gm, users[0]) == "activation" and \
            data_inputs(users[0]) == [node]

    def quantize_output(node, owner):
        if config.tensor("activation", *layer_key(gm, owner)) is not None:
            result.outputs[node] = owner
            quantized.add(node)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node in data and config.tensor("input") is not None:
                result.inputs.append(node)
                quantized.add(node)
            continue
        if node.op in ("output", "get_attr") or node not in data:
            continue
        role = _classify(gm, node)
        inputs = data_inputs(node)
        if role == "identity":
            if inputs and all(n in quantized for n in inputs):
                quantized.add(node)
            continue
        if role == "layer":
            result.layers.append(node)
            for source in inputs:
                if source not in quantized:
                    quantize_output(source, source)
            if only_user_finishes(node):
                fused[next(iter(node.users))] = node
            else:
                quantize_output(node, node)
            continue
        if node in fused:
            quantize_output(node, fused[node])
            continue
        if role in ("float", "unknown"):
            reason = "float by design" if role == "float" else \
                f"op {_op_label(gm, node)} is not supported"
            result.float_nodes[node] = reason
            if role == "unknown":
                log.warn(f"{name}::{node.name}: {reason}; left float")
            continue
        # activation, add, pass: quantized when every data input is
        if not inputs or not all(n in quantized for n in inputs):
            result.float_nodes[node] = "an input is not quantized"
            continue
        if role == "add" and only_user_finishes(node):
            fused[next(iter(node.users))] = node
            continue
        quantize_output(node, node)
    return result


def _point_after(gm, node, point_name, module):
    """Calls ``module`` (registered as points.<point_name>) on ``node``'s output for all its
    users."""
    if not hasattr(gm, "points"):
        gm.add_module("points", torch.nn.ModuleDict())
    gm.points[point_name] = module
    with gm.graph.inserting_after(node):
        point = gm.graph.call_module(f"points.{point_name}", (node,))
    node.replace_all_uses_with(point, delete_user_cb=lambda user: user is not point)
    point.meta = dict(node.meta)
    return point


def apply(gm, config, the_plan):
    """Inserts the planned points into ``gm`` (in place); returns {point name: FixNeuron}."""
    name = model_name(gm)
    points = {}
    for i, node in enumerate(the_plan.inputs):
        point = FixNeuron(f"{name}::input_{i}", "input", config.tensor("input"))
        points[point.name] = point
        _point_after(gm, node, f"input_{i}", point)
    for node in the_plan.layers:
        module = _module(gm, node)
        key = layer_key(gm, node)
        depthwise = isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) \
            and module.groups > 1 and module.groups == module.in_channels
        made = []
        for kind, attr in (("weights", "weight"), ("bias", "bias")):
            tensor_config = config.tensor(kind, *key)
            if tensor_config is None or getattr(module, attr) is None:
                made.append(None)
                continue
            made.append(FixNeuron(f"{name}::{node.target}.{attr}", kind, tensor_config,
                                  depthwise=depthwise and kind == "weights"))
            points[made[-1].name] = made[-1]
        qnn.convert_layer(module, *made)
    for node, owner in the_plan.outputs.items():
        point = FixNeuron(f"{name}::{node.name}", "activation",
                          config.tensor("activation", *layer_key(gm, owner)))
        points[point.name] = point
        _point_after(gm, node, node.name, point)
    gm.graph.lint()
    gm.recompile()
    return points


def convert(module, example_inputs, config, qat=False):
    """(quantized GraphModule, {point name: FixNeuron}, Plan) for float ``module``; ``qat``:
    batch norms stay in their layers, folded on each forward (nn.attach_batch_norm)."""
    gm = trace(module, example_inputs)
    if config.convert_relu6_to_relu:
        replace_modules(gm, torch.nn.ReLU6, lambda m: torch.nn.ReLU(inplace=m.inplace))
    if config.convert_silu_to_hswish:
        replace_modules(gm, torch.nn.SiLU, lambda m: torch.nn.Hardswish(inplace=m.inplace))
    fold_batch_norms(gm, attach=qat)
    if config.include_cle and not qat:  # post-training only, as in the TensorFlow flow
        log.note(f"cross-layer equalization: {equalize.equalize(gm)} layer pairs")
    elif config.include_cle:
        log.note("include_cle: not in QAT (cross-layer equalization is post-training only)")
    the_plan = plan(gm, config)
    points = apply(gm, config, the_plan)
    return gm, points, the_plan
