"""The TensorFlow op's C++ numerics for CPU float32 tensors (docs/pytorch.md "Numerics").

ops/fix_neuron_cpu.cc is a C interface over ops/fix_neuron_core.h, the code the TensorFlow
kernel runs; it is compiled on first use into decent_q's kernel cache (``_decent_q_native``)
and called through ctypes. It does the position search (all candidates in one pass) and the
quantization for the two DPU roundings, std_round and half_up, on contiguous CPU float32
tensors outside tracing. Everything else (other roundings, other devices and types, traced
exports) runs fix_neuron.py's torch operations, which compute the same numbers.

Without a C++ compiler the flow still works on the torch operations (slower; one VAIQ_WARN).
``DECENT_Q_TORCH_NATIVE=0`` chooses them on purpose.
"""

import ctypes
import os

import torch

import _decent_q_native
from decent_q_torch.log import warn

_ROUNDINGS = {"std_round": 0, "half_up": 1}
_library = None
_unavailable = False


def _load():
    """The loaded library, or None (no compiler, a failed build, or switched off)."""
    global _library, _unavailable  # pylint: disable=global-statement
    if _library is not None or _unavailable:
        return _library
    if os.environ.get("DECENT_Q_TORCH_NATIVE", "1") == "0":
        _unavailable = True
        return None
    try:
        library = ctypes.CDLL(_decent_q_native.cpu_library())
    except (_decent_q_native.BuildError, OSError) as err:
        _unavailable = True
        warn(f"{err}\nThe PyTorch flow goes on with torch operations for FixNeuron (the same "
             "numbers, slower).")
        return None
    library.decent_q_search_pos.restype = ctypes.c_int
    library.decent_q_search_pos.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_float, ctypes.c_float, ctypes.c_int]
    library.decent_q_quantize.restype = None
    library.decent_q_quantize.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
        ctypes.c_float, ctypes.c_float, ctypes.c_int]
    _library = library
    return library


def handles(x, round_mode):
    """True if the library computes this tensor (else the torch operations do)."""
    return (round_mode in _ROUNDINGS and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling() and _load() is not None)


def search_pos(x, bit_width, method, round_mode, lo, hi, depthwise):
    """The position of ``x`` (see fix_neuron.search_pos); requires ``handles(x, round_mode)``."""
    x = x.detach().contiguous()
    return int(_library.decent_q_search_pos(
        x.data_ptr(), x.numel(), bit_width, method, _ROUNDINGS[round_mode], int(depthwise),
        lo, hi, torch.get_num_threads()))


def quantize(x, pos, round_mode, lo, hi):
    """``clamp(round(x * 2^pos), lo, hi) * 2^-pos`` as a new tensor; requires
    ``handles(x, round_mode)``."""
    x = x.detach().contiguous()
    out = torch.empty_like(x)
    _library.decent_q_quantize(x.data_ptr(), out.data_ptr(), x.numel(), pos,
                               _ROUNDINGS[round_mode], lo, hi, torch.get_num_threads())
    return out
