"""QuantizeConfig: every quantization option, its default and its validation, in one place.

The Python API and the ``vai_q_tensorflow`` command share these defaults (the CLI builds its
options from :data:`OPTIONS`), which fixes the original's API/CLI default mismatch.
"""

import dataclasses
import math
import re
from typing import Dict, List

from decent_q.errors import ConfigError

ARCH_TYPES = ("DEFAULT", "DPUCADF8H")
FIX_NEURON_IMPLS = ("auto", "kernel", "tf_ops")  # decent_q.ops.IMPLS
QUANTIZE_STRATEGIES = ("pof2s", "pof2s_tqt")  # docs/qat-accuracy.md
OUTPUT_FORMATS = ("pb", "onnx")
ONNX_ROUNDINGS = ("dpu", "half_even")  # docs/onnx.md "Rounding: dpu or half_even"
MIN_ONNX_OPSET = 13
DEFAULT_ONNX_OPSET = 13


def _opt(default, help_text, choices=None, cli=True):
    metadata = {"help": help_text, "choices": choices, "cli": cli}
    if isinstance(default, list):
        return dataclasses.field(default_factory=list, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class QuantizeConfig:
    """Configuration of quantization, for QAT (the Create* APIs) and post-training quantize.

    List options take a Python list or the CLI's comma-separated string; ``input_shapes`` also
    takes the CLI form ``"?,224,224,3:?,300,300,1"``; ``nodes_bit`` / ``nodes_method`` take
    ``["name:value", ...]``, ``"name:value,..."`` or a ``{name: value}`` dict.

    Raises:
      ConfigError: a value is out of range; the message names the field and allowed values.
    """

    input_nodes: List[str] = _opt([], "names of the input nodes of the quantized range, comma "
                                      "separated")
    output_nodes: List[str] = _opt([], "names of the output nodes of the quantized range, comma "
                                       "separated")
    input_shapes: List[List[int]] = _opt([], "4-D shape of each input node, e.g. ?,224,224,3; "
                                             "several separated by ':'")
    ignore_nodes: List[str] = _opt([], "nodes left unquantized, comma separated")
    weight_bit: int = _opt(8, "bit width of weights and biases (2..16)")
    activation_bit: int = _opt(8, "bit width of activations (2..16)")
    nodes_bit: Dict[str, int] = _opt([], "per-node bit width 'name:bit,...'; a conv name sets "
                                         "its weights")
    method: int = _opt(1, "0 non-overflow, 1 min-diffs, 2 min-diffs with depthwise strategy",
                       choices=(0, 1, 2))
    nodes_method: Dict[str, int] = _opt([], "per-node method 'name:method,...'")
    calib_iter: int = _opt(100, "number of calibration batches")
    output_dir: str = _opt("./quantize_results", "folder of the output files")
    output_format: str = _opt("pb", "pb writes quantize_eval_model.pb and deploy_model.pb; onnx "
                                    "also writes quantize_eval_model.onnx (QuantizeLinear / "
                                    "DequantizeLinear with scale 2^-position)",
                              choices=OUTPUT_FORMATS)
    onnx_opset: int = _opt(DEFAULT_ONNX_OPSET, f"ONNX opset of the .onnx file, {MIN_ONNX_OPSET} up to the "
                               "newest the installed tf2onnx writes (18 for tf2onnx 1.17)")
    onnx_rounding: str = _opt(
        "dpu", "rounding of activations in the .onnx file: dpu computes the eval model's "
               "numbers exactly (half up, extra float ops); half_even is plain QuantizeLinear "
               "(ties to even), which ONNX Runtime runs with integer kernels",
        choices=ONNX_ROUNDINGS)
    align_concat: int = _opt(0, "0 align all concats, 1 output concats only, 2 none",
                             choices=(0, 1, 2))
    simulate_dpu: int = _opt(1, "1 simulates the DPU's AvgPool / LeakyRelu / hard-sigmoid "
                                "arithmetic", choices=(0, 1))
    adjust_shift_bias: int = _opt(1, "0 off, 1 static, 2 dynamic shift-bias constraints",
                                  choices=(0, 1, 2))
    adjust_shift_cut: int = _opt(1, "0 off, 1 static shift-cut constraints", choices=(0, 1))
    arch_type: str = _opt("DEFAULT", "DEFAULT or DPUCADF8H (activations in [-127, 127])",
                          choices=ARCH_TYPES)
    scale_all_avgpool: int = _opt(1, "1 scales every AvgPool (kernel area <= 256) like the DPU",
                                  choices=(0, 1))
    do_cle: int = _opt(0, "1 runs cross-layer equalization before calibration", choices=(0, 1))
    replace_relu6: int = _opt(1, "with do_cle=1: 1 replaces Relu6 by Relu", choices=(0, 1))
    bias_correction: int = _opt(
        0, "after calibration, subtract from each quantized layer's bias, per output channel, "
           "a mean measured on the calibration batches: 1 the output shift its weight "
           "quantization causes, E[(W_q - W) x]; 2 its whole mean output error against the "
           "float model; 0 leaves biases alone (the original's numerics)", choices=(0, 1, 2))
    include_fast_ft: int = _opt(
        0, "1 runs fast finetune after calibration: layer by layer, weights and bias are "
           "adjusted so that the quantized layer's output matches the float layer's on the "
           "calibration batches, then the activations are calibrated again", choices=(0, 1))
    fast_ft_mode: int = _opt(
        0, "fast finetune: 0 AdaQuant (weights and bias free), 1 AdaRound (each weight rounds "
           "down or up on its calibrated grid; bias free)", choices=(0, 1))
    fast_ft_epochs: int = _opt(10, "fast finetune: passes over the calibration batches per "
                                   "layer, one Adam step per batch")
    fast_ft_lr: float = _opt(0.03, "fast finetune: Adam learning rate, in quantization steps "
                                   "(2^-position) of each tensor (mode 1: of the rounding "
                                   "variable)")
    fast_ft_lrcoef: float = _opt(1.0, "fast finetune: factor on fast_ft_lr for the bias")
    skip_check: int = _opt(0, "1 skips the float model check", choices=(0, 1))
    fold_bn_freeze_step: int = _opt(
        -1, "QAT: global step from which folded batch norms use their moving statistics (the "
            "deploy form) instead of batch statistics, and the moving averages stop; -1 never "
            "freezes, 0 uses moving statistics from the start (the original's behaviour; the "
            "moving averages keep updating)", cli=False)
    quantize_strategy: str = _opt(
        "pof2s", "QAT: pof2s chooses each power-of-two position from the data (per batch in "
                 "training; the most frequent one is deployed); pof2s_tqt trains a log2 "
                 "threshold per quantization point (TQT), initialised from the first batch, "
                 "and deploys the position it gives", choices=QUANTIZE_STRATEGIES, cli=False)
    fix_neuron_impl: str = _opt(
        "auto", "FixNeuron implementation of live (calibration / QAT) graphs: kernel (C++, CPU "
                "only), tf_ops (standard TensorFlow ops: GPU, XLA; same numbers) or auto "
                "(tf_ops under a GPU device scope or with a GPU visible, else kernel)",
        choices=FIX_NEURON_IMPLS)
    max_dump_batches: int = _opt(1, "dump: number of batches to dump")
    dump_float: int = _opt(0, "dump: 1 also dumps float values", choices=(0, 1))
    dump_input_tensors: str = _opt("", "dump: input tensor name when the graph entrance is not a "
                                       "placeholder")
    gpu: str = _opt("0", "GPU ids to use, comma separated")
    gpu_memory_fraction: float = _opt(0.5, "GPU memory fraction to use, in (0, 1]")

    def __post_init__(self):
        if isinstance(self.include_fast_ft, bool):  # vai_q_tensorflow2 takes True / False
            self.include_fast_ft = int(self.include_fast_ft)
        for field in dataclasses.fields(self):
            setattr(self, field.name, _from_text(field, getattr(self, field.name)))
        self.input_nodes = _names(self.input_nodes, "input_nodes")
        self.output_nodes = _names(self.output_nodes, "output_nodes")
        self.ignore_nodes = _names(self.ignore_nodes, "ignore_nodes")
        self.input_shapes = _shapes(self.input_shapes)
        self.nodes_bit = _pairs(self.nodes_bit, "nodes_bit", "bit width")
        self.nodes_method = _pairs(self.nodes_method, "nodes_method", "method")
        for field in dataclasses.fields(self):
            _check_type(field, getattr(self, field.name))
            choices = field.metadata["choices"]
            value = getattr(self, field.name)
            if choices and value not in choices:
                raise ConfigError(f"{field.name}={value!r} is not allowed; use one of "
                                  f"{', '.join(map(str, choices))}")
        for name in ("weight_bit", "activation_bit"):
            _check_bit(getattr(self, name), name)
        for node, bit in self.nodes_bit.items():
            _check_bit(bit, f"nodes_bit entry {node!r}")
        for node, method in self.nodes_method.items():
            if method not in (0, 1, 2):
                raise ConfigError(f"nodes_method entry {node!r} has method {method}; use 0, 1 "
                                  "or 2")
        if self.output_format == "onnx":  # before any calibration work
            from decent_q import onnx_export  # pylint: disable=import-outside-toplevel
            onnx_export.check_options(self.onnx_opset, self.onnx_rounding)
        if not isinstance(self.calib_iter, int) or self.calib_iter <= 0:
            raise ConfigError(f"calib_iter={self.calib_iter!r} must be a positive integer")
        if not isinstance(self.fast_ft_epochs, int) or self.fast_ft_epochs <= 0:
            raise ConfigError(f"fast_ft_epochs={self.fast_ft_epochs!r} must be a positive "
                              "integer")
        for name in ("fast_ft_lr", "fast_ft_lrcoef"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive finite "
                                  "number")
        if not isinstance(self.max_dump_batches, int) or self.max_dump_batches <= 0:
            raise ConfigError(f"max_dump_batches={self.max_dump_batches!r} must be a positive "
                              "integer")
        if not re.fullmatch(r"(\d+(,\d+)*)?", self.gpu.replace(" ", "")):
            raise ConfigError(f"gpu={self.gpu!r} must be GPU ids separated by commas, e.g. "
                              "'0' or '0,1'")
        if not 0.0 < float(self.gpu_memory_fraction) <= 1.0:
            raise ConfigError(f"gpu_memory_fraction={self.gpu_memory_fraction!r} must be in "
                              "(0, 1]")
        if not isinstance(self.fold_bn_freeze_step, int) or self.fold_bn_freeze_step < -1:
            raise ConfigError(f"fold_bn_freeze_step={self.fold_bn_freeze_step!r} must be an "
                              "integer >= -1")
        if self.input_shapes and len(self.input_shapes) != len(self.input_nodes):
            raise ConfigError(f"input_shapes has {len(self.input_shapes)} shape(s) but "
                              f"input_nodes has {len(self.input_nodes)} node(s); give one 4-D "
                              "shape per input node")

    def require_nodes(self):
        """Raises ConfigError unless input_nodes, output_nodes and input_shapes are set, or if
        nodes_method names an input node."""
        for name in ("input_nodes", "output_nodes", "input_shapes"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required, e.g. "
                                  + {"input_nodes": "input_nodes=['input']",
                                     "output_nodes": "output_nodes=['logits']",
                                     "input_shapes": "input_shapes=[[-1, 224, 224, 3]]"}[name])
        inputs = [n for n in self.nodes_method if n in self.input_nodes]
        if inputs:
            raise ConfigError(f"nodes_method gives a method for input node {inputs[0]!r}; input "
                              "nodes always use method 0 (non-overflow), as in the original: "
                              "remove the entry")

    def to_string(self) -> bytes:
        """The original's ``QuantizeConfig.to_string()``: ``name,value,`` pairs as bytes.

        List options come first, once per entry (input_nodes, output_nodes, input_shapes as
        ``-1*4*4*3``, ignore_nodes, nodes_bit and nodes_method as ``name:value``), then the
        scalar options weight_bit, activation_bit, method, calib_iter, output_dir,
        align_concat, adjust_shift_bias, adjust_shift_cut, simulate_dpu, scale_all_avgpool,
        do_cle and replace_relu6. decent_q's own options are not part of it.
        """
        pairs = [("input_nodes", n) for n in self.input_nodes]
        pairs += [("output_nodes", n) for n in self.output_nodes]
        pairs += [("input_shapes", "*".join(str(d) for d in s)) for s in self.input_shapes]
        pairs += [("ignore_nodes", n) for n in self.ignore_nodes]
        pairs += [("nodes_bit", f"{n}:{b}") for n, b in self.nodes_bit.items()]
        pairs += [("nodes_method", f"{n}:{m}") for n, m in self.nodes_method.items()]
        pairs += [(name, getattr(self, name)) for name in _STRING_SCALARS]
        return "".join(f"{name},{value}," for name, value in pairs).encode()

    def bit_width(self, name: str, default: int) -> int:
        """The bit width for node ``name`` (nodes_bit wins over ``default``)."""
        return self.nodes_bit.get(name, default)

    def method_for(self, name: str) -> int:
        """The method for node ``name`` (nodes_method wins over ``method``)."""
        return self.nodes_method.get(name, self.method)



# The scalar options of to_string(), in the original's order.
_STRING_SCALARS = ("weight_bit", "activation_bit", "method", "calib_iter", "output_dir",
                   "align_concat", "adjust_shift_bias", "adjust_shift_cut", "simulate_dpu",
                   "scale_all_avgpool", "do_cle", "replace_relu6")


def _from_text(field, value):
    """A numeric option given as text ("1", " 0.5 ": pyxir passes them so) as its number;
    anything else unchanged (the type check that follows names the option if it is wrong)."""
    want = type(field.default) if field.default is not dataclasses.MISSING else None
    if not isinstance(value, str) or want not in (int, float):
        return value
    text = value.strip()
    try:
        return int(text) if want is int else float(text)
    except ValueError:
        kind = "an integer" if want is int else "a number"
        raise ConfigError(f"{field.name}={value!r} must be {kind}, like the default "
                          f"{field.default!r}") from None


def _names(value, field) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field} must be a list of node names or a comma-separated string, "
                          f"got {type(value).__name__}")
    names = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{field} entries must be node names (strings), got {item!r}")
        item = item.strip()
        if item:
            names.append(item[:-2] if item.endswith(":0") else item)  # tensor -> node
    return names


