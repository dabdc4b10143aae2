"""calibrate.py: calibrate_positions (a kept position per point) and session_config."""

import tensorflow as tf

import helpers
from decent_q import calibrate, transforms
from decent_q import plan as plan_lib


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
