"""QuantizeConfig: defaults, parsing of the CLI forms, and validation messages."""

import pytest

from decent_q.config import DEFAULTS, OPTIONS, QuantizeConfig
from decent_q.errors import ConfigError


def test_defaults_match_the_guide():
    assert DEFAULTS.weight_bit == 8 and DEFAULTS.activation_bit == 8
    assert DEFAULTS.method == 1
    assert DEFAULTS.calib_iter == 100
    assert DEFAULTS.output_dir == "./quantize_results"
    assert (DEFAULTS.align_concat, DEFAULTS.simulate_dpu, DEFAULTS.adjust_shift_bias,
            DEFAULTS.adjust_shift_cut, DEFAULTS.scale_all_avgpool, DEFAULTS.do_cle,
            DEFAULTS.replace_relu6) == (0, 1, 1, 1, 1, 0, 1)
    assert DEFAULTS.arch_type == "DEFAULT"
    assert DEFAULTS.gpu_memory_fraction == 0.5
    assert DEFAULTS.max_dump_batches == 1 and DEFAULTS.dump_float == 0
    assert DEFAULTS.bias_correction == 0  # decent_q's own; off keeps the original's numerics


def test_every_option_has_help():
    for field in OPTIONS:
        assert field.metadata["help"], field.name


def test_list_options_accept_python_and_cli_forms():
    a = QuantizeConfig(input_nodes=["in"], output_nodes=["a", "b"],
                       input_shapes=[[-1, 224, 224, 3]])
    b = QuantizeConfig(input_nodes="in", output_nodes="a,b", input_shapes="?,224,224,3")
    assert a == b
    assert b.input_shapes == [[-1, 224, 224, 3]]


def test_multiple_input_shapes_cli_form():
    cfg = QuantizeConfig(input_nodes="a,b", input_shapes="?,224,224,3:1,300,300,1")
    assert cfg.input_shapes == [[-1, 224, 224, 3], [1, 300, 300, 1]]


def test_tensor_names_become_node_names():
    assert QuantizeConfig(input_nodes=["input:0"]).input_nodes == ["input"]


@pytest.mark.parametrize("value", ["conv1/Relu:16,conv1:4", ["conv1/Relu:16", "conv1:4"],
                                   {"conv1/Relu": 16, "conv1": 4}])
def test_nodes_bit_forms(value):
    cfg = QuantizeConfig(nodes_bit=value)
    assert cfg.nodes_bit == {"conv1/Relu": 16, "conv1": 4}
    assert cfg.bit_width("conv1", 8) == 4 and cfg.bit_width("other", 8) == 8


def test_nodes_method_lookup():
    cfg = QuantizeConfig(method=1, nodes_method="dw/weights:2")
    assert cfg.method_for("dw/weights") == 2 and cfg.method_for("x") == 1


@pytest.mark.parametrize("kwargs, words", [
    ({"method": 7}, ["method=7", "0, 1, 2"]),
    ({"align_concat": 3}, ["align_concat=3"]),
    ({"adjust_shift_bias": 5}, ["adjust_shift_bias=5"]),
    ({"arch_type": "DPU"}, ["arch_type='DPU'", "DPUCADF8H"]),
    ({"weight_bit": 1}, ["weight_bit=1", "2 to 16"]),
    ({"activation_bit": 17}, ["activation_bit=17"]),
    ({"nodes_bit": ["conv1"]}, ["nodes_bit entry 'conv1'", "name:bit width"]),
    ({"nodes_bit": ["conv1:eight"]}, ["integer bit width"]),
    ({"nodes_bit": {"conv1": 40}}, ["nodes_bit entry 'conv1'"]),
    ({"nodes_method": "a:4"}, ["nodes_method entry 'a'"]),
    ({"input_shapes": [[1, 224, 224]]}, ["not a 4-D shape"]),
    ({"input_shapes": "1,a,224,3"}, ["dimension 'a'"]),
    ({"input_nodes": ["a"], "input_shapes": [[1, 2, 2, 1], [1, 2, 2, 1]]},
     ["2 shape(s)", "1 node(s)"]),
    ({"calib_iter": 0}, ["calib_iter=0"]),
    ({"gpu_memory_fraction": 1.5}, ["gpu_memory_fraction"]),
    ({"fold_bn_freeze_step": -2}, ["fold_bn_freeze_step"]),
    ({"bias_correction": 3}, ["bias_correction=3", "0, 1, 2"]),
    ({"input_nodes": 5}, ["input_nodes"]),
])
def test_validation_names_field_and_allowed_values(kwargs, words):
    with pytest.raises(ConfigError) as err:
        QuantizeConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_require_nodes():
    with pytest.raises(ConfigError, match="input_nodes is required"):
        QuantizeConfig().require_nodes()
    QuantizeConfig(input_nodes="a", output_nodes="b", input_shapes="?,1,1,1").require_nodes()


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_numeric_options_accept_numeric_strings():
    # pyxir passes numeric options as strings
    config = QuantizeConfig(method="1", simulate_dpu="1", adjust_shift_bias="2",
                            calib_iter=" 10 ", weight_bit="4", gpu_memory_fraction="0.25")
    assert (config.method, config.simulate_dpu, config.adjust_shift_bias, config.calib_iter,
            config.weight_bit, config.gpu_memory_fraction) == (1, 1, 2, 10, 4, 0.25)
    assert QuantizeConfig(method="2") == QuantizeConfig(method=2)


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "abc"}, ["method='abc'", "integer"]),
    ({"simulate_dpu": "1.5"}, ["simulate_dpu='1.5'", "integer"]),
    ({"gpu_memory_fraction": "half"}, ["gpu_memory_fraction='half'", "number"]),
    ({"method": "7"}, ["method=7", "0, 1, 2"]),
])
def test_bad_numeric_strings_name_the_option(kwargs, words):
    with pytest.raises(ConfigError) as err:
        QuantizeConfig(**kwargs)
    for word in words:
        assert word in str(err.value)
