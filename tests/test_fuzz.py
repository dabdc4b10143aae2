"""Fuzzing (bounded): random and mutated inputs never fail with anything but decent_q's errors.

Counts: each property runs `max_examples` cases (printed with `pytest -s` via the statistics
hook of hypothesis: `--hypothesis-show-statistics`).
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _graph_bytes():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        w = tf.constant(np.ones([3, 3, 3, 4], np.float32), name="w")
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="conv"), name="relu")
        tf.nn.max_pool2d(y, 2, 2, "VALID", name="pool")
    return graph.as_graph_def().SerializeToString()


GRAPH = _graph_bytes()


@FUZZ
@given(st.binary(max_size=2048))
def test_loader_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "g.pb"
    path.write_bytes(data)
    try:
        utils.load_graph_def(str(path))
    except QuantizeError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GRAPH) - 1), st.integers(0, 255)), max_size=8),
       st.integers(1, len(GRAPH)))
def test_loader_and_planner_on_mutated_graphs(tmp_path_factory, flips, cut):
    data = bytearray(GRAPH[:cut])
    for index, value in flips:
        if index < len(data):
            data[index] = value
    path = tmp_path_factory.mktemp("fz") / "g.pb"
    path.write_bytes(bytes(data))
    try:
        graph_def = utils.load_graph_def(str(path))
        cfg = QuantizeConfig(input_nodes=["input"], output_nodes=["pool"],
                             input_shapes=[[-1, 8, 8, 3]])
        plan_lib.plan_quantization(graph_def, cfg)
    except QuantizeError:
        pass


_VALUES = st.one_of(st.none(), st.integers(-5, 40), st.text(max_size=12), st.floats(),
                    st.lists(st.integers(-3, 300), max_size=5),
                    st.lists(st.text(max_size=6), max_size=3), st.booleans(),
                    st.dictionaries(st.text(max_size=5), st.integers(-2, 20), max_size=3))
_FIELDS = ["input_nodes", "output_nodes", "input_shapes", "ignore_nodes", "weight_bit",
           "activation_bit", "nodes_bit", "method", "nodes_method", "calib_iter",
           "align_concat", "simulate_dpu", "adjust_shift_bias", "adjust_shift_cut",
           "arch_type", "do_cle", "gpu_memory_fraction", "fold_bn_freeze_step",
           "max_dump_batches"]


@FUZZ
@given(st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4))
def test_config_only_raises_config_error(kwargs):
    try:
        QuantizeConfig(**kwargs)
    except ConfigError:
        pass


@pytest.mark.parametrize("text", ["?,224,224,3", "1,2,3,4:?,5,5,1", ",,,", "::", "?,?,?,?",
                                  "a,b", "1,2,3,4,5"])
def test_input_shapes_strings(text):
    try:
        QuantizeConfig(input_shapes=text)
    except ConfigError:
        pass
