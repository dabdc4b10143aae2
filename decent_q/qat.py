"""Quantization-aware training: the three ``CreateQuantize*Graph`` calls of the guide (4.2.2.3).

    train.py: float training graph -> CreateQuantizeTrainingGraph  (in place, TRAIN points)
              -> optimizer -> restore float weights -> train -> model.ckpt-<step>
    eval.py:  float evaluation graph -> CreateQuantizeEvaluationGraph (in place, EVAL points)
              -> CreateQuantizeDeployGraph(checkpoint) -> quantize_eval_model_<suffix>.pb,
                 deploy_model_<suffix>.pb

Both rewrites compose the same passes on the live default graph: batch-norm folding
(:mod:`decent_q.live.fold_batch_norms`), simulate_dpu with scale_all_avgpool (as in
post-training quantization, :mod:`decent_q.live.simulate_dpu`),
the planner (:mod:`decent_q.plan`) and the live applier. :data:`QAT_OPTIONS` lists the
QuantizeConfig options QAT reads. Variables keep their float names; the only new variables are the position
histograms ``<point>/pos_hist`` (and ``global_step`` when ``fold_bn_freeze_step > 0`` needs one
and the graph has none). The histograms are saved with every checkpoint, so the positions a
deployed model uses are the ones its checkpoint learned, whatever process trained it.

Restoring a float checkpoint into the QAT training graph: build a Saver on the float variables
before creating the optimizer, e.g.
``tf.compat.v1.train.Saver(var_list=decent_q.qat.float_variables())``.

Restoring and freezing checkpoints (and their decent_q 0.1 point names) is
:mod:`decent_q.checkpoints`; the models are written by :mod:`decent_q.write`, as in
post-training quantization.
"""

import dataclasses
import datetime
import logging
import os

import tensorflow as tf

from decent_q import checkpoints, ops, write
from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import DEFAULTS, QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils
from decent_q.live import cleanup as live_cleanup
from decent_q.live import edit
from decent_q.live import fold_batch_norms as live_fold
from decent_q.live import simulate_dpu as live_simulate_dpu
from decent_q.transforms import cleanup
from decent_q.transforms import finalize as finalize_lib

log = logging.getLogger("decent_q")

TRAIN_GRAPH = "quantize_train_graph.pb"
_QAT_COLLECTION = "decent_q_qat_phase"  # holds the phase a rewritten graph is in
# Ops that mean an optimizer already exists (gradients are computed / applied).
_TRAINING_OP_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")


@utils.gc_paused
def CreateQuantizeTrainingGraph(config=None):  # pylint: disable=invalid-name
    """Rewrites the default graph (a float TRAINING graph) in place into the QAT training graph.

    Call it after building the float model and before creating the optimizer. Batch norms are
    folded: one conv with the quantized folded weights, normalised by the batch norm op with
    batch statistics until ``config.fold_bn_freeze_step`` (see
    :mod:`decent_q.live.fold_batch_norms`);
    FixNeurons in TRAIN phase quantize weights, biases, activations and inputs. Writes
    ``output_dir/quantize_train_graph.pb``.

    Args:
      config: QuantizeConfig with input_nodes, output_nodes and input_shapes.

    Returns:
      The path of quantize_train_graph.pb.

    Raises:
      ConfigError: config is missing or incomplete.
      QuantizeError: the graph already has an optimizer or was already rewritten, or a named
        node is not in it.
    """
    config = _check_config(config)
    graph = tf.compat.v1.get_default_graph()
    _check_not_rewritten(graph)
    _check_no_optimizer(graph)
    _check_nodes(graph, config)
    _rewrite(graph, config, ops.Phase.TRAIN)
    path = os.path.join(utils.prepare_output_dir(config.output_dir), TRAIN_GRAPH)
    utils.save_graph_def(graph.as_graph_def(), path)
    log.info("wrote %s", path)
    return path


