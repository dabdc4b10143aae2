"""dump.py: per-batch folders of integer (and float) results of a quantize_eval_model."""

import os

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import ptq
from decent_q.dump import dump, replace_by_placeholders
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized, utils


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    cfg = helpers.config(output_dir=str(out), nodes_bit={"conv1/Relu": 16})
    return ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn, cfg,
                                     progress=False)["quantize_eval_model"]


def one_image(step):
    return {"input": helpers.batch(step, n=1)}


def test_folders_and_integer_files(eval_model, tmp_path):
    folders = dump(eval_model, one_image, max_dump_batches=2, output_dir=str(tmp_path))
    assert [os.path.basename(f) for f in folders] == ["dump_results_1", "dump_results_2"]
    first = set(os.listdir(folders[0]))
    second = set(os.listdir(folders[1]))
    assert {"input_aquant_int8.bin", "input_aquant_int8.txt", "logits_aquant_int8.bin",
            "conv1_weights_wquant_int8.bin", "conv1_Relu_aquant_int16.bin"} <= first
    # Weights once, in the first folder only.
    assert "conv1_weights_wquant_int8.bin" not in second
    assert "input_aquant_int8.bin" in second
    assert not [f for f in first if "_float" in f]


def test_integers_are_value_times_two_to_pos(eval_model, tmp_path):
    dump(eval_model, one_image, output_dir=str(tmp_path))
    folder = tmp_path / "dump_results_1"
    gd = utils.load_graph_def(eval_model)
    fixes = quantized.fix_neurons(gd)
    values = helpers.run(gd, ["logits/aquant:0", "conv1/Relu/aquant:0"], helpers.batch(0, 1))
    for name, value in zip(["logits/aquant", "conv1/Relu/aquant"], values):
        bits = quantized.bit_width(fixes[name])
        dtype = np.int8 if bits <= 8 else np.int16
        stem = name.replace("/", "_") + ("_int8" if bits <= 8 else "_int16")
        raw = np.fromfile(folder / f"{stem}.bin", dtype)
        expect = np.rint(value * 2.0 ** quantized.position(fixes[name])).reshape(-1)
        np.testing.assert_array_equal(raw, expect)
        text = (folder / f"{stem}.txt").read_text().split("\n")
        assert text[-1] == "" and [int(v) for v in text[:-1]] == raw.tolist()


def test_dump_float_writes_every_float_node(eval_model, tmp_path):
    dump(eval_model, one_image, max_dump_batches=2, dump_float=1, output_dir=str(tmp_path))
    first = set(os.listdir(tmp_path / "dump_results_1"))
    second = set(os.listdir(tmp_path / "dump_results_2"))
    for name in ("input", "conv1/Conv2D", "gap", "prob", "logits/aquant", "fc/weights"):
        assert f"{name.replace('/', '_')}_float.bin" in first, name
    assert "fc_weights_float.bin" not in second and "prob_float.txt" in second
    prob = np.fromfile(tmp_path / "dump_results_1" / "prob_float.bin", np.float32)
    assert prob.shape == (10,) and abs(prob.sum() - 1) < 1e-5


def test_dump_is_deterministic(eval_model, tmp_path):
    dump(eval_model, one_image, dump_float=1, output_dir=str(tmp_path / "a"))
    dump(eval_model, one_image, dump_float=1, output_dir=str(tmp_path / "b"))
    files = sorted(os.listdir(tmp_path / "a" / "dump_results_1"))
    assert files == sorted(os.listdir(tmp_path / "b" / "dump_results_1"))
    for name in files:
        assert (tmp_path / "a" / "dump_results_1" / name).read_bytes() == \
            (tmp_path / "b" / "dump_results_1" / name).read_bytes()


def test_dump_input_tensors_replaces_a_non_placeholder(eval_model, tmp_path):
    gd = utils.load_graph_def(eval_model)
    # The graph's entrance is a constant (as an in-graph dataset would be).
    piped = tf.compat.v1.GraphDef()
    piped.CopyFrom(gd)
    for i, node in enumerate(piped.node):
        if node.name == "input":
            piped.node[i].CopyFrom(utils.const_node("input", np.zeros([1, 8, 8, 3], np.float32)))
    replaced = replace_by_placeholders(piped, "input")
    assert next(n for n in replaced.node if n.name == "input").op == "Placeholder"
    dump(piped, one_image, dump_input_tensors="input", output_dir=str(tmp_path / "a"))
    dump(eval_model, one_image, output_dir=str(tmp_path / "b"))
    for name in ("logits_aquant_int8.bin", "input_aquant_int8.bin"):
        assert (tmp_path / "a" / "dump_results_1" / name).read_bytes() == \
            (tmp_path / "b" / "dump_results_1" / name).read_bytes()
    with pytest.raises(QuantizeError, match="dump_input_tensors entry 'inpt' is not in the "
                                            "graph; did you mean 'input'"):
        replace_by_placeholders(piped, "inpt")


def test_bad_inputs(eval_model, tmp_path):
    with pytest.raises(ConfigError):
        dump(eval_model, one_image, max_dump_batches=0, output_dir=str(tmp_path / "x"))
    with pytest.raises(QuantizeError, match="returned key 'images'"):
        dump(eval_model, lambda i: {"images": np.zeros([1, 8, 8, 3], np.float32)},
             output_dir=str(tmp_path / "y"))
    with pytest.raises(QuantizeError, match="does not exist"):
        dump(str(tmp_path / "missing.pb"), one_image, output_dir=str(tmp_path / "z"))
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "z")
