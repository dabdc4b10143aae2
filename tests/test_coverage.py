"""Architecture coverage: real model families quantize (PTQ and QAT) and keep their accuracy.

Every model of benchmarks/model_zoo.py (the smallest of each tf_keras.applications family and
every tf_slim.nets network, random He-normal weights, reduced inputs where the model allows):
post-training quantization on 2 random calibration batches of 2 must succeed, its eval model
must run, every Conv2D / depthwise / MatMul / transposed conv in the range must read its weights
through a FixNeuron, and the eval model's logits on 8 held-out images must be within
SQNR_FLOOR_DB of the float graph's (the few rows under it: with fast finetune); the training
version must go through CreateQuantizeTrainingGraph and train: its loss on a fixed batch falls
to under half within model_zoo.QAT_STEPS Adam steps. Every model runs here,
each in its own process, WORKERS processes at a time (most of a row's time is single-threaded
graph building); ``python benchmarks/coverage.py`` prints the same measurements as the table of
benchmarks/README.md "Coverage".

Also: post-processing outside input_nodes..output_nodes (an NMS tail, a while loop, a cond) is
left exactly as it was, by post-training quantization and by the QAT training rewrite.
"""

import collections
import concurrent.futures
import itertools
import os
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

import decent_q
from decent_q.graph import utils

tf.compat.v1.disable_v2_behavior()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import model_zoo  # noqa: E402  pylint: disable=wrong-import-position

# SQNR floor of the eval model's logits against the float graph's. 8-bit power-of-two
# quantization of one tensor costs ~35-40 dB (6.02 dB a bit less the peak-to-RMS headroom and
# the up-to-2x step of a power-of-two scale); the noise of the ~20-200 quantized tensors on the
# path adds up, and random weights leave no redundancy, so the models measure 15-35 dB (see
# benchmarks/README.md "Coverage"). A broken fold, position or rewiring gives <= 5 dB (noise as
# large as the signal is 0 dB). 12 dB (noise power under 1/16 of the signal) separates the two
# with room for the deepest model.
SQNR_FLOOR_DB = 12.0
# Models known to measure under the floor at the default settings (model_zoo.BELOW_FLOOR, the
# reason in benchmarks/README.md "Coverage"): their default SQNR must stay between BROKEN_DB
# (what a broken fold, position or rewiring gives) and the floor, so a change that breaks them
# or lifts them shows (one that reaches the floor fails here until it leaves the list), and
# their fast-finetune leg must reach the floor.
# EfficientNetV2B0 (11.8 dB): no point stands out (median point SQNR ~35 dB; the
# squeeze-excite products 20-28 dB), but the noise of its 236 activation points adds up from
# 48 dB at the input to 12 dB at the logits. 16-bit activations measure 18.8 dB, 16-bit
# weights 11.5, method 0 / 2 11.1 / 7.2, 20 calibration images 11.8, bias correction 12.1;
# fast finetune 13.7.
BELOW_FLOOR = set(model_zoo.BELOW_FLOOR)
BROKEN_DB = 5.0


# Two rows are measured at a time, each in its own process (a row's graph building and proto
# handling use one core). The rows that peak at several GB (130-140 M parameters; vgg_19
# 8.5 GB) never run two at once: one thread runs them, then helps with the others, which a
# second thread runs from the start, the 3,000-node graphs first.
_HEAVY = ("vgg_19", "overfeat", "vgg_16", "vgg_a")
_FIRST = ("NASNetMobile", "InceptionResNetV2")


@pytest.fixture(scope="module")
def zoo_rows(request):
    """{model name: Future of its model_zoo.Result} for the rows selected in this session; the
    written models go with each process's temporary folder."""
    names = {item.callspec.params["spec"].name for item in request.session.items
             if item.originalname == "test_model_quantizes_runs_and_trains"}
    specs = sorted((s for s in model_zoo.MODELS if s.name in names),
                   key=lambda s: s.name not in _FIRST)
    heavy = [s for s in specs if s.name in _HEAVY]
    light = collections.deque(s for s in specs if s.name not in _HEAVY)
    futures = {s.name: concurrent.futures.Future() for s in specs}
    lock, stopping = threading.Lock(), threading.Event()

    def next_light():
        with lock:
            return light.popleft() if light and not stopping.is_set() else None

    def work(own):
        for spec in itertools.chain(own, iter(next_light, None)):
            if stopping.is_set() or not futures[spec.name].set_running_or_notify_cancel():
                continue
            try:
                futures[spec.name].set_result(model_zoo.measure_isolated(spec))
            except Exception as err:  # pylint: disable=broad-except
                futures[spec.name].set_exception(err)

    threads = [threading.Thread(target=work, args=(own,), daemon=True) for own in (heavy, [])]
    for thread in threads:
        thread.start()
    yield futures
    stopping.set()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("spec", model_zoo.MODELS, ids=[s.name for s in model_zoo.MODELS])
def test_model_quantizes_runs_and_trains(spec, zoo_rows):
    result = zoo_rows[spec.name].result()
    assert result.compute > 0
    assert result.unquantized == [], f"compute ops left float: {result.unquantized[:5]}"
    if spec.name in BELOW_FLOOR:
        assert BROKEN_DB < result.sqnr_db < SQNR_FLOOR_DB, result
        assert result.sqnr_fast_ft_db >= SQNR_FLOOR_DB, result
    else:
        assert result.sqnr_db >= SQNR_FLOOR_DB, result
    # QAT trains: the loss on a fixed batch falls to under half within QAT_STEPS Adam steps.
    assert np.isfinite(result.qat_loss_end), result
    assert result.qat_loss_end <= 0.5 * result.qat_loss, result
    assert model_zoo.QAT_MIN_STEPS <= result.qat_steps <= model_zoo.QAT_STEPS, result


