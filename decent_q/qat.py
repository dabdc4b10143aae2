"""Quantization-aware training: the three ``CreateQuantize*Graph`` calls of the guide (4.2.2.3).

    train.py: float training graph -> CreateQuantizeTrainingGraph  (in place, TRAIN points)
              -> optimizer -> restore float weights -> train -> model.ckpt-<step>
    eval.py:  float evaluation graph -> CreateQuantizeEvaluationGraph (in place, EVAL points)
              -> CreateQuantizeDeployGraph(checkpoint) -> quantize_eval_model_<suffix>.pb,
                 deploy_model_<suffix>.pb

Both rewrites compose the same passes on the live default graph: batch-norm folding
(:mod:`decent_q.transforms.fold_batch_norms_qat`), the planner (:mod:`decent_q.plan`) and the
live applier. Variables keep their float names; the only new variables are the position
histograms ``<point>/pos_hist`` (and ``global_step`` when ``fold_bn_freeze_step > 0`` needs one
and the graph has none). The histograms are saved with every checkpoint, so the positions a
deployed model uses are the ones its checkpoint learned, whatever process trained it.

Restoring a float checkpoint into the QAT training graph: build a Saver on the float variables
before creating the optimizer, e.g.
``tf.compat.v1.train.Saver(var_list=decent_q.qat.float_variables())``.
"""

import datetime
import logging
import os
import re

import tensorflow as tf

from decent_q import calibrate, ops
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils
from decent_q.transforms import cleanup
from decent_q.transforms import finalize as finalize_lib
from decent_q.transforms import fold_batch_norms_qat
from decent_q.transforms import inline_functions

log = logging.getLogger("decent_q")

TRAIN_GRAPH = "quantize_train_graph.pb"
_QAT_COLLECTION = "decent_q_qat_phase"  # holds the phase a rewritten graph is in
# Ops that mean an optimizer already exists (gradients are computed / applied).
_TRAINING_OP_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")


