"""``tensorflow.contrib.decent_q.python.quantize_graph``: the QAT calls with the original's
signatures (a ``graph`` first, defaulting to the default graph), and QuantizeConfig."""

import contextlib

from decent_q import qat
from decent_q.config import QuantizeConfig

__all__ = ["QuantizeConfig", "CreateQuantizeTrainingGraph", "CreateQuantizeEvaluationGraph",
           "CreateQuantizeDeployGraph"]


def _graph(graph):
    return graph.as_default() if graph is not None else contextlib.nullcontext()


def CreateQuantizeTrainingGraph(graph=None, config=None):  # pylint: disable=invalid-name
    """:func:`decent_q.CreateQuantizeTrainingGraph` on `graph` (default: the default graph)."""
    with _graph(graph):
        return qat.CreateQuantizeTrainingGraph(config=config)


def CreateQuantizeEvaluationGraph(graph=None, config=None):  # pylint: disable=invalid-name
    """:func:`decent_q.CreateQuantizeEvaluationGraph` on `graph` (default: the default graph)."""
    with _graph(graph):
        return qat.CreateQuantizeEvaluationGraph(config=config)


def CreateQuantizeDeployGraph(graph=None, checkpoint="", config=None):  # pylint: disable=invalid-name
    """:func:`decent_q.CreateQuantizeDeployGraph` on `graph` (default: the default graph)."""
    with _graph(graph):
        return qat.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config)