@utils.gc_paused
def CreateQuantizeEvaluationGraph(config=None):  # pylint: disable=invalid-name
    """Rewrites the default graph (a float EVALUATION graph) in place into the QAT eval graph.

    Call it right after building the float model with ``is_training=False`` (Keras:
    ``tf_keras.backend.clear_session(); tf_keras.backend.set_learning_phase(0)`` before building
    it). Dropout is removed, batch norms are folded with their moving statistics, and EVAL
    FixNeurons read their positions from the ``pos_hist`` variables a checkpoint restores.
    Writes ``output_dir/quantize_eval_graph_<YYYYmmddHHMMSS>.pb`` (the creation time: no
    checkpoint is known yet; the files of CreateQuantizeDeployGraph carry the step too).

    Returns:
      The path of the written graph.

    Raises:
      QuantizeError: the graph is still in training phase, already rewritten, or a named node
        is not in it.
    """
    config = _check_config(config)
    graph = tf.compat.v1.get_default_graph()
    _check_not_rewritten(graph)
    _check_nodes(graph, config)
    _check_inference_phase(graph, config)
    _rewrite(graph, config, ops.Phase.EVAL)
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    path = os.path.join(utils.prepare_output_dir(config.output_dir),
                        f"quantize_eval_graph_{stamp}.pb")
    utils.save_graph_def(graph.as_graph_def(), path)
    log.info("wrote %s", path)
    return path


@utils.gc_paused
def CreateQuantizeDeployGraph(checkpoint=None, config=None):  # pylint: disable=invalid-name
    """Freezes the QAT evaluation graph (the default graph) with a checkpoint; writes the models.

    Args:
      checkpoint: a checkpoint prefix (``.../model.ckpt-2000``) or a folder (its latest
        checkpoint).
      config: the QuantizeConfig given to CreateQuantizeEvaluationGraph.

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}; the suffix of both is
      ``{step}_{YYYYmmddHHMMSS}`` with the checkpoint's global step.

    Raises:
      QuantizeError: no evaluation graph, no checkpoint, or the checkpoint lacks variables the
        graph needs (another model).
    """
    config = _check_config(config)
    graph = tf.compat.v1.get_default_graph()
    _check_evaluation_graph(graph)
    path = checkpoints.resolve_checkpoint(checkpoint)
    step = checkpoints.checkpoint_step(path)
    if 0 < step < config.fold_bn_freeze_step:
        log.warning("fold_bn_freeze_step=%d is beyond the step of checkpoint %s (%d): its batch "
                    "norms were never frozen, so the run never trained with the moving "
                    "statistics this model deploys (at 4 bit that can cost most of the "
                    "accuracy); deploy a checkpoint past the freeze step, or freeze earlier "
                    "(about half way)", config.fold_bn_freeze_step, path, step)
    suffix = f"_{step}_{datetime.datetime.now().strftime('%Y%m%d%H%M%S')}"
    return deploy_models(graph, path, config, suffix)


def _check_evaluation_graph(graph):
    if _phase(graph) != ops.Phase.EVAL:
        raise QuantizeError("the default graph is not a quantize evaluation graph; build the "
                            "float evaluation graph and call CreateQuantizeEvaluationGraph "
                            "before CreateQuantizeDeployGraph")


def deploy_models(graph, checkpoint, config, suffix=""):
    """Freezes the evaluation `graph` with `checkpoint` and writes quantize_eval_model{suffix}.pb
    and deploy_model{suffix}.pb to config.output_dir (see CreateQuantizeDeployGraph)."""
    _check_evaluation_graph(graph)
    path = checkpoints.resolve_checkpoint(checkpoint)
    _check_strategy(graph, path)
    keep = list(config.input_nodes) + [output_alias(graph, n) for n in config.output_nodes]
    frozen = checkpoints.freeze(graph, path, keep)
    eval_gd = finalize_lib.finalize(frozen, keep)
    eval_gd = set_input_placeholders(eval_gd, config)
    return write.write_models(eval_gd, config, suffix=suffix)


def _check_strategy(graph, checkpoint):
    """Raises if `checkpoint` has trained thresholds that the evaluation `graph` would not read
    (it was built with quantize_strategy pof2s: it would deploy the histograms instead)."""
    if ops.threshold_variables(graph):
        return  # a pof2s checkpoint lacks the thresholds: checkpoints.freeze names them
    trained = [name for name, _ in tf.train.list_variables(checkpoint)
               if name.endswith("/" + ops.THRESHOLD_TRAINED)]
    if trained:
        raise QuantizeError(f"checkpoint {checkpoint} has trained thresholds ({trained[0]} and "
                            f"{len(trained) - 1} more): it was trained with quantize_strategy "
                            "'pof2s_tqt'; give CreateQuantizeEvaluationGraph the same "
                            "quantize_strategy, so that the deployed positions are the trained "
                            "ones")


