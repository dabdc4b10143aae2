"""Import aliases that old TF1 scripts need on TensorFlow 2, installed at interpreter start.

``decent-q-contrib.pth`` (shipped with decent_q) calls :func:`install`, which puts a meta-path
finder in front of the import system. It answers:

* ``tensorflow.contrib`` -- TensorFlow 2 has no contrib; a small package whose only member is
  ``decent_q``, so ``from tensorflow.contrib import decent_q`` works unchanged.
* ``tensorflow.contrib.decent_q[.*]`` and ``vai_q_tensorflow[.*]`` -- the :mod:`decent_q`
  package and its submodules (``tensorflow.contrib.decent_q.python.quantize_graph`` is
  ``decent_q.python.quantize_graph``); ``import vai_q_tensorflow as decent_q`` is the form the
  original's readme gives.
* ``tensorflow`` itself, once: the real package is loaded as usual and, right after, gets its
  ``contrib`` attribute, so ``hasattr(tf, "contrib") and hasattr(tf.contrib, "decent_q")``
  (the probe pyxir runs right after ``import tensorflow as tf``) is true. ``tf.contrib`` is the
  small package above; decent_q itself (and its kernel) is imported only when
  ``tf.contrib.decent_q`` is first used.
* ``tf_keras.legacy_tf_layers[.*]`` -- TensorFlow 2.21 lazily imports this old path, which
  tf_keras now ships as ``tf_keras.src.legacy_tf_layers``; without the alias ``slim.batch_norm``
  fails with "No module named 'tf_keras.legacy_tf_layers'".
* ``pytorch_nndct[.*]`` -- :mod:`decent_q_torch`, the PyTorch flow with vai_q_pytorch's API
  (``from pytorch_nndct.apis import torch_quantizer``; ``import pytorch_nndct as py_nndct``).

TensorFlow's and tf_keras's files are not touched, and this module imports neither TensorFlow
nor decent_q, so interpreter start-up stays fast and ``import tensorflow`` costs one extra
(empty) module.
"""

import importlib
import importlib.machinery
import sys

# The finder and loaders implement the import protocols (find_spec; create_module /
# exec_module) without subclassing importlib.abc: importing importlib.abc costs ~20 ms at
# every interpreter start.

_TF = "tensorflow"
_CONTRIB = "tensorflow.contrib"
_PREFIX_ALIASES = (
    (_CONTRIB + ".decent_q", "decent_q"),
    ("vai_q_tensorflow", "decent_q"),
    ("tf_keras.legacy_tf_layers", "tf_keras.src.legacy_tf_layers"),
    ("pytorch_nndct", "decent_q_torch"),
)


def _target(fullname):
    for alias, real in _PREFIX_ALIASES:
        if fullname == alias or fullname.startswith(alias + "."):
            return real + fullname[len(alias):]
    return None


def _contrib_getattr(name):
    if name == "decent_q":
        return importlib.import_module("decent_q")
    raise AttributeError(f"tensorflow.contrib.{name} does not exist in TensorFlow 2; only "
                         "tensorflow.contrib.decent_q is provided (by decent_q)")


def _contrib_dir():
    return ["decent_q"]


class _AliasLoader:
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        if name == _CONTRIB:
            module.__getattr__ = _contrib_getattr
            module.__dir__ = _contrib_dir
            return
        # The import system takes whatever sys.modules holds after exec_module, so the alias
        # becomes the real module object (one module, one state).
        sys.modules[name] = importlib.import_module(_target(name))


def _attach_contrib(tf_module):
    """Gives a loaded ``tensorflow`` module its ``contrib`` attribute (cheap: no decent_q)."""
    if "contrib" not in vars(tf_module):
        tf_module.contrib = importlib.import_module(_CONTRIB)


class _TensorFlowLoader:
    """Runs TensorFlow's own loader, then attaches ``tf.contrib``; afterwards the module's spec
    names TensorFlow's loader again, so nothing else sees this wrapper."""

    def __init__(self, spec):
        self.spec = spec
        self.real = spec.loader

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        try:
            self.real.exec_module(module)
        finally:
            self.spec.loader = self.real
            module.__loader__ = self.real
        _attach_contrib(sys.modules.get(_TF, module))


class _AliasFinder:
    def __init__(self):
        self.tf_hooked = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _TF:
            return self._tensorflow_spec(path, target)
        if fullname == _CONTRIB or _target(fullname) is not None:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=True)
        return None

    def _tensorflow_spec(self, path, target):
        """The spec the other finders give for ``tensorflow``, its loader wrapped (once)."""
        if self.tf_hooked:
            return None
        self.tf_hooked = True
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(_TF, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _TensorFlowLoader(spec)
                return spec
        return None


def install():
    """Installs the finder once (idempotent); attaches ``tf.contrib`` if TensorFlow is already
    imported."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    tf_module = sys.modules.get(_TF)
    if tf_module is not None and hasattr(tf_module, "__path__"):
        _attach_contrib(tf_module)
