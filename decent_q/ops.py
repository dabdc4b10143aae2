"""The one wrapper around the FixNeuron kernel: loading, gradients and graph building.

Nothing else in decent_q touches the library file. Two ops are registered (see
``ops/fix_neuron_ops.cc``):

* ``FixNeuron`` -- x -> y with the position in the ``quantize_pos`` attr. This is the op of
  ``quantize_eval_model.pb``, attribute-compatible with the original quantizer's files.
* ``FixNeuronDynamic`` -- (x, pos) -> (y, used_pos). Live calibration and QAT graphs use it:
  in CALIB/TRAIN the kernel picks the position per batch and returns it, and
  :func:`quantize` counts it in a histogram *variable*, so the learned positions are saved with
  every checkpoint and restored with it (the original kept them in temp files of the last
  process). In EVAL the position input comes from that histogram.

A quantization point named ``Q`` (``N/aquant`` or ``W/wquant``) in a live graph is::

    Q/pos_hist   int32[255] variable: how often each position in [-127, 127] was chosen
    Q/pos        EVAL: the kept position (most frequent, ties to the smaller); else 0
    Q/fix        FixNeuronDynamic(x, Q/pos)
    Q/count      Q/pos_hist += one_hot(used_pos)        (CALIB / TRAIN only)
    Q            Identity(Q/fix:0), after Q/count

:func:`decent_q.transforms.finalize.finalize_fix_neurons` turns each such group into one
``FixNeuron`` node named ``Q`` with its position set.

Two implementations (``impl``), the same numbers bit for bit:

* ``"kernel"`` -- the C++ kernel (CPU only; the fastest on a CPU).
* ``"tf_ops"`` -- :mod:`decent_q.ops_tf`, standard TensorFlow ops: runs on GPUs and under XLA.
  ``Q/fix`` is then an ``IdentityN`` with the same outputs (y, used_pos).
* ``"auto"`` (the default) -- ``tf_ops`` when the point is built under a GPU device scope (or
  its input has a GPU device), or with no device given and a GPU visible; else ``kernel``.
"""

import contextlib
import enum
import threading

import numpy as np
import tensorflow as tf

from decent_q import _build
from decent_q import ops_tf

MIN_POS = -127  # 2^127 is the largest power of two a float32 holds
MAX_POS = 127
NUM_POS = MAX_POS - MIN_POS + 1
ZERO_POS = 127  # the position of an all-zero tensor
HIST_SUFFIX = "pos_hist"
POSITIONS_COLLECTION = "decent_q_positions"
IMPLS = ("auto", "kernel", "tf_ops")


class Mode(enum.IntEnum):
    WEIGHT = 0
    ACTIVATION = 1
    DW_WEIGHT = 2


class Phase(enum.IntEnum):
    CALIB = 0
    EVAL = 1
    TRAIN = 2


_lock = threading.Lock()
_library = None


def load_library():
    """Loads (building on first use) the kernel library; registers the ops and gradients."""
    global _library
    with _lock:
        if _library is None:
            _library = tf.load_op_library(_build.library_path())
    return _library


@tf.RegisterGradient("FixNeuron")
def _fix_neuron_grad(_, grad):
    # Straight-through estimator: d out / d in = 1, no clipping.
    return grad


@tf.RegisterGradient("FixNeuronDynamic")
def _fix_neuron_dynamic_grad(_, grad, _unused_pos_grad):
    return grad, None


gpu_visible = ops_tf.gpu_visible


def _device_type(device):
    return tf.DeviceSpec.from_string(device or "").device_type or ""


def scope_device(graph=None):
    """The device the current device scopes (strings or functions such as
    replica_device_setter) give a new op of `graph`; '' when none."""
    graph = graph or tf.compat.v1.get_default_graph()
    probe = tf.compat.v1.NodeDef(op="Identity", name="decent_q_probe")
    try:
        # pylint: disable=protected-access
        for spec in graph._device_function_stack.peek_objs():  # innermost first
            if spec.is_null_merge:
                continue
            if spec.function is None:
                break
            probe.device = spec.string_merge(probe) or ""
    except (AttributeError, TypeError):  # a TensorFlow without this internal
        return ""
    return probe.device


def resolve_impl(impl, x=None, device=None):
    """'kernel' or 'tf_ops' for a point on tensor `x` built under `device` (see module doc).

    Raises:
      ValueError: `impl` is not one of IMPLS.
    """
    if impl not in IMPLS:
        raise ValueError(f"FixNeuron impl {impl!r} is not one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    for dev in (device if device is not None else scope_device(),
                x.op.device if x is not None else ""):
        kind = _device_type(dev).upper()
        if kind:
            return "tf_ops" if kind == "GPU" else "kernel"
    return "tf_ops" if gpu_visible() else "kernel"


def fix_neuron(x, mode, phase=Phase.EVAL, bit_width=8, method=1, quantize_pos=0,
               arch_type="DEFAULT", name=None, impl="kernel", jit=None):
    """A stateless ``FixNeuron`` op on tensor ``x`` (EVAL uses ``quantize_pos``).

    ``impl``: "kernel" (default), "tf_ops" or "auto" (see the module doc). ``jit``: for
    tf_ops, build in an XLA jit scope (None: when a GPU is visible; see decent_q.ops_tf).
    """
    if resolve_impl(impl, x if isinstance(x, tf.Tensor) else None) == "tf_ops":
        return ops_tf.fix_neuron(x, mode=mode, phase=phase, bit_width=bit_width, method=method,
                                 quantize_pos=quantize_pos, arch_type=arch_type, name=name,
                                 jit=jit)
    return load_library().fix_neuron(x, bit_width=int(bit_width), method=int(method),
                                      mode=int(mode), phase=int(phase),
                                      quantize_pos=int(quantize_pos), arch_type=arch_type,
                                      name=name)


