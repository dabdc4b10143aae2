"""Quantization-aware training of the PyTorch example (the guide's "Finetune Quantized Model").

Starts from the float resnet18 of pt_resnet18_quant.py (trained there first if missing), trains
the QatProcessor's trainable model with an ordinary Adam loop for --steps, and prints the
accuracy of the deployable model next to the float model trained the same number of steps
more (the same budget). Writes quantize_result_qat/ (Quant_info.json, ResNet.py,
ResNet_qat.pth).

    python examples/pt_resnet18_qat.py [--steps 200] [--bitwidth 8]
"""

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402  pylint: disable=wrong-import-position
import pt_resnet18_quant as example  # noqa: E402  pylint: disable=wrong-import-position
from pytorch_nndct import QatProcessor  # noqa: E402  pylint: disable=wrong-import-position


def train(model, steps, first_step, lr):
    """``steps`` Adam steps on the training digits (batches from ``first_step`` on)."""
    train_x, train_y, _, _ = data.load()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(first_step, first_step + steps):
        images, labels = data.batches(train_x, train_y, example.BATCH, step)
        loss = F.cross_entropy(model(example.to_images(images)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(argv=None):
    """Runs the example; returns (float accuracy with the same budget, QAT accuracy) in %."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--bitwidth", type=int, default=8)
    parser.add_argument("--config_file", default=None)
    parser.add_argument("--model_dir", default="pt_example/float")
    parser.add_argument("--output_dir", default="quantize_result_qat")
    args = parser.parse_args(argv)

    model = example.load_float_model(args.model_dir)
    val_loader = example.load_data(batch_size=100)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = example.TRAIN_STEPS  # continue the float training's batch sequence

    torch.manual_seed(2)
    float_more = train(copy.deepcopy(model), args.steps, start, args.lr)
    float_acc = example.evaluate(float_more, val_loader, loss_fn)[0]

    inputs = torch.randn([1, 3, 32, 32])
    qat_processor = QatProcessor(model, inputs, bitwidth=args.bitwidth,
                                 quant_config_file=args.config_file, device="cpu")
    quantized_model = qat_processor.trainable_model()
    torch.manual_seed(2)
    train(quantized_model, args.steps, start, args.lr)
    deployable_model = qat_processor.to_deployable(quantized_model, args.output_dir)
    qat_acc = example.evaluate(deployable_model, val_loader, loss_fn)[0]
    print(f"float, {args.steps} more steps: top-1 {float_acc:.2f}")
    print(f"QAT {args.bitwidth}-bit, {args.steps} steps, deployable: top-1 {qat_acc:.2f}")
    return float_acc, qat_acc


if __name__ == "__main__":
    main()
