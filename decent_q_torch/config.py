"""The quantization configuration file (``quant_config_file``): reading and checking.

The JSON format is vai_q_pytorch's (docs/pytorch.md "Configuration file"): global settings,
``overall_quantize_config`` (the settings of every quantized tensor), ``tensor_quantize_config``
(per tensor kind: input, weights, bias, activation) and ``layer_quantize_config`` (per layer
type or layer name). Without a file every tensor gets the DPU's power-of-two setting. Every
key and value is checked; an error names the key, the value and what is accepted.
"""

import dataclasses
import json

from decent_q_torch.errors import QuantizeError

KINDS = ("input", "weights", "bias", "activation")
DATATYPES = ("int", "float32", "float16", "bfloat16")
METHODS = {"maxmin": 0, "diffs": 1, "mse": 1}
ROUND_MODES = ("std_round", "half_up", "half_even", "half_down")
STATISTICS = ("modal", "max", "mean", "median")
TARGETS = ("DPU", "CPU", "GPU")

# The DPU rounds weights, biases and inputs half away from zero and activations half up.
DEFAULT_ROUND_MODE = {"input": "std_round", "weights": "std_round", "bias": "std_round",
                      "activation": "half_up"}


@dataclasses.dataclass(frozen=True)
class TensorConfig:
    """How one tensor is quantized. ``datatype`` other than "int" keeps the tensor in that
    float type (rounded through it) instead of quantizing it."""
    datatype: str = "int"
    bit_width: int = 8
    method: str = "diffs"
    round_mode: str = "std_round"
    symmetry: bool = True
    per_channel: bool = False
    signed: bool = True
    narrow_range: bool = False
    scale_type: str = "poweroftwo"
    calib_statistic_method: str = "modal"

    @property
    def method_number(self):
        """The FixNeuron method: 0 (maxmin) or 1 (diffs / mse: the smallest squared error)."""
        return METHODS[self.method]


_FIELDS = {f.name: f.type for f in dataclasses.fields(TensorConfig)}
_GLOBAL_KEYS = {
    "convert_relu6_to_relu": bool, "convert_silu_to_hswish": bool, "include_cle": bool,
    "include_bias_corr": bool, "keep_first_last_layer_accuracy": bool,
    "keep_add_layer_accuracy": bool, "target_device": str, "quantizable_data_type": list,
    "onnx_opset_version": int, "overall_quantize_config": dict,
    "tensor_quantize_config": dict, "layer_quantize_config": list,
}
_LAYER_KEYS = ("layer_type", "layer_name", "quantizable_data_type", "overall_quantize_config",
               "tensor_quantize_config")


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """Settings for the layers of one type (module class name, e.g. "Conv2d") or one name."""
    layer_type: str
    layer_name: str
    kinds: tuple
    tensors: dict  # kind -> TensorConfig

    def matches(self, layer_type, layer_name):
        if self.layer_name is not None:
            return self.layer_name == layer_name
        return self.layer_type == layer_type


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """A checked configuration; :meth:`tensor` answers for one tensor of one layer."""
    convert_relu6_to_relu: bool = False
    convert_silu_to_hswish: bool = False
    include_cle: bool = False
    include_bias_corr: bool = False
    keep_first_last_layer_accuracy: bool = False
    keep_add_layer_accuracy: bool = False
    target_device: str = "DPU"
    kinds: tuple = KINDS
    onnx_opset_version: int = 13
    tensors: dict = dataclasses.field(default_factory=lambda: _defaults(KINDS, {}, {}, ""))
    layers: tuple = ()

    def tensor(self, kind, layer_type=None, layer_name=None):
        """The TensorConfig of a ``kind`` tensor of the layer, or None if it stays float
        (its kind is not in ``quantizable_data_type``)."""
        for rule in reversed(self.layers):  # a later rule wins over an earlier one
            if rule.matches(layer_type, layer_name):
                return rule.tensors.get(kind) if kind in rule.kinds else None
        return self.tensors.get(kind) if kind in self.kinds else None


def _fail(where, message):
    raise QuantizeError(f"quant_config_file: {where}: {message}")


def _tensor_config(values, base, where):
    """``base`` (a dict of TensorConfig fields) updated with the checked ``values``."""
    if not isinstance(values, dict):
        _fail(where, f"must be an object of quantization parameters, got {values!r}")
    merged = dict(base)
    for key, value in values.items():
        if key not in _FIELDS:
            _fail(f"{where}.{key}", f"unknown parameter; known: {', '.join(_FIELDS)}")
        merged[key] = _check_value(key, value, f"{where}.{key}")
    return merged


