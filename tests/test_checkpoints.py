"""checkpoints.py: checkpoints with decent_q 0.1's point names deploy, restore and convert;
the README's decent_q.qat names for the helpers."""

import pytest
import tensorflow as tf

import test_qat
from decent_q import checkpoints, qat


def _legacy(name):
    """decent_q 0.1's histogram names: a weight point named after its variable."""
    return {"w/read/wquant/pos_hist": "w/wquant/pos_hist",
            "logits/ReadVariableOp/wquant/pos_hist": "v/wquant/pos_hist"}.get(name, name)


def _positions(model):
    return {n.name: n.attr["quantize_pos"].i for n in model.node if n.op == "FixNeuron"}


def test_checkpoints_with_old_point_names_still_deploy_and_restore(tmp_path):
    graph, new = test_qat.small_train(tmp_path / "new")
    _, old = test_qat.small_train(tmp_path / "old", save_as=_legacy)
    stored = dict(tf.train.list_variables(old))
    assert "w/wquant/pos_hist" in stored and "w/read/wquant/pos_hist" not in stored
    assert checkpoints.legacy_histogram_names(graph) == {
        "w/read/wquant/pos_hist": "w/wquant/pos_hist",
        "logits/ReadVariableOp/wquant/pos_hist": "v/wquant/pos_hist"}
    expected = _positions(test_qat.small_deploy(tmp_path / "new", new))
    assert _positions(test_qat.small_deploy(tmp_path / "old", old)) == expected
    # Resuming training: a Saver on checkpoint_var_list reads the old names ...
    with graph.as_default(), tf.compat.v1.Session() as sess:
        with pytest.raises(tf.errors.NotFoundError):
            tf.compat.v1.train.Saver().restore(sess, old)
        var_list = checkpoints.checkpoint_var_list(old)
        tf.compat.v1.train.Saver(var_list=var_list).restore(sess, old)
        hist = sess.run(next(v for v in tf.compat.v1.global_variables()
                             if v.op.name == "w/read/wquant/pos_hist"))
    assert hist.sum() == 1
    # ... and convert_checkpoint writes a copy with today's names.
    with graph.as_default():
        converted = checkpoints.convert_checkpoint(old,
                                                   str(tmp_path / "converted" / "model.ckpt-1"))
    names = dict(tf.train.list_variables(converted))
    assert "w/read/wquant/pos_hist" in names and "w/wquant/pos_hist" not in names
    assert _positions(test_qat.small_deploy(tmp_path / "conv", converted)) == expected


def test_readme_names_in_qat_are_the_checkpoint_helpers():
    assert qat.checkpoint_var_list is checkpoints.checkpoint_var_list
    assert qat.convert_checkpoint is checkpoints.convert_checkpoint
