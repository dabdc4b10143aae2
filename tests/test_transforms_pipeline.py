"""transforms/__init__.py: prepare_float_graph and adjust_positions around plan + calibrate,
on a small tf_slim CNN (conv+BN+relu, depthwise+BN+relu6, concat, 7x7 pooling, dense)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

from decent_q import calibrate
from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.graph import quantized, utils
from decent_q.transforms import adjust_positions, prepare_float_graph

tf.compat.v1.disable_v2_behavior()  # graph flow: ref-variable histograms in calibration
RNG = np.random.default_rng(0)
OUT = "fc/BiasAdd"


def frozen_cnn(pool):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 14, 14, 3], name="input")
        with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                            normalizer_fn=slim.batch_norm,
                            normalizer_params={"is_training": False}):
            n = slim.conv2d(x, 8, 3, stride=2, scope="conv1")
            a = slim.separable_conv2d(n, None, 3, depth_multiplier=1, scope="dw1",
                                      activation_fn=tf.nn.relu6)
            a = slim.conv2d(a, 8, 1, scope="pw1")
            b = slim.conv2d(n, 4, 1, scope="branch")
            n = tf.concat([a, b], 3, name="cat")
            if pool == "mean":
                n = tf.reduce_mean(n, [1, 2], keepdims=True, name="gap")
            else:
                n = slim.avg_pool2d(n, 7, scope="gap")
            n = slim.flatten(n)
            n = slim.fully_connected(n, 10, activation_fn=None, scope="fc")
        tf.nn.softmax(n, name="prob")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for v in tf.compat.v1.global_variables():
                shape = v.shape.as_list()
                if "moving_variance" in v.name:
                    sess.run(v.assign(RNG.uniform(0.5, 2.0, shape).astype(np.float32)))
                elif "moving_mean" in v.name or "beta" in v.name:
                    sess.run(v.assign(RNG.uniform(-0.3, 0.3, shape).astype(np.float32)))
            return tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["prob"])


def run(graph_def, x, name):
    graph = utils.import_graph(graph_def)
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(f"{name}:0", {"input:0": x})


@pytest.mark.parametrize("pool", ["mean", "avgpool"])
@pytest.mark.parametrize("do_cle,simulate", [(0, 0), (1, 1), (0, 1)])
def test_pipeline(pool, do_cle, simulate):
    gd = frozen_cnn(pool)
    config = QuantizeConfig(input_nodes=["input"], output_nodes=[OUT],
                            input_shapes=[[-1, 14, 14, 3]], calib_iter=2, do_cle=do_cle,
                            simulate_dpu=simulate)
    prepared = prepare_float_graph(gd, config)
    ops = [n.op for n in prepared.node]
    assert not any(op.startswith("FusedBatchNorm") or op == "Identity" for op in ops)
    assert ("Mean" in ops) == (pool == "mean" and not simulate)
    xs = [RNG.uniform(0, 1, [4, 14, 14, 3]).astype(np.float32) for _ in range(2)]
    float_out, prepared_out = run(gd, xs[0], OUT), run(prepared, xs[0], OUT)
    scale = np.abs(float_out).max()
    # Only the DPU factor of the 7x7 pooling (49*21/1024) and CLE's Relu6 -> Relu differ.
    np.testing.assert_allclose(prepared_out, float_out, atol=0.02 * scale)

    plan = plan_lib.plan_quantization(prepared, config)
    positions = calibrate.calibrate_positions(prepared, plan, lambda i: {"input": xs[i]},
                                              config)
    model = appliers.apply_to_graph_def(prepared, plan, positions)
    final = adjust_positions(model, config)
    quant_out = run(final, xs[0], f"{OUT}/aquant")
    assert np.abs(quant_out - float_out).max() < 0.1 * scale

    # Position passes: only quantize_pos changed; constraints hold.
    assert [n.name for n in final.node] == [n.name for n in model.node]
    pos = quantized.positions(final)
    em = quantized.EvalModel(final)
    cat_pos = pos[em.output_fix("cat")]
    assert pos[em.input_fix(em.nm["cat"], 0)] == pos[em.input_fix(em.nm["cat"], 1)] == cat_pos
    layers = quantized.find_layers(final)
    assert len(layers) == 5
    for layer in layers:
        pi, pw, po = (pos[layer.input_fix], pos[layer.weight_fix], pos[layer.output_fix])
        if 127 in (pi, po):
            continue
        shift_cut = pw + pi - po
        assert 0 <= shift_cut <= 16, layer
        if layer.bias_fix:
            assert min(0, shift_cut - 16) <= pw + pi - pos[layer.bias_fix] <= 16, layer


def test_prepare_float_graph_leaves_the_outside_of_the_range_as_it_was():
    """Post-processing after the output node (an Identity, constant arithmetic) and
    preprocessing before the input node are not cleaned up or folded."""
    rng = np.random.default_rng(3)
    graph = tf.Graph()
    with graph.as_default():
        raw = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 3], name="raw")
        x = tf.identity(raw * (tf.constant(2.0) + tf.constant(1.0)), name="input")
        w = tf.identity(tf.constant(rng.standard_normal((1, 1, 3, 2)).astype(np.float32)))
        y = tf.nn.conv2d(x, w, 1, "SAME", name="logits")
        post = tf.identity(y, name="post/id")
        tf.multiply(post, tf.constant(3.0) * tf.constant(0.5), name="post/out")
    graph_def = graph.as_graph_def()
    config = QuantizeConfig(input_nodes=["input"], output_nodes=["logits"],
                            input_shapes=[[-1, 4, 4, 3]])
    prepared = prepare_float_graph(graph_def, config)
    before = {n.name: n for n in graph_def.node}
    after = {n.name: n for n in prepared.node}
    scope = set(__import__("decent_q.transforms", fromlist=["x"]).quantize_scope(
        graph_def, config))
    outside = [name for name in before if name not in scope]
    assert "post/id" in outside and "raw" in outside and "mul" in outside
    for name in outside:
        assert after[name] == before[name], name
    # Inside, the weight's Identity is gone.
    assert after["logits"].input[1] != before["logits"].input[1]
