"""Post-training quantization of a frozen GraphDef: check, prepare, calibrate, write the models.

    frozen float graph
      -> checks: options, node names, frozen, input shapes  (checks)
      -> inference clean-up, batch-norm folding            (transforms.prepare_float_graph)
      -> plan: where FixNeurons go                           (plan.plan_quantization)
      -> calibrate: CALIB FixNeurons, histogram per point    (calibrate.calibrate_positions)
         (the float check, a run of the float graph on input_fn(0), runs only when the
          first batch fails or gives NaN or Inf there, to name the float graph's fault)
      -> eval model: EVAL FixNeurons with the kept positions  (appliers.apply_to_graph_def)
      -> fast finetune and calibration again, if include_fast_ft=1  (fast_finetune.finetune)
      -> bias correction, if bias_correction=1 or 2           (bias_correction.correct_biases)
      -> position passes, deploy model, both files written  (write.write_models)
      -> summary                                             (report.log_summary)

:func:`calibrate_frozen` is every step up to the eval model; the per-layer error analysis
(:mod:`decent_q.analysis`) starts from it too.
"""

import dataclasses
import logging
import os
import time

from decent_q import calibrate, checks, inputs, report, transforms, write
from decent_q import appliers, bias_correction, fast_finetune
from decent_q import plan as plan_lib
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils

log = logging.getLogger("decent_q")


def quantize_frozen(input_frozen_graph, input_fn, config=None, s_config=None, skip_check=None,
                    progress=True, **fast_ft):
    """Post-training quantization: frozen float graph -> quantize_eval_model.pb, deploy_model.pb.

    The first five parameters are in the order of the original's
    ``quantize_frozen(input_graph_def, input_fn, q_config, s_config, skip_check)``; its later
    releases' fast finetune keywords (include_fast_ft, fast_ft_mode, fast_ft_epochs,
    fast_ft_lr, fast_ft_lrcoef) are accepted too and override config's fields.

    Args:
      input_frozen_graph: path of a frozen GraphDef (binary or text), or a GraphDef.
      input_fn: callable(step) -> {placeholder name: numpy array}, or its import path
        ``"module.function"`` (imported with the current folder on sys.path).
      config: QuantizeConfig; input_nodes, output_nodes and input_shapes are required.
      s_config: optional tf.compat.v1.ConfigProto for the sessions that run the graph (the
        float check and calibration); None: from config's gpu and gpu_memory_fraction.
      skip_check: optional 0/1; overrides config.skip_check.
      progress: show a progress bar on stderr during calibration (only if it is a terminal).

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}. Nothing is written unless every
      step succeeded.

    Raises:
      ConfigError: a required option is missing or malformed.
      QuantizeError: the graph, a node name, input_fn or its data is wrong; the message says
        what to fix.
    """
    start = time.time()
    if fast_ft:
        config = _with_fast_ft(config, fast_ft)
    done = calibrate_frozen(input_frozen_graph, input_fn, config, s_config, skip_check, progress)
    paths = write.write_models(done.eval_graph_def, done.config)
    report.log_summary(done.plan, paths, time.time() - start)
    return paths


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """What post-training quantization has before the position passes and the files."""
    config: object           # the QuantizeConfig, skip_check applied
    s_config: object         # the session ConfigProto or None
    graph_def: object        # the user's GraphDef, checked, with input_shapes set
    float_graph_def: object  # the prepared float GraphDef (transforms.prepare_float_graph)
    plan: object             # its plan_lib.Plan
    eval_graph_def: object   # EVAL FixNeurons with the calibrated positions
    input_fn: object         # the loaded callable(step)
    input_fn_name: str
    bias_correction: object = None  # bias_correction.Result when config.bias_correction > 0
    fast_finetune: object = None  # fast_finetune.Result when config.include_fast_ft=1


