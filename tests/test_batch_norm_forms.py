"""QAT and post-training quantization fold the same batch-norm forms (layers.BATCH_NORMS): each
form below is folded by the frozen-graph pass and by the live QAT fold, in the training and the
evaluation graph; a batch norm with no compute layer in front is the one form neither can fold
into weights. (BatchNormWithGlobalNormalization, the fourth form, is folded by both too, but
current TensorFlow cannot build it in a graph (removed at GraphDef version 9): it only comes in
old frozen graphs, see test_fold_batch_norms.)"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q  # noqa: F401  (registers the contrib aliases slim needs)
from decent_q import transforms
from decent_q.config import QuantizeConfig
from decent_q.live import batch_norms
from decent_q.live import fold_batch_norms as live_fold

BN_OPS = ("FusedBatchNorm", "FusedBatchNormV3", "BatchNormWithGlobalNormalization", "Rsqrt")


def _keras(layer_kind):
    def net(x, training):
        import tf_keras  # pylint: disable=import-outside-toplevel
        if layer_kind == "conv":
            y = tf_keras.layers.Conv2D(4, 3, name="conv")(x)
        else:
            y = tf_keras.layers.Dense(4, name="dense")(tf.reshape(x, [-1, 192]))
        return tf_keras.layers.BatchNormalization(name="bn")(y, training=training)
    return net


def _slim(fused, dense=False, affine=True):
    def net(x, training):
        params = {"is_training": training, "scale": affine, "center": affine, "fused": fused}
        if dense:
            return slim.fully_connected(tf.reshape(x, [-1, 192]), 4, activation_fn=None,
                                        normalizer_fn=slim.batch_norm,
                                        normalizer_params=params, scope="fc")
        return slim.conv2d(x, 4, 3, activation_fn=None, normalizer_fn=slim.batch_norm,
                           normalizer_params=params, scope="conv")
    return net


def _scale_offset(x, training):
    del training
    y = tf.nn.conv2d(x, tf.compat.v1.get_variable("w", [3, 3, 3, 4]), 1, "SAME")
    return y * tf.constant(np.linspace(0.5, 2, 4, dtype=np.float32)) + tf.constant(0.25)


# form name -> (net(x, training), layers.BATCH_NORMS form, has a training form)
FORMS = {
    "slim_fused": (_slim(True), "fused", True),
    "keras_conv": (_keras("conv"), "fused", True),
    "keras_dense": (_keras("dense"), "nn_batch_normalization", True),
    "slim_unfused_conv": (_slim(False), "nn_batch_normalization", True),
    "slim_unfused_dense": (_slim(False, dense=True), "nn_batch_normalization", True),
    "slim_unfused_no_gamma_beta": (_slim(False, affine=False), "nn_batch_normalization", True),
    "constant_scale_offset": (_scale_offset, "scale_offset", False),
}


def build(form, training):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        tf.nn.relu(FORMS[form][0](x, training), name="out")
    return graph


def frozen(graph):
    with graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        return tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), ["out"])


CONFIG = QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                        input_shapes=[[-1, 8, 8, 3]])


@pytest.mark.parametrize("form", sorted(FORMS))
def test_post_training_folds_the_form(form):
    prepared = transforms.prepare_float_graph(frozen(build(form, False)), CONFIG)
    ops = {n.op for n in prepared.node}
    assert not ops & set(BN_OPS) and "Mul" not in ops, sorted(ops)


@pytest.mark.parametrize("form,training", [(form, training) for form in sorted(FORMS)
                                           for training in (False, True)[:1 + FORMS[form][2]]])
def test_qat_folds_the_same_form(form, training):
    _, kind, _ = FORMS[form]
    graph = build(form, training)
    found = batch_norms.find_batch_norms(graph)
    assert [(bn.form, bn.training, layer is not None) for bn, layer in found] == \
        [(kind, training, True)]
    result = live_fold.fold_batch_norms(graph, freeze_step=-1)
    assert len(result.folded) == 1


def test_a_batch_norm_without_a_layer_is_named_and_left(caplog):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        tf.nn.relu(slim.batch_norm(x, is_training=False, scope="bn"), name="out")
    result = live_fold.fold_batch_norms(graph)
    assert result.folded == []
    assert any("no weights to fold into" in r.getMessage() for r in caplog.records)
    # post-training makes it x * scale + offset (quantized once, after the offset)
    prepared = transforms.prepare_float_graph(frozen(graph), CONFIG)
    assert {"Mul", "BiasAdd"} <= {n.op for n in prepared.node}


def _not_batch_norms(kind):
    def net(x):
        import tf_keras  # pylint: disable=import-outside-toplevel
        if kind == "layer_norm":  # eps < 1.001e-5: tf.nn.batch_normalization's ops, not fused
            y = tf_keras.layers.Dense(4, name="dense")(tf.reshape(x, [-1, 192]))
            return tf_keras.layers.LayerNormalization(epsilon=1e-6, name="ln")(y)
        if kind == "cond_batch_norm":  # the training flag is a tensor: tf.cond
            flag = tf.compat.v1.placeholder_with_default(True, [], name="training")
            y = tf_keras.layers.Dense(4, name="dense")(tf.reshape(x, [-1, 192]))
            return tf_keras.layers.BatchNormalization(name="bn")(y, training=flag)
        w = tf.compat.v1.get_variable("w", [3, 3, 3, 4])  # a detection grid decode
        grid = tf.constant(np.arange(256, dtype=np.float32).reshape([1, 8, 8, 4]))
        return tf.nn.conv2d(x, w, 1, "SAME") * 2.0 + grid
    return net


@pytest.mark.parametrize("kind", ["layer_norm", "cond_batch_norm", "grid_offset"])
def test_normalisations_that_are_not_foldable_batch_norms_stay_float(kind, tmp_path):
    """Layer norm (moments over the channels), a batch norm inside a tf.cond and a per-position
    offset have no moving statistics / per-channel form to fold: QAT leaves them float and
    its graphs build (an evaluation graph with a tf.cond on the training flag is refused, as
    before)."""
    rewrites = [decent_q.CreateQuantizeTrainingGraph, decent_q.CreateQuantizeEvaluationGraph]
    for rewrite in rewrites[:1] if kind == "cond_batch_norm" else rewrites:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
            tf.identity(_not_batch_norms(kind)(x), name="out")
            assert [bn for bn, layer in batch_norms.find_batch_norms(graph)
                    if layer is not None] == []
            rewrite(config=dataclasses.replace(CONFIG, output_dir=str(tmp_path)))
            assert not [op for op in graph.get_operations() if "BatchNorm_Fold" in op.name]
