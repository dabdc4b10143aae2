"""`from tensorflow.contrib import decent_q` and the tf_keras.legacy_tf_layers alias, in fresh
interpreters where the .pth of an installed decent_q is simulated (PYTHONPATH = this checkout)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_contrib_import_gives_the_package():
    result = python(
        "import _decent_q_contrib; _decent_q_contrib.install()\n"
        "from tensorflow.contrib import decent_q\n"
        "import decent_q as real, tensorflow.contrib.decent_q as dotted\n"
        "assert decent_q is real and dotted is real, (decent_q, real)\n"
        "assert callable(decent_q.CreateQuantizeTrainingGraph)\n"
        "assert callable(decent_q.CreateQuantizeEvaluationGraph)\n"
        "assert callable(decent_q.CreateQuantizeDeployGraph)\n"
        "print(decent_q.__file__)\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(ROOT)


def test_slim_batch_norm_builds_after_import():
    result = python(
        "import tensorflow as tf, tf_slim as slim\n"
        "tf.compat.v1.disable_v2_behavior()\n"
        "import decent_q\n"
        "x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 2])\n"
        "y = slim.conv2d(x, 3, 3, normalizer_fn=slim.batch_norm,\n"
        "                normalizer_params={'is_training': True})\n"
        "print(sorted({op.type for op in tf.compat.v1.get_default_graph().get_operations()\n"
        "              if op.type.startswith('FusedBatchNorm')}))\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FusedBatchNorm" in result.stdout
