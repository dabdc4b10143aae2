"""Calibration: run CALIB FixNeurons on the input_fn batches and keep a position per point.

:func:`calibrate_positions` is the calibration step of post-training quantization
(:mod:`decent_q.ptq`); :func:`session_config` gives the session options every session that
runs a user's graph uses (calibration, the float check, fast finetune, bias correction,
analysis, dump).
"""

import tensorflow as tf

from decent_q import inputs, ops
from decent_q import appliers
from decent_q.errors import QuantizeError, op_error_text
from decent_q.graph import utils
from decent_q.graph.utils import tensor_name


def calibrate_positions(graph_def, plan, batches, config, progress=None, s_config=None,
                        float_check=None, input_fn_name="input_fn"):
    """Runs CALIB FixNeurons on `batches` and returns {point name: kept position}.

    Args:
      graph_def: the prepared float GraphDef the plan was made on.
      plan: its Plan.
      batches: an iterable of (step, feed) where feed maps tensor names to arrays, or a
        callable input_fn(step) -> dict, called config.calib_iter times.
      config: QuantizeConfig.
      progress: optional callable(step) after each batch.
      s_config: optional tf.compat.v1.ConfigProto for the session (else from config).
      float_check: optional callable() that runs the float graph on the first batch and
        raises the error that names the float graph's fault. It runs only if the first batch
        fails here, or gives NaN or Inf at the output nodes or at a point's input: the float
        graph is not run separately when calibration shows it works (see ptq).
      input_fn_name: how messages about a batch name the input function.
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
        # Every batch feeds and fetches the same tensors (other feeds or fetches would build
        # a second executor, copying every constant again: 7 s on VGG); `check` turns the
        # finite test on for the first batch only.
        check = tf.compat.v1.placeholder_with_default(False, [], name="decent_q_check")
        finite = tf.cond(check, lambda: _all_finite(graph, plan, config),
                         lambda: tf.constant(True), name="decent_q_finite")
        init = tf.compat.v1.variables_initializer(
            tf.compat.v1.get_collection(ops.POSITIONS_COLLECTION))
    with tf.compat.v1.Session(graph=graph, config=session_config(config, s_config)) as sess:
        sess.run(init)
        for step in range(config.calib_iter):
            batch = batches(step)
            checked = step == 0 and float_check is not None
            feed = inputs.feed_dict(graph, batch, step, input_fn_name)
            feed[check] = checked  # always fed: the same feeds, the same executor
            try:
                _, all_finite = sess.run([counts, finite], feed)
            except tf.errors.OpError as err:
                if checked:
                    float_check()
                raise QuantizeError(f"calibration failed on batch {step}: "
                                    f"{op_error_text(err)}") from err
            if checked and not all_finite:
                float_check()
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


def _all_finite(graph, plan, config):
    """A scalar bool tensor: no NaN or Inf at the output nodes or at any point's input
    (tensors inside a TF1 while loop or cond are not read from outside it)."""
    tensors = [graph.get_tensor_by_name(p.tensor) for p in plan.points]
    tensors += [graph.get_tensor_by_name(tensor_name(n)) for n in config.output_nodes]
    tensors = [t for t in tensors if t.dtype.is_floating and
               t.op._get_control_flow_context() is None]  # pylint: disable=protected-access
    with tf.name_scope("float_check"):
        flags = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors]
        return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def session_config(config, s_config=None):
    """The session options: the caller's ConfigProto `s_config` if given (a copy), else what
    the CLI's --gpu / --gpu_memory_fraction ask for.

    Grappler (TensorFlow's graph optimizer) is off unless `s_config` sets rewrite_options:
    the graphs these sessions run hold every weight of the model as a constant, which
    Grappler copies and re-optimises for each new session (VGG16: 26 s of the float model's
    30 s first run, with the graph running no faster afterwards), and the FixNeurons between
    the layers leave it little to fuse.
    """
    options = tf.compat.v1.ConfigProto()
    if s_config is not None:
        options.CopyFrom(s_config)
    else:
        options.gpu_options.per_process_gpu_memory_fraction = float(config.gpu_memory_fraction)
        options.gpu_options.visible_device_list = str(config.gpu)
        options.gpu_options.allow_growth = True
    if not options.graph_options.HasField("rewrite_options"):
        options.graph_options.rewrite_options.disable_meta_optimizer = True
    return options
