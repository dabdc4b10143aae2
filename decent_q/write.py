"""Writing the quantized models, the last step of post-training quantization and of QAT.

    eval GraphDef (EVAL FixNeurons with their positions)
      -> position passes: align_concat, shift cut / bias    (transforms.adjust_positions)
      -> deploy model                                        (deploy.deploy_graph_def)
      -> quantize_eval_model{suffix}.pb, deploy_model{suffix}.pb in config.output_dir
"""

import os

from decent_q import deploy, transforms
from decent_q.graph import utils


def write_models(eval_graph_def, config, suffix=""):
    """Applies the position passes, builds the deploy model and writes both files.

    Both models are built before anything is written; each file is written atomically.

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}.
    """
    eval_gd = transforms.adjust_positions(eval_graph_def, config)
    deploy_gd = deploy.deploy_graph_def(eval_gd, config)
    utils.prepare_output_dir(config.output_dir)
    paths = {"quantize_eval_model": os.path.join(config.output_dir,
                                                 f"quantize_eval_model{suffix}.pb"),
             "deploy_model": os.path.join(config.output_dir, f"deploy_model{suffix}.pb")}
    utils.save_graph_def(eval_gd, paths["quantize_eval_model"])
    utils.save_graph_def(deploy_gd, paths["deploy_model"])
    return paths
