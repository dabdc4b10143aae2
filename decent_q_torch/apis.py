"""vai_q_pytorch's API: ``torch_quantizer`` (post-training: calib / test, fast finetune,
exports) and ``QatProcessor`` (quantization-aware training). ``from pytorch_nndct.apis import
torch_quantizer`` reaches this module. docs/pytorch.md describes the flow and the files.
"""

import copy
import hashlib
import json
import os
import tempfile

import torch

from decent_q_torch import config as config_lib
from decent_q_torch import convert
from decent_q_torch import fast_finetune as fast_finetune_lib
from decent_q_torch import log
from decent_q_torch import nn as qnn
from decent_q_torch import source
from decent_q_torch.errors import QuantizeError
from decent_q_torch.version import __version__

QUANT_INFO = "Quant_info.json"
# The original writes quant_info.json; test mode reads it when Quant_info.json is absent.
QUANT_INFO_ORIGINAL = "quant_info.json"
FT_PARAMS = "param.pth"
BIAS_CORR = "bias_corr.pth"
MODES = ("calib", "test", "float")


def fail(message):
    """Logs ``message`` as VAIQ_ERROR and raises it as a QuantizeError."""
    log.error(message)
    raise QuantizeError(message)


def _atomic(path, write):
    """Calls ``write(tmp)`` on a temporary file beside ``path`` (same suffix), then renames it
    to ``path``: a failure leaves no half-written file."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, write)


def _ensure_dir(output_dir):
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create output_dir {output_dir!r}: {e.strerror}; pass a writable folder")
    if not os.access(output_dir, os.W_OK):
        fail(f"output_dir {output_dir!r} is not writable; pass a writable folder")


def _example_inputs(input_args):
    if isinstance(input_args, torch.Tensor):
        return (input_args,)
    if isinstance(input_args, (tuple, list)) and input_args and \
            all(isinstance(t, torch.Tensor) for t in input_args):
        return tuple(input_args)
    fail(f"input_args must be a tensor or a tuple of tensors shaped as the model's inputs "
         f"(e.g. torch.randn([1, 3, 224, 224])), got {type(input_args).__name__}")
    return None


def graph_md5(gm):
    """The converted model's identity: the md5 of its forward code and layer types."""
    text = gm.code + "".join(f"{n.target}:{type(gm.get_submodule(n.target)).__name__}\n"
                             for n in gm.graph.nodes if n.op == "call_module")
    return hashlib.md5(text.encode()).hexdigest()


class _Converted:
    """The float model converted once: the quantized GraphModule, its points, the folded
    float GraphModule (fast finetune's reference) and the names."""

    def __init__(self, module, example_inputs, quant_config, bitwidth=None, qat=False):
        if bitwidth is not None:
            quant_config = _with_bitwidth(quant_config, bitwidth)
        self.config = quant_config
        self.class_name = type(module).__name__
        self.float_gm = convert.trace(module, example_inputs)
        convert.fold_batch_norms(self.float_gm)
        self.gm, self.points, self.plan = convert.convert(module, example_inputs, quant_config,
                                                          qat=qat)
        self.md5 = graph_md5(self.gm)
        for reason in set(self.plan.float_nodes.values()):
            count = sum(1 for r in self.plan.float_nodes.values() if r == reason)
            log.note(f"{count} op(s) left float: {reason}")
        log.note(f"{self.class_name}: {len(self.plan.layers)} layers, {len(self.points)} "
                 f"quantization points")

    def set_phase(self, phase):
        for point in self.points.values():
            point.phase = phase

    def kept_positions(self):
        """{point name: kept position}; fails naming a point that saw no data."""
        positions = {}
        for name, point in self.points.items():
            if not point.quantized:
                continue
            pos = point.kept_position()
            if pos is None:
                fail(f"quantization point {name} saw no data: run the quantized model "
                     "(quantizer.quant_model) on calibration data before export_quant_config()")
            positions[name] = pos
        return positions

    def corrected_layers(self):
        """{module path: layer} of the layers bias correction applies to: quantized weights
        and a bias."""
        layers = {}
        for node in self.plan.layers:
            layer = self.gm.get_submodule(node.target)
            if layer.weight_point is not None and layer.bias is not None:
                layers[node.target] = layer
        return layers

    def measure_bias_shifts(self):
        for layer in self.corrected_layers().values():
            layer.measure_bias_shift()

    def apply_bias_shifts(self, positions):
        """Bias correction after calibration: each corrected layer's measured shift is
        subtracted from its bias from now on, and the bias position is searched again on the
        corrected bias (in ``positions``); returns {module path: shift}."""
        shifts = {}
        for name, layer in self.corrected_layers().items():
            shift = layer.measured_bias_shift()
            if shift is None:
                fail(f"layer {name} saw no data: run the quantized model (quantizer.quant_model) "
                     "on calibration data before export_quant_config()")
            layer.set_bias_shift(shift)
            shifts[name] = shift
            point = layer.bias_point
            if point is not None and point.quantized:
                positions[point.name] = point.search(layer.bias.detach() - shift)
        return shifts

    def quant_info(self, positions, fast_finetuned, bias_corrected=False):
        param, output = {}, {}
        for name, point in self.points.items():
            if name in positions:
                entry = [[point.config.bit_width, positions[name]]]
                (param if point.kind in ("weights", "bias") else output)[name] = entry
        return {"param": param, "output": output, "input": {},
                "fast_finetuned": fast_finetuned, "bias_corrected": bias_corrected,
                "version": f"decent_q {__version__} (vai_q_pytorch API)",
                "graph_md5": self.md5}

    def set_positions(self, info, path):
        entries = {**info.get("param", {}), **info.get("output", {}), **info.get("input", {})}
        for name, point in self.points.items():
            if not point.quantized:
                continue
            if name not in entries:
                fail(f"{path} has no position for {name}: it was written for another model or "
                     "configuration; run quant_mode 'calib' again with this model and "
                     "quant_config_file")
            bit_width, pos = entries[name][0]
            if bit_width != point.config.bit_width:
                point.config = config_lib.dataclasses.replace(point.config, bit_width=bit_width)
            point.pos = int(pos)

    def layer_names(self):
        names = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                names[node.target] = convert.layer_key(self.gm, node)[1]
        return names


