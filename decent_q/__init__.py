"""decent_q: power-of-two quantization of TensorFlow graphs for DPUs and CPUs.

The Vitis AI TensorFlow quantizer API (``vai_q_tensorflow``, ``tensorflow.contrib.decent_q``)
on TensorFlow 2 in ``tf.compat.v1`` graph mode. Importing decent_q registers the FixNeuron op.
"""

import _decent_q_contrib
import _decent_q_entry

_decent_q_contrib.install()
if _decent_q_entry.running_as_main():
    # `python -m decent_q`: runpy imports this package before __main__, so the command's quiet
    # TensorFlow import (as the console script does) and the parsing before it (--help answers
    # without TensorFlow) have to happen here.
    _decent_q_entry.exit_if_parsing_ends()
    _decent_q_entry.import_tensorflow_quietly()

# pylint: disable=wrong-import-position
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.ops import Mode, Phase, fix_neuron, load_library
from decent_q.qat import (CreateQuantizeDeployGraph, CreateQuantizeEvaluationGraph,
                          CreateQuantizeTrainingGraph)
from decent_q.ptq import quantize_frozen
from decent_q.dump import dump as dump_simulation
from decent_q.analysis import analyze
from decent_q.inspection import inspect_graph
from decent_q.onnx_export import export as export_onnx
from decent_q.python.decent_q import (check_float_graph, deploy_checkpoint, inspect,
                                      quantize_evaluate, quantize_train)
from decent_q.version import __version__

load_library()

__all__ = [
    "QuantizeConfig",
    "QuantizeError",
    "ConfigError",
    "Mode",
    "Phase",
    "fix_neuron",
    "__version__",
    "CreateQuantizeTrainingGraph",
    "CreateQuantizeEvaluationGraph",
    "CreateQuantizeDeployGraph",
    "quantize_frozen",
    "dump_simulation",
    "analyze",
    "inspect_graph",
    "export_onnx",
    # the original's functional API (decent_q.python.decent_q)
    "quantize_train",
    "quantize_evaluate",
    "deploy_checkpoint",
    "inspect",
    "check_float_graph",
]