def _shapes(value) -> List[List[int]]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [s.split(",") for s in value.split(":") if s.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"input_shapes must be a list of 4-D shapes, got {value!r}")
    shapes = []
    for shape in value:
        if not isinstance(shape, (list, tuple)) or len(shape) != 4:
            raise ConfigError(f"input_shapes entry {shape!r} is not a 4-D shape; write e.g. "
                              "[-1, 224, 224, 3] (or ?,224,224,3 on the command line)")
        dims = []
        for dim in shape:
            text = str(dim).strip()
            if text in ("?", "-1", "None"):
                dims.append(-1)
            elif re.fullmatch(r"\d+", text) and int(text) > 0:
                dims.append(int(text))
            else:
                raise ConfigError(f"input_shapes entry {shape!r} has dimension {dim!r}; use a "
                                  "positive integer, or ? / -1 for an unknown size")
        shapes.append(dims)
    return shapes


def _pairs(value, field, what) -> Dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field} must be 'name:{what},...', a list of such strings or a "
                              f"dict, got {value!r}")
        items = []
        for entry in value:
            parts = str(entry).rsplit(":", 1)
            if len(parts) != 2 or not parts[0].strip():
                raise ConfigError(f"{field} entry {entry!r} is not 'name:{what}'; write e.g. "
                                  f"'conv1/Relu:8'")
            items.append((parts[0].strip(), parts[1].strip()))
    pairs = {}
    for name, number in items:
        try:
            pairs[str(name)] = int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{field} entry '{name}:{number}' needs an integer {what}") from None
    return pairs


def _check_type(field, value):
    """Scalar options must have their default's type (ints may stand for floats)."""
    default = field.default
    if default is dataclasses.MISSING:
        return
    want = type(default)
    ok = isinstance(value, want) and not isinstance(value, bool)
    if want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        kind = "a string" if want is str else want.__name__
        raise ConfigError(f"{field.name}={value!r} must be {kind}, like the default "
                          f"{default!r}")


def _check_bit(value, field):
    if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 16:
        raise ConfigError(f"{field}={value!r} is not allowed; use an integer bit width from 2 "
                          "to 16")


OPTIONS = tuple(dataclasses.fields(QuantizeConfig))
DEFAULTS = QuantizeConfig()