def CreateQuantizeTrainingGraph(config=None):  # pylint: disable=invalid-name
    """Rewrites the default graph (a float TRAINING graph) in place into the QAT training graph.

    Call it after building the float model and before creating the optimizer. Batch norms are
    folded with batch statistics and a correction towards the moving statistics until
    ``config.fold_bn_freeze_step`` (see :mod:`decent_q.transforms.fold_batch_norms_qat`);
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
    if _phase(graph) != ops.Phase.EVAL:
        raise QuantizeError("the default graph is not a quantize evaluation graph; build the "
                            "float evaluation graph and call CreateQuantizeEvaluationGraph "
                            "before CreateQuantizeDeployGraph")
    path = resolve_checkpoint(checkpoint)
    keep = list(config.input_nodes) + [output_alias(graph, n) for n in config.output_nodes]
    frozen = freeze(graph, path, keep)
    eval_gd = finalize_lib.finalize(frozen, keep)
    eval_gd = set_input_placeholders(eval_gd, config)
    suffix = f"_{checkpoint_step(path)}_{datetime.datetime.now().strftime('%Y%m%d%H%M%S')}"
    return calibrate.write_models(eval_gd, config, suffix=suffix)


def float_variables(graph=None):
    """The global variables of a QAT graph that a float checkpoint holds (all but histograms
    and anything created after the rewrite, like optimizer slots, if called before them)."""
    graph = graph or tf.compat.v1.get_default_graph()
    hists = {v.op.name for v in graph.get_collection(ops.POSITIONS_COLLECTION)}
    return [v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
            if v.op.name not in hists]


# -- the rewrite ----------------------------------------------------------------------------

def _rewrite(graph, config, phase):
    keep = list(config.input_nodes) + list(config.output_nodes)
    _inline_calls(graph, config)
    # The same clean-up in both phases, so both graphs get the same quantization points.
    _remove_dropout(graph, config, phase)
    _bypass_identities(graph, config)
    freeze_step = config.fold_bn_freeze_step if phase == ops.Phase.TRAIN else 0
    folded = fold_batch_norms_qat.fold_batch_norms(graph, freeze_step, keep=keep)
    plan = plan_lib.plan_quantization(graph.as_graph_def(), config,
                                      parameters=folded.parameters, exclude=folded.exclude)
    if not plan.layers:
        raise QuantizeError("no conv / depthwise / MatMul layer found between input_nodes "
                            f"{config.input_nodes} and output_nodes {config.output_nodes}; "
                            "check the node names")
    plan_lib.apply_to_graph(graph, plan, phase, arch_type=config.arch_type,
                            impl=config.fix_neuron_impl)
    if phase == ops.Phase.TRAIN:
        # A loss built after the rewrite from the user's Python `logits` tensor reads the float
        # output, so nothing would run the output points' counters: UPDATE_OPS (run with the
        # train op, as batch norm needs anyway) runs every counter.
        for point in plan.points:
            for counter in graph.get_operation_by_name(point.name).control_inputs:
                graph.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, counter)
    graph.add_to_collection(_QAT_COLLECTION, int(phase))
    log.info("%s graph: %d batch norm(s) folded, %d FixNeuron(s)", phase.name.lower(),
             len(folded.folded), len(plan.points))
    return plan


def _check_config(config):
    if config is None:
        raise ConfigError("config is required: pass config=decent_q.QuantizeConfig("
                          "input_nodes=[...], output_nodes=[...], input_shapes=[[...]])")
    if not isinstance(config, QuantizeConfig):
        raise ConfigError(f"config must be a decent_q.QuantizeConfig, got "
                          f"{type(config).__name__}")
    config.require_nodes()
    return config


def _phase(graph):
    phases = graph.get_collection(_QAT_COLLECTION)
    return ops.Phase(phases[-1]) if phases else None


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
    nm = utils.NodeMap(graph.as_graph_def())
    utils.check_nodes_exist(nm, config.input_nodes, "input node")
    utils.check_nodes_exist(nm, config.output_nodes, "output node")


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


def _inline_calls(graph, config):
    """Inlines the function calls in the range (Keras' grouped convolutions), so their
    convolutions are folded and quantized like any other (live graph, in place)."""
    nm = utils.NodeMap(graph.as_graph_def())
    in_range = utils.range_nodes(nm, config.input_nodes, config.output_nodes)
    calls = sorted(n for n in in_range - set(config.output_nodes)
                   if nm[n].op in inline_functions.CALL_OPS)
    if calls:
        inline_functions.inline_calls_in_graph(graph, calls)
        log.info("inlined %d function call(s)", len(calls))


def _bypass_identities(graph, config):
    """Rewires the consumers of each Identity in the range (Keras' inference dropout, tf.identity
    aliases) to its input, so no quantization point lands on an alias (live graph, in place)."""
    gd = graph.as_graph_def()
    nm = utils.NodeMap(gd)
    keep = set(config.input_nodes) | set(config.output_nodes)
    for name in sorted(utils.range_nodes(nm, config.input_nodes, config.output_nodes) - keep):
        op = graph.get_operation_by_name(name)
        if op.type != "Identity" or op.control_inputs or len(op.inputs) != 1:
            continue
        for consumer in op.outputs[0].consumers():
            for index, tensor in enumerate(consumer.inputs):
                if tensor is op.outputs[0]:
                    consumer._update_input(index, op.inputs[0])  # pylint: disable=protected-access


def _remove_dropout(graph, config, phase):
    """Rewires consumers of each dropout in the range to the dropout's input (live graph).

    QAT fine-tunes without dropout (guide 4.2.2.3), and the evaluation graph has none: removing
    it from both graphs also gives them the same quantization points. The dropout is found on
    a copy of the GraphDef by cleanup.remove_dropout; its rewiring is applied here.
    """
    gd = graph.as_graph_def()
    nm = utils.NodeMap(gd)
    in_range = utils.range_nodes(nm, config.input_nodes, config.output_nodes)
    if not any(nm[n].op.startswith("Random") for n in nm.nodes):
        return
    cleaned = cleanup.remove_dropout(gd, keep=list(config.output_nodes))
    new_inputs = {n.name: list(n.input) for n in cleaned.node}
    for name in sorted(in_range):
        if name not in new_inputs:
            continue
        op = graph.get_operation_by_name(name)
        data = [i for i in new_inputs[name] if not utils.is_control(i)]
        for index, (old, new) in enumerate(zip(op.inputs, data)):
            if old.name != utils.tensor_name(new):
                op._update_input(index, graph.get_tensor_by_name(  # pylint: disable=protected-access
                    utils.tensor_name(new)))
                (log.warning if phase == ops.Phase.TRAIN else log.info)(
                    "dropout removed in front of %s (QAT fine-tunes without dropout)", name)


# -- deploy ---------------------------------------------------------------------------------

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


def output_alias(graph, name):
    """The quantization point carrying output node `name` (``name/aquant``), else `name`."""
    try:
        alias = graph.get_operation_by_name(f"{name}/aquant")
    except KeyError:
        return name
    return alias.name if alias.type == "Identity" else name


def _needed_variables(graph, keep):
    """Variable ops (ref and resource) that the nodes in `keep` depend on."""
    seen, stack, found = set(), [graph.get_operation_by_name(k) for k in keep], []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type in ("VariableV2", "Variable", "VarHandleOp"):
            found.append(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return sorted(found, key=lambda op: op.name)


def freeze(graph, checkpoint, keep):
    """Restores the variables `keep` needs from `checkpoint` and freezes them into constants."""
    needed = _needed_variables(graph, keep)
    stored = dict(tf.train.list_variables(checkpoint))
    missing = [op.name for op in needed if op.name not in stored]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                         else "")
        raise QuantizeError(f"checkpoint {checkpoint} does not match the evaluation graph: it "
                            f"lacks {len(missing)} variable(s) the graph needs: {shown}. Use a "
                            "checkpoint of the QAT training graph of this model (same "
                            "input_nodes / output_nodes)")
    by_name = {v.op.name: v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    for op in needed:
        shape = op.get_attr("shape") if op.type == "VarHandleOp" else op.outputs[0].shape
        if tf.TensorShape(shape).as_list() != list(stored[op.name]):
            raise QuantizeError(f"checkpoint {checkpoint} does not match the evaluation graph: "
                                f"variable {op.name} has shape {list(stored[op.name])} there "
                                f"and {tf.TensorShape(shape).as_list()} in the graph")
    var_list = {name: by_name[name] for name in sorted(by_name) if
                name in {op.name for op in needed}}
    with tf.compat.v1.Session(graph=graph) as sess:
        if var_list:
            tf.compat.v1.train.Saver(var_list=var_list).restore(sess, checkpoint)
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [utils.node_name(k) for k in keep])


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
