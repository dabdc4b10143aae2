"""The PyTorch flow (decent_q_torch, vai_q_pytorch's API): conversion, calib / test, files,
configuration, errors, exports. The example's accuracy checks are in
tests/pytorch/test_pytorch_example.py."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tests import numpy_reference as ref  # noqa: E402
from tests.pytorch.helpers import dpu_config  # noqa: E402
from decent_q_torch import fix_neuron, source  # noqa: E402
from decent_q_torch.apis import QatProcessor, torch_quantizer  # noqa: E402
from decent_q_torch.errors import QuantizeError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Net(torch.nn.Module):
    """conv-bn-relu, conv-bn + residual add + relu, depthwise conv, pooling, linear, softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(y))
        z = torch.relu(z + y)
        z = self.dw(z)
        z = torch.flatten(self.pool(z), 1)
        return torch.softmax(self.fc(z), dim=1)


def make_net(seed=0):
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def batches(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 12, 12, generator=generator) * (1 + i) for i in range(n)]


def calibrate(net, output_dir, config_file=None, data=None, **kwargs):
    data = data or batches()
    quantizer = torch_quantizer("calib", net, (data[0],), output_dir=str(output_dir),
                                device="cpu", quant_config_file=config_file, **kwargs)
    with torch.no_grad():
        for x in data:
            quantizer.quant_model(x)
    quantizer.export_quant_config()
    with open(os.path.join(output_dir, "Quant_info.json")) as f:
        return quantizer, json.load(f)


def folded(net):
    """(weight, bias) of conv1 and conv2 with their batch norms folded, computed here."""
    out = []
    for conv, bn in ((net.conv1, net.bn1), (net.conv2, net.bn2)):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros(8)
        out.append((conv.weight * scale[:, None, None, None],
                    (bias - bn.running_mean) * scale + bn.bias))
    return out


def test_points_files_and_test_mode_numbers(tmp_path):
    """Quant_info.json names every point the placement rules give, with the positions the
    NumPy reference finds; test mode computes exactly the hand-written quantized network."""
    net = make_net()
    data = batches()
    _, info = calibrate(net, tmp_path, data=data)
    assert sorted(info["param"]) == sorted(
        f"Net::{layer}.{p}" for layer in ("conv1", "conv2", "dw", "fc") for p in ("weight",
                                                                                "bias"))
    # conv1 + relu fused, add + relu fused (relu_1), softmax float
    assert sorted(info["output"]) == sorted(f"Net::{n}" for n in (
        "input_0", "relu", "conv2", "relu_1", "dw", "pool", "flatten", "fc"))
    assert info["input"] == {} and info["fast_finetuned"] is False
    assert all(entry[0][0] == 8 for part in ("param", "output") for entry in info[part].values())
    pos = {k: v[0][1] for part in ("param", "output") for k, v in info[part].items()}

    with torch.no_grad():
        (w1, b1), (w2, b2) = folded(net)
        # weights: constant, so every batch finds the reference's position
        assert pos["Net::conv1.weight"] == ref.search_pos(w1.numpy(), ref.WEIGHT, 8, 1)
        assert pos["Net::conv2.bias"] == ref.search_pos(b2.numpy(), ref.WEIGHT, 8, 1)
        assert pos["Net::dw.weight"] == ref.search_pos(net.dw.weight.numpy(), ref.WEIGHT, 8, 1)
        # the input: method 0 on each batch, the most frequent position kept
        assert pos["Net::input_0"] == ref.kept_position(
            [ref.search_pos(x.numpy(), ref.ACTIVATION, 8, 0) for x in data])

        def q(t, name, round_mode):
            return fix_neuron.quantize(t, pos[f"Net::{name}"], 8, round_mode)

        def qw(t, name):
            return q(t, name, "std_round")

        x = data[2]
        h = q(x, "input_0", "std_round")
        y = q(F.relu(F.conv2d(h, qw(w1, "conv1.weight"), qw(b1, "conv1.bias"), padding=1)),
              "relu", "half_up")
        z = q(F.conv2d(y, qw(w2, "conv2.weight"), qw(b2, "conv2.bias"), padding=1), "conv2",
              "half_up")
        z = q(F.relu(z + y), "relu_1", "half_up")
        z = q(F.conv2d(z, qw(net.dw.weight, "dw.weight"), qw(net.dw.bias, "dw.bias"), padding=1,
                       groups=8), "dw", "half_up")
        z = q(F.adaptive_avg_pool2d(z, 1), "pool", "half_up")
        z = q(torch.flatten(z, 1), "flatten", "half_up")
        z = q(F.linear(z, qw(net.fc.weight, "fc.weight"), qw(net.fc.bias, "fc.bias")), "fc",
              "half_up")
        expected = torch.softmax(z, dim=1)
        tester = torch_quantizer("test", net, (data[0],), output_dir=str(tmp_path), device="cpu")
        np.testing.assert_array_equal(tester.quant_model(x).numpy(), expected.numpy())
        # and quantization changed something: the float model differs
        assert not torch.equal(net(x), expected)