# -- post-processing outside the quantized range ---------------------------------------------

def _postprocessed_model(variables):
    """conv -> relu -> conv -> 'logits' (the output node), then an NMS tail, a while loop and
    a cond that read the logits; returns the tail's fetch names."""
    rng = np.random.default_rng(0)

    def weight(shape, name):
        value = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        return tf.compat.v1.Variable(value, name=name) if variables else \
            tf.constant(value, name=name)

    x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    y = tf.nn.relu(tf.nn.conv2d(x, weight([3, 3, 3, 8], "w1"), 1, "SAME"), name="relu1")
    y = tf.nn.conv2d(y, weight([1, 1, 8, 5], "w2"), 1, "SAME")
    logits = tf.nn.bias_add(y, weight([5], "b2"), name="logits")
    # NMS tail: every pixel is a box [y, x, y+h, x+w] with a score.
    flat = tf.reshape(logits, [-1, 5], name="post/flat")
    corner = flat[:, :2]
    boxes = tf.concat([corner, corner + tf.abs(flat[:, 2:4]) + 0.1], 1, name="post/boxes")
    scores = tf.sigmoid(flat[:, 4], name="post/scores")
    keep = tf.image.non_max_suppression(boxes, scores, 10, 0.5, name="post/nms")
    picked = tf.gather(boxes, keep, name="post/picked")
    # A while loop and a cond on the output.
    total = tf.reduce_sum(logits, name="post/total")
    _, acc = tf.compat.v1.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a + total * 0.5),
                                     [tf.constant(0), tf.constant(0.0)], name="post/loop")
    branch = tf.compat.v1.cond(total > 0, lambda: acc * 2.0, lambda: acc - 1.0,
                               name="post/cond")
    return [picked.op.name, tf.identity(branch, name="post/result").op.name]


def _outside(graph_def, in_range):
    """Nodes neither in the range nor feeding it (its weights are the range's to rewrite)."""
    nm = utils.NodeMap(graph_def)
    feeding, stack = set(), list(in_range)
    while stack:
        name = stack.pop()
        if name in feeding:
            continue
        feeding.add(name)
        stack.extend(utils.node_name(i) for i in nm[name].input)
    return {n.name: n for n in graph_def.node if n.name not in feeding}


def _assert_untouched(before, after, in_range, output="logits"):
    """Every node outside the range is in `after`, same op / attrs / inputs, except that inputs
    reading the output node may read its FixNeuron instead."""
    old = _outside(before, in_range)
    new = {n.name: n for n in after.node}
    for name, node in old.items():
        missing = sorted(set(old) - set(new))
        assert not missing, f"removed: {[(m, old[m].op) for m in missing]}"
        got = new[name]
        assert got.op == node.op and dict(got.attr) == dict(node.attr), name
        expected = list(node.input)
        assert len(got.input) == len(expected), name
        for want, have in zip(expected, got.input):
            assert have == want or (utils.node_name(want) == output and
                                    utils.node_name(have).startswith(output + "/")), \
                f"{name}: input {want} became {have}"


def test_ptq_leaves_postprocessing_untouched(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        fetches = _postprocessed_model(variables=False)
    float_gd = graph.as_graph_def()
    config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["logits"],
                                     input_shapes=[[-1, 8, 8, 3]], calib_iter=2,
                                     output_dir=str(tmp_path))
    rng = np.random.default_rng(1)
    paths = decent_q.quantize_frozen(
        float_gd, lambda step: {"input": rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)},
        config, progress=False)
    eval_gd = utils.load_graph_def(paths["quantize_eval_model"])
    in_range = utils.range_nodes(utils.NodeMap(float_gd), ["input"], ["logits"])
    tail = _outside(float_gd, in_range)
    assert any(n.op.startswith("NonMaxSuppression") for n in tail.values())
    assert any(n.op == "Enter" for n in tail.values())  # the while loop is in the tail
    _assert_untouched(float_gd, eval_gd, in_range)
    assert not any(n.op == "FixNeuron" and n.name.startswith("post/") for n in eval_gd.node)
    # The eval model runs end to end, tail included.
    x = rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    values = model_zoo._run(eval_gd, [f + ":0" for f in fetches],  # pylint: disable=protected-access
                            {"input:0": x})
    assert values[0].shape[1] == 4 and np.isfinite(values[1])


def test_qat_training_leaves_postprocessing_untouched(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        fetches = _postprocessed_model(variables=True)
        before = graph.as_graph_def()
        config = decent_q.QuantizeConfig(input_nodes=["input"], output_nodes=["logits"],
                                         input_shapes=[[-1, 8, 8, 3]], output_dir=str(tmp_path))
        decent_q.CreateQuantizeTrainingGraph(config=config)
        after = graph.as_graph_def()
        in_range = utils.range_nodes(utils.NodeMap(before), ["input"], ["logits"])
        _assert_untouched(before, after, in_range)
        assert graph.get_operation_by_name("logits/aquant").type == "Identity"
        # One training step through the quantized logits; the tail still runs.
        loss = tf.reduce_mean(tf.square(graph.get_tensor_by_name("logits/aquant:0")))
        with tf.control_dependencies(
                tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
            train = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss)
        x = np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train, {"input:0": x})
            picked, result = sess.run([f + ":0" for f in fetches], {"input:0": x})
    assert picked.shape[1] == 4 and np.isfinite(result)
