"""Writing the quantized models, the last step of post-training quantization and of QAT.

    eval GraphDef (EVAL FixNeurons with their positions)
      -> position passes: align_concat, shift cut / bias    (transforms.adjust_positions)
      -> deploy model                                        (deploy.deploy_graph_def)
      -> quantize_eval_model{suffix}.pb, deploy_model{suffix}.pb in config.output_dir
         (and quantize_eval_model{suffix}.onnx with output_format="onnx": onnx_export)
"""

import concurrent.futures
import os

from decent_q import deploy, onnx_export, transforms
from decent_q.graph import utils


@utils.gc_paused
def write_models(eval_graph_def, config, suffix=""):
    """Applies the position passes, builds the deploy model (and the ONNX model) and writes
    the files.

    Every model is built before any file gets its name, and each file is written atomically:
    a failure while building leaves neither a file nor a folder that this call made.

    Returns:
      {"quantize_eval_model": path, "deploy_model": path[, "quantize_eval_model_onnx": path]}.
    """
    eval_gd = transforms.adjust_positions(eval_graph_def, config)
    eval_bytes = eval_gd.SerializeToString(deterministic=True)
    paths = {"quantize_eval_model": os.path.join(config.output_dir,
                                                 f"quantize_eval_model{suffix}.pb"),
             "deploy_model": os.path.join(config.output_dir, f"deploy_model{suffix}.pb")}
    created = _missing_folders(config.output_dir)
    utils.prepare_output_dir(config.output_dir)
    # The eval model's bytes go to its temporary file on a thread (the write and fsync release
    # the GIL) while the deploy (and ONNX) model is built and serialized; nothing gets its
    # real name before every model is built, and the files are completed in order, eval model
    # first.
    onnx_model = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(utils.write_temp, paths["quantize_eval_model"], eval_bytes)
        try:
            deploy_bytes = deploy.deploy_graph_def(eval_gd, config) \
                .SerializeToString(deterministic=True)
            if config.output_format == "onnx":
                onnx_model = onnx_export.to_onnx(eval_gd, config.onnx_opset,
                                                 config.onnx_rounding)
            eval_temp = pending.result()
        except BaseException:
            try:
                _discard(pending)
            finally:
                _remove_empty(created)  # a failed run leaves no folder it made either
            raise
    utils.commit_temp(eval_temp, paths["quantize_eval_model"])
    utils.write_atomic(paths["deploy_model"], deploy_bytes)
    if onnx_model is not None:
        paths["quantize_eval_model_onnx"] = os.path.join(config.output_dir,
                                                         f"quantize_eval_model{suffix}.onnx")
        utils.write_atomic(paths["quantize_eval_model_onnx"],
                           onnx_model.SerializeToString(deterministic=True))
    return paths


def _missing_folders(path):
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _discard(pending):
    """Removes the temporary file of a pending write_temp; if the write failed, write_temp
    removed it already (the caller's error, not the write's, is the one to report)."""
    try:
        temp = pending.result()
    except Exception:  # pylint: disable=broad-except
        return
    utils.remove_temp(temp)


def _remove_empty(folders):
    """Removes `folders` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return
