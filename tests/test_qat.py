"""qat: the CreateQuantize{Training,Evaluation,Deploy}Graph flow on small in-process models."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_slim as slim

import decent_q
from decent_q import ops, qat
from decent_q.errors import QuantizeError
from tensorflow.core.protobuf import rewriter_config_pb2

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
Y = RNG.integers(0, 3, 16)


def model_fn(is_training):
    """conv+BN+relu, separable (depthwise+BN+relu6, pointwise+BN), pool, dense; loss."""
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1], name="images")
    labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
    bn = {"is_training": is_training, "scale": True, "decay": 0.9}
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=slim.batch_norm,
                        normalizer_params=bn):
        net = slim.conv2d(images, 4, 3, scope="conv1")
        net = slim.separable_conv2d(net, None, 3, depth_multiplier=1,
                                    activation_fn=tf.nn.relu6, scope="dw2")
        net = slim.conv2d(net, 6, 1, scope="pw2")
        net = slim.max_pool2d(net, 2, scope="pool")
        net = slim.flatten(net)
    logits = slim.fully_connected(net, 3, activation_fn=None, scope="logits")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    return logits, loss


def config(tmp_path, **kw):
    # Position passes off: the eval model must equal the eval graph bit for bit.
    return decent_q.QuantizeConfig(input_nodes=["images"], output_nodes=["logits/BiasAdd"],
                                   input_shapes=[[-1, 8, 8, 1]], output_dir=str(tmp_path / "q"),
                                   align_concat=2, adjust_shift_cut=0, adjust_shift_bias=0,
                                   **kw)


def train(tmp_path, steps=5, **kw):
    """Builds and rewrites the training graph, trains `steps` steps, saves model.ckpt-<steps>."""
    graph = tf.Graph()
    with graph.as_default():
        _, loss = model_fn(True)
        decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path, **kw))
        step = tf.compat.v1.train.get_or_create_global_step()
        with tf.control_dependencies(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.UPDATE_OPS)):
            train_op = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss, step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train_op, {"images:0": X, "labels:0": Y})
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "train" / "model.ckpt"),
                                            steps)
    return graph


def no_remapping():
    """Grappler's fused kernels (Conv2D+BiasAdd+Relu) round differently from the unfused ops
    and may move a value across a quantization step: compare both graphs without them."""
    options = tf.compat.v1.ConfigProto()
    options.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return options


def test_training_graph_structure(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        model_fn(True)
        float_vars = {v.op.name for v in tf.compat.v1.global_variables()}
        path = decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path))
        assert os.path.exists(path) and path.endswith("quantize_train_graph.pb")
        new_vars = {v.op.name for v in tf.compat.v1.global_variables()} - float_vars
        assert new_vars and all(v.endswith("/pos_hist") for v in new_vars)
        # Every conv-like op on the quantized path reads its weights through a wquant point.
        # The original convs of folded layers are left without consumers (one conv a layer).
        computes = [op for op in graph.get_operations()
                    if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul")
                    and op.outputs[0].consumers()]
        assert len(computes) == 4
        for op in computes:
            weights = op.inputs[1].op
            if weights.name.endswith("BatchNorm_Fold/conv_weights"):  # Q(W*s) unscaled
                weights = weights.inputs[0].op.inputs[0].op
            assert weights.name.endswith("/wquant"), op.name
            assert graph.get_operation_by_name(weights.name + "/fix") \
                .get_attr("phase") == ops.Phase.TRAIN
        assert graph.get_operation_by_name("dw2/BatchNorm_Fold/weights/wquant/fix") \
            .get_attr("mode") == ops.Mode.DW_WEIGHT
        # Layer: folded conv (quantized weights, unscaled) -> the batch norm -> relu -> aquant
        # feeds the next layer.
        relu = graph.get_operation_by_name("conv1/Relu")
        assert relu.inputs[0].op.name == "conv1/BatchNorm/FusedBatchNormV3"
        assert relu.inputs[0].op.inputs[0].op.name == "conv1/BatchNorm_Fold/conv"
        assert [c.name for c in relu.outputs[0].consumers()] == ["conv1/Relu/aquant/fix"]
        with pytest.raises(QuantizeError, match="already a quantize train graph"):
            decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path))


def test_gradients_reach_every_trainable_weight(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        _, loss = model_fn(True)
        decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path))
        variables = tf.compat.v1.trainable_variables()
        grads = tf.gradients(loss, variables)
        assert all(g is not None for g in grads), \
            [v.op.name for v, g in zip(variables, grads) if g is None]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = sess.run(grads, {"images:0": X, "labels:0": Y})
        assert all(np.any(v != 0) for v in values)


def test_training_rewrite_after_optimizer_is_refused(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        _, loss = model_fn(True)
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with pytest.raises(QuantizeError, match="BEFORE creating the optimizer"):
            decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path))


@pytest.mark.parametrize("field, names, message", [
    ("input_nodes", ["image"], "input node 'image' is not in the graph; did you mean 'images'"),
    ("output_nodes", ["logits/BiasAd"], "output node 'logits/BiasAd' is not in the graph; "
                                        "did you mean 'logits/BiasAdd'"),
])
def test_training_rewrite_names_a_missing_node(tmp_path, field, names, message):
    graph = tf.Graph()
    with graph.as_default():
        model_fn(True)
        before = len(graph.get_operations())
        with pytest.raises(QuantizeError, match=re.escape(message)):
            decent_q.CreateQuantizeTrainingGraph(config=decent_q.QuantizeConfig(**{
                "input_nodes": ["images"], "output_nodes": ["logits/BiasAdd"],
                "input_shapes": [[-1, 8, 8, 1]], "output_dir": str(tmp_path / "q"),
                field: names}))
        assert len(graph.get_operations()) == before  # nothing rewritten
    assert not os.path.exists(tmp_path / "q")


def test_evaluation_graph_in_training_phase_is_refused(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        model_fn(True)
        with pytest.raises(QuantizeError, match=r"set_learning_phase\(0\)"):
            decent_q.CreateQuantizeEvaluationGraph(config=config(tmp_path))


def test_keras_graph_with_learning_phase_switch_is_refused(tmp_path):
    import tf_keras  # pylint: disable=import-outside-toplevel
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf_keras.Input((8, 8, 1), name="images")
        x = tf_keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
        x = tf_keras.layers.BatchNormalization()(x)  # training flag is a tensor: tf.cond
        x = tf_keras.layers.Flatten()(x)
        tf_keras.layers.Dense(3, name="logits")(x)
        with pytest.raises(QuantizeError, match="training phase"):
            decent_q.CreateQuantizeEvaluationGraph(config=config(tmp_path))


def test_deploy_model_equals_evaluation_graph_bit_exactly(tmp_path):
    train(tmp_path, steps=4)
    graph = tf.Graph()
    with graph.as_default():
        model_fn(False)
        eval_path = decent_q.CreateQuantizeEvaluationGraph(config=config(tmp_path))
        assert os.path.basename(eval_path).startswith("quantize_eval_graph_")
        files = decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "train"),
                                                   config=config(tmp_path))
        with tf.compat.v1.Session(config=no_remapping()) as sess:
            tf.compat.v1.train.Saver().restore(sess, str(tmp_path / "train" / "model.ckpt-4"))
            expected = sess.run("logits/BiasAdd/aquant:0", {"images:0": X})
    path = files["quantize_eval_model"]
    assert os.path.basename(path).startswith("quantize_eval_model_4_")
    model = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    node_ops = {n.name: n.op for n in model.node}
    assert not any(op.startswith("FusedBatchNorm") or op in ("FixNeuronDynamic", "VariableV2",
                                                              "VarHandleOp")
                   for op in node_ops.values())
    assert node_ops["images"] == "Placeholder" and node_ops["logits/BiasAdd/aquant"] == \
        "FixNeuron"
    by_name = {n.name: n for n in model.node}
    assert by_name["conv1/BatchNorm_Fold/conv"].input[1] == "conv1/BatchNorm_Fold/weights/wquant"
    out_graph = tf.Graph()
    with out_graph.as_default():
        tf.graph_util.import_graph_def(model, name="")
        with tf.compat.v1.Session(config=no_remapping()) as sess:
            got = sess.run("logits/BiasAdd/aquant:0", {"images:0": X})
    np.testing.assert_array_equal(got, expected)


def test_deploy_errors(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        model_fn(False)
        with pytest.raises(QuantizeError, match="not a quantize evaluation graph"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path), config=config(tmp_path))
        decent_q.CreateQuantizeEvaluationGraph(config=config(tmp_path))
        (tmp_path / "empty").mkdir()
        with pytest.raises(QuantizeError, match="no checkpoint in"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "empty"),
                                               config=config(tmp_path))
    # A checkpoint of another model.
    other = tf.Graph()
    with other.as_default():
        tf.compat.v1.Variable(1.0, name="something_else")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "other" / "model.ckpt"),
                                                   7)
    with graph.as_default():
        with pytest.raises(QuantizeError, match=r"lacks \d+ variable.*conv1/BatchNorm/beta"):
            decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=config(tmp_path))


def test_float_checkpoint_restores_into_training_graph(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        model_fn(True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            float_ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "f" / "m.ckpt"))
    graph = tf.Graph()
    with graph.as_default():
        model_fn(True)
        decent_q.CreateQuantizeTrainingGraph(config=config(tmp_path))
        saver = tf.compat.v1.train.Saver(var_list=qat.float_variables())
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.restore(sess, float_ckpt)


def test_keras_flow_with_resource_variables(tmp_path):
    import tf_keras  # pylint: disable=import-outside-toplevel

    def build():
        inputs = tf_keras.Input((8, 8, 1), name="images")
        x = tf_keras.layers.Conv2D(4, 3, use_bias=False, name="c1")(inputs)
        x = tf_keras.layers.BatchNormalization(name="bn1")(x)
        x = tf_keras.layers.LeakyReLU(0.1, name="leaky")(x)
        x = tf_keras.layers.DepthwiseConv2D(3, name="dw")(x)
        x = tf_keras.layers.ReLU(6.0, name="relu6")(x)
        x = tf_keras.layers.Flatten(name="flatten")(x)
        x = tf_keras.layers.Dropout(0.5, name="drop")(x)
        return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="logits")(x))

    cfg = config(tmp_path)
    graph = tf.Graph()
    with graph.as_default():
        keras_train(tf_keras, build, cfg, tmp_path)
    with tf.Graph().as_default():
        tf_keras.backend.set_learning_phase(0)
        build()
        decent_q.CreateQuantizeEvaluationGraph(config=cfg)
        files = decent_q.CreateQuantizeDeployGraph(checkpoint=str(tmp_path / "k"), config=cfg)
    assert os.path.basename(files["quantize_eval_model"]).startswith("quantize_eval_model_3_")


def keras_train(tf_keras, build, cfg, tmp_path):
    tf_keras.backend.set_learning_phase(1)
    model = build()
    decent_q.CreateQuantizeTrainingGraph(config=cfg)
    graph = tf.compat.v1.get_default_graph()
    assert graph.get_operation_by_name("c1/Conv2D/ReadVariableOp").type == "ReadVariableOp"
    assert graph.get_operation_by_name("leaky/LeakyRelu").outputs[0].consumers()[0].name == \
        "leaky/LeakyRelu/aquant/fix"
    labels = tf.compat.v1.placeholder(tf.int64, [None])
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, model.output)
    with tf.control_dependencies(model.updates + tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.UPDATE_OPS)):
        train_op = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for _ in range(3):
            sess.run(train_op, {model.input: X, labels: Y})
        tf.compat.v1.train.Saver().save(sess, str(tmp_path / "k" / "model.ckpt"), 3)


@pytest.mark.parametrize("net", ["slim_mean", "slim_avgpool", "keras"])
@pytest.mark.parametrize("freeze_step", [-1, 0, 5])
def test_training_and_evaluation_graphs_have_the_same_points(net, freeze_step, tmp_path):
    """The training graph quantizes exactly where the evaluation graph (and so the deployed
    model) does: the same points, each once, whatever the batch-norm fold's form."""
    import learning  # pylint: disable=import-outside-toplevel
    build = learning.keras_net() if net == "keras" else learning.slim_net(net.split("_")[1])
    points = []
    for is_training in (True, False):
        graph = tf.Graph()
        with graph.as_default():
            build(is_training)
            q_config = learning.config(str(tmp_path), fold_bn_freeze_step=freeze_step)
            if is_training:
                decent_q.CreateQuantizeTrainingGraph(config=q_config)
            else:
                decent_q.CreateQuantizeEvaluationGraph(config=q_config)
            # Not compared: the slim nets' Dense + batch norm, which is unfused (a rank-2 batch
            # norm) and so not folded in QAT: its training and evaluation forms differ.
            points.append(sorted(p for p in ops.histogram_variables(graph)
                                 if not p.startswith("fc/")))
    assert points[0] == points[1]
    # One activation point a layer: none on a folded layer's output before its activation.
    assert not [p for p in points[0] if p.endswith("BatchNorm_Fold/BiasAdd/aquant")
                and not p.startswith(("res_b/", "pw2/"))]


