"""Helpers of the PyTorch flow's tests: configuration files and a calib-then-test run."""

import json
import os

import torch

from decent_q_torch.apis import torch_quantizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dpu_config(path, **overrides):
    """Writes examples/pt_configs/dpu_config.json with ``overrides`` (top-level keys) to
    ``path``; returns the path as a string."""
    with open(os.path.join(ROOT, "examples", "pt_configs", "dpu_config.json")) as f:
        config = json.load(f)
    config.update(overrides)
    path.write_text(json.dumps(config))
    return str(path)


def calibrate_then_test(model, config_file, output_dir, data):
    """Calibrates ``model`` on the batches ``data`` into ``output_dir`` and returns the
    test-mode quantizer of the result."""
    quantizer = torch_quantizer("calib", model, (data[0],), device="cpu",
                                output_dir=str(output_dir), quant_config_file=config_file)
    with torch.no_grad():
        for x in data:
            quantizer.quant_model(x)
    quantizer.export_quant_config()
    return torch_quantizer("test", model, (data[0],), device="cpu", output_dir=str(output_dir),
                           quant_config_file=config_file)
