"""The guide's PyTorch example (4.2.1.3) on data that ships with the packages.

torchvision's resnet18 (weights=None, 10 classes) on the digits of examples/data.py, repeated
to 3 channels and padded to 32x32. The float model is trained briefly the first time (about a
minute on 2 cores) and kept in --model_dir; nothing is downloaded. Then, as in the guide:

    python examples/pt_resnet18_quant.py --quant_mode float
    python examples/pt_resnet18_quant.py --quant_mode calib --subset_len 200 [--config_file C]
    python examples/pt_resnet18_quant.py --quant_mode test [--deploy]
    python examples/pt_resnet18_quant.py --quant_mode calib --fast_finetune
    python examples/pt_resnet18_quant.py --quant_mode test --fast_finetune

calib writes quantize_result/Quant_info.json and quantize_result/ResNet.py (the accuracy it
prints is not meaningful: positions change per batch); test prints the quantized model's
accuracy; --deploy also writes ResNet_int.pt (TorchScript) and ResNet_int.onnx.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402  pylint: disable=wrong-import-position
from pytorch_nndct.apis import torch_quantizer  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_STEPS = 300
BATCH = 64


def to_images(images):
    """[N, 28, 28, 1] digits in [0, 1] -> [N, 3, 32, 32] normalized tensors."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    x = F.pad(x, (2, 2, 2, 2))
    return ((x - 0.13) / 0.31).repeat(1, 3, 1, 1)


def load_data(subset_len=None, train=False, batch_size=BATCH, sample_method="first"):
    """A list of (images, labels) batches: the held-out 1,000 digits (train=False) or the
    training digits; ``subset_len`` images, the first ones or a fixed random choice."""
    train_x, train_y, test_x, test_y = data.load()
    images, labels = (train_x, train_y) if train else (test_x, test_y)
    index = np.arange(len(labels))
    if sample_method == "random":
        index = np.random.default_rng(0).permutation(len(labels))
    if subset_len:
        index = index[:subset_len]
    x, y = to_images(images[index]), torch.from_numpy(labels[index])
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def make_model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


def train_float(path, steps=TRAIN_STEPS, model=None, quiet=False):
    """Trains the float model (Adam, one-cycle rate up to 3e-3, batch 64) for ``steps`` and
    saves its state dict."""
    model = model or make_model()
    train_x, train_y, _, _ = data.load()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    torch.manual_seed(1)
    for step in range(steps):
        images, labels = data.batches(train_x, train_y, BATCH, step)
        loss = F.cross_entropy(model(to_images(images)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if not quiet and step % 100 == 0:
            print(f"float training step {step}: loss {loss.item():.4f}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def load_float_model(model_dir):
    path = os.path.join(model_dir, "resnet18_digits.pth")
    if not os.path.exists(path):
        print(f"training the float model ({TRAIN_STEPS} steps) into {path}")
        start = time.time()
        train_float(path)
        print(f"(float training: {time.time() - start:.0f} s)")
    model = make_model()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


def evaluate(model, val_loader, loss_fn):
    """(top-1 %, top-5 %, mean loss) of ``model`` over the batches."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    with torch.no_grad():
        for images, labels in val_loader:
            outputs = model(images)
            loss_sum += float(loss_fn(outputs, labels)) * len(labels)
            top5 = outputs.topk(5, dim=1).indices
            correct1 += int((top5[:, 0] == labels).sum())
            correct5 += int((top5 == labels[:, None]).any(dim=1).sum())
            total += len(labels)
    return 100.0 * correct1 / total, 100.0 * correct5 / total, loss_sum / total


def quantization(args):
    model = load_float_model(args.model_dir)
    loss_fn = torch.nn.CrossEntropyLoss()
    val_loader = load_data(subset_len=args.subset_len, batch_size=args.batch_size)
    if args.quant_mode == "test" and args.deploy:
        args.batch_size = 1
    example = torch.randn([args.batch_size, 3, 32, 32])
    quantizer = torch_quantizer(args.quant_mode, model, (example,), device=torch.device("cpu"),
                                quant_config_file=args.config_file, output_dir=args.output_dir)
    quant_model = quantizer.quant_model
    if args.fast_finetune:
        ft_loader = load_data(subset_len=args.ft_len, train=True, batch_size=args.batch_size,
                              sample_method="random")
        if args.quant_mode == "calib":
            quantizer.fast_finetune(evaluate, (quant_model, ft_loader, loss_fn))
        elif args.quant_mode == "test":
            quantizer.load_ft_param()
    acc1, acc5, loss = evaluate(quant_model, val_loader, loss_fn)
    print(f"loss: {loss:.4f}")
    print(f"top-1 / top-5 accuracy: {acc1:.2f} / {acc5:.2f}")
    if args.quant_mode == "calib":
        quantizer.export_quant_config()
    if args.quant_mode == "test" and args.deploy:
        quantizer.export_torch_script()
        quantizer.export_onnx_model()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quant_mode", default="calib", choices=["float", "calib", "test"])
    parser.add_argument("--subset_len", type=int, default=None,
                        help="images of the held-out set to run (default: all 1,000)")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--config_file", default=None, help="quantization configuration JSON")
    parser.add_argument("--fast_finetune", action="store_true")
    parser.add_argument("--ft_len", type=int, default=1024,
                        help="training images for fast finetune")
    parser.add_argument("--deploy", action="store_true",
                        help="test mode: also export TorchScript and ONNX")
    parser.add_argument("--model_dir", default="pt_example/float")
    parser.add_argument("--output_dir", default="quantize_result")
    quantization(parser.parse_args(argv))


if __name__ == "__main__":
    main()
