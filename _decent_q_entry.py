"""Console-script entry points.

TensorFlow 2.21 prints its C++ start-up notes (oneDNN, CUDA probing) to stderr before its log
settings apply, so TF_CPP_MIN_LOG_LEVEL cannot silence them. The commands import TensorFlow
with stderr pointed at /dev/null (restored right after; an import failure is re-raised with
its Python message). ``--debug`` keeps everything.
"""

import os
import sys


def _import_tensorflow_quietly():
    if "--debug" in sys.argv:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def vai_q_tensorflow():
    _import_tensorflow_quietly()
    from decent_q.cli import main  # pylint: disable=import-outside-toplevel
    return main()


def freeze_graph():
    _import_tensorflow_quietly()
    from decent_q.freeze import main  # pylint: disable=import-outside-toplevel
    return main()
