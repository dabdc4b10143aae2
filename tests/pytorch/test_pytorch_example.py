"""The guide's PyTorch example (examples/pt_resnet18_quant.py, pt_resnet18_qat.py) on the
digits: the outcomes a user wants, on a float resnet18 trained here (about 40 s)."""

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import pt_resnet18_qat as qat_example  # noqa: E402
import pt_resnet18_quant as example  # noqa: E402
from pytorch_nndct.apis import torch_quantizer  # noqa: E402


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("pt_float"))
    torch.set_num_threads(2)
    return model_dir, example.load_float_model(model_dir)


def _accuracy(model):
    return example.evaluate(model, example.load_data(batch_size=100),
                            torch.nn.CrossEntropyLoss())[0]


def _quantize(model, out, config=None, fast_finetune=False):
    """calib on 200 held-out images (fast finetune on 256 training images first), then test."""
    loss_fn = torch.nn.CrossEntropyLoss()
    example_input = torch.randn([1, 3, 32, 32])
    calib = torch_quantizer("calib", model, (example_input,), device="cpu", output_dir=out,
                            quant_config_file=config)
    if fast_finetune:
        ft_loader = example.load_data(subset_len=256, train=True, sample_method="random")
        calib.fast_finetune(example.evaluate, (calib.quant_model, ft_loader, loss_fn))
    example.evaluate(calib.quant_model, example.load_data(subset_len=200), loss_fn)
    calib.export_quant_config()
    test = torch_quantizer("test", model, (example_input,), device="cpu", output_dir=out,
                           quant_config_file=config)
    if fast_finetune:
        test.load_ft_param()
    return _accuracy(test.quant_model)


def test_8_bit_within_one_point_of_float(float_model, tmp_path):
    _, model = float_model
    float_acc = _accuracy(model)
    assert float_acc >= 97.0
    assert _quantize(model, str(tmp_path)) >= float_acc - 1.0
    info = json.loads((tmp_path / "Quant_info.json").read_text())
    assert len(info["param"]) == 42 and len(info["output"]) == 33  # 21 layers; resnet18's points


def test_fast_finetune_recovers_3_bit_weights(float_model, tmp_path):
    """3-bit weights lose tens of points without fast finetune (58.7 % measured); with it
    at least 5 points come back (98.3 % measured). 4-bit weights: within 2 points of float."""
    _, model = float_model
    config = json.load(open(os.path.join(ROOT, "examples", "pt_configs", "dpu_config.json")))
    config["tensor_quantize_config"]["weights"] = {"bit_width": 3}
    path = tmp_path / "w3.json"
    path.write_text(json.dumps(config))
    plain = _quantize(model, str(tmp_path / "plain"), str(path))
    tuned = _quantize(model, str(tmp_path / "tuned"), str(path), fast_finetune=True)
    assert tuned >= plain + 5.0
    assert json.loads((tmp_path / "tuned" / "Quant_info.json").read_text())["fast_finetuned"]
    w4 = _quantize(model, str(tmp_path / "w4"),
                   os.path.join(ROOT, "examples", "pt_configs", "w4_config.json"),
                   fast_finetune=True)
    assert w4 >= _accuracy(model) - 2.0


def test_qat_8_bit_keeps_the_float_accuracy_of_the_same_budget(float_model, tmp_path):
    """60 Adam steps of QAT against 60 more float steps: measured 98.3 % against 98.5 %
    (target 0.3 point; asserted 0.5, a broken fold or gradient loses several points)."""
    model_dir, _ = float_model
    out = str(tmp_path / "qat")
    float_acc, qat_acc = qat_example.main(["--steps", "60", "--model_dir", model_dir,
                                           "--output_dir", out])
    assert qat_acc >= float_acc - 0.5
    assert sorted(os.listdir(out)) == ["Quant_info.json", "ResNet.py", "ResNet_qat.pth"]
