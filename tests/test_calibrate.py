"""calibrate.py: calibrate_positions (a kept position per point) and session_config."""

import gc
import types
import weakref

import numpy as np
import pytest
import tensorflow as tf

import helpers
from decent_q import appliers, calibrate, ops, ptq, transforms
from decent_q.errors import QuantizeError
from decent_q import plan as plan_lib
from decent_q.graph import utils


def test_calibrate_positions_keeps_a_position_per_point():
    cfg = helpers.config(calib_iter=3)
    float_gd = transforms.prepare_float_graph(helpers.small_cnn(), cfg)
    plan = plan_lib.plan_quantization(float_gd, cfg)
    steps = []
    positions = calibrate.calibrate_positions(float_gd, plan, helpers.input_fn, cfg,
                                              progress=steps.append)
    assert steps == [0, 1, 2]
    assert sorted(positions) == sorted(p.name for p in plan.points)
    assert all(isinstance(p, int) and -127 <= p <= 127 for p in positions.values())
    again = calibrate.calibrate_positions(float_gd, plan, helpers.input_fn, cfg)
    assert again == positions


def test_session_config_copies_the_callers_or_follows_the_config():
    given = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=3)
    options = calibrate.session_config(helpers.config(), given)
    assert options is not given and options.intra_op_parallelism_threads == 3
    assert given == tf.compat.v1.ConfigProto(intra_op_parallelism_threads=3)  # not changed
    # Grappler is off unless the caller's options say how to rewrite
    assert options.graph_options.rewrite_options.disable_meta_optimizer
    given.graph_options.rewrite_options.constant_folding = 2  # OFF
    options = calibrate.session_config(helpers.config(), given)
    assert options == given
    options = calibrate.session_config(helpers.config(gpu="1", gpu_memory_fraction=0.25))
    assert options.gpu_options.visible_device_list == "1"
    assert options.gpu_options.per_process_gpu_memory_fraction == 0.25
    assert options.gpu_options.allow_growth


def test_counted_positions_equal_the_histogram_variables():
    """Calibration counts each batch's position in NumPy; QAT's histogram variables (one_hot
    counts in the graph) keep the same positions for the same batches."""
    cfg = helpers.config(calib_iter=4)
    float_gd = transforms.prepare_float_graph(helpers.small_cnn(), cfg)
    plan = plan_lib.plan_quantization(float_gd, cfg)
    positions = calibrate.calibrate_positions(float_gd, plan, helpers.input_fn, cfg)
    graph = utils.import_graph(float_gd)
    with graph.as_default():
        built = appliers.apply_to_graph(graph, plan, ops.Phase.CALIB)
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        for step in range(4):
            feed = {graph.get_tensor_by_name(k if ":" in k else k + ":0"): v
                    for k, v in helpers.input_fn(step).items()}
            sess.run([t.op for t in built.values()], feed)
        hists = sess.run(ops.histogram_variables(graph))
    assert positions == {name: ops.kept_position_np(np.asarray(h)) for name, h in hists.items()}
    assert len(set(positions.values())) > 1  # not all alike: a real comparison


def test_float_check_flag_reads_its_tensors_only_when_asked():
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 2], name="b")
        tf.identity(a * 2.0, name="out")
        check = tf.compat.v1.placeholder_with_default(False, [])
        plan = types.SimpleNamespace(points=[types.SimpleNamespace(tensor="a:0"),
                                             types.SimpleNamespace(tensor="b:0")])
        config = types.SimpleNamespace(output_nodes=["out"])
        finite = calibrate._all_finite(  # pylint: disable=protected-access
            graph, plan, config, check)
    ok, inf, nan = np.ones(3, np.float32), np.array([1, np.inf], np.float32), np.float32(np.nan)
    with tf.compat.v1.Session(graph=graph) as sess:
        run = lambda av, bv, c: sess.run(finite, {a: av, b: bv, check: c})  # noqa: E731
        assert run(ok, np.ones((2, 2)), True)
        assert not run(ok, np.array([[1, 2], [3, np.inf]]), True)
        assert not run(np.array([1, nan, 2], np.float32), np.ones((2, 2)), True)
        assert not run(inf, np.ones((2, 2)), True)  # and at the output node
        assert run(inf, np.array([[nan, nan]]), False)  # not asked: nothing read


def test_objects_are_frozen_only_while_the_batches_run(tmp_path):
    """During the batches the collector skips the objects that existed before them (gc.freeze)
    but still collects what input_fn makes; afterwards nothing stays frozen, also when a batch
    fails; a process that froze objects itself keeps them frozen."""
    seen = []

    def input_fn(step):
        ref = weakref.ref(_Cyclic([]))  # garbage only the cyclic collector frees
        gc.collect()
        seen.append((step, gc.get_freeze_count() > 0, gc.isenabled() and ref() is None))
        return helpers.input_fn(step)

    ptq.quantize_frozen(helpers.small_cnn(), input_fn,
                        helpers.config(output_dir=str(tmp_path / "ok")), progress=False)
    # Batch 0 is read before calibration (the float check's batch), the others during it.
    assert [s[:2] for s in seen] == [(0, False)] + [(k, True) for k in range(1, len(seen))]
    assert len(seen) > 1 and all(collected for _, _, collected in seen)  # collector on
    assert gc.get_freeze_count() == 0

    def failing(step):
        if step == 1:
            raise ValueError("no batch")
        return helpers.input_fn(step)
    with pytest.raises(QuantizeError):
        ptq.quantize_frozen(helpers.small_cnn(), failing,
                            helpers.config(output_dir=str(tmp_path / "failing")), progress=False)
    assert gc.get_freeze_count() == 0

    gc.freeze()
    try:
        ptq.quantize_frozen(helpers.small_cnn(), helpers.input_fn,
                            helpers.config(output_dir=str(tmp_path / "own_freeze")), progress=False)
        assert gc.get_freeze_count() > 0  # the process's own freeze is left alone
    finally:
        gc.unfreeze()


class _Cyclic:
    def __init__(self, other):
        self.other = other
        other.append(self)
