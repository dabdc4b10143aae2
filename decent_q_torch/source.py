"""``quantize_result/<Model>.py``: the converted model as readable, importable Python.

Every module of the quantized model becomes one attribute ``module_<k>`` built from
``pytorch_nndct.nn`` (quantized layers and FixNeurons, positions included) or ``torch.nn``,
with the name that ``layer_quantize_config`` matches in a comment; ``forward`` is the fx
graph's code. ``load_state_dict(state_dict_of(quant_model))`` gives the same numbers as the
converted model in test mode (tests/pytorch/test_pytorch.py checks it).
"""

import torch
import torch.fx

from decent_q_torch import nn as qnn
from decent_q_torch.points import FixNeuron


def _constructor(module):
    """Python source that builds ``module`` (its parameters come from the state dict)."""
    if isinstance(module, FixNeuron):
        return (f"py_nndct.nn.FixNeuron({module.name!r}, {module.kind!r}, "
                f"py_nndct.config.{module.config!r}, depthwise={module.depthwise!r}, "
                f"pos={module.pos!r})")
    if type(module) in qnn.QUANTIZED.values():
        points = ", ".join(f"{attr}={_constructor(getattr(module, attr))}"
                           for attr in ("weight_point", "bias_point")
                           if getattr(module, attr) is not None)
        return f"py_nndct.nn.{type(module).__name__}({module.extra_repr()}, {points})"
    return f"torch.nn.{type(module).__name__}({module.extra_repr()})"


def _leaf_modules(gm):
    """{module path: module} of the call_module nodes, in graph order."""
    return {node.target: gm.get_submodule(node.target)
            for node in gm.graph.nodes if node.op == "call_module"}


def state_dict_keys(gm):
    """{key in gm.state_dict(): key in the generated model's}."""
    mapping = {}
    flat = {path: f"module_{k}" for k, path in enumerate(_leaf_modules(gm))}
    for key in gm.state_dict():
        path, _, leaf = key.rpartition(".")
        while path and path not in flat:  # a point's buffer inside a layer: conv1.weight_point
            path, _, inner = path.rpartition(".")
            leaf = f"{inner}.{leaf}"
        if path in flat:
            mapping[key] = f"{flat[path]}.{leaf}"
    return mapping


def state_dict_of(gm):
    """gm's state dict under the generated model's keys."""
    mapping = state_dict_keys(gm)
    return {mapping[k]: v for k, v in gm.state_dict().items() if k in mapping}


def write(gm, class_name, layer_names):
    """The source of ``<class_name>.py`` for quantized GraphModule ``gm``; ``layer_names``
    {module path: name shown in the comment}."""
    modules = _leaf_modules(gm)
    flat = {path: f"module_{k}" for k, path in enumerate(modules)}
    graph = torch.fx.Graph()
    env = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            new = graph.call_module(flat[node.target],
                                    torch.fx.node.map_arg(node.args, lambda n: env[n]),
                                    torch.fx.node.map_arg(node.kwargs, lambda n: env[n]))
            new.name = node.name
        else:
            new = graph.node_copy(node, lambda n: env[n])
        env[node] = new
    code = graph.python_code(root_module="self")
    lines = ["# Written by decent_q (vai_q_pytorch API): the quantized model as Python.",
             "import math", "import operator", "", "import torch", "",
             "import pytorch_nndct as py_nndct", "", "",
             f"class {class_name}(torch.nn.Module):",
             "    def __init__(self):",
             "        super().__init__()"]
    for path, module in modules.items():
        lines.append(f"        self.{flat[path]} = {_constructor(module)}"
                     f"  # {layer_names.get(path, path)}")
    body = [line for line in code.src.splitlines() if line.strip()]
    lines += [""] + ["    " + line for line in body]
    return "\n".join(lines) + "\n"