def switch_to_evaluation(graph):
    """Turns a QAT training graph into an evaluation graph in place: every TRAIN point becomes
    an EVAL point that reads its position from its ``pos_hist`` variable (what the original's
    ``quantize_evaluate`` did to a quantize train graph).

    Raises:
      QuantizeError: the graph has no points, or batch norms in training mode (their folding
        uses batch statistics; build the float evaluation graph and call
        CreateQuantizeEvaluationGraph instead).
    """
    hists = ops.histogram_variables(graph)
    if not hists:
        raise QuantizeError("the graph has no decent_q quantization points; give the graph "
                            "CreateQuantizeTrainingGraph (or quantize_train) made")
    for op in graph.get_operations():
        if op.type.startswith("FusedBatchNorm") and op.get_attr("is_training"):
            raise QuantizeError(
                f"the training graph has a batch norm in training mode ({op.name}), which an "
                "evaluation graph cannot reuse; build the float evaluation graph "
                "(is_training=False) and call CreateQuantizeEvaluationGraph instead")
    thresholds = ops.threshold_variables(graph)
    for point, hist in sorted(hists.items()):
        fix = graph.get_operation_by_name(f"{point}/fix")
        trained = point in thresholds and edit.has_op(graph, f"{point}/{ops.SET_THRESHOLD}")
        if fix.get_attr("phase") == ops.Phase.EVAL and not trained:
            continue
        with graph.as_default(), graph.name_scope(f"{point}/eval_pos/"):
            pos = ops.threshold_position(
                graph.get_tensor_by_name(f"{point}/{ops.THRESHOLD_SUFFIX}:0"),
                fix.get_attr("bit_width")) if trained else ops.kept_position(hist)
        edit.set_input(fix, 1, pos)
        fix._set_attr("phase", tf.compat.v1.AttrValue(i=int(ops.Phase.EVAL)))  # pylint: disable=protected-access
        graph.get_operation_by_name(point)._remove_all_control_inputs()  # pylint: disable=protected-access
    graph.clear_collection(_QAT_COLLECTION)
    graph.add_to_collection(_QAT_COLLECTION, int(ops.Phase.EVAL))


def float_variables(graph=None):
    """The global variables of a QAT graph that a float checkpoint holds (all but histograms,
    trained thresholds and anything created after the rewrite, like optimizer slots, if
    called before them)."""
    graph = graph or tf.compat.v1.get_default_graph()
    added = {v.op.name for key in (ops.POSITIONS_COLLECTION, ops.THRESHOLDS_COLLECTION)
             for v in graph.get_collection(key)}
    return [v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name not in added]


def threshold_variables(graph=None):
    """The trainable parts of the log2 thresholds of a QAT graph built with quantize_strategy
    pof2s_tqt (``<point>/log_th_trained``; for an optimizer or learning rate of their own)."""
    graph = graph or tf.compat.v1.get_default_graph()
    return [v for _, v in sorted(ops.threshold_variables(graph).items())]


# The README gives these as decent_q.qat.checkpoint_var_list / decent_q.qat.convert_checkpoint
# (restoring a checkpoint with decent_q 0.1's point names into a QAT graph); they live in
# decent_q.checkpoints with the other checkpoint helpers.
checkpoint_var_list = checkpoints.checkpoint_var_list
convert_checkpoint = checkpoints.convert_checkpoint


# -- the rewrite ----------------------------------------------------------------------------

