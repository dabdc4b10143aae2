"""QAT checkpoints: finding one, its step, freezing a graph with it, and old point names.

A checkpoint of the QAT training graph holds the float variables and the position histograms
``<point>/pos_hist``; :func:`freeze` turns the evaluation graph and such a checkpoint into a
GraphDef of constants (what CreateQuantizeDeployGraph writes). decent_q 0.1 named a weight
point after its variable (``w/wquant``); points are now named after the tensor the compute op
reads, as in the original (``w/read/wquant``). :func:`freeze` reads histograms stored under the
old names, :func:`checkpoint_var_list` lets a Saver restore them, and
:func:`convert_checkpoint` writes a copy with today's names.
"""

import os
import re

import tensorflow as tf

from decent_q import ops, registry
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils


def resolve_checkpoint(checkpoint):
    """A checkpoint prefix from a prefix or a folder (its latest checkpoint)."""
    if not checkpoint:
        raise ConfigError("checkpoint is required: a checkpoint prefix like "
                          "'train_dir/model.ckpt-2000' or a folder holding checkpoints")
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise QuantizeError(f"no checkpoint in {checkpoint}; train first or give the "
                                "checkpoint prefix (e.g. model.ckpt-2000)")
        return latest
    if not tf.compat.v1.train.checkpoint_exists(checkpoint):
        raise QuantizeError(f"checkpoint {checkpoint} does not exist (expected "
                            f"{checkpoint}.index); give a checkpoint prefix or its folder")
    return checkpoint


def checkpoint_step(path):
    """model.ckpt-2000 -> 2000; else the checkpoint's global_step; else 0."""
    found = re.search(r"-(\d+)$", os.path.basename(path))
    if found:
        return int(found.group(1))
    try:
        return int(tf.train.load_variable(path, "global_step"))
    except (tf.errors.NotFoundError, ValueError, TypeError):
        return 0


def freeze(graph, checkpoint, keep):
    """Restores the variables `keep` needs from `checkpoint` and freezes them into constants.

    Position histograms stored under their decent_q 0.1 names (``w/wquant/pos_hist``) are read
    from there."""
    needed = _needed_variables(graph, keep)
    stored = dict(tf.train.list_variables(checkpoint))
    legacy = legacy_histogram_names(graph)
    stored_as = {op.name: (legacy[op.name] if op.name not in stored and
                           legacy.get(op.name) in stored else op.name) for op in needed}
    stored.update({name: stored[old] for name, old in stored_as.items() if old in stored})
    missing = [op.name for op in needed if op.name not in stored]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                         else "")
        thresholds = all(name.endswith((ops.THRESHOLD_INIT, ops.THRESHOLD_TRAINED))
                         for name in missing)
        hint = ("; it was trained without trained thresholds: give "
                "CreateQuantizeEvaluationGraph the quantize_strategy the training used "
                "(pof2s)" if thresholds else "")
        raise QuantizeError(f"checkpoint {checkpoint} does not match the evaluation graph: it "
                            f"lacks {len(missing)} variable(s) the graph needs: {shown}{hint}. "
                            "Use a checkpoint of the QAT training graph of this model (same "
                            "input_nodes / output_nodes, same quantize_strategy)")
    by_name = {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    for op in needed:
        shape = op.get_attr("shape") if op.type == "VarHandleOp" else op.outputs[0].shape
        if tf.TensorShape(shape).as_list() != list(stored[op.name]):
            raise QuantizeError(f"checkpoint {checkpoint} does not match the evaluation graph: "
                                f"variable {op.name} has shape {list(stored[op.name])} there "
                                f"and {tf.TensorShape(shape).as_list()} in the graph")
    var_list = {stored_as[name]: by_name[name] for name in sorted(by_name) if
                name in {op.name for op in needed}}
    with tf.compat.v1.Session(graph=graph) as sess:
        if var_list:
            tf.compat.v1.train.Saver(var_list=var_list).restore(sess, checkpoint)
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [utils.node_name(k) for k in keep])


def _needed_variables(graph, keep):
    """Variable ops (ref and resource) that the nodes in `keep` depend on."""
    seen, stack, found = set(), [graph.get_operation_by_name(k) for k in keep], []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type in registry.VARIABLE_OPS:
            found.append(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return sorted(found, key=lambda op: op.name)


def legacy_histogram_names(graph=None):
    """{pos_hist variable name: the name decent_q 0.1 gave it} for the weight points whose name
    changed: 0.1 named a point on a variable read after the variable (``w/wquant``); points are
    now named after the tensor the compute op reads, as in the original (``w/read/wquant``;
    resource variables: the ReadVariableOp's name)."""
    graph = graph or tf.compat.v1.get_default_graph()
    names = {}
    for point, hist in sorted(ops.histogram_variables(graph).items()):
        if not point.endswith("/wquant"):
            continue
        try:
            read = graph.get_operation_by_name(f"{point}/fix").inputs[0].op
        except KeyError:
            continue
        if read.type in registry.READ_OPS and read.inputs and \
                read.inputs[0].op.type in registry.VARIABLE_OPS:
            old = f"{read.inputs[0].op.name}/wquant/{ops.HIST_SUFFIX}"
            if old != hist.op.name:
                names[hist.op.name] = old
    return names


def checkpoint_var_list(checkpoint, graph=None, var_list=None):
    """{name in `checkpoint`: variable} for restoring a checkpoint into a QAT graph, reading a
    position histogram under its decent_q 0.1 name (``w/wquant/pos_hist``) where the checkpoint
    has only that one.

    Use it to resume training from (or evaluate) a checkpoint written before points were named
    as in the original::

        saver = tf.compat.v1.train.Saver(var_list=decent_q.qat.checkpoint_var_list(ckpt))
        saver.restore(sess, ckpt)

    (:func:`convert_checkpoint` writes a copy with today's names instead.)

    Args:
      checkpoint: a checkpoint prefix or folder.
      graph: the QAT graph (default: the default graph).
      var_list: the variables to restore (default: the graph's global variables).
    """
    graph = graph or tf.compat.v1.get_default_graph()
    path = resolve_checkpoint(checkpoint)
    stored = dict(tf.train.list_variables(path))
    legacy = legacy_histogram_names(graph)
    if var_list is None:
        var_list = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    mapping = {}
    for var in var_list:
        name = var.op.name
        if name not in stored and legacy.get(name) in stored:
            name = legacy[name]
        mapping[name] = var
    return mapping


def convert_checkpoint(checkpoint, output_prefix, graph=None):
    """Writes `checkpoint` again at `output_prefix` with today's position-histogram names
    (see :func:`checkpoint_var_list`), for Savers that restore by name.

    Args:
      checkpoint: a checkpoint prefix or folder written with decent_q 0.1 point names.
      output_prefix: the new checkpoint prefix.
      graph: the QAT training or evaluation graph of the same model (default: default graph).

    Returns:
      The prefix written.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    path = resolve_checkpoint(checkpoint)
    stored = dict(tf.train.list_variables(path))
    mapping = {name: var for name, var in checkpoint_var_list(path, graph).items()
               if name in stored}
    with tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.train.Saver(var_list=mapping).restore(sess, path)
        saver = tf.compat.v1.train.Saver(var_list={v.op.name: v for v in mapping.values()})
        return saver.save(sess, output_prefix, write_meta_graph=False)