# -- point names, simulate_dpu, ignored options ---------------------------------------------

def small_fn(pool="mean", alpha=0.1):
    """conv (ref variable w) -> LeakyRelu(alpha) -> global pool -> dense (resource variable v)."""
    images = tf.compat.v1.placeholder(tf.float32, [None, 7, 7, 2], name="images")
    w = tf.compat.v1.get_variable("w", [3, 3, 2, 4], use_resource=False,
                                  initializer=tf.compat.v1.initializers.he_normal(0))
    net = tf.nn.leaky_relu(tf.nn.conv2d(images, w, 1, "SAME", name="conv"), alpha, name="leaky")
    if pool == "mean":
        net = tf.reduce_mean(net, [1, 2], name="gap")
    else:  # a (kh, kw) AvgPool
        net = tf.nn.avg_pool2d(net, pool, 1, "VALID", name="pool")
        net = tf.reshape(net, [-1, 4 * (8 - pool[0]) * (8 - pool[1])], name="flat")
    v = tf.compat.v1.get_variable("v", [net.shape[1], 3], use_resource=True,
                                  initializer=tf.compat.v1.initializers.he_normal(1))
    return tf.matmul(net, v, name="logits")


def small_config(tmp_path, **kw):
    return decent_q.QuantizeConfig(input_nodes=["images"], output_nodes=["logits"],
                                   input_shapes=[[-1, 7, 7, 2]], output_dir=str(tmp_path / "q"),
                                   **kw)