def _check_value(key, value, where):
    kind = _FIELDS[key]
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            _fail(where, f"must be true or false, got {value!r}")
    elif kind in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
            _fail(where, f"must be an integer from 2 to 16, got {value!r}")
    else:
        choices = {"datatype": DATATYPES, "method": tuple(METHODS) + ("percentile", "entropy"),
                   "round_mode": ROUND_MODES, "scale_type": ("poweroftwo", "float"),
                   "calib_statistic_method": STATISTICS}[key]
        if value not in choices:
            _fail(where, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _checked(settings, where):
    """A TensorConfig from field values, refusing the combinations decent_q does not run."""
    config = TensorConfig(**settings)
    if config.datatype != "int":
        return config
    unsupported = (
        ("scale_type", config.scale_type == "float",
         "float scales are not supported: decent_q quantizes with power-of-two scales (the "
         "DPU's); set \"poweroftwo\", or a float datatype (float16, bfloat16) to keep the tensor "
         "in floating point"),
        ("method", config.method in ("percentile", "entropy"),
         f"{config.method!r} calibrates float scales; with power-of-two scales use \"diffs\" "
         "(smallest squared error; \"mse\" is the same) or \"maxmin\""),
        ("symmetry", not config.symmetry,
         "asymmetric quantization needs a zero point, which power-of-two DPU codes have not; "
         "set true"),
        ("per_channel", config.per_channel,
         "per-channel scales are not supported (the DPU has one position per tensor); set false"),
        ("signed", not config.signed, "unsigned codes are not supported; set true"),
    )
    for key, bad, message in unsupported:
        if bad:
            _fail(f"{where}.{key}", message)
    return config


def _join(where, key):
    return f"{where}.{key}" if where else key


def _defaults(kinds, overall, per_kind, where):
    """{kind: TensorConfig} for ``kinds``: the defaults, then ``overall``, then ``per_kind``."""
    tensors = {}
    for kind in KINDS:
        base = dict(round_mode=DEFAULT_ROUND_MODE[kind])
        settings = _tensor_config(overall, base, _join(where, "overall_quantize_config"))
        if kind in per_kind:
            settings = _tensor_config(per_kind[kind], settings,
                                      _join(where, f"tensor_quantize_config.{kind}"))
        tensors[kind] = _checked(settings, _join(where, f"({kind})"))
    return {k: v for k, v in tensors.items() if k in kinds}


def _kinds(value, where):
    if not isinstance(value, list) or any(k not in KINDS for k in value):
        _fail(where, f"must be a list of {', '.join(KINDS)}, got {value!r}")
    return tuple(k for k in KINDS if k in value)


def _per_kind(value, where):
    if not isinstance(value, dict):
        _fail(where, f"must be an object keyed by tensor kind, got {value!r}")
    for kind in value:
        if kind not in KINDS:
            _fail(f"{where}.{kind}", f"unknown tensor kind; known: {', '.join(KINDS)}")
    return value


def _layer_rule(entry, index):
    where = f"layer_quantize_config[{index}]"
    if not isinstance(entry, dict):
        _fail(where, "each layer configuration must be an object")
    for key in entry:
        if key not in _LAYER_KEYS:
            _fail(f"{where}.{key}", f"unknown key; known: {', '.join(_LAYER_KEYS)}")
    for key in ("quantizable_data_type", "overall_quantize_config"):
        if key not in entry:
            _fail(where, f"\"{key}\" is required")
    layer_type, layer_name = entry.get("layer_type"), entry.get("layer_name")
    if (layer_type is None) == (layer_name is None):
        _fail(where, "give exactly one of \"layer_type\" (e.g. \"Conv2d\") and \"layer_name\" "
                     "(a name from quantize_result/<Model>.py); set the other to null")
    for key, value in (("layer_type", layer_type), ("layer_name", layer_name)):
        if value is not None and not isinstance(value, str):
            _fail(f"{where}.{key}", f"must be a string or null, got {value!r}")
    kinds = _kinds(entry["quantizable_data_type"], f"{where}.quantizable_data_type")
    tensors = _defaults(KINDS, entry["overall_quantize_config"],
                        _per_kind(entry.get("tensor_quantize_config", {}),
                                  f"{where}.tensor_quantize_config"), where)
    return LayerRule(layer_type, layer_name, kinds, tensors)


def parse(data):
    """A QuantConfig from the decoded JSON object ``data``."""
    if not isinstance(data, dict):
        _fail("top level", "must be a JSON object")
    values = {}
    for key, value in data.items():
        if key not in _GLOBAL_KEYS:
            _fail(key, f"unknown key; known: {', '.join(_GLOBAL_KEYS)}")
        expected = _GLOBAL_KEYS[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            _fail(key, f"must be a {expected.__name__}, got {value!r}")
        values[key] = value
    if "overall_quantize_config" not in values:
        _fail("top level", "\"overall_quantize_config\" is required (the settings of every "
                           "quantized tensor)")
    if values.get("target_device", "DPU") not in TARGETS:
        _fail("target_device", f"{values['target_device']!r} is not one of {', '.join(TARGETS)}")
    if not 13 <= values.get("onnx_opset_version", 13) <= 18:
        _fail("onnx_opset_version", "decent_q exports ONNX opsets 13 to 18")
    kinds = _kinds(values.get("quantizable_data_type", list(KINDS)), "quantizable_data_type")
    tensors = _defaults(kinds, values["overall_quantize_config"],
                        _per_kind(values.get("tensor_quantize_config", {}),
                                  "tensor_quantize_config"), "")
    layers = tuple(_layer_rule(entry, i)
                   for i, entry in enumerate(values.get("layer_quantize_config", [])))
    globals_ = {k: v for k, v in values.items()
                if k in ("convert_relu6_to_relu", "convert_silu_to_hswish", "include_cle",
                         "include_bias_corr", "keep_first_last_layer_accuracy",
                         "keep_add_layer_accuracy", "target_device", "onnx_opset_version")}
    return QuantConfig(kinds=kinds, tensors=tensors, layers=layers, **globals_)


def load(path):
    """A QuantConfig from the JSON file ``path`` (None: the default DPU configuration)."""
    if path is None:
        return QuantConfig()
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise QuantizeError(f"quant_config_file {path!r} does not exist; give the path of a "
                            "JSON configuration file, or None for the default") from None
    except json.JSONDecodeError as e:
        raise QuantizeError(f"quant_config_file {path!r} is not valid JSON: {e}") from None
    try:
        return parse(data)
    except QuantizeError as e:
        raise QuantizeError(f"{e} (in {path})") from None
