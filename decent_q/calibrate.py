"""Post-training quantization of a frozen GraphDef: prepare, calibrate, write the models.

    frozen float graph
      -> inference clean-up, batch-norm folding            (transforms.prepare_float_graph)
      -> plan: where FixNeurons go                           (plan.plan_quantization)
      -> calibrate: CALIB FixNeurons, histogram per point    (calibrate_positions)
      -> eval model: EVAL FixNeurons with the kept positions  (plan.apply_to_graph_def)
      -> position passes: align_concat, shift cut / bias    (transforms.adjust_positions)
      -> quantize_eval_model.pb, deploy_model.pb
"""

import logging

import numpy as np
import tensorflow as tf

from decent_q import ops
from decent_q import plan as plan_lib
from decent_q.errors import QuantizeError
from decent_q.graph.utils import tensor_name

log = logging.getLogger("decent_q")


def import_graph(graph_def):
    """A new tf.Graph holding `graph_def` with its own names (no prefix)."""
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as err:
            raise QuantizeError(f"the graph cannot be loaded into TensorFlow: "
                                f"{str(err).splitlines()[0]}") from err
    return graph


def feed_dict(graph, batch, step, input_fn_name="input_fn"):
    """Checks what input_fn returned and maps it onto the graph's tensors."""
    if not isinstance(batch, dict):
        raise QuantizeError(f"{input_fn_name}({step}) returned {type(batch).__name__}; it must "
                            "return a dict {placeholder_name: numpy array}")
    feed = {}
    for key, value in batch.items():
        name = key.name if isinstance(key, tf.Tensor) else str(key)
        try:
            tensor = graph.get_tensor_by_name(tensor_name(name))
        except (KeyError, ValueError):
            placeholders = sorted(op.name for op in graph.get_operations()
                                  if op.type == "Placeholder")
            raise QuantizeError(f"{input_fn_name}({step}) returned key {name!r}, which is not "
                                f"in the graph; the placeholders are: "
                                f"{', '.join(placeholders) or 'none'}") from None
        array = np.asarray(value)
        want = np.dtype(tensor.dtype.as_numpy_dtype)
        allowed = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(want.kind, want.kind)
        if array.dtype.kind not in allowed:
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} has dtype "
                                f"{array.dtype}; the placeholder wants {want.name}")
        shape = tensor.shape
        if shape.rank is not None and (array.ndim != shape.rank or any(
                d is not None and d != a for d, a in zip(shape.as_list(), array.shape))):
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} has shape "
                                f"{list(array.shape)}; the placeholder wants "
                                f"{[d if d is not None else '?' for d in shape.as_list()]}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} holds NaN or Inf; "
                                "calibration needs finite inputs")
        feed[tensor] = array.astype(want, copy=False)
    return feed


def calibrate_positions(graph_def, plan, batches, config, progress=None):
    """Runs CALIB FixNeurons on `batches` and returns {point name: kept position}.

    Args:
      graph_def: the prepared float GraphDef the plan was made on.
      plan: its Plan.
      batches: an iterable of (step, feed) where feed maps tensor names to arrays, or a
        callable input_fn(step) -> dict, called config.calib_iter times.
      config: QuantizeConfig.
      progress: optional callable(step) after each batch.
    """
    graph = import_graph(graph_def)
    with graph.as_default():
        plan_lib.apply_to_graph(graph, plan, ops.Phase.CALIB, arch_type=config.arch_type)
        hists = ops.histogram_variables(graph)
        counts = [graph.get_operation_by_name(f"{p.name}/count") for p in plan.points]
        init = tf.compat.v1.variables_initializer(
            tf.compat.v1.get_collection(ops.POSITIONS_COLLECTION))
    with tf.compat.v1.Session(graph=graph, config=session_config(config)) as sess:
        sess.run(init)
        for step in range(config.calib_iter):
            batch = batches(step)
            sess.run(counts, feed_dict(graph, batch, step))
            if progress is not None:
                progress(step)
        values = sess.run(hists)
    positions = {}
    for name in sorted(values):
        kept = ops.kept_position_np(values[name])
        if kept is None:
            raise QuantizeError(f"FixNeuron {name} saw no data during calibration")
        positions[name] = kept
    return positions


def session_config(config):
    """The session options the CLI's --gpu / --gpu_memory_fraction ask for."""
    options = tf.compat.v1.ConfigProto()
    options.gpu_options.per_process_gpu_memory_fraction = float(config.gpu_memory_fraction)
    options.gpu_options.visible_device_list = str(config.gpu)
    options.gpu_options.allow_growth = True
    return options

