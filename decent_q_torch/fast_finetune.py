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

STEPS = 200
LEARNING_RATE = 1e-4
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


def _adjust(layer, inputs, targets, steps, lr, seed):
    """Adam on the layer's weight and bias: quantized layer(inputs) -> targets."""
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float(torch.mean((layer(inputs[:256]) - targets[:256]) ** 2))
    for _ in range(steps):
        index = torch.randint(0, inputs.shape[0], (min(BATCH, inputs.shape[0]),),
                              generator=generator)
        optimizer.zero_grad()
        loss = torch.mean((layer(inputs[index]) - targets[index]) ** 2)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(torch.mean((layer(inputs[:256]) - targets[:256]) ** 2))
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
                before, after = _adjust(layer, inputs, targets, steps, lr, seed=index)
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