def calibrate_frozen(input_frozen_graph, input_fn, config=None, s_config=None, skip_check=None,
                     progress=True):
    """The steps of :func:`quantize_frozen` before anything is written: checks, float passes,
    plan, calibration, eval GraphDef, bias correction (if asked). Arguments and errors as
    quantize_frozen's.

    Returns:
      A :class:`Calibrated`; its eval GraphDef has not been through the position passes
      (transforms.adjust_positions) yet.
    """
    config, s_config = _checked_options(config, s_config, skip_check)
    fn, fn_name = inputs.load_input_fn(input_fn)
    graph_def = _checked_graph(input_frozen_graph, config)
    first = inputs.call_input_fn(fn, 0, fn_name)

    def float_check():
        checks.check_float_model(graph_def, config, first, fn_name, s_config)

    float_gd = _prepared(graph_def, config, None if config.skip_check else float_check)
    plan = _plan(float_gd, config)

    def batches(step):
        return first if step == 0 else inputs.call_input_fn(fn, step, fn_name)

    log.info("calibrating %d FixNeurons on %d batches from %s", len(plan.points),
             config.calib_iter, fn_name)
    positions = _calibrate(float_gd, plan, batches, config, s_config, progress,
                           None if config.skip_check else float_check, fn_name)
    eval_gd = appliers.apply_to_graph_def(float_gd, plan, positions, arch_type=config.arch_type)
    tuned = None
    if config.include_fast_ft:
        tuned = fast_finetune.finetune(float_gd, eval_gd, plan, batches, config, s_config,
                                       progress, fn_name)
        eval_gd = tuned.eval_graph_def
    corrected = None
    if config.bias_correction:
        corrected = bias_correction.correct_biases(eval_gd, plan, batches, config, s_config,
                                                   progress, fn_name, float_gd)
        eval_gd = corrected.graph_def
    return Calibrated(config, s_config, graph_def, float_gd, plan, eval_gd, fn, fn_name,
                      corrected, tuned)


_FAST_FT_KEYWORDS = ("include_fast_ft", "fast_ft_mode", "fast_ft_epochs", "fast_ft_lr",
                     "fast_ft_lrcoef")


def _with_fast_ft(config, keywords):
    """config with the fast finetune keywords of quantize_frozen applied."""
    unknown = sorted(set(keywords) - set(_FAST_FT_KEYWORDS))
    if unknown:
        raise TypeError(f"quantize_frozen() got an unexpected keyword argument {unknown[0]!r}")
    if config is None:
        raise ConfigError("config is required: pass decent_q.QuantizeConfig(input_nodes=[...], "
                          "output_nodes=[...], input_shapes=[[...]]) as the third argument")
    return dataclasses.replace(config, **keywords)


def _checked_options(config, s_config, skip_check):
    """(config with skip_check applied, s_config) once both are valid and output_dir is
    writable."""
    if config is None:
        raise ConfigError("config is required: pass decent_q.QuantizeConfig(input_nodes=[...], "
                          "output_nodes=[...], input_shapes=[[...]]) as the third argument")
    s_config = checks.check_session_config(s_config)
    if skip_check is not None:
        config = dataclasses.replace(config, skip_check=skip_check)
    config.require_nodes()
    checks.check_output_dir(config.output_dir)
    if config.quantize_strategy != "pof2s":
        log.warning("quantize_strategy=%s trains thresholds during QAT; post-training "
                    "quantization has no training and calibrates positions as pof2s does",
                    config.quantize_strategy)
    return config, s_config


def _checked_graph(input_frozen_graph, config):
    """The frozen float GraphDef (loaded if a path) with config.input_shapes set, once the
    config's nodes are in it and it is frozen."""
    graph_def = (utils.load_graph_def(input_frozen_graph)
                 if isinstance(input_frozen_graph, (str, os.PathLike)) else input_frozen_graph)
    checks.check_config_nodes(graph_def, config)
    checks.check_frozen(graph_def, config)
    return checks.set_input_shapes(graph_def, config)


def _plan(float_graph_def, config):
    """The quantization plan of the prepared float graph; it must quantize something."""
    plan = plan_lib.plan_quantization(float_graph_def, config)
    if not plan.points:
        raise QuantizeError("nothing to quantize between input_nodes "
                            f"{config.input_nodes} and output_nodes {config.output_nodes}; "
                            "check that the output nodes are reached from the input nodes")
    return plan


def _prepared(graph_def, config, float_check):
    """transforms.prepare_float_graph; if it fails and `float_check` is given, the float
    check's error comes first (a graph that does not run says so rather than how a pass
    tripped over it)."""
    try:
        return transforms.prepare_float_graph(graph_def, config)
    except Exception:  # pylint: disable=broad-except
        if float_check is not None:
            float_check()
        raise


def _calibrate(float_graph_def, plan, batches, config, s_config, progress, float_check,
               fn_name):
    """calibrate.calibrate_positions with the progress bar (if `progress`) around it. The float
    check (`float_check`, unless skip_check) runs only if the first batch fails or gives
    NaN or Inf: one session over the model instead of two."""
    bar = report.Progress(config.calib_iter, enabled=progress)
    try:
        return calibrate.calibrate_positions(float_graph_def, plan, batches, config,
                                             progress=bar.update, s_config=s_config,
                                             float_check=float_check,
                                             input_fn_name=fn_name)
    finally:
        bar.close()
