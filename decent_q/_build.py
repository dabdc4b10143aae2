"""Builds the FixNeuron kernel library against the TensorFlow that is running.

A custom op binary only works with the TensorFlow it was compiled against, so the library is
compiled on first use (``_decent_q_native``) into a cache keyed by the TensorFlow version and
flags, the kernel source and the core header it shares with the PyTorch flow, the compiler and
the target CPU level. Later imports load the cached file (no compiler needed).

Cache folder: ``$DECENT_Q_CACHE_DIR``, else ``$XDG_CACHE_HOME/decent_q``, else
``~/.cache/decent_q``.
"""

import _decent_q_native
from decent_q.errors import QuantizeError

# Quiet the warnings that TensorFlow's own headers raise.
_FLAGS = ["-Wno-interference-size", "-Wno-deprecated-declarations"]


def library_path():
    """Returns the path of a kernel library matching the running TensorFlow, building it if
    needed. Safe against concurrent builds (a file lock) and interrupted ones (atomic rename)."""
    import tensorflow as tf

    try:
        return _decent_q_native.build(
            "fix_neuron_ops", _decent_q_native.source_path("fix_neuron_ops.cc"),
            [_decent_q_native.source_path("fix_neuron_core.h")],
            _FLAGS,
            tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags(),
            "the FixNeuron kernel", key_extra=(tf.__version__,))
    except _decent_q_native.BuildError as err:
        raise QuantizeError(str(err)) from err
