"""transforms/align_concat.py: Concat inputs take the Concat output's position."""

import numpy as np
import pytest
import tensorflow as tf

from decent_q import appliers
from decent_q import plan as plan_lib
from decent_q.config import QuantizeConfig
from decent_q.graph import quantized
from decent_q.transforms import align_concat as align

RNG = np.random.default_rng(0)


def conv(x, cout, name):
    w = tf.constant(RNG.standard_normal([1, 1, int(x.shape[-1]), cout]).astype(np.float32),
                    name=f"{name}/weights")
    return tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name=f"{name}/conv"), name=f"{name}/act")


def net(x):
    """Two concats: 'cat' inside (one input through ExpandDims/Squeeze), 'ocat' feeding the
    output 'out' through a Reshape; 'inner' nests into 'outer' (also inside)."""
    a, b = conv(x, 4, "a"), conv(x, 4, "b")
    b2 = tf.squeeze(tf.expand_dims(b, 1, name="b/expand"), [1], name="b/squeeze")
    cat = tf.concat([a, b2], 3, name="cat")
    c = conv(cat, 4, "c")
    inner = tf.concat([conv(x, 2, "d"), conv(x, 2, "e")], 3, name="inner")
    outer = tf.concat([inner, c], 3, name="outer")
    f = conv(outer, 4, "f")
    ocat = tf.concat([f, conv(x, 4, "g")], 3, name="ocat")
    return tf.reshape(ocat, [-1, 8 * 8 * 8], name="out")


def eval_model():
    graph = tf.Graph()
    with graph.as_default():
        net(tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input"))
    gd = graph.as_graph_def()
    config = QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                            input_shapes=[[-1, 8, 8, 3]])
    plan = plan_lib.plan_quantization(gd, config)
    # distinct positions everywhere
    positions = {p.name: i for i, p in enumerate(plan.points)}
    return appliers.apply_to_graph_def(gd, plan, positions)


def cfg(mode):
    return QuantizeConfig(input_nodes=["input"], output_nodes=["out"],
                          input_shapes=[[-1, 8, 8, 3]], align_concat=mode)


CAT = ["a/act/aquant", "b/act/aquant", "b/expand/aquant", "b/squeeze/aquant"]
NESTED = ["inner/aquant", "d/act/aquant", "e/act/aquant", "c/act/aquant"]
OCAT = ["f/act/aquant", "g/act/aquant"]


def test_align_all():
    gd = eval_model()
    before = quantized.positions(gd)
    out = align.align_concat(gd, cfg(0))
    pos = quantized.positions(out)
    assert all(pos[n] == before["cat/aquant"] for n in CAT)
    assert all(pos[n] == before["outer/aquant"] for n in NESTED)
    assert all(pos[n] == before["ocat/aquant"] for n in OCAT)
    changed = {n for n in pos if pos[n] != before[n]}
    assert changed and changed <= set(CAT + NESTED + OCAT)  # concat outputs stay
    assert quantized.positions(gd) == before  # pure
    again = align.align_concat(out, cfg(0))
    assert again.SerializeToString(deterministic=True) == \
        out.SerializeToString(deterministic=True)


def test_align_output_concats_only():
    gd = eval_model()
    before = quantized.positions(gd)
    assert align.output_concats(quantized.EvalModel(gd), ["out"]) == {"ocat"}
    pos = quantized.positions(align.align_concat(gd, cfg(1)))
    assert all(pos[n] == before["ocat/aquant"] for n in OCAT)
    assert {n for n in pos if pos[n] != before[n]} == set(OCAT)


def test_align_none():
    gd = eval_model()
    assert quantized.positions(align.align_concat(gd, cfg(2))) == quantized.positions(gd)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_only_positions_change(mode):
    gd = eval_model()
    out = align.align_concat(gd, cfg(mode))
    for a, b in zip(gd.node, out.node):
        a2, b2 = type(a)(), type(b)()
        a2.CopyFrom(a)
        b2.CopyFrom(b)
        a2.attr["quantize_pos"].i = b2.attr["quantize_pos"].i = 0
        assert a2 == b2
