"""Import aliases that old TF1 scripts need on TensorFlow 2, installed at interpreter start.

``decent-q-contrib.pth`` (shipped with decent_q) calls :func:`install`, which puts a meta-path
finder in front of the import system. It answers:

* ``tensorflow.contrib`` -- TensorFlow 2 has no contrib; a small package whose only member is
  ``decent_q``, so ``from tensorflow.contrib import decent_q`` works unchanged.
* ``tensorflow.contrib.decent_q`` -- the :mod:`decent_q` package itself.
* ``tf_keras.legacy_tf_layers[.*]`` -- TensorFlow 2.21 lazily imports this old path, which
  tf_keras now ships as ``tf_keras.src.legacy_tf_layers``; without the alias ``slim.batch_norm``
  fails with "No module named 'tf_keras.legacy_tf_layers'".

TensorFlow's and tf_keras's files are not touched, and this module imports neither TensorFlow
nor decent_q, so interpreter start-up stays fast.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

_CONTRIB = "tensorflow.contrib"
_PREFIX_ALIASES = (
    (_CONTRIB + ".decent_q", "decent_q"),
    ("tf_keras.legacy_tf_layers", "tf_keras.src.legacy_tf_layers"),
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


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        if name == _CONTRIB:
            module.__getattr__ = _contrib_getattr
            return
        # The import system takes whatever sys.modules holds after exec_module, so the alias
        # becomes the real module object (one module, one state).
        sys.modules[name] = importlib.import_module(_target(name))


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == _CONTRIB:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=True)
        if _target(fullname) is not None:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=True)
        return None


def install():
    """Installs the finder once (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