def fix_neuron_dynamic(x, pos, mode, phase, bit_width=8, method=1, arch_type="DEFAULT",
                       name=None, impl="kernel", jit=None):
    """A ``FixNeuronDynamic`` op; returns ``(quantized, used_pos)``. ``impl``, ``jit`` as
    fix_neuron."""
    if resolve_impl(impl, x if isinstance(x, tf.Tensor) else None) == "tf_ops":
        return ops_tf.fix_neuron_dynamic(x, pos, mode=mode, phase=phase, bit_width=bit_width,
                                         method=method, arch_type=arch_type, name=name,
                                         jit=jit)
    return load_library().fix_neuron_dynamic(x, pos, bit_width=int(bit_width),
                                             method=int(method), mode=int(mode),
                                             phase=int(phase), arch_type=arch_type, name=name)


def kept_position_np(hist):
    """NumPy: the most frequent position in a histogram, ties to the smaller; None if empty."""
    hist = np.asarray(hist)
    if hist.max() <= 0:
        return None
    return int(np.flatnonzero(hist == hist.max())[0]) + MIN_POS


def _kept_position(hist):
    """Graph: the kept position of a histogram; MIN_POS - 1 (search per batch) if empty."""
    counts = tf.cast(hist, tf.int32)
    best = tf.reduce_max(counts)
    index = tf.range(NUM_POS, dtype=tf.int32)
    first = tf.reduce_min(tf.where(tf.equal(counts, best), index, NUM_POS + index))
    # MIN_POS - 1 tells the kernel "unknown": it then searches the position per batch.
    return tf.where(best > 0, first + MIN_POS, MIN_POS - 1)


def kept_position(hist):
    """Graph: the kept position of histogram variable `hist` (most frequent, ties to the
    smaller; MIN_POS - 1 if empty), as a tensor. A graph imported from a MetaGraphDef holds
    the variable's tensor in POSITIONS_COLLECTION; that is accepted too."""
    if isinstance(hist, tf.Variable):
        hist = hist.value()
    elif hist.dtype == tf.resource:
        hist = tf.raw_ops.ReadVariableOp(resource=hist, dtype=tf.int32)
    return _kept_position(hist)


def histogram_variables(graph):
    """{point name: its pos_hist variable} of a live graph (ref or resource variables)."""
    suffix = "/" + HIST_SUFFIX
    return {v.op.name[:-len(suffix)]: v
            for v in graph.get_collection(POSITIONS_COLLECTION) if v.op.name.endswith(suffix)}


def quantize(x, name, mode, phase, bit_width=8, method=1, arch_type="DEFAULT", impl="auto"):
    """Builds a quantization point ``name`` on tensor ``x`` in the default (live) graph.

    Args:
      x: float32 tensor to quantize.
      name: the point's full name (``N/aquant`` or ``W/wquant``); must not exist yet.
      mode, phase, bit_width, method, arch_type: as the FixNeuron attributes.
      impl: "auto" (default), "kernel" or "tf_ops" (see the module doc). With "tf_ops" the
        computation goes where ``x`` has a device (if it has one) and the histogram and its
        update stay on the CPU (int32 state; small).

    Returns:
      The output tensor of the Identity named ``name``.
    """
    phase = Phase(phase)
    graph = x.graph
    with graph.as_default():
        impl = resolve_impl(impl, x)
        if impl == "kernel":
            load_library()
    # tf.device(None) would clear the caller's device scopes: use no context instead.
    host = (lambda: graph.device("/device:CPU:0")) if impl == "tf_ops" else contextlib.nullcontext
    near_x = (lambda: graph.device(x.op.device)) if impl == "tf_ops" and x.op.device \
        else contextlib.nullcontext
    with graph.as_default(), graph.name_scope(name + "/"):
        with host():
            hist = tf.compat.v1.Variable(tf.zeros([NUM_POS], tf.int32), trainable=False,
                                         name=HIST_SUFFIX,
                                         collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES,
                                                      POSITIONS_COLLECTION])
            if phase == Phase.EVAL:
                pos = tf.identity(_kept_position(hist.value()), name="pos")
            else:
                pos = tf.constant(0, tf.int32, name="pos")
        with near_x():
            y, used = fix_neuron_dynamic(x, pos, mode=mode, phase=phase, bit_width=bit_width,
                                         method=method, arch_type=arch_type, name="fix",
                                         impl=impl)
        deps = []
        if phase != Phase.EVAL:
            with host():
                # tf.group names the update "count" for ref and resource variables alike.
                deps.append(tf.group(tf.compat.v1.assign_add(
                    hist, tf.one_hot(used - MIN_POS, NUM_POS, dtype=tf.int32)), name="count"))
    with graph.as_default(), graph.name_scope(None), graph.control_dependencies(deps):
        return tf.identity(y, name=name)
