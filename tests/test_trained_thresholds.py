"""Trained power-of-two thresholds (QuantizeConfig quantize_strategy="pof2s_tqt") and low-bit QAT.

Numerics against NumPy (tests/numpy_reference.py and the TQT gradient written out here), the
first run's initialisation, positions in checkpoints (straight and resumed runs deploy the same
positions), bad thresholds, checkpoints without thresholds, and the outcome: 4-bit QAT
fine-tuning of a conv + batch-norm net keeps the float accuracy within 3 points.
"""

import logging
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import decent_q
from decent_q import ops
from decent_q.errors import QuantizeError

import learning
import numpy_reference as ref

RNG = np.random.default_rng(13)


def _point(x_value, bit_width, mode, arch_type="DEFAULT", method=1, shift=0.0, impl="kernel"):
    """Runs a TRAIN trained-threshold point on x_value twice (the first run initialises, then
    log_th_trained is set to `shift`); returns (first output, log_th_init, second output,
    d loss / d x, d loss / d log_th, second position, upstream gradient) for
    loss = sum(q * c)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, x_value.shape)
        q = ops.quantize(x, "x/aquant", mode, ops.Phase.TRAIN, bit_width=bit_width,
                         method=method, arch_type=arch_type, trained_threshold=True, impl=impl)
        upstream = np.random.default_rng(x_value.size).standard_normal(x_value.shape)
        c = tf.constant(upstream.astype(np.float32))
        trained = decent_q.qat.threshold_variables(graph)[0]
        d_x, d_th = tf.gradients(tf.reduce_sum(q * c), [x, trained])
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            first = sess.run(q, {x: x_value})
            start = sess.run(_variable(graph, "x/aquant/log_th_init"))
            sess.run(tf.compat.v1.assign(trained, shift))
            second, gx, gth, pos, cv = sess.run(
                [q, d_x, d_th, graph.get_tensor_by_name("x/aquant/fix:1"), c], {x: x_value})
    return first, start, second, gx, gth, pos, cv


@pytest.mark.parametrize("impl", ["kernel", "tf_ops"])
@pytest.mark.parametrize("bit_width,mode,arch", [(4, ops.Mode.ACTIVATION, "DEFAULT"),
                                                 (8, ops.Mode.WEIGHT, "DEFAULT"),
                                                 (3, ops.Mode.ACTIVATION, "DPUCADF8H"),
                                                 (6, ops.Mode.DW_WEIGHT, "DEFAULT"),
                                                 (16, ops.Mode.ACTIVATION, "DEFAULT")])
def test_first_run_and_gradient_match_numpy(bit_width, mode, arch, impl):
    x = (RNG.standard_normal((6, 7)) * 3).astype(np.float32)
    x[0, :3] = [40.0, -40.0, 0.0]  # saturated both ways, and zero
    x[1, 0] = 2.0 ** -9 * 0.5  # a tie of the finer grids
    if bit_width == 16:
        x[0, :2] = [4e4, -4e4]
    # The second run's threshold is 2^1.25 times lower: some values saturate.
    first, start, second, gx, gth, pos, c = _point(x, bit_width, mode, arch, shift=-1.25,
                                                   impl=impl)
    searched = ref.search_pos(x, mode, bit_width, 1, arch)
    # The first run quantizes at the searched position and starts the threshold in the middle
    # of the interval that keeps it.
    np.testing.assert_array_equal(first, ref.quantize(x, searched, mode, bit_width, arch))
    assert start == np.float32(bit_width - 1 - searched - 0.5)
    assert searched == bit_width - 1 - math.ceil(start)
    assert pos == bit_width - 1 - math.ceil(start - 1.25) == searched + 1
    np.testing.assert_array_equal(second, ref.quantize(x, pos, mode, bit_width, arch))
    # The paper's gradient, written out in float64.
    lo, hi = ref.quant_range(bit_width, mode, arch)
    scaled = x.astype(np.float64) * 2.0 ** pos
    inside = (scaled >= lo - 0.5) & (scaled < hi + 0.5)
    assert inside.sum() < x.size  # saturation is exercised
    np.testing.assert_array_equal(gx, np.where(inside, c, 0.0).astype(np.float32))
    expected = math.log(2.0) * np.sum(c * np.where(inside, second - x.astype(np.float64),
                                                   second))
    np.testing.assert_allclose(gth, expected, rtol=1e-6, atol=1e-6)


def test_gradient_of_a_large_tensor_is_deterministic_and_matches_numpy():
    # Many fixed blocks (the kernel sums per block, then over blocks in order).
    x = (RNG.standard_normal((70000,)) * 2).astype(np.float32)
    runs = [_point(x, 4, ops.Mode.ACTIVATION, shift=-1.0) for _ in range(2)]
    for run in runs[1:]:
        assert run[4] == runs[0][4]
    _, _, second, gx, gth, pos, c = runs[0]
    scaled = x.astype(np.float64) * 2.0 ** pos
    inside = (scaled >= -8.5) & (scaled < 7.5)
    np.testing.assert_array_equal(gx, np.where(inside, c, 0.0).astype(np.float32))
    expected = math.log(2.0) * math.fsum(c.astype(np.float64) * np.where(
        inside, second - x.astype(np.float64), second))
    np.testing.assert_allclose(gth, expected, rtol=1e-6)


def test_ties_and_all_zero_tensor():
    # Values on the .5 ties of the 4-bit grid round up (activations); an all-zero batch leaves
    # the threshold unset (the next batch searches again) and has no threshold gradient.
    x = np.array([[0.25, 0.75, -0.25, -0.75, 1.25]], np.float32)
    first, start, _, _, _, pos, _ = _point(x, 4, ops.Mode.ACTIVATION)
    np.testing.assert_array_equal(first, ref.quantize(x, pos, ops.Mode.ACTIVATION, 4))
    zeros = np.zeros((2, 3), np.float32)
    first, start, _, gx, gth, pos, _ = _point(zeros, 4, ops.Mode.ACTIVATION)
    assert pos == ops.ZERO_POS and np.isnan(start)
    assert not first.any() and gth == 0.0 and np.isfinite(gx).all()


# -- training, checkpoints, deploy ----------------------------------------------------------

BUILD = learning.plain_net()


def _train(work, steps, q_config, init=None, start=0, lr=1e-3, before_step=None):
    """QAT with Adam (all trainable variables, thresholds included) on batches start..start +
    steps - 1; from checkpoint `init` (every variable) if given. Returns the checkpoint."""
    train_x, train_y, _, _ = learning.data.load()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        net = BUILD(True)
        decent_q.CreateQuantizeTrainingGraph(config=q_config)
        step = tf.compat.v1.train.get_or_create_global_step()
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            train_op = tf.compat.v1.train.AdamOptimizer(lr).minimize(net["loss"], step)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            if init:
                saver.restore(sess, init)
            for i in range(start, start + steps):
                if before_step:
                    before_step(sess, graph, i)
                x, y = learning.data.batches(train_x, train_y, learning.BATCH, i)
                sess.run(train_op, {net["images"]: x, net["labels"]: y})
            return saver.save(sess, os.path.join(work, "model.ckpt"), start + steps)


def _positions(path):
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return {n.name: n.attr["quantize_pos"].i for n in graph_def.node if n.op == "FixNeuron"}


def test_positions_travel_with_the_checkpoint_and_resume(tmp_path):
    # (The position passes off: adjust_shift_* may move positions after the thresholds.)
    q_config = learning.config(str(tmp_path / "q"), quantize_strategy="pof2s_tqt",
                               weight_bit=4, activation_bit=4, adjust_shift_bias=0,
                               adjust_shift_cut=0)
    straight = _train(str(tmp_path / "straight"), 8, q_config, lr=0.05)
    half = _train(str(tmp_path / "half"), 4, q_config, lr=0.05)
    resumed = _train(str(tmp_path / "resumed"), 4, q_config, init=half, start=4, lr=0.05)
    reader = tf.train.load_checkpoint(straight)
    names = [n for n in reader.get_variable_to_shape_map() if n.endswith("/log_th_trained")]
    assert len(names) == 13 and any(reader.get_tensor(n) != 0.0 for n in names)
    assert not [n for n in names if "/bias/" in n]  # biases keep pof2s
    deployed = _positions(learning.deploy(BUILD, straight, q_config))
    # Every FixNeuron deploys bit_width - 1 - ceil(log_th_init + log_th_trained).
    for name in names:
        point = name[:-len("/log_th_trained")]
        log_th = reader.get_tensor(point + "/log_th_init") + reader.get_tensor(name)
        assert deployed[point] == 3 - math.ceil(np.float32(log_th)), point
    assert _positions(learning.deploy(BUILD, resumed, q_config)) == deployed


def test_default_strategy_has_no_thresholds(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        BUILD(True)
        decent_q.CreateQuantizeTrainingGraph(config=learning.config(str(tmp_path)))
        assert not graph.get_collection(ops.THRESHOLDS_COLLECTION)
        assert not decent_q.qat.threshold_variables(graph)


def _variable(graph, name):
    return next(v for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
                if v.op.name == name)


@pytest.mark.parametrize("value", [float("nan"), 1000.0])
def test_a_diverged_threshold_stops_training_with_the_point_name(tmp_path, value):
    q_config = learning.config(str(tmp_path / "q"), quantize_strategy="pof2s_tqt")
    point = "conv1/BatchNorm_Fold/weights/wquant"

    def before_step(sess, graph, i):
        if i == 1:
            variable = _variable(graph, point + "/log_th_trained")
            sess.run(tf.compat.v1.assign(variable, value))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{point} left the usable range"):
        _train(str(tmp_path / "t"), 3, q_config, before_step=before_step)


def test_deploying_a_diverged_threshold_is_an_error(tmp_path):
    q_config = learning.config(str(tmp_path / "q"), quantize_strategy="pof2s_tqt")
    checkpoint = _train(str(tmp_path / "t"), 2, q_config)
    point = "conv1/BatchNorm_Fold/weights/wquant"
    graph = tf.Graph()
    with graph.as_default():  # the checkpoint with that point's threshold set to NaN
        variables = {name: tf.compat.v1.Variable(value, name=name)
                     for name, value in ((n, tf.train.load_variable(checkpoint, n))
                                         for n, _ in tf.train.list_variables(checkpoint))}
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(variables[point + "/log_th_trained"].assign(float("nan")))
            bad = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "bad" / "model.ckpt"), 2)
    with pytest.raises(QuantizeError, match=f"{point} has the trained threshold log2 t = nan"):
        learning.deploy(BUILD, bad, q_config)
    assert not [f for f in os.listdir(tmp_path / "q") if f.startswith(("quantize_eval_model",
                                                                       "deploy_model"))]


def test_checkpoint_without_thresholds(tmp_path):
    # A pof2s checkpoint lacks the thresholds a pof2s_tqt evaluation graph needs: a clear error.
    plain = learning.config(str(tmp_path / "plain"))
    checkpoint = _train(str(tmp_path / "t"), 2, plain)
    tqt = learning.config(str(tmp_path / "tqt"), quantize_strategy="pof2s_tqt")
    with pytest.raises(QuantizeError, match="lacks .*log_th_.*the quantize_strategy the "
                                            "training used"):
        learning.deploy(BUILD, checkpoint, tqt)
    # ... and a pof2s_tqt checkpoint given to a pof2s evaluation graph.
    trained = _train(str(tmp_path / "t2"), 2, tqt)
    with pytest.raises(QuantizeError, match="trained with quantize_strategy 'pof2s_tqt'"):
        learning.deploy(BUILD, trained, plain)
    # A float checkpoint restores into the pof2s_tqt training graph through float_variables()
    # (the thresholds are not among them); the first step then sets the thresholds.
    float_checkpoint, _ = learning.train(BUILD, str(tmp_path / "float"), 3, 1e-3)
    qat_checkpoint, losses = learning.train(BUILD, str(tmp_path / "qat"), 3, 1e-4, tqt,
                                            init=float_checkpoint)
    reader = tf.train.load_checkpoint(qat_checkpoint)
    starts = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
              if n.endswith("/log_th_init")]
    assert starts and np.isfinite(starts).all() and np.isfinite(losses).all()


def test_freeze_step_beyond_the_checkpoint_warns(tmp_path, caplog):
    q_config = learning.config(str(tmp_path / "q"), fold_bn_freeze_step=50, weight_bit=4)
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        checkpoint = _train(str(tmp_path / "t"), 2, q_config)
        assert "batch norms never frozen" not in caplog.text  # a freeze step is set
        learning.deploy(BUILD, checkpoint, q_config)
    assert "fold_bn_freeze_step=50 is beyond the step of checkpoint" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="decent_q"):
        _train(str(tmp_path / "t2"), 1, learning.config(str(tmp_path / "q2"), weight_bit=4))
    assert "4-bit QAT with batch norms never frozen" in caplog.text


def test_quantize_strategy_is_checked():
    with pytest.raises(decent_q.ConfigError, match="quantize_strategy"):
        decent_q.QuantizeConfig(quantize_strategy="tqt")


# -- the outcome ----------------------------------------------------------------------------

FLOAT_STEPS, FINETUNE_STEPS = 500, 200


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("float")
    checkpoint, _ = learning.train(BUILD, str(work), FLOAT_STEPS, 3e-3)
    return checkpoint, learning.float_accuracy(BUILD, checkpoint)


@pytest.mark.parametrize("strategy", ["pof2s", "pof2s_tqt"])
def test_4_bit_finetuning_keeps_float_accuracy(strategy, float_model, tmp_path):
    """4-bit weights and activations (biases 4 bit too), batch norms frozen half way: the
    deployed model stays within 3 points of float."""
    checkpoint, float_acc = float_model
    q_config = learning.config(str(tmp_path / "q"), weight_bit=4, activation_bit=4,
                               fold_bn_freeze_step=FINETUNE_STEPS // 2,
                               quantize_strategy=strategy)
    qat_checkpoint, _ = learning.train(BUILD, str(tmp_path / "t"), FINETUNE_STEPS, 1e-4,
                                       q_config, init=checkpoint)
    acc = learning.model_accuracy(learning.deploy(BUILD, qat_checkpoint, q_config))
    print(f"{strategy}: float {float_acc:.3f}, 4-bit QAT fine-tuned (deployed) {acc:.3f}")
    assert float_acc > 0.93
    assert acc >= float_acc - 0.03
