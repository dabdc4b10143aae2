"""Calibration: run CALIB FixNeurons on the input_fn batches and keep a position per point.

:func:`calibrate_positions` is the calibration step of post-training quantization
(:mod:`decent_q.ptq`); :func:`session_config` gives the session options every session that
runs a user's graph uses (the float check, calibration, dump).
"""

import tensorflow as tf

from decent_q import inputs, ops
from decent_q import appliers
from decent_q.errors import QuantizeError, op_error_text
from decent_q.graph import utils


def calibrate_positions(graph_def, plan, batches, config, progress=None, s_config=None):
    """Runs CALIB FixNeurons on `batches` and returns {point name: kept position}.

    Args:
      graph_def: the prepared float GraphDef the plan was made on.
      plan: its Plan.
      batches: an iterable of (step, feed) where feed maps tensor names to arrays, or a
        callable input_fn(step) -> dict, called config.calib_iter times.
      config: QuantizeConfig.
      progress: optional callable(step) after each batch.
      s_config: optional tf.compat.v1.ConfigProto for the session (else from config).
    """
    graph = utils.import_graph(graph_def)
    with graph.as_default():
        built = appliers.apply_to_graph(graph, plan, ops.Phase.CALIB,
                                        arch_type=config.arch_type,
                                        impl=config.fix_neuron_impl)
        hists = ops.histogram_variables(graph)
        # Running a point's output op runs its histogram update (a control dependency);
        # looking the update up by name fails with resource variables (TF2 behaviour on).
        counts = [built[p.name].op for p in plan.points]
        init = tf.compat.v1.variables_initializer(
            tf.compat.v1.get_collection(ops.POSITIONS_COLLECTION))
    with tf.compat.v1.Session(graph=graph, config=session_config(config, s_config)) as sess:
        sess.run(init)
        for step in range(config.calib_iter):
            batch = batches(step)
            try:
                sess.run(counts, inputs.feed_dict(graph, batch, step))
            except tf.errors.OpError as err:
                raise QuantizeError(f"calibration failed on batch {step}: "
                                    f"{op_error_text(err)}") from err
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


def session_config(config, s_config=None):
    """The session options: the caller's ConfigProto `s_config` if given (a copy), else what
    the CLI's --gpu / --gpu_memory_fraction ask for."""
    if s_config is not None:
        options = tf.compat.v1.ConfigProto()
        options.CopyFrom(s_config)
        return options
    options = tf.compat.v1.ConfigProto()
    options.gpu_options.per_process_gpu_memory_fraction = float(config.gpu_memory_fraction)
    options.gpu_options.visible_device_list = str(config.gpu)
    options.gpu_options.allow_growth = True
    return options
