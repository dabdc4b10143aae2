"""Compiles decent_q's C++ sources (ops/) on first use into a per-user cache.

Both flows use it and it imports neither framework: the TensorFlow kernel library
(decent_q/_build.py adds TensorFlow's flags) and the plain C library of the PyTorch flow
(decent_q_torch/native.py). A library is built once per source text (with the headers it
includes), compiler, flags and target CPU level, under a name that hashes all of them; later
uses load the cached file and need no compiler.

Cache folder: ``$DECENT_Q_CACHE_DIR``, else ``$XDG_CACHE_HOME/decent_q``, else
``~/.cache/decent_q``.
"""

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile


class BuildError(Exception):
    """A library could not be built or found; the message names the cause and the fix."""


def source_path(name):
    """``name`` among the C++ sources: the packaged copy (decent_q/ops_src) when installed,
    ``ops/`` when run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "decent_q", "ops_src", name),
                      os.path.join(here, "ops", name)):
        if os.path.isfile(candidate):
            return candidate
    raise BuildError(f"the C++ source {name} is missing from the installation; reinstall "
                     "decent_q")


def cache_dir():
    if os.environ.get("DECENT_Q_CACHE_DIR"):
        return os.environ["DECENT_Q_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "decent_q")


def cpu_flags():
    """-march level: x86-64-v3 (AVX2, FMA) where the CPU has it. -march=native is avoided on
    purpose: it enables AVX512-FP16, which TensorFlow's bundled Eigen headers fail to compile."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return []
    if {"avx2", "fma", "bmi2", "movbe"} <= set(flags):
        return ["-march=x86-64-v3"]
    return []


def compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler found to build decent_q's FixNeuron kernel; install "
                         "g++ (e.g. 'apt-get install g++') or set CXX")
    return cxx


# Every library: C++17, optimised, position-independent, shared, no debug information.
COMMON_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-shared", "-g0"]


def build(stem, source, headers, flags, after, what, key_extra=()):
    """The path of ``<stem>-<key>.so``, compiled as ``cxx COMMON_FLAGS flags cpu_flags() source
    -o out after`` if not cached; ``headers`` are the paths of the headers ``source`` includes (part of the key, as
    are the texts, the compiler's version, the flags and ``key_extra``). ``what`` names the library in
    messages.
    Safe against concurrent builds (a file lock) and interrupted ones (atomic rename)."""
    cxx = compiler()
    texts = []
    for path in [source] + list(headers):
        with open(path, "rb") as f:
            texts.append(f.read())
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 check=False).stdout.splitlines()[:1]
    except OSError as err:
        raise BuildError(f"cannot run the C++ compiler {cxx!r}: {err}") from err
    flags = COMMON_FLAGS + list(flags) + cpu_flags()
    key = hashlib.sha256(repr((texts, version, flags, after, tuple(key_extra))).encode()).hexdigest()[:20]
    folder = cache_dir()
    target = os.path.join(folder, f"{stem}-{key}.so")
    if os.path.isfile(target):
        return target
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise BuildError(f"cannot create the kernel cache folder {folder}: {err}; set "
                         "DECENT_Q_CACHE_DIR to a writable folder") from err
    with open(os.path.join(folder, f".{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(target):
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            proc = subprocess.run([cxx] + flags + [source, "-o", tmp] + list(after),
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                errors = [l for l in proc.stderr.splitlines() if "error" in l][:5]
                raise BuildError(f"building {what} failed:\n  "
                                 + "\n  ".join(errors or proc.stderr.splitlines()[-5:]))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return target


def cpu_library():
    """The path of the FixNeuron CPU library (ops/fix_neuron_cpu.cc: the C interface over
    ops/fix_neuron_core.h that the PyTorch flow calls through ctypes), built if not cached."""
    return build("fix_neuron_cpu", source_path("fix_neuron_cpu.cc"),
                 [source_path("fix_neuron_core.h")], ["-pthread"], [],  # it starts std::threads
                 "the FixNeuron CPU library")