def _rewrite(graph, config, phase):
    keep = list(config.input_nodes) + list(config.output_nodes)
    # The same clean-up in both phases, so both graphs get the same quantization points.
    live_cleanup.clean_for_training(graph, config, phase)
    freeze_step = config.fold_bn_freeze_step if phase == ops.Phase.TRAIN else 0
    folded = live_fold.fold_batch_norms(graph, freeze_step, keep=keep)
    if freeze_step < 0 and folded.layers and _lowest_bit(config) <= 4:
        log.warning("%d-bit QAT with batch norms never frozen (fold_bn_freeze_step=-1): the "
                    "deployed model uses moving statistics, which drift from the batch "
                    "statistics training uses; set fold_bn_freeze_step to about half the run's "
                    "steps (docs/qat-accuracy.md)", _lowest_bit(config))
    if config.simulate_dpu:
        nm = utils.NodeMap(graph.as_graph_def())
        scope = utils.range_nodes(nm, config.input_nodes, config.output_nodes) - \
            set(folded.exclude)
        live_simulate_dpu.simulate_dpu(graph, config, scope, training=phase == ops.Phase.TRAIN,
                                       nm=nm)
    plan = plan_lib.plan_quantization(graph.as_graph_def(), config,
                                      parameters=folded.parameters, exclude=folded.exclude,
                                      layers=folded.layers, aliases=folded.aliases)
    if not plan.layers:
        raise QuantizeError("no conv / depthwise / MatMul layer found between input_nodes "
                            f"{config.input_nodes} and output_nodes {config.output_nodes}; "
                            "check the node names")
    appliers.apply_to_graph(graph, plan, phase, arch_type=config.arch_type,
                            impl=config.fix_neuron_impl,
                            trained_thresholds=config.quantize_strategy == "pof2s_tqt")
    if phase == ops.Phase.TRAIN:
        # A loss built after the rewrite from the user's Python `logits` tensor reads the float
        # output, so nothing would run the output points' counters: UPDATE_OPS (run with the
        # train op, as batch norm needs anyway) runs every counter, grouped in ONE op. The
        # usual `with tf.control_dependencies(update_ops): minimize(loss)` gives every
        # gradient op a control input per entry: one entry per point made the control edges
        # quadratic (NASNetMobile: 1,188 points; 76 s to build the train op, 99 s to start it).
        counters = [counter for point in plan.points
                    for counter in graph.get_operation_by_name(point.name).control_inputs]
        if counters:
            with graph.as_default(), graph.name_scope(None):
                graph.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS,
                                        tf.group(*counters, name="decent_q_counters"))
    graph.add_to_collection(_QAT_COLLECTION, int(phase))
    log.info("%s graph: %d batch norm(s) folded, %d FixNeuron(s)", phase.name.lower(),
             len(folded.folded), len(plan.points))
    return plan


# The QuantizeConfig options QAT reads. The rewrites: input_nodes, output_nodes,
# input_shapes, ignore_nodes, weight_bit, activation_bit, nodes_bit, nodes_method, method,
# arch_type, simulate_dpu, scale_all_avgpool, fold_bn_freeze_step, quantize_strategy,
# fix_neuron_impl; the files: output_dir;
# CreateQuantizeDeployGraph's position passes: align_concat, adjust_shift_cut,
# adjust_shift_bias; its ONNX file: output_format, onnx_opset, onnx_rounding. The others are
# for post-training quantization, dump or the CLI.
QAT_OPTIONS = ("input_nodes", "output_nodes", "input_shapes", "ignore_nodes", "weight_bit",
               "activation_bit", "nodes_bit", "nodes_method", "method", "arch_type",
               "simulate_dpu", "scale_all_avgpool", "fold_bn_freeze_step", "quantize_strategy",
               "fix_neuron_impl", "output_dir", "align_concat", "adjust_shift_cut",
               "adjust_shift_bias", "output_format", "onnx_opset", "onnx_rounding")


def _lowest_bit(config):
    return min([config.weight_bit, config.activation_bit] + list(config.nodes_bit.values()))


def _check_config(config):
    if config is None:
        raise ConfigError("config is required: pass config=decent_q.QuantizeConfig("
                          "input_nodes=[...], output_nodes=[...], input_shapes=[[...]])")
    if not isinstance(config, QuantizeConfig):
        raise ConfigError(f"config must be a decent_q.QuantizeConfig, got "
                          f"{type(config).__name__}")
    config.require_nodes()
    ignored = [f"{field.name}={getattr(config, field.name)!r}"
               for field in dataclasses.fields(config) if field.name not in QAT_OPTIONS and
               getattr(config, field.name) != getattr(DEFAULTS, field.name)]
    if ignored:
        log.warning("QAT ignores %s (options of post-training quantization / dump)",
                    ", ".join(ignored))
    return config


