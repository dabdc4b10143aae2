"""The quantization point: a module that fake-quantizes one tensor (FixNeuron on torch).

Each point has a name (the key of Quant_info.json), a kind (input, weights, bias, activation),
its TensorConfig and a position histogram (buffer ``hist``, int64[255], saved with the
state dict like the TensorFlow flow's ``pos_hist`` variables). Phases (``phase``):

    "float"  the tensor passes unchanged (the float reference of fast finetune)
    "calib"  each batch: search the position, count it, quantize with it
    "train"  as calib, with the straight-through gradient (QAT); in eval mode (``.eval()``)
             the kept position of the histogram so far
    "test"   quantize with the kept position (``pos``; from Quant_info.json or the histogram)

A tensor whose datatype is a float type is rounded through that type in every phase but
"float" and has no position.
"""

import torch

from decent_q_torch import fix_neuron
from decent_q_torch.errors import QuantizeError

PHASES = ("float", "calib", "train", "test")
_FLOAT_TYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FixNeuron(torch.nn.Module):
    """Fake quantization of one tensor at a power-of-two position."""

    def __init__(self, name, kind, config, depthwise=False, pos=None):
        super().__init__()
        self.name = name
        self.kind = kind
        self.config = config
        self.depthwise = depthwise
        self.phase = "calib" if pos is None else "test"
        self.pos = pos
        self._cache = None  # weights / bias: (tensor, its version, position, quantized)
        self.register_buffer("hist", torch.zeros(fix_neuron.NUM_POS, dtype=torch.int64))

    @property
    def quantized(self):
        """True for integer quantization (False: a float datatype)."""
        return self.config.datatype == "int"

    @property
    def method(self):
        # Inputs use the non-overflow search (as the TensorFlow flow's graph inputs).
        return 0 if self.kind == "input" else self.config.method_number

    def search(self, x):
        return fix_neuron.search_pos(x, self.config.bit_width, self.method,
                                     self.config.round_mode, self.config.narrow_range,
                                     self.depthwise)

    def kept_position(self):
        """The position of the histogram by ``calib_statistic_method`` (None if empty):
        modal = most frequent (ties to the smaller), max = the largest range seen (the
        smallest position), mean = the mean position rounded half up, median = the lower
        median."""
        hist = self.hist
        if int(hist.sum()) == 0:
            return None
        statistic = self.config.calib_statistic_method
        positions = torch.arange(fix_neuron.MIN_POS, fix_neuron.MAX_POS + 1)
        seen = positions[hist > 0]
        if statistic == "modal":
            return fix_neuron.kept_position(hist)
        if statistic == "max":
            return int(seen.min())
        if statistic == "mean":
            total = int((positions * hist).sum())
            return int(torch.floor(torch.tensor(total / int(hist.sum()) + 0.5)))
        cumulative = torch.cumsum(hist, 0)
        return int(positions[int(torch.nonzero(2 * cumulative >= int(hist.sum()))[0, 0])])

    def _position(self, x):
        if self.phase == "test":
            if self.pos is None:
                raise QuantizeError(
                    f"quantization point {self.name} has no position: run the calibration "
                    "(quant_mode 'calib' and export_quant_config()) before quant_mode 'test'")
            return self.pos
        if self.phase == "train" and not self.training:
            kept = self.kept_position()  # evaluation during QAT: the positions kept so far
            if kept is not None:
                return kept
            return self.search(x)
        pos = self.search(x)  # calib, or train in training mode: search and count
        self.hist[pos - fix_neuron.MIN_POS] += 1
        return pos

    def forward(self, x):
        if self.phase == "float":
            return x
        if not self.quantized:
            return x.to(_FLOAT_TYPES[self.config.datatype]).to(x.dtype)
        cached = self._cached(x)
        if cached is not None:
            return cached
        pos = self._position(x)
        y = fix_neuron.fake_quantize(x, pos, self.config.bit_width, self.config.round_mode,
                                     self.config.narrow_range)
        if self.kind in ("weights", "bias") and not torch.is_grad_enabled():
            self._cache = (x, x._version, pos, y)  # pylint: disable=protected-access
        return y

    def _cached(self, x):
        """A parameter unchanged since the last forward (same tensor, same version counter)
        gives the same position and values again: the search runs once per calibration, not
        once per batch. The position is still counted per batch."""
        if self._cache is None or torch.is_grad_enabled():
            return None
        tensor, version, pos, y = self._cache
        if tensor is not x or version != x._version:  # pylint: disable=protected-access
            self._cache = None
            return None
        if self.phase == "test" and pos != self.pos:
            return None
        if self.phase == "calib" or (self.phase == "train" and self.training):
            self.hist[pos - fix_neuron.MIN_POS] += 1
        elif self.phase == "train":
            return None  # evaluation in QAT reads the kept position
        return y

    def extra_repr(self):
        c = self.config
        if not self.quantized:
            return f"name={self.name!r}, datatype={c.datatype}"
        return (f"name={self.name!r}, kind={self.kind}, bit_width={c.bit_width}, "
                f"method={c.method}, round_mode={c.round_mode}, pos={self.pos}")