IMAGES = RNG.uniform(0, 1, (4, 7, 7, 2)).astype(np.float32)


def small_train(tmp_path, save_as=None, **kw):
    """QAT training graph of small_fn, one SGD step, checkpoint model.ckpt-1; `save_as` maps a
    variable to the name it is saved under."""
    graph = tf.Graph()
    with graph.as_default():
        small_fn(**{k: kw.pop(k) for k in ("pool", "alpha") if k in kw})
        decent_q.CreateQuantizeTrainingGraph(config=small_config(tmp_path, **kw))
        loss = tf.reduce_sum(graph.get_tensor_by_name("logits/aquant:0") ** 2)
        with tf.control_dependencies(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.UPDATE_OPS)):
            train_op = tf.compat.v1.train.GradientDescentOptimizer(1e-3).minimize(loss)
        variables = tf.compat.v1.global_variables()
        names = {v.op.name: v for v in variables}
        if save_as:
            names = {save_as(v.op.name): v for v in variables}
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op, {"images:0": IMAGES})
            path = tf.compat.v1.train.Saver(var_list=names).save(
                sess, str(tmp_path / "train" / "model.ckpt"), 1)
    return graph, path


def small_deploy(tmp_path, checkpoint, **kw):
    with tf.Graph().as_default():
        small_fn(**{k: kw.pop(k) for k in ("pool", "alpha") if k in kw})
        decent_q.CreateQuantizeEvaluationGraph(config=small_config(tmp_path, **kw))
        paths = decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint,
                                                   config=small_config(tmp_path, **kw))
    model = tf.compat.v1.GraphDef()
    with open(paths["quantize_eval_model"], "rb") as f:
        model.ParseFromString(f.read())
    return model


