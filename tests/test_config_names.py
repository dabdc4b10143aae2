"""config_names: a per-node option naming a node where it cannot take effect is warned about,
with the name that would work; nodes_method on an input node is rejected."""

import logging

import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q
import helpers
from decent_q import plan as plan_lib
from decent_q import transforms
from decent_q.errors import ConfigError


def plan_with(caplog, **kw):
    config = helpers.config(**kw)
    graph_def = transforms.prepare_float_graph(helpers.small_cnn(), config)
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        plan = plan_lib.plan_quantization(graph_def, config)
    return plan, [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]


def test_nodes_bit_inside_a_layer_names_its_output_and_compute_op(caplog):
    plan, warnings = plan_with(caplog, nodes_bit={"conv3/BiasAdd": 4})
    assert len(warnings) == 1
    assert "'conv3/BiasAdd'" in warnings[0] and "'conv3/Relu'" in warnings[0] and \
        "'conv3/Conv2D'" in warnings[0]
    assert all(p.bit_width == 8 for p in plan.points)


def test_the_suggested_names_take_effect_without_a_warning(caplog):
    plan, warnings = plan_with(caplog, nodes_bit={"conv3/Relu": 4, "conv3/Conv2D": 6},
                               nodes_method={"conv3/Relu": 0})
    assert warnings == []
    assert plan.point("conv3/Relu/aquant").bit_width == 4
    assert plan.point("conv3/Relu/aquant").method == 0
    assert plan.point("conv3/weights/wquant").bit_width == 6


def test_ignore_nodes_inside_a_layer_names_the_compute_op(caplog):
    plan, warnings = plan_with(caplog, ignore_nodes=["conv3/BiasAdd"])
    assert len(warnings) == 1 and "name the compute op 'conv3/Conv2D'" in warnings[0]
    assert "conv3/weights/wquant" in [p.name for p in plan.points]


def test_a_node_outside_the_range_is_named(caplog):
    _, warnings = plan_with(caplog, nodes_bit={"prob": 4})
    assert len(warnings) == 1 and "not between input_nodes and output_nodes" in warnings[0]


def test_nodes_method_on_an_input_node_is_rejected():
    with pytest.raises(ConfigError, match="input node 'input'.*method 0"):
        helpers.config(nodes_method={"input": 1}).require_nodes()


def qat_points(tmp_path, caplog, is_training, **kw):
    """{point: (bit width, method)} of the QAT graph of a slim conv + batch norm + relu."""
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        y = slim.conv2d(x, 4, 3, scope="conv", normalizer_fn=slim.batch_norm,
                        normalizer_params={"is_training": is_training})
        tf.identity(slim.conv2d(y, 4, 1, scope="conv2"), name="out")
        config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                                         input_shapes=[[-1, 8, 8, 3]],
                                         output_dir=str(tmp_path), **kw)
        with caplog.at_level(logging.WARNING, logger="decent_q"):
            (decent_q.CreateQuantizeTrainingGraph if is_training
             else decent_q.CreateQuantizeEvaluationGraph)(config=config)
    return {op.name[:-len("/fix")]: (op.get_attr("bit_width"), op.get_attr("method"))
            for op in graph.get_operations() if op.name.endswith("/fix")}


@pytest.mark.parametrize("is_training", [True, False])
def test_qat_folded_layers_answer_to_the_users_names(tmp_path, caplog, is_training):
    """The QAT fold replaces conv/Conv2D and its weights by BatchNorm_Fold/conv and
    BatchNorm_Fold/weights: entries naming the user's conv, weight variable or its read still
    apply, in the training and the evaluation graph alike."""
    points = qat_points(tmp_path, caplog, is_training, nodes_bit={"conv/weights": 4},
                        nodes_method={"conv/Conv2D": 0}, ignore_nodes=["conv2/Conv2D"])
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]
    assert points["conv/BatchNorm_Fold/weights/wquant"] == (4, 0)
    assert not any(name.startswith("conv2/") and "wquant" in name for name in points)
