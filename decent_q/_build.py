"""Builds the FixNeuron kernel library against the TensorFlow that is running.

A custom op binary only works with the TensorFlow it was compiled against, so the library is
compiled on first use into a cache keyed by the TensorFlow version and flags, the kernel source,
the compiler and the target CPU level. Later imports load the cached file (no compiler needed).

Cache folder: ``$DECENT_Q_CACHE_DIR``, else ``$XDG_CACHE_HOME/decent_q``, else
``~/.cache/decent_q``. ``python -m decent_q.build`` builds ahead of time.
"""

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from decent_q.errors import QuantizeError

_SOURCE_NAME = "fix_neuron_ops.cc"


def source_path():
    """The kernel source: packaged copy when installed, ``ops/`` when run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "ops_src", _SOURCE_NAME),
                      os.path.join(os.path.dirname(here), "ops", _SOURCE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise QuantizeError(f"the FixNeuron kernel source {_SOURCE_NAME} is missing from the "
                        "installation; reinstall decent_q")


def cache_dir():
    if os.environ.get("DECENT_Q_CACHE_DIR"):
        return os.environ["DECENT_Q_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "decent_q")


def _cpu_flags():
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


def _compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise QuantizeError("no C++ compiler found to build the FixNeuron kernel; install g++ "
                            "(e.g. 'apt-get install g++') or set CXX")
    return cxx


def _command(tf, cxx, src, out):
    return ([cxx, "-std=c++17", "-O3", "-fPIC", "-shared", "-g0",
             "-Wno-interference-size", "-Wno-deprecated-declarations"] + _cpu_flags()
            + [src, "-o", out] + tf.sysconfig.get_compile_flags()
            + tf.sysconfig.get_link_flags())


def library_path():
    """Returns the path of a kernel library matching the running TensorFlow, building it if
    needed. Safe against concurrent builds (a file lock) and interrupted ones (atomic rename)."""
    import tensorflow as tf

    src = source_path()
    cxx = _compiler()
    with open(src, "rb") as f:
        source = f.read()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 check=False).stdout.splitlines()[:1]
    except OSError as err:
        raise QuantizeError(f"cannot run the C++ compiler {cxx!r}: {err}") from err
    key = hashlib.sha256(repr((source, tf.__version__, tf.sysconfig.get_compile_flags(),
                               tf.sysconfig.get_link_flags(), version,
                               _command(tf, "cxx", "src", "out"))).encode()).hexdigest()[:20]
    folder = cache_dir()
    target = os.path.join(folder, f"fix_neuron_ops-{key}.so")
    if os.path.isfile(target):
        return target
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise QuantizeError(f"cannot create the kernel cache folder {folder}: {err}; set "
                            "DECENT_Q_CACHE_DIR to a writable folder") from err
    with open(os.path.join(folder, f".{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(target):
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            proc = subprocess.run(_command(tf, cxx, src, tmp), capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                errors = [l for l in proc.stderr.splitlines() if "error" in l][:5]
                raise QuantizeError("building the FixNeuron kernel failed:\n  "
                                    + "\n  ".join(errors or proc.stderr.splitlines()[-5:]))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return target