def test_points_are_named_after_the_tensor_the_compute_op_reads(tmp_path):
    graph, _ = small_train(tmp_path)
    points = {op.name for op in graph.get_operations() if op.name.endswith("/wquant")}
    # ref variable w read through w/read; resource variable v: its ReadVariableOp.
    assert points == {"w/read/wquant", "logits/ReadVariableOp/wquant"}
    assert graph.get_operation_by_name("conv").inputs[1].name == "w/read/wquant:0"
    assert graph.get_operation_by_name("logits").inputs[1].name == \
        "logits/ReadVariableOp/wquant:0"


def test_simulate_dpu_applies_in_qat_training_and_evaluation_graphs(tmp_path):
    graph, checkpoint = small_train(tmp_path)
    assert graph.get_operation_by_name("leaky").get_attr("alpha") == 26.0 / 256.0
    pooled = graph.get_operation_by_name("gap/avgpool")  # Mean -> AvgPool * 49*21/1024
    assert pooled.type == "Mul" and pooled.inputs[0].op.type == "AvgPool"
    with graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        mean, pool, scaled = sess.run(["gap:0", "gap/avgpool/pool:0", "gap/avgpool:0"],
                                      {"images:0": IMAGES})
    np.testing.assert_allclose(pool.reshape(mean.shape), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scaled, pool * 49 * 21 / 1024, rtol=1e-6)
    model = small_deploy(tmp_path, checkpoint)
    ops_by_name = {n.name: n for n in model.node}
    assert ops_by_name["leaky"].attr["alpha"].f == 26.0 / 256.0
    assert ops_by_name["gap/avgpool"].op == "Mul"
    assert not [n for n in model.node if n.op == "Mean"]


