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
           "QUANTIZED", "convert_layer"]


class _QuantLayer:
    """Mixin: ``forward`` quantizes weight and bias with the points, then computes."""

    def _points(self, weight_point, bias_point):
        self.weight_point = weight_point
        self.bias_point = bias_point if self.bias is not None else None

    def quantized_parameters(self):
        """(weight, bias) as the layer computes with them."""
        weight = self.weight_point(self.weight) if self.weight_point is not None else self.weight
        bias = self.bias
        if bias is not None and self.bias_point is not None:
            bias = self.bias_point(bias)
        return weight, bias

    def forward(self, x):  # pylint: disable=arguments-differ
        weight, bias = self.quantized_parameters()
        return self.compute(x, weight, bias)


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

    def compute(self, x, weight, bias):
        return F.linear(x, weight, bias)


QUANTIZED = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
             torch.nn.ConvTranspose2d: ConvTranspose2d, torch.nn.Linear: Linear}


def convert_layer(module, weight_point, bias_point):
    """Turns float layer ``module`` (owned by the caller) into its quantized class in place."""
    module.__class__ = QUANTIZED[type(module)]
    module._points(weight_point, bias_point)  # pylint: disable=protected-access
    return module