def test_float_mode_is_the_float_model(tmp_path):
    net = make_net()
    quantizer = torch_quantizer("float", net, (batches()[0],), output_dir=str(tmp_path),
                                device="cpu")
    with torch.no_grad():
        for x in batches():
            np.testing.assert_allclose(quantizer.quant_model(x).numpy(), net(x).numpy(),
                                       rtol=1e-5, atol=1e-6)


def test_generated_source_rebuilds_the_quantized_model(tmp_path):
    net = make_net()
    calibrate(net, tmp_path)
    tester = torch_quantizer("test", net, (batches()[0],), output_dir=str(tmp_path),
                             device="cpu")
    path = tmp_path / "Net.py"
    text = path.read_text()
    assert "# Net::conv1" in text and "py_nndct.nn.Conv2d(" in text
    spec = importlib.util.spec_from_file_location("generated_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.Net().eval()
    rebuilt.load_state_dict(source.state_dict_of(tester.quant_model))
    with torch.no_grad():
        for x in batches(seed=5):
            np.testing.assert_array_equal(rebuilt(x).numpy(), tester.quant_model(x).numpy())


def test_files_are_deterministic(tmp_path):
    _, first = calibrate(make_net(), tmp_path / "a")
    _, second = calibrate(make_net(), tmp_path / "b")
    assert first == second
    assert (tmp_path / "a" / "Net.py").read_bytes() == (tmp_path / "b" / "Net.py").read_bytes()


def _config(tmp_path, **overrides):
    return dpu_config(tmp_path / "config.json", **overrides)


def test_default_config_file_equals_no_file(tmp_path):
    _, without = calibrate(make_net(), tmp_path / "a")
    _, with_file = calibrate(make_net(), tmp_path / "b", config_file=_config(tmp_path))
    assert without == with_file


def test_config_per_kind_layer_type_and_layer_name(tmp_path):
    config = _config(
        tmp_path,
        quantizable_data_type=["input", "weights", "activation"],
        tensor_quantize_config={"weights": {"bit_width": 4}, "activation": {"round_mode":
                                                                            "half_up"}},
        layer_quantize_config=[
            {"layer_type": "Linear", "layer_name": None,
             "quantizable_data_type": ["weights", "bias", "activation"],
             "overall_quantize_config": {"bit_width": 16}},
            {"layer_type": None, "layer_name": "Net::dw",
             "quantizable_data_type": ["weights", "activation"],
             "overall_quantize_config": {"bit_width": 6, "method": "maxmin"}}])
    _, info = calibrate(make_net(), tmp_path, config_file=config)
    bits = {k: v[0][0] for part in ("param", "output") for k, v in info[part].items()}
    assert bits["Net::conv1.weight"] == 4 and bits["Net::relu"] == 8
    assert "Net::conv1.bias" not in bits  # bias not in quantizable_data_type
    assert bits["Net::fc.weight"] == bits["Net::fc.bias"] == bits["Net::fc"] == 16
    assert bits["Net::dw.weight"] == bits["Net::dw"] == 6 and "Net::dw.bias" not in bits


def test_float_datatype_keeps_tensors_float(tmp_path):
    config = _config(tmp_path, tensor_quantize_config={"activation": {"datatype": "bfloat16"}})
    quantizer, info = calibrate(make_net(), tmp_path, config_file=config)
    assert list(info["output"]) == ["Net::input_0"]
    x = batches()[0]
    relu_in = quantizer.quant_model.points["relu"]
    assert relu_in(x).dtype == torch.float32
    assert torch.equal(relu_in(x), x.to(torch.bfloat16).float())


@pytest.mark.parametrize("change, message", [
    ({"overall_quantize_config": {"bit_width": 1}}, "overall_quantize_config.bit_width"),
    ({"overall_quantize_config": {"round_mode": "nearest"}}, "'nearest' is not one of"),
    ({"overall_quantize_config": {"scale_type": "float"}}, "float scales are not supported"),
    ({"overall_quantize_config": {"per_channel": True}}, "per_channel"),
    ({"overall_quantize_config": {"symmetry": False}}, "symmetry"),
    ({"overall_quantize_config": {"method": "entropy"}}, "method"),
    ({"overall_quantize_config": {"bits": 8}}, "overall_quantize_config.bits: unknown"),
    ({"include_cle": "yes"}, "include_cle: must be a bool"),
    ({"target_device": "TPU"}, "target_device"),
    ({"quantizable_data_type": ["weights", "outputs"]}, "quantizable_data_type"),
    ({"tensor_quantize_config": {"weight": {"bit_width": 4}}}, "tensor_quantize_config.weight"),
    ({"layer_quantize_config": [{"layer_type": "Conv2d", "layer_name": "Net::conv1",
                                 "quantizable_data_type": ["weights"],
                                 "overall_quantize_config": {}}]}, "exactly one of"),
    ({"layer_quantize_config": [{"layer_type": "Conv2d", "layer_name": None,
                                 "quantizable_data_type": ["weights"]}]},
     "\"overall_quantize_config\" is required"),
    ({"colour": 1}, "colour: unknown key"),
])
def test_bad_config_is_refused_naming_the_key(tmp_path, change, message):
    path = _config(tmp_path, **change)
    with pytest.raises(QuantizeError, match="quant_config_file") as error:
        torch_quantizer("calib", make_net(), (batches()[0],), output_dir=str(tmp_path),
                        device="cpu", quant_config_file=path)
    assert message in str(error.value) and path in str(error.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(QuantizeError, match="does not exist"):
        torch_quantizer("calib", make_net(), (batches()[0],), device="cpu",
                        quant_config_file=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(QuantizeError, match="not valid JSON"):
        torch_quantizer("calib", make_net(), (batches()[0],), device="cpu",
                        quant_config_file=str(bad))


def test_wrong_order_of_calls_names_the_fix(tmp_path, capsys):
    net, x = make_net(), batches()[0]
    out = str(tmp_path / "result")
    with pytest.raises(QuantizeError, match="run quant_mode 'calib' first"):
        torch_quantizer("test", net, (x,), output_dir=out, device="cpu")
    assert "[VAIQ_ERROR]" in capsys.readouterr().err
    quantizer = torch_quantizer("calib", net, (x,), output_dir=out, device="cpu")
    with pytest.raises(QuantizeError, match="saw no data"):
        quantizer.export_quant_config()
    assert not os.path.exists(out)  # nothing written
    with pytest.raises(QuantizeError, match="load_ft_param\\(\\) is for quant_mode 'test'"):
        quantizer.load_ft_param()
    with pytest.raises(QuantizeError, match="quant_mode 'test'"):
        quantizer.export_onnx_model()
    with torch.no_grad():
        quantizer.quant_model(x)
    quantizer.export_quant_config()
    tester = torch_quantizer("test", net, (x,), output_dir=out, device="cpu")
    with pytest.raises(QuantizeError, match="export_quant_config\\(\\) is for quant_mode 'calib'"):
        tester.export_quant_config()
    with pytest.raises(QuantizeError, match="fast_finetune\\(\\) runs in quant_mode 'calib'"):
        tester.fast_finetune(lambda: None, ())
    with pytest.raises(QuantizeError, match="param.pth does not exist"):
        tester.load_ft_param()
    with pytest.raises(QuantizeError, match="Vitis AI toolchain"):
        tester.export_xmodel()


def test_quant_info_of_another_model_is_refused(tmp_path):
    calibrate(make_net(), tmp_path)

    class Other(Net):
        def forward(self, x):
            return super().forward(x * 2)

    other = Other()
    other.load_state_dict(make_net().state_dict())
    with pytest.raises(QuantizeError, match="different model"):
        torch_quantizer("test", other.eval(), (batches()[0],), output_dir=str(tmp_path),
                        device="cpu")


def test_bad_inputs(tmp_path):
    x = batches()[0]
    with pytest.raises(QuantizeError, match="quant_mode 'train' is not one of"):
        torch_quantizer("train", make_net(), (x,), device="cpu")
    with pytest.raises(QuantizeError, match="input_args is required"):
        torch_quantizer("calib", make_net(), None, device="cpu")
    with pytest.raises(QuantizeError, match="does not run through Net"):
        torch_quantizer("calib", make_net(), (torch.randn(1, 5, 12, 12),), device="cpu")
    with pytest.raises(QuantizeError, match="state_dict_file"):
        torch_quantizer("calib", make_net(), (x,), device="cpu",
                        state_dict_file=str(tmp_path / "none.pth"))

    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(QuantizeError, match="cannot be traced by torch.fx"):
        torch_quantizer("calib", Branchy(), (x,), device="cpu")
    blocker = tmp_path / "file"
    blocker.write_text("")
    quantizer = torch_quantizer("calib", make_net(), (x,), device="cpu",
                                output_dir=str(blocker / "sub"))
    with torch.no_grad():
        quantizer.quant_model(x)
    with pytest.raises(QuantizeError, match="cannot create output_dir"):
        quantizer.export_quant_config()


def test_unsupported_op_warns_and_stays_float(tmp_path, capsys):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.conv2 = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv2(torch.cumsum(self.conv(x), dim=1))

    _, info = calibrate(Odd().eval(), tmp_path)
    assert "[VAIQ_WARN]" in capsys.readouterr().out
    # cumsum stays float; conv2's input is quantized by a point on cumsum's output
    assert "Odd::cumsum" in info["output"] and "Odd::conv" in info["output"]


def test_log_lines_have_no_colour_off_a_terminal(tmp_path, capsys):
    calibrate(make_net(), tmp_path)
    out = capsys.readouterr().out
    assert "[VAIQ_NOTE]: Net: 4 layers" in out and "\033[" not in out


class Logits(Net):
    """Net without its softmax: every op of it is exact on quantized values (8-bit products
    summed well within float32's 24 bits), so runtimes agree to the bit."""

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(self.dw(z)), 1))


def test_exports_give_the_test_mode_numbers(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net, x = Logits(), batches()[0]
    net.load_state_dict(make_net().state_dict())
    net.eval()
    calibrate(net, tmp_path)
    tester = torch_quantizer("test", net, (x,), output_dir=str(tmp_path), device="cpu")
    onnx_path = tester.export_onnx_model(dynamic_batch=True)
    script_path = tester.export_torch_script()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Logits.py", "Logits_int.onnx", "Logits_int.pt", "Quant_info.json"]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(script_path)
    with torch.no_grad():
        for data in batches(seed=9):
            expected = tester.quant_model(data).numpy()
            np.testing.assert_array_equal(session.run(None, {"input_0": data.numpy()})[0],
                                          expected)
            np.testing.assert_array_equal(scripted(data).numpy(), expected)


def test_qat_trains_and_deploys_its_positions(tmp_path):
    net, data = make_net(), batches()
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    qat = QatProcessor(net, (data[0],), device="cpu")
    model = qat.trainable_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        loss = F.nll_loss(torch.log(model(data[0]) + 1e-9), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    deployable = qat.to_deployable(model, str(tmp_path))
    info = json.loads((tmp_path / "Quant_info.json").read_text())
    point = deployable.points["relu"]
    assert info["output"]["Net::relu"][0][1] == point.pos == \
        int(torch.argmax(point.hist)) + fix_neuron.MIN_POS
    state = torch.load(tmp_path / "Net_qat.pth")
    spec = importlib.util.spec_from_file_location("qat_net", tmp_path / "Net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.Net().eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        np.testing.assert_array_equal(rebuilt(data[1]).numpy(), deployable(data[1]).numpy())


def test_pytorch_nndct_alias_without_tensorflow():
    code = ("import sys\n"
            "from pytorch_nndct.apis import torch_quantizer\n"
            "from pytorch_nndct import QatProcessor\n"
            "import pytorch_nndct as py_nndct\n"
            "assert py_nndct.nn.Conv2d.__module__ == 'decent_q_torch.nn'\n"
            "assert torch_quantizer.__module__ == 'decent_q_torch.apis'\n"
            "assert 'tensorflow' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(ROOT), timeout=120)
    assert result.returncode == 0, result.stderr
