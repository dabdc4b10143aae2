"""Repeatability across processes: the same inputs give byte-identical files.

Each run is a fresh Python process with its own PYTHONHASHSEED, so an output that depended on
set or dict iteration order of strings, object ids or time would differ between the two.
(In-process repeatability is tested in test_ptq / test_dump.)
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import helpers
from decent_q.graph import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PTQ = textwrap.dedent("""
    import sys
    from decent_q import cli
    q = ["quantize", "--input_nodes", "input", "--input_shapes", "?,8,8,3", "--calib_iter",
         "2", "--input_fn", "my_input_fn.calib_input", "--quiet"]
    runs = [
        q + ["--input_frozen_graph", "cnn.pb", "--output_nodes", "logits", "--output_dir",
             "cnn"],
        q + ["--input_frozen_graph", "cnn.pb", "--output_nodes", "logits", "--output_dir",
             "cle", "--do_cle", "1", "--method", "0", "--nodes_bit", "conv3/Conv2D:4"],
        q + ["--input_frozen_graph", "concat.pb", "--output_nodes", "out", "--output_dir",
             "concat", "--align_concat", "0", "--adjust_shift_bias", "2"],
        ["dump", "--input_frozen_graph", "cnn/quantize_eval_model.pb", "--input_fn",
         "my_input_fn.dump_input", "--max_dump_batches", "2", "--dump_float", "1",
         "--output_dir", "cnn", "--quiet"],
    ]
    for argv in runs:
        code = cli.main(argv)
        if code:
            sys.exit(code)
    """)

_QAT_MODEL = textwrap.dedent('''
    import tensorflow as tf
    import tf_slim as slim

    import decent_q


    def model(is_training):
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1], name="images")
        bn = {"is_training": is_training, "scale": True}
        with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                            normalizer_fn=slim.batch_norm, normalizer_params=bn):
            net = slim.conv2d(images, 4, 3, scope="conv1")
            net = slim.separable_conv2d(net, 4, 3, depth_multiplier=1, scope="sep2")
            net = slim.max_pool2d(net, 2, scope="pool")
            net = slim.flatten(net)
        return slim.fully_connected(net, 3, activation_fn=None, scope="logits")


    def config(output_dir):
        return decent_q.QuantizeConfig(input_nodes=["images"], output_nodes=["logits/BiasAdd"],
                                       input_shapes=[[-1, 8, 8, 1]], output_dir=output_dir)


    def deploy(checkpoint, output_dir):
        tf.compat.v1.disable_v2_behavior()
        with tf.Graph().as_default():
            model(False)
            decent_q.CreateQuantizeEvaluationGraph(config=config(output_dir))
            decent_q.CreateQuantizeDeployGraph(checkpoint=checkpoint, config=config(output_dir))


    if __name__ == "__main__":
        import sys
        deploy(sys.argv[1], sys.argv[2])
    ''')


def _run(args, cwd, seed):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED=str(seed))
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _tree(folder):
    """{relative path: bytes} of every file under folder."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


@pytest.fixture(scope="module")
def ptq_runs(tmp_path_factory):
    """The PTQ script run in two processes (hash seeds 1 and 2), each in its own folder."""
    runs = []
    for seed in (1, 2):
        folder = tmp_path_factory.mktemp(f"ptq{seed}")
        utils.save_graph_def(helpers.small_cnn(), str(folder / "cnn.pb"))
        utils.save_graph_def(helpers.concat_graph(), str(folder / "concat.pb"))
        helpers.write_input_fn_module(folder, "my_input_fn")
        (folder / "run.py").write_text(_PTQ)
        _run(["run.py"], folder, seed)
        runs.append(folder)
    return runs


@pytest.mark.parametrize("out", ["cnn", "cle", "concat"])
def test_quantize_models_are_byte_identical_across_processes(ptq_runs, out):
    first, second = (_tree(folder / out) for folder in ptq_runs)
    models = {k: v for k, v in first.items() if k.endswith(".pb")}
    assert sorted(models) == ["deploy_model.pb", "quantize_eval_model.pb"]
    for name, data in models.items():
        assert data == second[name], f"{out}/{name} differs between processes"
        assert utils.load_graph_def(str(ptq_runs[0] / out / name)).node


def test_dump_files_are_byte_identical_across_processes(ptq_runs):
    first, second = (_tree(folder / "cnn") for folder in ptq_runs)
    dumps = sorted(k for k in first if k.startswith("dump_results_"))
    assert len(dumps) > 20 and any(k.endswith("_float.bin") for k in dumps)
    assert sorted(k for k in second if k.startswith("dump_results_")) == dumps
    differ = [k for k in dumps if first[k] != second[k]]
    assert not differ, differ[:5]


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory):
    """A QAT checkpoint after 3 training steps, and the model module."""
    folder = tmp_path_factory.mktemp("qat")
    (folder / "qat_model.py").write_text(_QAT_MODEL)
    spec = importlib.util.spec_from_file_location("qat_model_det", folder / "qat_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import decent_q  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    # The deploy script runs with TF1 behaviour (ref variables, read through w/read): train in
    # it too, so both graphs name their weight points alike when this module runs alone.
    tf.compat.v1.disable_v2_behavior()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    with tf.Graph().as_default():
        logits = module.model(True)
        decent_q.CreateQuantizeTrainingGraph(config=module.config(str(folder / "train_q")))
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
        step = tf.compat.v1.train.get_or_create_global_step()
        with tf.control_dependencies(tf.compat.v1.get_collection(
                tf.compat.v1.GraphKeys.UPDATE_OPS)):
            train = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss, step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(3):
                sess.run(train, {"images:0": images})
            ckpt = tf.compat.v1.train.Saver().save(sess, str(folder / "ckpt" / "model.ckpt"),
                                                   3)
    return folder, ckpt


def test_qat_deploy_is_byte_identical_apart_from_the_date(qat_checkpoint):
    folder, ckpt = qat_checkpoint
    trees = []
    for seed in (1, 2):
        out = folder / f"deploy{seed}"
        _run(["qat_model.py", ckpt, str(out)], folder, seed)
        trees.append({re.sub(r"_\d{14}\.pb$", ".pb", name): data
                      for name, data in _tree(out).items()})
    assert sorted(trees[0]) == ["deploy_model_3.pb", "quantize_eval_graph.pb",
                                "quantize_eval_model_3.pb"]
    assert sorted(trees[1]) == sorted(trees[0])
    for name in trees[0]:
        assert trees[0][name] == trees[1][name], f"{name} differs between processes"
