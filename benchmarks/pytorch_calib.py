"""Calibration time of the PyTorch flow against the float evaluation of the same images.

    python benchmarks/pytorch_calib.py [--size 32] [--images 200] [--repeats 3] [--qat]
                                       [--config_file C]

torchvision's resnet18 (10 classes; random weights, batch norms in eval mode), random images
of --size pixels in batches of 50. In one process, in turn, --repeats times: the float
model's evaluation of the images, then a fresh torch_quantizer("calib") over the same images
(conversion not counted; the first batch searches every weight, later batches reuse those
positions) and export_quant_config(). Prints each time and the ratio of the medians.

--qat: instead, the time of a QAT training step (QatProcessor's trainable model, Adam, batch
64) against a float training step of the same model, in turn, --repeats times of 15 steps.
"""

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
import torchvision

from pytorch_nndct.apis import QatProcessor, torch_quantizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qat", action="store_true", help="time QAT steps instead")
    parser.add_argument("--config_file", default=None,
                        help="quant_config_file of the calibration (default: none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.qat:
        time_qat_steps(args)
        return
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    images = torch.randn(args.images, 3, args.size, args.size)
    batches = list(torch.split(images, 50))
    float_times, calib_times = [], []
    with torch.no_grad(), tempfile.TemporaryDirectory() as out:
        model(batches[0])  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            for x in batches:
                model(x)
            float_times.append(time.perf_counter() - start)
            quantizer = torch_quantizer("calib", model, (batches[0],), device="cpu",
                                        output_dir=os.path.join(out, "r"),
                                        quant_config_file=args.config_file)
            start = time.perf_counter()
            for x in batches:
                quantizer.quant_model(x)
            quantizer.export_quant_config()
            calib_times.append(time.perf_counter() - start)
    f, c = statistics.median(float_times), statistics.median(calib_times)
    print(f"float {[round(t, 3) for t in float_times]} s, calib {[round(t, 3) for t in calib_times]} s")
    print(f"{args.size}px, {args.images} images: float {f:.3f} s, calib {c:.3f} s, ratio {c / f:.2f}x "
          "(target <= 3x)")


def _step_time(model, x, y, steps):
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def time_qat_steps(args):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(64, 3, args.size, args.size)
    y = torch.randint(0, 10, (64,))
    qat_model = QatProcessor(copy.deepcopy(model), x[:1], bitwidth=8,
                             device="cpu").trainable_model()
    _step_time(model, x, y, 2)  # warm-up
    _step_time(qat_model, x, y, 2)
    float_times, qat_times = [], []
    for _ in range(args.repeats):
        float_times.append(_step_time(model, x, y, 15))
        qat_times.append(_step_time(qat_model, x, y, 15))
    f, q = statistics.median(float_times), statistics.median(qat_times)
    print(f"{args.size}px, batch 64: float step {f * 1000:.1f} ms, QAT step {q * 1000:.1f} ms, "
          f"ratio {q / f:.2f}x")


if __name__ == "__main__":
    main()
