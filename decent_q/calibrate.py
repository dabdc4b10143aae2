"""Calibration: run CALIB FixNeurons on the input_fn batches and keep a position per point.

:func:`calibrate_positions` is the calibration step of post-training quantization
(:mod:`decent_q.ptq`); :func:`session_config` gives the session options every session that
runs a user's graph uses (calibration, the float check, fast finetune, bias correction,
analysis, dump).
"""

import contextlib
import gc

import numpy as np
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
    graph, used, check, finite = _calibration_graph(graph_def, plan, config)
    hists = np.zeros((len(plan.points), ops.NUM_POS), np.int64)
    with _objects_frozen(), \
            tf.compat.v1.Session(graph=graph, config=session_config(config, s_config)) as sess:
        for step in range(config.calib_iter):
            batch = batches(step)
            checked = step == 0 and float_check is not None
            feed = inputs.feed_dict(graph, batch, step, input_fn_name)
            feed[check] = checked  # always fed: the same feeds, the same executor
            try:
                positions, all_finite = sess.run([used, finite], feed)
            except tf.errors.OpError as err:
                if checked:
                    float_check()
                raise QuantizeError(f"calibration failed on batch {step}: "
                                    f"{op_error_text(err)}") from err
            if checked and not all_finite:
                float_check()
            for hist, position in zip(hists, positions):
                ops.count_position(hist, position)
            if progress is not None:
                progress(step)
    positions = {}
    for point, hist in sorted(zip(plan.points, hists), key=lambda ph: ph[0].name):
        kept = ops.kept_position_np(hist)
        if kept is None:
            raise QuantizeError(f"FixNeuron {point.name} saw no data during calibration")
        positions[point.name] = kept
    return positions


@contextlib.contextmanager
def _objects_frozen():
    """While the batches run, the garbage collector leaves the objects that exist now alone
    (gc.freeze): the calibration graph's Python objects, which grow with the model, are walked
    by no full collection (a 2,000-layer chain: 0.7 s a collection, one or two per run), while
    what input_fn makes is collected as usual. Nothing is frozen if the process froze objects
    itself (its unfreeze is its own)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@utils.gc_paused
def _calibration_graph(graph_def, plan, config):
    """(graph, each point's position tensor, the `check` placeholder, the all-finite flag):
    the float graph with CALIB points, built with the garbage collector paused (its Python
    objects grow with the graph; the batches, the user's input_fn, run outside)."""
    graph = utils.import_graph(graph_def)
    with graph.as_default():
        appliers.apply_to_graph(graph, plan, ops.Phase.CALIB, arch_type=config.arch_type,
                                impl=config.fix_neuron_impl, histograms=False)
        # Each batch fetches every point's position and counts it here (no histogram
        # variables: 4 ops a point instead of 16, which Python builds at ~0.5 ms an op).
        used = [graph.get_tensor_by_name(f"{p.name}/used:0") for p in plan.points]
        # Every batch feeds and fetches the same tensors (other feeds or fetches would build
        # a second executor, copying every constant again: 7 s on VGG); `check` turns the
        # finite test on for the first batch only.
        check = tf.compat.v1.placeholder_with_default(False, [], name="decent_q_check")
        finite = _all_finite(graph, plan, config, check)
    return graph, used, check, finite


def _all_finite(graph, plan, config, check):
    """A scalar bool tensor: when `check` is true, no NaN or Inf at the output nodes or at any
    point's input (tensors inside a TF1 while loop or cond are not read from outside it); else
    true, reading nothing.

    The TF1 cond is written as GraphDef nodes and imported at once (Switch per tensor,
    IsFinite, All, one Merge): tf.cond built from Python spent ~0.3 s on ResNet50's 190
    tensors, 0.4 ms an op."""
    tensors = [graph.get_tensor_by_name(p.tensor) for p in plan.points]
    tensors += [graph.get_tensor_by_name(tensor_name(n)) for n in config.output_nodes]
    tensors = [t for t in tensors if t.dtype.is_floating and
               t.op._get_control_flow_context() is None]  # pylint: disable=protected-access
    tensors = list(dict.fromkeys(tensors))
    gd = tf.compat.v1.GraphDef()

    def node(op, name, inputs, **attrs):
        gd.node.append(utils.make_node(op, name, inputs, **attrs))

    node("Switch", "pred", ["check", "check"], T=tf.bool)
    node("Identity", "pivot_t", ["pred:1"], T=tf.bool)  # live when checking
    node("Identity", "pivot_f", ["pred:0"], T=tf.bool)  # live when not
    gd.node.append(utils.const_node("flat", np.array([-1], np.int32)))
    gd.node.append(utils.const_node("axis", np.array([0], np.int32)))
    flags = []
    for k, t in enumerate(tensors):
        node("Switch", f"switch_{k}", [f"in_{k}", "check"], T=t.dtype)
        node("IsFinite", f"is_finite_{k}", [f"switch_{k}:1"], T=t.dtype)
        node("Reshape", f"reshape_{k}", [f"is_finite_{k}", "flat"], T=tf.bool, Tshape=tf.int32)
        node("All", f"all_{k}", [f"reshape_{k}", "axis"], Tidx=tf.int32, keep_dims=False)
        flags.append(f"all_{k}")
    if flags:
        node("Pack", "stack", flags, T=tf.bool, N=len(flags), axis=0)
        node("All", "checked", ["stack", "axis"], Tidx=tf.int32, keep_dims=False)
    else:
        checked = utils.const_node("checked", np.array(True))
        checked.input.append("^pivot_t")
        gd.node.append(checked)
    skipped = utils.const_node("skipped", np.array(True))
    skipped.input.append("^pivot_f")  # dead when checking: Merge then takes `checked`
    gd.node.append(skipped)
    node("Merge", "finite", ["skipped", "checked"], T=tf.bool, N=2)
    input_map = {f"in_{k}:0": t for k, t in enumerate(tensors)}
    input_map["check:0"] = check
    finite, = tf.graph_util.import_graph_def(gd, input_map=input_map,
                                             return_elements=["finite:0"],
                                             name="decent_q_float_check")
    return finite


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
