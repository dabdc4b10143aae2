"""Bias correction in the PyTorch flow (``include_bias_corr``): what it removes (the mean
output shift that quantizing the weights causes, measured on the calibration data), its file
and positions, the errors of a wrong order, exports with it, and the outcome a user wants: a
low-bit model quantizes better with it."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests import numpy_reference as ref  # noqa: E402
from tests.pytorch.helpers import calibrate_then_test, dpu_config  # noqa: E402
from decent_q_torch.apis import QatProcessor, torch_quantizer  # noqa: E402
from decent_q_torch.errors import QuantizeError  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 12, 12, generator=generator) + 0.5 for _ in range(n)]


def _config(tmp_path, bias_corr, weight_bits=3):
    overrides = {"include_bias_corr": bias_corr,
                 "tensor_quantize_config": {"activation": {"round_mode": "half_up"},
                                            "weights": {"bit_width": weight_bits}}}
    return dpu_config(tmp_path / f"config_{bias_corr}_{weight_bits}.json", **overrides)


def test_the_first_layers_mean_shift_is_removed(tmp_path):
    """conv1 reads the quantized input in both cases, so its mean output error over the
    calibration data (quantized layer against the float weights on the same input) is what
    quantizing the weights shifts: large without the correction, down to the bias's own
    rounding with it (docs/pytorch.md "Bias correction")."""
    model, data = Net().eval(), _data(4, seed=1)
    errors = {}
    for bias_corr in (False, True):
        tester = calibrate_then_test(model, _config(tmp_path, bias_corr), tmp_path / str(bias_corr), data)
        conv1 = tester.quant_model.conv1
        point = tester.quant_model.get_submodule("points.input_0")
        total = torch.zeros(16, dtype=torch.float64)
        with torch.no_grad():
            for x in data:
                x_q = point(x)
                got = conv1(x_q)
                want = torch.nn.functional.conv2d(x_q, model.conv1.weight, model.conv1.bias,
                                                  padding=1)
                total += (got - want).double().mean(dim=(0, 2, 3))
        errors[bias_corr] = (total / len(data)).abs()
        bias_step = 2.0 ** -conv1.bias_point.pos
    assert float(errors[False].max()) > 4 * bias_step
    assert float(errors[True].max()) <= bias_step / 2 + 1e-6


def test_file_flag_and_bias_positions(tmp_path):
    model, data = Net().eval(), _data(4, seed=1)
    tester = calibrate_then_test(model, _config(tmp_path, True), tmp_path, data)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == [
        "Net.py", "bias_corr.pth"]
    info = json.loads((tmp_path / "Quant_info.json").read_text())
    assert info["bias_corrected"] is True
    shifts = torch.load(tmp_path / "bias_corr.pth")
    assert sorted(shifts) == ["conv1", "conv2", "fc"]
    for name, shift in shifts.items():
        corrected = (getattr(model, name).bias - shift).detach().numpy()
        assert info["param"][f"Net::{name}.bias"][0][1] == ref.search_pos(corrected, ref.WEIGHT,
                                                                          8, 1)
        assert getattr(tester.quant_model, name).bias_shift is not None
    assert "bias_shift" not in "".join(tester.quant_model.state_dict())


def test_low_bit_model_quantizes_better_with_it(tmp_path):
    model, data, held_out = Net().eval(), _data(4, seed=1), _data(2, seed=2)
    sqnr = {}
    for bias_corr in (False, True):
        tester = calibrate_then_test(model, _config(tmp_path, bias_corr), tmp_path / str(bias_corr), data)
        with torch.no_grad():
            want = torch.cat([model(x) for x in held_out])
            got = torch.cat([tester.quant_model(x) for x in held_out])
        sqnr[bias_corr] = float(10 * torch.log10((want ** 2).sum() / ((got - want) ** 2).sum()))
    assert sqnr[True] > sqnr[False] + 3, sqnr


def test_exports_carry_the_correction_once(tmp_path):
    model, data = Net().eval(), _data(2, seed=1)
    tester = calibrate_then_test(model, _config(tmp_path, True), tmp_path, data)
    scripted = torch.jit.load(tester.export_torch_script())
    with torch.no_grad():
        for x in _data(2, seed=3):
            np.testing.assert_array_equal(scripted(x).numpy(), tester.quant_model(x).numpy())


def test_wrong_order_and_mismatch_name_the_fix(tmp_path, capsys):
    model, data = Net().eval(), _data(2, seed=1)
    without = _config(tmp_path, False)
    calibrate_then_test(model, without, tmp_path, data)
    with pytest.raises(QuantizeError, match="bias_corr.pth does not exist.*calib"):
        torch_quantizer("test", model, (data[0],), device="cpu", output_dir=str(tmp_path),
                        quant_config_file=_config(tmp_path, True))
    with_corr = _config(tmp_path, True)
    calibrate_then_test(model, with_corr, tmp_path / "b", data)
    torch_quantizer("test", model, (data[0],), device="cpu", output_dir=str(tmp_path / "b"),
                    quant_config_file=_config(tmp_path, False))
    assert "the correction is not applied" in capsys.readouterr().out
    torch.save({"conv1": torch.zeros(16)}, tmp_path / "b" / "bias_corr.pth")
    with pytest.raises(QuantizeError, match="does not match this model"):
        torch_quantizer("test", model, (data[0],), device="cpu", output_dir=str(tmp_path / "b"),
                        quant_config_file=with_corr)


def test_qat_leaves_it_out(tmp_path, capsys):
    QatProcessor(Net(), torch.randn(1, 3, 12, 12), device="cpu",
                 quant_config_file=_config(tmp_path, True))
    assert "include_bias_corr: not in QAT" in capsys.readouterr().out