def _with_bitwidth(quant_config, bitwidth):
    """``quant_config`` with every integer tensor at ``bitwidth`` bits."""
    def at(tensor):
        if tensor is None or tensor.datatype != "int":
            return tensor
        return config_lib.dataclasses.replace(tensor, bit_width=int(bitwidth))
    tensors = {k: at(v) for k, v in quant_config.tensors.items()}
    return config_lib.dataclasses.replace(quant_config, tensors=tensors)


class torch_quantizer:  # pylint: disable=invalid-name  (vai_q_pytorch's name)
    """Post-training quantization of a float model, vai_q_pytorch style.

    Args:
      quant_mode: "calib" (run the float evaluation on ``quant_model`` to calibrate, then
        ``export_quant_config()``), "test" (evaluate the quantized model with the positions of
        ``output_dir/Quant_info.json``) or "float" (the converted model without quantization).
      module: the float ``torch.nn.Module`` (trained weights loaded; not modified).
      input_args: an example input (tensor or tuple of tensors) of the model's shape.
      state_dict_file: optional path of a state dict to load into ``module`` first.
      output_dir: where Quant_info.json, <Model>.py and the exports go.
      bitwidth: bit width of every quantized tensor (default: the configuration's, 8).
      device: the device of the model and inputs (default: CUDA if available, else CPU).
      quant_config_file: JSON configuration (docs/pytorch.md "Configuration file").
      target: accepted for compatibility (a DPU architecture name); unused.
    """

    def __init__(self, quant_mode, module, input_args=None, state_dict_file=None,
                 output_dir="quantize_result", bitwidth=None, device=None,
                 quant_config_file=None, target=None, **unused):
        if quant_mode not in MODES:
            fail(f"quant_mode {quant_mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(module, torch.nn.Module):
            fail(f"module must be a torch.nn.Module, got {type(module).__name__}")
        for key in unused:
            log.warn(f"torch_quantizer argument {key!r} is not used by decent_q")
        if target is not None:
            log.note(f"target {target!r}: the xmodel for a DPU needs the Vitis AI compiler; "
                     "decent_q writes the quantized model's positions and exports")
        self.quant_mode = quant_mode
        self.output_dir = output_dir
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            log.warn("device cuda is not available here; using the CPU")
            self.device = torch.device("cpu")
        if state_dict_file is not None:
            if not os.path.exists(state_dict_file):
                fail(f"state_dict_file {state_dict_file!r} does not exist")
            module.load_state_dict(torch.load(state_dict_file, map_location="cpu"))
        if input_args is None:
            fail("input_args is required: an example input of the model's shape, e.g. "
                 "torch.randn([1, 3, 224, 224])")
        self._example = tuple(t.to(self.device) for t in _example_inputs(input_args))
        quant_config = config_lib.load(quant_config_file) if quant_config_file else \
            config_lib.QuantConfig()
        self._warn_unused_options(quant_config)
        self._converted = _Converted(module.to(self.device), self._example, quant_config,
                                     bitwidth)
        self._fast_finetuned = False
        if quant_mode == "float":
            self._converted.set_phase("float")
        elif quant_mode == "calib":
            self._converted.set_phase("calib")
            if quant_config.include_bias_corr:
                self._converted.measure_bias_shifts()
        else:
            self._load_quant_info()
            self._converted.set_phase("test")
        self.quant_model = self._converted.gm.to(self.device)

    @staticmethod
    def _warn_unused_options(quant_config):
        for key in ("keep_first_last_layer_accuracy", "keep_add_layer_accuracy"):
            if getattr(quant_config, key):
                log.warn(f"quant_config_file: {key} is not applied by decent_q's PyTorch flow "
                         "(the model is quantized as with false)")

    # -- files ----------------------------------------------------------------------------

    def _info_path(self):
        path = os.path.join(self.output_dir, QUANT_INFO)
        original = os.path.join(self.output_dir, QUANT_INFO_ORIGINAL)
        return original if not os.path.exists(path) and os.path.exists(original) else path

    def _load_quant_info(self):
        path = self._info_path()
        if not os.path.exists(path):
            fail(f"{path} does not exist: run quant_mode 'calib' first and call "
                 "quantizer.export_quant_config() after the calibration forward")
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f"{path} cannot be read ({e}); run quant_mode 'calib' again to rewrite it")
        if not isinstance(info, dict) or "param" not in info or "output" not in info:
            fail(f"{path} is not a quantization result (no \"param\" / \"output\"); run "
                 "quant_mode 'calib' again")
        md5 = info.get("graph_md5")
        if md5 is not None and md5 != self._converted.md5:
            fail(f"{path} was written for a different model (graph_md5 differs): the model, "
                 "input shape or quant_config_file changed since calibration; run quant_mode "
                 "'calib' again")
        self._converted.set_positions(info, path)
        self._fast_finetuned = bool(info.get("fast_finetuned", False))
        if self._converted.config.include_bias_corr:
            self._load_bias_corr()
        elif info.get("bias_corrected"):
            log.warn(f"{path} comes from a bias-corrected calibration, but include_bias_corr "
                     "is false: the correction is not applied")

    def _load_bias_corr(self):
        path = os.path.join(self.output_dir, BIAS_CORR)
        if not os.path.exists(path):
            fail(f"{path} does not exist: include_bias_corr is true; run quant_mode 'calib' "
                 "with the same quant_config_file and export_quant_config() first")
        shifts = torch.load(path, map_location=self.device)
        layers = self._converted.corrected_layers()
        if not isinstance(shifts, dict) or set(shifts) != set(layers):
            fail(f"{path} does not match this model's layers; run quant_mode 'calib' again")
        for name, layer in layers.items():
            layer.set_bias_shift(shifts[name])

    def export_quant_config(self):
        """Writes ``Quant_info.json`` (positions kept from the calibration) and ``<Model>.py``
        into ``output_dir`` (calib mode only)."""
        if self.quant_mode != "calib":
            fail("export_quant_config() is for quant_mode 'calib' (it writes the calibration "
                 f"result); in quant_mode {self.quant_mode!r} the positions come from "
                 f"{QUANT_INFO}")
        positions = self._converted.kept_positions()
        _ensure_dir(self.output_dir)
        shifts = None
        if self._converted.config.include_bias_corr:
            shifts = self._converted.apply_bias_shifts(positions)
            bias_path = os.path.join(self.output_dir, BIAS_CORR)
            _atomic(bias_path, lambda tmp: torch.save(shifts, tmp))
        info = self._converted.quant_info(positions, self._fast_finetuned,
                                          bias_corrected=shifts is not None)
        for name, point in self._converted.points.items():
            point.pos = positions.get(name)
        py_path = os.path.join(self.output_dir, f"{self._converted.class_name}.py")
        _write_text(py_path, source.write(self._converted.gm, self._converted.class_name,
                                          self._converted.layer_names()))
        info_path = os.path.join(self.output_dir, QUANT_INFO)
        _write_text(info_path, json.dumps(info, indent=2) + "\n")
        log.note(f"=>Exported {info_path} and {py_path}")

    # -- fast finetune --------------------------------------------------------------------

    def fast_finetune(self, run_fn, run_args, steps=fast_finetune_lib.STEPS,
                      lr=fast_finetune_lib.LEARNING_RATE):
        """Adjusts each layer's weights and bias so its quantized output follows the float
        model's (calib mode; docs/pytorch.md "Fast finetune"). ``run_fn(*run_args)`` is the
        user's evaluation over the finetuning data (it must run ``quant_model``). Writes
        ``param.pth``; the calibration forward that follows re-calibrates."""
        if self.quant_mode != "calib":
            fail("fast_finetune() runs in quant_mode 'calib'; in quant_mode 'test' call "
                 "quantizer.load_ft_param() to load its result")
        if not callable(run_fn):
            fail(f"fast_finetune(run_fn, run_args): run_fn must be callable, got "
                 f"{type(run_fn).__name__}")
        if not isinstance(run_args, (tuple, list)):
            fail("fast_finetune(run_fn, run_args): run_args must be a tuple of run_fn's "
                 "arguments, e.g. (quant_model, ft_loader, loss_fn)")
        params = fast_finetune_lib.run(self._converted, run_fn, tuple(run_args), steps, lr)
        if self._converted.config.include_bias_corr:  # measured on the calibration that follows
            self._converted.measure_bias_shifts()
        _ensure_dir(self.output_dir)
        path = os.path.join(self.output_dir, FT_PARAMS)
        _atomic(path, lambda tmp: torch.save(params, tmp))
        self._fast_finetuned = True
        log.note(f"=>Fast finetuned parameters saved in {path}")

    def load_ft_param(self):
        """Loads the fast-finetuned parameters (``param.pth``) in quant_mode 'test'."""
        if self.quant_mode != "test":
            fail("load_ft_param() is for quant_mode 'test'; in quant_mode 'calib' call "
                 "quantizer.fast_finetune(run_fn, run_args)")
        path = os.path.join(self.output_dir, FT_PARAMS)
        if not os.path.exists(path):
            fail(f"{path} does not exist: run quant_mode 'calib' with fast_finetune first")
        if not self._fast_finetuned:
            log.warn(f"{QUANT_INFO} says the calibration was not fast finetuned; its positions "
                     f"may not match {path}")
        params = torch.load(path, map_location=self.device)
        missing = [k for k in params if k not in dict(self.quant_model.named_parameters())]
        if missing:
            fail(f"{path} does not match this model (no parameter {missing[0]}); run "
                 "quant_mode 'calib' with fast_finetune again")
        with torch.no_grad():
            named = dict(self.quant_model.named_parameters())
            for key, value in params.items():
                named[key].copy_(value)
        log.note(f"=>Fast finetuned parameters loaded from {path}")

    # -- exports --------------------------------------------------------------------------

    def _deployable(self, what):
        """A copy of the test-mode model whose layers hold their quantized weights and biases
        (the points on parameters removed): the same outputs, parameters stored once."""
        if self.quant_mode != "test":
            fail(f"{what} exports the quantized model: run it in quant_mode 'test' (after "
                 "calibration)")
        model = copy.deepcopy(self.quant_model).eval()
        with torch.no_grad():
            for node in self._converted.plan.layers:
                layer = model.get_submodule(node.target)
                weight, bias = layer.quantized_parameters()
                layer.weight.copy_(weight)
                if bias is not None:
                    layer.bias.copy_(bias)
                layer.set_bias_shift(None)  # in the stored bias now
                layer.weight_point = layer.bias_point = None
        return model

    def export_torch_script(self, output_dir=None, verbose=False):
        """Writes ``<Model>_int.pt``, the test-mode model traced with TorchScript."""
        model = self._deployable("export_torch_script()")
        output_dir = output_dir or self.output_dir
        _ensure_dir(output_dir)
        path = os.path.join(output_dir, f"{self._converted.class_name}_int.pt")
        with torch.no_grad():
            scripted = torch.jit.trace(model, self._example, check_trace=False)
        _atomic(path, scripted.save)
        if verbose:
            print(scripted.code)
        log.note(f"=>TorchScript model written to {path}")
        return path

    def export_onnx_model(self, output_dir=None, verbose=False, dynamic_batch=False,
                          opset_version=None):
        """Writes ``<Model>_int.onnx``: the test-mode model, each FixNeuron as exact float
        operations (docs/pytorch.md "Exports")."""
        model = self._deployable("export_onnx_model()")
        output_dir = output_dir or self.output_dir
        _ensure_dir(output_dir)
        opset = opset_version or self._converted.config.onnx_opset_version
        path = os.path.join(output_dir, f"{self._converted.class_name}_int.onnx")
        names = [f"input_{i}" for i in range(len(self._example))]
        axes = {n: {0: "batch"} for n in names + ["output"]} if dynamic_batch else None

        def write(tmp):
            with torch.no_grad():
                torch.onnx.export(model, self._example, tmp, verbose=verbose,
                                  input_names=names, output_names=["output"],
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
        _atomic(path, write)
        log.note(f"=>ONNX model written to {path}")
        return path

    def export_xmodel(self, output_dir=None, deploy_check=False):
        """Not available: the xmodel is written by the Vitis AI compiler toolchain."""
        del output_dir, deploy_check
        fail("export_xmodel(): the DPU's xmodel needs the Vitis AI toolchain (XIR and the "
             "compiler), which decent_q does not include; use export_onnx_model() or "
             "export_torch_script(), or run this script inside the Vitis AI docker")


class QatProcessor:
    """Quantization-aware training (the guide's "Finetune Quantized Model").

    ``trainable_model()`` is the converted model (each batch norm kept by the layer before it
    and folded on every forward, with the batch's statistics in training: docs/pytorch.md
    "QAT") with every point in train phase: each training forward searches and counts the
    positions and quantizes with them; the gradient passes the FixNeurons straight through. Train
    it with your own optimizer and loop; in ``model.eval()`` the points use the positions kept so
    far. ``to_deployable(model, output_dir)`` keeps each point's most frequent position,
    writes Quant_info.json, <Model>.py and the weights (``<Model>_qat.pth``), and returns the
    model in test phase (torch_quantizer's "test" numbers). ``+`` and ``-`` in forward need no
    rewrite to torch.add modules: torch.fx sees them.
    """

    def __init__(self, model, inputs, bitwidth=None, quant_config_file=None, device=None,
                 **unused):
        if not isinstance(model, torch.nn.Module):
            fail(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for key in unused:
            log.warn(f"QatProcessor argument {key!r} is not used by decent_q")
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        example = tuple(t.to(self.device) for t in _example_inputs(inputs))
        quant_config = config_lib.load(quant_config_file) if quant_config_file else \
            config_lib.QuantConfig()
        if quant_config.include_bias_corr:
            log.note("include_bias_corr: not in QAT (bias correction is post-training only)")
        self._converted = _Converted(model.to(self.device), example, quant_config, bitwidth,
                                     qat=True)
        self._converted.set_phase("train")

    def trainable_model(self, allow_reused_module=True):
        """The model to train (train mode, points in train phase)."""
        del allow_reused_module  # every call of a reused module gets its own point already
        return self._converted.gm.to(self.device).train()

    def to_deployable(self, trained_model, output_dir="quantize_result"):
        """Keeps the positions, writes the files into ``output_dir`` and returns the model in
        test phase (eval mode)."""
        if trained_model is not self._converted.gm:
            fail("to_deployable() takes the model that trainable_model() returned")
        positions = self._converted.kept_positions()
        _ensure_dir(output_dir)
        for name, point in self._converted.points.items():
            point.pos = positions.get(name)
        self._converted.set_phase("test")
        for node in self._converted.plan.layers:
            qnn.fold_batch_norm(self._converted.gm.get_submodule(node.target))
        name = self._converted.class_name
        _write_text(os.path.join(output_dir, f"{name}.py"),
                    source.write(self._converted.gm, name, self._converted.layer_names()))
        state = source.state_dict_of(self._converted.gm)
        _atomic(os.path.join(output_dir, f"{name}_qat.pth"), lambda tmp: torch.save(state, tmp))
        info = self._converted.quant_info(positions, fast_finetuned=False)
        _write_text(os.path.join(output_dir, QUANT_INFO), json.dumps(info, indent=2) + "\n")
        log.note(f"=>Deployable model written to {output_dir}")
        return self._converted.gm.eval()

    def export_xmodel(self, output_dir=None, deploy_check=False):
        """Not available: the xmodel is written by the Vitis AI compiler toolchain."""
        del output_dir, deploy_check
        fail("export_xmodel(): the DPU's xmodel needs the Vitis AI toolchain, which decent_q "
             "does not include; load the deployable model's files into torch_quantizer "
             "instead (docs/pytorch.md \"QAT\")")
