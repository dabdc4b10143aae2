"""The position search's squared-error costs: the AVX-512 and AVX2 forms give the same sums bit
for bit, the point's rounding does not change them, and they are the squared errors.

The kernel (ops/fix_neuron_core.h) picks its form once per process (AVX-512 where the CPU has
it; ``DECENT_Q_SIMD=avx2`` keeps the AVX2 form), so each form runs in its own process, calling
the C interface the PyTorch flow uses (ops/fix_neuron_cpu.cc) through ctypes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import _decent_q_native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Sizes around the 8- and 16-value steps and the 2^14-value blocks.
SIZES = [1, 7, 8, 15, 16, 17, 24, 40, 16384 + 24, 100_003, 1 << 20]

_COSTS = r"""
import ctypes, json, sys
import numpy as np
import _decent_q_native
lib = ctypes.CDLL(_decent_q_native.cpu_library())
lib.decent_q_min_diffs_costs.restype = ctypes.c_int
lib.decent_q_min_diffs_costs.argtypes = [
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float,
    ctypes.c_float, ctypes.c_int, ctypes.c_void_p]
out = {}
for case in json.loads(sys.argv[1]):
    x = np.load(case["path"])
    for half_up in (0, 1):
        for threads in (1, 2):
            costs = np.zeros(5, np.float64)
            num = lib.decent_q_min_diffs_costs(x.ctypes.data, x.size, case["p0"], half_up, 0,
                                               -128.0, 127.0, threads, costs.ctypes.data)
            out[f"{case['path']}/{half_up}/{threads}"] = costs[:num].tobytes().hex()
print(json.dumps(out))
"""


def _tensors(tmp_path):
    """(path, p0) cases: normal values, activations with ties and saturation, non-finite."""
    rng = np.random.default_rng(0)
    cases = []
    for size in SIZES:
        x = rng.standard_normal(size).astype(np.float32) * 3
        x[::5] = np.round(x[::5] * 16) / 16 + 1 / 32  # exact ties at 0.5 steps for p0 = 4
        x[::11] *= 200  # saturated at every candidate
        if size > 20:
            x[3], x[13], x[17] = np.nan, np.inf, -np.inf
        path = str(tmp_path / f"x{size}.npy")
        np.save(path, x)
        cases.append({"path": path, "p0": 4})
    return cases


def _costs(cases, **env):
    result = subprocess.run(
        [sys.executable, "-c", _COSTS, json.dumps(cases)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": ROOT, **env}, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return {k: np.frombuffer(bytes.fromhex(v), np.float64) for k, v in
            json.loads(result.stdout.splitlines()[-1]).items()}


def _has_avx512():
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= set(flags)


def _reference(x, p0):
    """NumPy: sum over finite x of (clamp(round_half_up(x 2^p)) 2^-p - x)^2 in float64."""
    x = np.where(np.isfinite(x), x, 0).astype(np.float64)
    costs = []
    for p in range(p0, p0 + 5):
        q = np.clip(np.floor(x * 2.0 ** p + 0.5), -128, 127) * 2.0 ** -p
        costs.append(np.sum((q - x) ** 2))
    return np.array(costs)


@pytest.fixture(scope="module")
def costs(tmp_path_factory):
    _decent_q_native.cpu_library()  # built once, before the two processes
    cases = _tensors(tmp_path_factory.mktemp("simd"))
    return cases, _costs(cases), _costs(cases, DECENT_Q_SIMD="avx2")


def test_costs_are_the_squared_errors(costs):
    cases, default, _ = costs
    for case in cases:
        want = _reference(np.load(case["path"]), case["p0"])
        np.testing.assert_allclose(default[f"{case['path']}/1/1"], want, rtol=1e-9, atol=0)


def test_rounding_and_threads_do_not_change_the_costs(costs):
    cases, default, _ = costs
    for case in cases:
        first = default[f"{case['path']}/1/1"]
        for key in ("0/1", "0/2", "1/2"):
            assert first.tobytes() == default[f"{case['path']}/{key}"].tobytes(), key


def test_avx512_equals_avx2_bit_for_bit(costs):
    if not _has_avx512():
        pytest.skip("this CPU has no AVX-512: both runs take the AVX2 form")
    _, default, avx2 = costs
    assert default.keys() == avx2.keys()
    for key in default:
        assert default[key].tobytes() == avx2[key].tobytes(), key
