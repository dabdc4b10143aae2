"""`from tensorflow.contrib import decent_q` and the tf_keras.legacy_tf_layers alias, in fresh
interpreters where the .pth of an installed decent_q is simulated (PYTHONPATH = this checkout)."""

import os
import subprocess
import sys

import pytest

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


def _installed_pth():
    """The decent-q-contrib.pth of the decent_q installed in this interpreter, or None."""
    import site  # pylint: disable=import-outside-toplevel
    for folder in site.getsitepackages() + [site.getusersitepackages()]:
        path = os.path.join(folder, "decent-q-contrib.pth")
        if os.path.exists(path):
            return path
    return None


PROBE = (
    "import sys\n"
    "assert 'tensorflow' not in sys.modules, 'TensorFlow imported at interpreter start'\n"
    "import tensorflow as tf\n"
    "assert 'decent_q' not in sys.modules, 'import tensorflow imported decent_q'\n"
    "assert type(tf.__spec__.loader).__module__ != '_decent_q_contrib'\n"
    "print(hasattr(tf, 'contrib') and hasattr(tf.contrib, 'decent_q'))\n"
    "import decent_q\n"
    "assert tf.contrib.decent_q is decent_q\n")


def test_pyxir_probe_after_import_tensorflow():
    """hasattr(tf, 'contrib') and hasattr(tf.contrib, 'decent_q') right after import tensorflow,
    without importing TensorFlow at start or decent_q with TensorFlow. Uses the installed .pth
    when decent_q is installed in this interpreter, else simulates it."""
    setup = "" if _installed_pth() else "import _decent_q_contrib; _decent_q_contrib.install()\n"
    result = python(setup + PROBE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"


def test_probe_when_a_submodule_is_imported_first():
    result = python(
        "import _decent_q_contrib; _decent_q_contrib.install()\n"
        "import tensorflow.compat.v1 as tf1\n"
        "import tensorflow as tf\n"
        "assert hasattr(tf.contrib, 'decent_q')\n")
    assert result.returncode == 0, result.stderr[-2000:]


def test_install_after_tensorflow_attaches_contrib():
    result = python(
        "import sys, _decent_q_contrib\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not isinstance(f, _decent_q_contrib._AliasFinder)]\n"
        "import tensorflow as tf\n"
        "assert not hasattr(tf, 'contrib')\n"
        "_decent_q_contrib.install()\n"
        "assert hasattr(tf, 'contrib') and 'decent_q' in dir(tf.contrib)\n"
        "import decent_q\n"
        "assert tf.contrib.decent_q is decent_q\n")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_original_module_paths():
    result = python(
        "import _decent_q_contrib; _decent_q_contrib.install()\n"
        "from tensorflow.contrib.decent_q.python import quantize_graph, decent_q as api\n"
        "from tensorflow.contrib.decent_q.python.quantize_graph import (QuantizeConfig,\n"
        "    CreateQuantizeTrainingGraph, CreateQuantizeEvaluationGraph,\n"
        "    CreateQuantizeDeployGraph)\n"
        "from tensorflow.contrib.decent_q.python.decent_q import (quantize_frozen,\n"
        "    quantize_train, quantize_evaluate, deploy_checkpoint, inspect, dump)\n"
        "from tensorflow.contrib.decent_q.python.ops.fix_neuron_ops import fix_neuron\n"
        "import vai_q_tensorflow as vq\n"
        "import decent_q, decent_q.python.decent_q as real_api\n"
        "assert vq is decent_q and api is real_api\n"
        "assert vq.QuantizeConfig is QuantizeConfig\n"
        "assert vq.quantize_train is quantize_train and vq.inspect is inspect\n"
        "assert callable(vq.CreateQuantizeTrainingGraph) and callable(fix_neuron)\n"
        "from vai_q_tensorflow.python import decent_q as via_vai\n"
        "assert via_vai is real_api\n")
    assert result.returncode == 0, result.stderr[-2000:]
