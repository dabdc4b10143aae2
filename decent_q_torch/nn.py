"""Quantized layers: torch layers whose weights and bias pass through their own FixNeurons.

``Conv2d`` here is ``torch.nn.Conv2d`` plus ``weight_point`` and ``bias_point``; parameters
keep their names (``conv1.weight``), so a float state dict loads into a converted model. The
generated ``quantize_result/<Model>.py`` builds its layers from this module
(``py_nndct.nn.Conv2d(...)`` with ``import pytorch_nndct as py_nndct``).
"""

import torch
import torch.nn.functional as F

from decent_q_torch.points import FixNeuron

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear", "FixNeuron",
           "QUANTIZED", "convert_layer", "attach_batch_norm", "fold_batch_norm"]


class _QuantLayer:
    """Mixin: ``forward`` quantizes weight and bias with the points, then computes.

    In QAT a layer followed by a batch norm holds it as ``bn`` (attach_batch_norm) and folds
    it on every forward: in training with the batch's statistics (from the float layer's
    output; the gradient flows through them) while updating the running ones, in evaluation
    with the running statistics. :func:`fold_batch_norm` folds it for good (deploy).

    Bias correction (``include_bias_corr``, docs/pytorch.md "Bias correction"): between
    ``measure_bias_shift`` and ``measured_bias_shift`` each forward also adds up the mean of
    conv(x, W_q) - conv(x, W) per output channel; ``set_bias_shift`` then subtracts that shift
    from the bias before the bias point (a buffer outside the state dict)."""

    # Output channel axis of the layer's result (Linear: the last).
    channel_axis = 1

    def _points(self, weight_point, bias_point):
        self.weight_point = weight_point
        self.bias_point = bias_point if self.bias is not None else None

    def _folded(self, x):
        """(weight, bias) with ``self.bn`` folded in (see the class doc)."""
        bn = self.bn
        if self.training:
            y = self.compute(x, self.weight, None)
            dims = [d for d in range(y.dim()) if d != 1]
            mean, var = y.mean(dims), y.var(dims, unbiased=False)
            with torch.no_grad():
                n = y.numel() / y.shape[1]
                bn.num_batches_tracked += 1
                bn.running_mean.lerp_(mean.detach(), bn.momentum)
                bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        weight = self.weight * scale.reshape([-1] + [1] * (self.weight.dim() - 1))
        return weight, (self.bias - mean) * scale + bn.bias

    def quantized_parameters(self, x=None):
        """(weight, bias) as the layer computes with them (``x``: the input, needed only to
        fold a QAT batch norm with batch statistics)."""
        if getattr(self, "bn", None) is not None:
            weight, bias = self._folded(x)
        else:
            weight, bias = self.weight, self.bias
        shift = getattr(self, "bias_shift", None)
        if bias is not None and shift is not None:
            bias = bias - shift
        if self.weight_point is not None:
            weight = self.weight_point(weight)
        if bias is not None and self.bias_point is not None:
            bias = self.bias_point(bias)
        return weight, bias

    def forward(self, x):  # pylint: disable=arguments-differ
        weight, bias = self.quantized_parameters(x)
        y = self.compute(x, weight, bias)
        sums = getattr(self, "shift_sums", None)
        if sums is not None:  # measure_bias_shift: layers with a weight point and a bias
            sums[0] += self._mean_weight_error(x, weight)
            sums[1] += 1
        return y

    def _mean_weight_error(self, x, weight):
        """mean of conv(x, W_q) - conv(x, W) per output channel, in float64. The layer is
        linear in x, so it runs once on the batch's sum (1/N of a convolution) with W_q - W."""
        with torch.no_grad():
            if self.channel_axis == -1:
                x = x.reshape(-1, x.shape[-1])
            count = x.shape[0]
            d = self.compute(x.sum(0, keepdim=True, dtype=torch.float64),
                             (weight - self.weight).to(torch.float64), None)
            return d.movedim(self.channel_axis, 0).reshape(d.shape[self.channel_axis], -1) \
                .mean(dim=1) / count

    def measure_bias_shift(self):
        """Starts (or restarts) measuring the bias correction on the forwards that follow."""
        self.shift_sums = [torch.zeros(self.bias.shape[0], dtype=torch.float64,
                                       device=self.bias.device), 0]

    def measured_bias_shift(self):
        """The mean of conv(x, W_q) - conv(x, W) per output channel over the forwards since
        measure_bias_shift (float32), or None if none ran."""
        total, batches = self.shift_sums
        return (total / batches).to(torch.float32) if batches else None

    def set_bias_shift(self, shift):
        """Subtracts ``shift`` from the bias before its point from now on (None: stop)."""
        if shift is None:
            self._buffers.pop("bias_shift", None)
        else:
            self.register_buffer("bias_shift", shift.to(self.bias.device), persistent=False)


def attach_batch_norm(layer, bn):
    """QAT: ``layer`` (a float Conv / Linear, before conversion) takes over batch norm ``bn``
    (affine, with running statistics); a missing bias becomes a zero parameter."""
    if layer.bias is None:
        layer.bias = torch.nn.Parameter(torch.zeros(layer.weight.shape[0]))
    layer.bn = bn


def fold_batch_norm(layer):
    """Folds an attached batch norm into the layer's weight and bias with the running
    statistics (the deployed layer) and removes it."""
    bn = getattr(layer, "bn", None)
    if bn is None:
        return
    training = layer.training
    layer.eval()
    with torch.no_grad():
        weight, bias = layer._folded(None)  # pylint: disable=protected-access
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    del layer.bn
    layer.train(training)


def _conv_class(base):
    class QuantConv(_QuantLayer, base):
        __doc__ = f"torch.nn.{base.__name__} with quantized weight and bias."

        def __init__(self, *args, weight_point=None, bias_point=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._points(weight_point, bias_point)

        def compute(self, x, weight, bias):
            return self._conv_forward(x, weight, bias)

    QuantConv.__name__ = QuantConv.__qualname__ = base.__name__
    return QuantConv


Conv1d = _conv_class(torch.nn.Conv1d)
Conv2d = _conv_class(torch.nn.Conv2d)
Conv3d = _conv_class(torch.nn.Conv3d)


class ConvTranspose2d(_QuantLayer, torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d with quantized weight and bias."""

    def __init__(self, *args, weight_point=None, bias_point=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._points(weight_point, bias_point)

    def compute(self, x, weight, bias):
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class Linear(_QuantLayer, torch.nn.Linear):
    """torch.nn.Linear with quantized weight and bias."""

    def __init__(self, *args, weight_point=None, bias_point=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._points(weight_point, bias_point)

    channel_axis = -1

    def compute(self, x, weight, bias):
        return F.linear(x, weight, bias)


QUANTIZED = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
             torch.nn.ConvTranspose2d: ConvTranspose2d, torch.nn.Linear: Linear}


def convert_layer(module, weight_point, bias_point):
    """Turns float layer ``module`` (owned by the caller) into its quantized class in place."""
    module.__class__ = QUANTIZED[type(module)]
    module._points(weight_point, bias_point)  # pylint: disable=protected-access
    return module
