"""config_names: a per-node option naming a node where it cannot take effect is warned about,
with the name that would work; nodes_method on an input node is rejected."""

import logging

import numpy as np
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


def test_ignore_nodes_on_a_float_node_is_not_reported(caplog):
    """Deploy marks every ignored node outside a layer (quantize_ignored): that entry works."""
    _, warnings = plan_with(caplog, ignore_nodes=["prob", "gap"])
    assert warnings == []


def test_an_entry_on_an_op_quantized_with_its_reader_names_the_reader(caplog):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.ones([1, 1, 3, 3], np.float32))
        y = tf.nn.conv2d(x, w, 1, "SAME", name="conv")
        tf.nn.relu(tf.add(y, x, name="add"), name="out")
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                                     input_shapes=[[-1, 8, 8, 3]], nodes_bit={"add": 4})
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        plan_lib.plan_quantization(graph.as_graph_def(), config)
    assert any("'add' has no effect: it is quantized once together with the op that reads it"
               in r.getMessage() for r in caplog.records)


def test_a_folded_layer_without_activation_keeps_its_names_when_ignored(tmp_path, caplog):
    """conv1 + batch norm, no activation, read by conv2: with conv1 ignored, conv2's input
    point has the same name in the training and the evaluation graph, so the evaluation graph
    deploys from the training checkpoint; nodes_bit on the batch norm (the layer's output in
    the user's graph) sets the same width in both graphs."""
    config = dict(ignore_nodes=["conv1/Conv2D"],
                  nodes_bit={"conv2/BatchNorm/FusedBatchNormV3": 6})
    names = []
    for training in (True, False):
        with tf.Graph().as_default() as graph:
            x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
            bn = {"is_training": training}
            y = slim.conv2d(x, 4, 3, scope="conv1", activation_fn=None,
                            normalizer_fn=slim.batch_norm, normalizer_params=bn)
            y = slim.conv2d(y, 4, 3, scope="conv2", activation_fn=None,
                            normalizer_fn=slim.batch_norm, normalizer_params=bn)
            tf.identity(y, name="out")
            q_config = decent_q.QuantizeConfig(
                input_nodes=["input"], output_nodes=["out"], input_shapes=[[-1, 8, 8, 3]],
                output_dir=str(tmp_path), **config)
            if training:
                decent_q.CreateQuantizeTrainingGraph(config=q_config)
                with tf.compat.v1.Session() as sess:
                    sess.run(tf.compat.v1.global_variables_initializer())
                    sess.run(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS),
                             {x: np.ones([2, 8, 8, 3], np.float32)})  # one step: histograms
                    ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "model.ckpt"))
            else:
                decent_q.CreateQuantizeEvaluationGraph(config=q_config)
                decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=q_config)
        names.append({op.name[:-len("/fix")]: op.get_attr("bit_width")
                      for op in graph.get_operations() if op.name.endswith("/fix")})
    assert names[0] == names[1]
    assert names[0]["conv1/BatchNorm_Fold/BiasAdd/aquant"] == 8
    assert names[0]["conv2/BatchNorm_Fold/BiasAdd/aquant"] == 6
