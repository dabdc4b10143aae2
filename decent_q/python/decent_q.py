"""``tensorflow.contrib.decent_q.python.decent_q``: the original's functional API (1.4.1).

Argument orders and output files are the 1.4.1 release's:

=================================================  ===========================================
call                                               writes (in ``q_config.output_dir``)
=================================================  ===========================================
``quantize_frozen(graph_def, input_fn, q_config,   ``quantize_eval_model.pb``,
s_config, skip_check)``                            ``deploy_model.pb``
``quantize_train(meta_graph_def, q_config)``       ``quantize_train/quantize_train.ckpt.meta``
``quantize_evaluate(meta_graph_def, q_config)``    ``quantize_eval/quantize_eval.ckpt.meta``
``deploy_checkpoint(meta_graph_def, checkpoint,    ``deploy/deploy_model.pb`` (and
q_config)``                                        ``deploy/quantize_eval_model.pb``)
``dump(graph_def, input_fn, output_dir,            ``output_dir/dump_results_0/<node>.txt``,
max_dump_batches, dump_float, s_config)``          ``.bin``, ``dump_results_weights/``
=================================================  ===========================================

Where decent_q differs: positions live in the ``pos_hist`` variables of the graph (saved with
checkpoints), not in temp files of the last process, so the evaluation graph that
``quantize_evaluate`` writes reads them from the checkpoint it is run with (its points are
``FixNeuronDynamic`` ops, not ``FixNeuron`` ops with a fixed ``quantize_pos``);
``deploy_checkpoint`` freezes them. The MetaGraphDef arguments are not modified (the original
overwrote their graph_def); each function returns what it wrote.
"""

import dataclasses
import logging
import os

import tensorflow as tf
from tensorflow.python.framework import meta_graph as meta_graph_lib  # pylint: disable=no-name-in-module

from decent_q import checks
from decent_q import dump as dump_lib
from decent_q import inputs
from decent_q import inspection
from decent_q import ptq
from decent_q import qat
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils

log = logging.getLogger("decent_q")

__all__ = ["quantize_frozen", "quantize_train", "quantize_evaluate", "deploy_checkpoint",
           "inspect", "dump", "check_float_graph"]


def quantize_frozen(input_graph_def, input_fn, q_config=None, s_config=None, skip_check=0,
                    dump_as_xir=False):
    """Post-training quantization (:func:`decent_q.quantize_frozen`).

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}.
    """
    if dump_as_xir:
        log.warning("dump_as_xir is not supported (no XIR compiler in decent_q); ignored")
    return ptq.quantize_frozen(input_graph_def, input_fn, _config(q_config), s_config,
                               skip_check=skip_check if skip_check else None)


def check_float_graph(input_graph_def, input_fn, q_config, s_config=None):
    """Runs the float graph on input_fn(0) (the check quantize_frozen runs first)."""
    q_config = _config(q_config)
    fn, name = inputs.load_input_fn(input_fn)
    checks.check_float_model(input_graph_def, q_config, inputs.call_input_fn(fn, 0, name),
                             name, checks.check_session_config(s_config))


def quantize_train(input_meta_graph_def, q_config):
    """The QAT training graph of a float training MetaGraphDef.

    Writes ``output_dir/quantize_train/quantize_train.ckpt.meta``; import it with
    ``tf.compat.v1.train.import_meta_graph`` (after ``import decent_q``), add the optimizer
    and train.

    Returns:
      The MetaGraphDef written.
    """
    q_config = _config(q_config)
    graph = _import_meta(input_meta_graph_def, "quantize_train")
    with graph.as_default():
        qat.CreateQuantizeTrainingGraph(config=q_config)
    return _export_meta(graph, q_config, "quantize_train")


def quantize_evaluate(input_meta_graph_def, q_config):
    """The QAT evaluation graph of a quantize_train MetaGraphDef (see the module docstring).

    Writes ``output_dir/quantize_eval/quantize_eval.ckpt.meta``.

    Returns:
      The MetaGraphDef written.
    """
    q_config = _config(q_config)
    graph = _import_meta(input_meta_graph_def, "quantize_evaluate")
    qat.switch_to_evaluation(graph)
    return _export_meta(graph, q_config, "quantize_eval")


def deploy_checkpoint(input_meta_graph_def, input_checkpoint, q_config):
    """Freezes a quantize_eval MetaGraphDef with a checkpoint (prefix or folder) and writes
    ``output_dir/deploy/deploy_model.pb`` and ``output_dir/deploy/quantize_eval_model.pb``.

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}.
    """
    q_config = _config(q_config)
    graph = _import_meta(input_meta_graph_def, "deploy_checkpoint")
    q_config = dataclasses.replace(q_config,
                                   output_dir=os.path.join(q_config.output_dir, "deploy"))
    return qat.deploy_models(graph, input_checkpoint, q_config)


def inspect(input_graph_def, input_frozen_graph=None):
    """Prints what decent_q sees in a frozen graph (the ``vai_q_tensorflow inspect`` report).

    The second argument (the original's file name, used only for messages) is accepted and
    ignored. Returns the report dict of :func:`decent_q.inspect_graph`.
    """
    del input_frozen_graph
    info = inspection.inspect_graph(input_graph_def)
    print(inspection.format_report(info))
    return info


def dump(input_graph_def, input_fn, output_dir, max_dump_batches, dump_float,
         s_config=None, dump_input_tensors=""):
    """Dumps a quantize_eval_model's values per batch with the 1.4.1 file names
    (``dump_results_0/<node>.txt``; see :mod:`decent_q.dump`, layout "1.4.1").

    Returns:
      The list of batch folders written.
    """
    return dump_lib.dump(input_graph_def, input_fn, max_dump_batches=int(max_dump_batches),
                         dump_float=int(dump_float), output_dir=output_dir,
                         dump_input_tensors=dump_input_tensors,
                         session_config=checks.check_session_config(s_config),
                         layout="1.4.1")


def _config(q_config):
    if q_config is None:
        raise ConfigError("q_config is required: a QuantizeConfig(input_nodes=[...], "
                          "output_nodes=[...], input_shapes=[[...]])")
    if not isinstance(q_config, QuantizeConfig):
        raise ConfigError(f"q_config must be a decent_q QuantizeConfig, got "
                          f"{type(q_config).__name__}")
    return q_config


def _import_meta(meta_graph_def, what):
    if not isinstance(meta_graph_def, tf.compat.v1.MetaGraphDef):
        raise ConfigError(f"{what} needs a MetaGraphDef (e.g. read from a .meta file), got "
                          f"{type(meta_graph_def).__name__}")
    graph = tf.Graph()
    with graph.as_default():
        try:
            # Not train.import_meta_graph: it adds a Saver's ops, which would be exported too.
            meta_graph_lib.import_scoped_meta_graph(meta_graph_def, clear_devices=True)
        except (ValueError, tf.errors.OpError) as err:
            raise QuantizeError(f"{what}: the MetaGraphDef does not import: {err}") from err
    return graph


def _export_meta(graph, q_config, folder):
    with graph.as_default():
        meta = tf.compat.v1.train.export_meta_graph(clear_devices=True)
    path = os.path.join(utils.prepare_output_dir(os.path.join(q_config.output_dir, folder)),
                        f"{folder}.ckpt.meta")
    utils.write_atomic(path, meta.SerializeToString(deterministic=True))
    log.info("wrote %s", path)
    return meta
