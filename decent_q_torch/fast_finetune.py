"""Fast finetune (vai_q_pytorch's ``quantizer.fast_finetune``): layer-wise weight adjustment
without the user's optimizer (AdaQuant, Hubara et al. 2020, without its integer programme).

1. The user's ``run_fn(*run_args)`` runs the quantized model over the finetuning data in calib
   phase: the points collect positions and the model inputs are kept.
2. Positions are fixed (kept position of each point). Layer by layer, in graph order: the
   layer's input in the quantized model (the layers before it already adjusted) and its output
   in the float model (batch norms folded, nothing quantized) are collected over the kept
   inputs; then Adam adjusts the layer's weight and bias for ``steps`` mini-batches so that the
   layer on its quantized input, with quantized weight and bias (straight-through gradient),
   reproduces the float output (mean squared error).
3. The histograms are cleared and the points return to calib phase: the user's calibration
   forward that follows re-calibrates every position on the adjusted weights.

docs/pytorch.md "Fast finetune" has the measurements.
"""

import torch

from decent_q_torch import log
from decent_q_torch.errors import QuantizeError

STEPS = 100
LEARNING_RATE = 0.05  # of the parameter's quantization step
BATCH = 32


class _Stop(Exception):
    """Ends a forward pass once the wanted tensor is captured."""


def _capture(model, module, inputs, take_input):
    """The input (or output) of ``module`` over ``inputs`` (a list of argument tuples)."""
    captured = []

    def hook(_, args, output):
        captured.append((args[0] if take_input else output).detach())
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for args in inputs:
                try:
                    model(*args)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(inputs):
        raise QuantizeError(f"layer {module} did not run for every finetuning batch")
    return torch.cat(captured)


def _activation(gm, converted, node):
    """The ReLU-like op whose output is quantized for layer ``node`` (fused), or identity."""
    for out, owner in converted.plan.outputs.items():
        if owner is node and out is not node:
            if out.op == "call_module":
                return gm.get_submodule(out.target)
            if out.op == "call_function":
                return lambda t, f=out.target, a=out.args[1:], k=dict(out.kwargs): f(t, *a, **k)
            return lambda t, m=out.target: getattr(t, m)()
    return lambda t: t


def _adjust(layer, activation, inputs, targets, steps, lr, seed):
    """Adam on the layer's weight and bias: activation(quantized layer(inputs)) ->
    activation(targets). The rate is ``lr`` times each parameter's quantization step, so a
    step moves a weight by about ``lr`` of its grid."""
    groups = []
    for param, point in ((layer.weight, layer.weight_point), (layer.bias, layer.bias_point)):
        if param is not None:
            scale = 2.0 ** -point.pos if point is not None and point.pos is not None else 1e-2
            groups.append({"params": [param], "lr": lr * scale})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    targets = activation(targets)

    def loss_of(index):
        return torch.mean((activation(layer(inputs[index])) - targets[index]) ** 2)

    probe = torch.arange(min(256, inputs.shape[0]))
    with torch.no_grad():
        before = float(loss_of(probe))
    for _ in range(steps):
        index = torch.randint(0, inputs.shape[0], (min(BATCH, inputs.shape[0]),),
                              generator=generator)
        optimizer.zero_grad()
        loss = loss_of(index)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss_of(probe))
    return before, after


def run(converted, run_fn, run_args, steps, lr):
    """Fast finetune of ``converted`` (apis._Converted); returns {parameter name: tensor} of
    the adjusted layers."""
    gm, float_gm = converted.gm, converted.float_gm
    kept = []
    handle = gm.register_forward_pre_hook(
        lambda _, args: kept.append(tuple(a.detach() for a in args)))
    for point in converted.points.values():
        point.hist.zero_()
    converted.set_phase("calib")
    try:
        with torch.no_grad():
            run_fn(*run_args)
    finally:
        handle.remove()
    if not kept:
        raise QuantizeError("fast_finetune: run_fn(*run_args) did not run the quantized model; "
                            "pass (quant_model, ft_loader, ...) so that run_fn evaluates "
                            "quantizer.quant_model")
    for name, pos in converted.kept_positions().items():
        converted.points[name].pos = pos
    converted.set_phase("test")
    was_training = gm.training
    gm.eval()
    float_gm.eval()
    params = {}
    try:
        for index, node in enumerate(converted.plan.layers):
            layer = gm.get_submodule(node.target)
            inputs = _capture(gm, layer, kept, take_input=True)
            targets = _capture(float_gm, float_gm.get_submodule(node.target), kept,
                               take_input=False)
            with torch.enable_grad():
                before, after = _adjust(layer, _activation(gm, converted, node), inputs, targets,
                                        steps, lr, seed=index)
            log.note(f"fast finetune {node.target}: output MSE {before:.3g} -> {after:.3g}")
            for attr in ("weight", "bias"):
                if getattr(layer, attr) is not None:
                    params[f"{node.target}.{attr}"] = getattr(layer, attr).detach().clone()
    finally:
        gm.train(was_training)
        for point in converted.points.values():
            point.hist.zero_()
            point.pos = None
        converted.set_phase("calib")
    return params
