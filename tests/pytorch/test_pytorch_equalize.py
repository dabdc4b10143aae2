"""Cross-layer equalization in the PyTorch flow (``include_cle``, decent_q_torch/equalize.py):
the pairs it finds, the float function it keeps, one step against a NumPy transcription of
docs/passes.md "Cross-layer equalization", and the outcome a user wants: a model whose
channels are badly balanced quantizes far better with it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.pytorch.helpers import calibrate_then_test, dpu_config  # noqa: E402
from decent_q_torch import convert, equalize  # noqa: E402
from decent_q_torch.apis import QatProcessor  # noqa: E402


class Chains(torch.nn.Module):
    """conv -relu-maxpool-> depthwise -relu6-> conv 1x1 (+ residual) -> grouped conv ->
    pool, flatten -> linear -relu-> linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.relu6 = torch.nn.ReLU6()
        self.pw = torch.nn.Conv2d(8, 8, 1)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        y = self.pw(self.relu6(self.dw(y)))
        y = self.grouped(y + y.mean())  # pw's output has two users: not a pair
        y = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1)
        return self.fc2(torch.relu(self.fc1(y)))


def _chains(seed=0):
    torch.manual_seed(seed)
    model = Chains().eval()
    with torch.no_grad():  # unbalanced channels, so that equalization has work to do
        for layer in (model.conv, model.dw, model.pw, model.fc1):
            spread = torch.logspace(-2, 1, layer.weight.shape[0])[torch.randperm(
                layer.weight.shape[0])]
            layer.weight.mul_(spread.reshape([-1] + [1] * (layer.weight.dim() - 1)))
    return model


def _traced(model, relu6_to_relu=False):
    x = torch.randn(2, 3, 16, 16)
    gm = convert.trace(model, (x,))
    if relu6_to_relu:
        convert.replace_modules(gm, torch.nn.ReLU6, lambda m: torch.nn.ReLU())
    return gm, x


@pytest.mark.parametrize("relu6_to_relu", [False, True])
def test_pairs_found_and_float_function_kept(relu6_to_relu):
    gm, x = _traced(_chains(), relu6_to_relu)
    expected = [(gm.get_submodule(head), gm.get_submodule(tail))
                for head, tail in (("conv", "dw"), ("dw", "pw"), ("fc1", "fc2"))]
    if not relu6_to_relu:
        expected.remove((gm.dw, gm.pw))  # ReLU6 clips: it ends the chain
    assert equalize.find_pairs(gm) == expected
    before = gm(x)
    assert equalize.equalize(gm) == len(expected)
    torch.testing.assert_close(gm(x), before, rtol=1e-5, atol=1e-5)


def _reference_step(w1, b1, w2, depthwise_tail=False):
    """One equalization step in NumPy, as docs/passes.md writes it (torch layouts: output
    channels first)."""
    w1, b1, w2 = (np.array(t, np.float64) for t in (w1, b1, w2))
    r1 = np.maximum(np.abs(w1).reshape(len(w1), -1).max(axis=1), np.abs(b1))
    if depthwise_tail:
        per_filter = np.abs(w2).reshape(len(w2), -1).max(axis=1)
        r2 = per_filter.reshape(len(w1), -1).max(axis=1)
    else:
        r2 = np.abs(np.swapaxes(w2, 0, 1)).reshape(w2.shape[1], -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip(np.sqrt(r2 / r1), 0.01, 100.0)
    s = np.where((r1 + r2 < 0.5) | (r1 == 0), 1.0, s)
    w1 = w1 * s.reshape([-1] + [1] * (w1.ndim - 1))
    if depthwise_tail:
        w2 = w2 / np.repeat(s, len(w2) // len(s)).reshape([-1] + [1] * (w2.ndim - 1))
    else:
        w2 = w2 / s.reshape([1, -1] + [1] * (w2.ndim - 2))
    return w1, b1 * s, w2


@pytest.mark.parametrize("tail_groups", [1, 6])
def test_one_step_matches_the_numpy_reference(tail_groups):
    torch.manual_seed(3)
    head = torch.nn.Conv2d(4, 6, 3)
    tail = torch.nn.Conv2d(6, 12, 3, groups=tail_groups)  # depthwise with multiplier 2
    with torch.no_grad():
        head.weight[0].mul_(1e4)  # s clipped at 0.01
        head.weight[1].mul_(1e-5)
        head.bias[1] = 0.0        # with the tail small too: r1 + r2 < 0.5, s = 1
        head.weight[2].zero_()
        head.bias[2] = 0.0        # dead channel: s = 1
        head.bias[3] = 40.0       # the bias sets the range
        tail.weight[:, 1].mul_(1e-3) if tail_groups == 1 else tail.weight[2:4].mul_(1e-3)
    expected = _reference_step(head.weight.detach(), head.bias.detach(),
                               tail.weight.detach(), depthwise_tail=tail_groups > 1)
    equalize.equalize_pair(head, tail)
    for got, want in zip((head.weight, head.bias, tail.weight), expected):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-6, atol=0)
    r1 = np.maximum(np.abs(expected[0]).reshape(6, -1).max(axis=1), np.abs(expected[1]))
    assert r1[2] == 0 and r1[0] < 1e4 / 50  # channel 0 scaled down by the clip's 100


def _sqnr_db(model, config_file, tmp_path):
    """SQNR (dB) of the 8-bit test-mode output against float on fresh data."""
    generator = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 3, 16, 16, generator=generator) for _ in range(4)]
    tester = calibrate_then_test(model, config_file, tmp_path, calib)
    with torch.no_grad():
        x = torch.randn(64, 3, 16, 16, generator=generator)
        ref, got = model(x), tester.quant_model(x)
    return float(10 * torch.log10((ref ** 2).sum() / ((got - ref) ** 2).sum()))


def _config(tmp_path, include_cle):
    return dpu_config(tmp_path / f"cle_{include_cle}.json", include_cle=include_cle,
                      convert_relu6_to_relu=True)


class Unbalanced(torch.nn.Module):
    """conv -relu-> conv where the first conv's channels span three decades and the second
    conv undoes it: every channel matters equally to the output (a batch norm folded into a
    layer leaves weights like these)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 8, 3, padding=1)
        spread = torch.logspace(-3, 0, 16)
        with torch.no_grad():
            self.conv1.weight.mul_(spread[:, None, None, None])
            self.conv1.bias.mul_(spread)
            self.conv2.weight.div_(spread[None, :, None, None])

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_unbalanced_channels_quantize_better_with_it(tmp_path, capsys):
    model = Unbalanced().eval()
    without = _sqnr_db(model, _config(tmp_path, False), tmp_path / "without")
    with_cle = _sqnr_db(model, _config(tmp_path, True), tmp_path / "with")
    assert "cross-layer equalization: 1 layer pairs" in capsys.readouterr().out
    assert with_cle > without + 10, (without, with_cle)


def test_qat_leaves_it_out(tmp_path, capsys):
    model = _chains()
    trainable = QatProcessor(model, torch.randn(1, 3, 16, 16), device="cpu",
                             quant_config_file=_config(tmp_path, True)).trainable_model()
    assert "not in QAT" in capsys.readouterr().out
    torch.testing.assert_close(trainable.get_submodule("conv").weight, model.conv.weight)


def test_equalizing_twice_equals_once():
    gm, _ = _traced(_chains(), relu6_to_relu=True)
    equalize.equalize(gm)
    once = {k: v.clone() for k, v in gm.state_dict().items()}
    equalize.equalize(gm)
    for key, value in gm.state_dict().items():
        torch.testing.assert_close(value, once[key], rtol=1e-5, atol=1e-7)