@pytest.mark.parametrize("kw, factor", [
    ({}, 3 * 85 / 256),                  # 1x3: 1/3 is 85/256 on the DPU
    ({"scale_all_avgpool": 0}, None),    # only the DPU's special sizes
    ({"simulate_dpu": 0}, None),
])
def test_qat_avgpool_scaling_follows_the_options(tmp_path, kw, factor):
    graph = tf.Graph()
    with graph.as_default():
        small_fn(pool=(1, 3), alpha=0.2)
        decent_q.CreateQuantizeTrainingGraph(config=small_config(tmp_path, **kw))
    scales = [op for op in graph.get_operations() if op.name.startswith("pool/dpu_scale")]
    if factor is None:
        assert not scales
    else:
        assert tf.make_ndarray(scales[0].get_attr("value")) == pytest.approx(factor)


def test_qat_warns_for_options_it_does_not_read(tmp_path, caplog):
    with tf.Graph().as_default():
        small_fn()
        decent_q.CreateQuantizeTrainingGraph(config=small_config(tmp_path, calib_iter=10,
                                                                 do_cle=1))
    warned = [r.getMessage() for r in caplog.records if "QAT ignores" in r.getMessage()]
    assert len(warned) == 1 and "calib_iter=10" in warned[0] and "do_cle=1" in warned[0]
    caplog.clear()
    with tf.Graph().as_default():
        small_fn()
        decent_q.CreateQuantizeTrainingGraph(config=small_config(tmp_path, weight_bit=6,
                                                                 align_concat=1))
    assert not [r for r in caplog.records if "QAT ignores" in r.getMessage()]


def test_a_variable_shared_by_two_convs_trains_and_deploys(tmp_path):
    """Two convs read one weight variable: through one w/read (ref variable) one weight point
    serves both; through a ReadVariableOp each (resource variable) each has its own. Either
    way both graphs build and the model deploys."""
    def build():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.compat.v1.get_variable("w", [3, 3, 3, 3])
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="c1"), name="r1")
        return tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME", name="c2"), name="out")
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                                     input_shapes=[[-1, 8, 8, 3]], output_dir=str(tmp_path))
    with tf.Graph().as_default() as graph:
        build()
        decent_q.CreateQuantizeTrainingGraph(config=config)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS),
                     {"input:0": np.ones([2, 8, 8, 3], np.float32)})
            ckpt = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "model.ckpt"))
    fixes = [op for op in graph.get_operations() if op.name.endswith("wquant/fix")]
    readers = {c.name for fix in fixes for c in graph.get_operation_by_name(
        fix.name[:-len("/fix")]).outputs[0].consumers()}
    assert readers == {"c1", "c2"}
    with tf.Graph().as_default():
        build()
        decent_q.CreateQuantizeEvaluationGraph(config=config)
        paths = decent_q.CreateQuantizeDeployGraph(checkpoint=ckpt, config=config)
    assert os.path.exists(paths["deploy_model"])