def _phase(graph):
    """The phase of a rewritten graph, from its collection or (a graph imported from a
    MetaGraphDef, which does not keep the collection) from its points; None if not one."""
    phases = graph.get_collection(_QAT_COLLECTION)
    if phases:
        return ops.Phase(phases[-1])
    found = {op.get_attr("phase") for op in graph.get_operations()
             if op.type == "FixNeuronDynamic"}
    if any(op.name.endswith("/" + ops.SET_THRESHOLD) for op in graph.get_operations()):
        return ops.Phase.TRAIN  # trained-threshold training points quantize in EVAL phase
    return ops.Phase(found.pop()) if len(found) == 1 else None


def _check_not_rewritten(graph):
    phase = _phase(graph)
    if phase is not None:
        raise QuantizeError(f"the default graph is already a quantize {phase.name.lower()} "
                            "graph; build the float graph again (CreateQuantizeTrainingGraph and "
                            "CreateQuantizeEvaluationGraph each need their own float graph)")


def _check_no_optimizer(graph):
    for op in graph.get_operations():
        scope = op.name.split("/", 1)[0]
        if op.type.startswith(_TRAINING_OP_PREFIXES) or scope == "gradients" or \
                scope.startswith("gradients_"):
            raise QuantizeError(f"the graph already has training ops ({op.type} {op.name}); "
                                "call CreateQuantizeTrainingGraph after building the float model "
                                "and BEFORE creating the optimizer / computing gradients")


def _check_nodes(graph, config):
    names = {op.name for op in graph.get_operations()}
    utils.check_nodes_exist(names, config.input_nodes, "input node")
    utils.check_nodes_exist(names, config.output_nodes, "output node")


def _check_inference_phase(graph, config):
    """Raises if the float evaluation graph was built in training phase."""
    gd = graph.as_graph_def()
    nm = utils.NodeMap(gd)
    in_range = utils.range_nodes(nm, config.input_nodes, config.output_nodes)
    for name in sorted(in_range):
        node = nm[name]
        training_bn = node.op.startswith("FusedBatchNorm") and node.attr["is_training"].b
        if training_bn or node.op in ("Switch", "Merge", "If", "StatelessIf"):
            what = "a batch norm in training mode" if training_bn else \
                f"a {node.op} (a tf.cond on the training flag)"
            raise QuantizeError(
                f"the evaluation graph is in training phase: {name} is {what}. Build the float "
                "evaluation graph in inference phase: is_training=False for tf.layers / slim, "
                "and for Keras call tf_keras.backend.clear_session() then "
                "tf_keras.backend.set_learning_phase(0) before building the model")


# -- deploy ---------------------------------------------------------------------------------

def output_alias(graph, name):
    """The quantization point carrying output node `name` (``name/aquant``), else `name`."""
    try:
        alias = graph.get_operation_by_name(f"{name}/aquant")
    except KeyError:
        return name
    return alias.name if alias.type == "Identity" else name


def set_input_placeholders(graph_def, config):
    """Makes each input node a float Placeholder of its input_shapes shape (-1: unknown);
    what fed it before (preprocessing) is dropped."""
    shapes = dict(zip(config.input_nodes, config.input_shapes))
    nodes = []
    for node in graph_def.node:
        if node.name in shapes:
            dtype = node.attr["dtype"] if node.op == "Placeholder" else node.attr["T"]
            shape = tf.TensorShape([d if d > 0 else None for d in shapes[node.name]])
            new = utils.make_node("Placeholder", node.name,
                                  dtype=dtype if dtype.type else tf.float32,
                                  shape=tf.compat.v1.AttrValue(shape=shape.as_proto()))
            nodes.append(new)
        else:
            nodes.append(node)
    out = utils.with_nodes(graph_def, nodes)
    keep = cleanup.sinks(graph_def) + list(config.input_nodes)
    return cleanup.remove_dead(out, keep=keep)
