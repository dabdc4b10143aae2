"""input_fn: loading it from "module.function", calling it, and checking what it returns.

quantize_frozen, dump and check_float_graph call ``input_fn(step)`` for each batch; it must
return ``{placeholder name: numpy array}``. Every mistake (a module that is not found, an
exception inside input_fn, a wrong key, dtype, shape or a NaN) is one QuantizeError line that
names the step and, for exceptions, the user's frame.
"""

import importlib
import os
import sys
import traceback

import numpy as np
import tensorflow as tf

from decent_q.errors import ConfigError, QuantizeError, first_line
from decent_q.graph.utils import tensor_name


def load_input_fn(spec):
    """(function, display name) for a callable or a "module.function" import path.

    The current folder is put on sys.path first, as the original tool did.

    Raises:
      ConfigError: spec is missing or not of the form module.function.
      QuantizeError: the module or function cannot be found, or importing it fails.
    """
    if callable(spec):
        return spec, getattr(spec, "__name__", "input_fn")
    if not spec or not isinstance(spec, str):
        raise ConfigError("input_fn is required: give 'module_name.function_name', e.g. "
                          "--input_fn my_input_fn.calib_input")
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        raise ConfigError(f"input_fn {spec!r} is not 'module_name.function_name'; e.g. "
                          "my_input_fn.calib_input for calib_input() in my_input_fn.py")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.split(".")[0] == err.name.split(".")[0] and \
                (module_name == err.name or module_name.startswith(err.name + ".")):
            raise QuantizeError(
                f"input_fn module {module_name!r} is not found in {cwd} or on sys.path; run "
                f"from the folder holding {module_name.replace('.', '/')}.py or add it to "
                "PYTHONPATH") from None
        raise QuantizeError(f"importing input_fn module {module_name!r} failed"
                            f"{_user_frame(err)}: {type(err).__name__}: {err}") from err
    except (Exception, SystemExit) as err:  # pylint: disable=broad-except
        raise QuantizeError(f"importing input_fn module {module_name!r} failed"
                            f"{_user_frame(err)}: {type(err).__name__}: {err}") from err
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        functions = sorted(n for n, v in vars(module).items()
                           if callable(v) and not n.startswith("_") and
                           getattr(v, "__module__", None) == module.__name__)
        raise QuantizeError(
            f"input_fn module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
            f"function {func_name!r}; its functions: {', '.join(functions) or 'none'}")
    return fn, spec


def call_input_fn(fn, step, fn_name):
    """fn(step), with any exception turned into one QuantizeError line naming the user's
    frame."""
    try:
        return fn(step)
    except (Exception, SystemExit) as err:  # pylint: disable=broad-except
        raise QuantizeError(f"input_fn {fn_name}({step}) raised{_user_frame(err)}: "
                            f"{type(err).__name__}: {first_line(err) or repr(err)}") from err


def _user_frame(err):
    """' at file:line in func (`code`)' for the deepest traceback frame outside decent_q and
    installed packages; '' if none."""
    frames = traceback.extract_tb(err.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    system = tuple(os.path.abspath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    user = [f for f in frames if not os.path.abspath(f.filename).startswith(here) and
            not os.path.abspath(f.filename).startswith(system) and
            not f.filename.startswith("<frozen")]
    if not user:
        return ""
    frame = user[-1]
    code = f" ({frame.line.strip()})" if frame.line else ""
    return f" at {frame.filename}:{frame.lineno} in {frame.name}{code}"


def feed_dict(graph, batch, step, input_fn_name="input_fn"):
    """Checks what input_fn returned and maps it onto the graph's tensors."""
    if not isinstance(batch, dict):
        raise QuantizeError(f"{input_fn_name}({step}) returned {type(batch).__name__}; it must "
                            "return a dict {placeholder_name: numpy array}")
    feed = {}
    for key, value in batch.items():
        name = key.name if isinstance(key, tf.Tensor) else str(key)
        try:
            tensor = graph.get_tensor_by_name(tensor_name(name))
        except (KeyError, ValueError):
            placeholders = sorted(op.name for op in graph.get_operations()
                                  if op.type == "Placeholder")
            raise QuantizeError(f"{input_fn_name}({step}) returned key {name!r}, which is not "
                                f"in the graph; the placeholders are: "
                                f"{', '.join(placeholders) or 'none'}") from None
        array = np.asarray(value)
        want = np.dtype(tensor.dtype.as_numpy_dtype)
        allowed = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(want.kind, want.kind)
        if array.dtype.kind not in allowed:
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} has dtype "
                                f"{array.dtype}; the placeholder wants {want.name}")
        shape = tensor.shape
        if shape.rank is not None and (array.ndim != shape.rank or any(
                d is not None and d != a for d, a in zip(shape.as_list(), array.shape))):
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} has shape "
                                f"{list(array.shape)}; the placeholder wants "
                                f"{[d if d is not None else '?' for d in shape.as_list()]}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise QuantizeError(f"{input_fn_name}({step}) value for {name!r} holds NaN or Inf; "
                                "calibration needs finite inputs")
        feed[tensor] = array.astype(want, copy=False)
    return feed
