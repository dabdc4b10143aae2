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

Trained thresholds (``trained_threshold=True``; QuantizeConfig ``quantize_strategy="pof2s_tqt"``,
docs/qat-accuracy.md "Trained thresholds (quantize_strategy pof2s_tqt)") add to a point::

    Q/log_th_init     float32 variable, NaN until the first CALIB / TRAIN run sets it
    Q/log_th_trained  float32 variable, trainable, 0 at first: what training adds
    Q/log_th          log2 of the threshold t = log_th_init + log_th_trained
    Q/pos             bit_width - 1 - ceil(log_th), checked finite and in [-127, 127]

The point quantizes at that position (``Q/fix`` in EVAL phase), so training sees the position
the deployed model gets. The first run on a batch that is not all zeros searches the position
p as pof2s does and sets ``log_th_init = bit_width - 1 - p - 0.5``; only that op writes
``log_th_init`` and the optimizer writes only ``log_th_trained``, so the two never race. The
gradient is the paper's (:func:`_trained_threshold_grad`). The histogram still counts the
positions used; the evaluation graph reads the position from ``Q/log_th``.
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
THRESHOLD_SUFFIX = "log_th"  # the tensor log2 t = log_th_init + log_th_trained
THRESHOLD_INIT = "log_th_init"  # variable: set from the first batch
THRESHOLD_TRAINED = "log_th_trained"  # trainable variable: what training adds
SET_THRESHOLD = "set_log_th_init"
POSITIONS_COLLECTION = "decent_q_positions"
THRESHOLDS_COLLECTION = "decent_q_thresholds"  # the two variables of every TQT point
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


def threshold_position(log_th, bit_width):
    """Graph: the position of log2 threshold `log_th` at `bit_width` (int32)."""
    return tf.subtract(int(bit_width) - 1, tf.cast(tf.math.ceil(log_th), tf.int32))


def threshold_position_np(log_th, bit_width):
    """NumPy: the position of log2 threshold `log_th` at `bit_width`; None if not finite."""
    log_th = float(np.float32(log_th))
    if not np.isfinite(log_th):
        return None
    return int(bit_width) - 1 - int(np.ceil(log_th))


def threshold_variables(graph):
    """{point name: its trainable log_th_trained variable} of a live graph."""
    suffix = "/" + THRESHOLD_TRAINED
    return {v.op.name[:-len(suffix)]: v
            for v in graph.get_collection(THRESHOLDS_COLLECTION) if v.op.name.endswith(suffix)}


def _checked_threshold_position(log_th, bit_width, name, unset):
    """Graph: threshold_position, failing the run with the point's name where the threshold
    is not finite or the position leaves [MIN_POS, MAX_POS] (unless `unset`: not set yet)."""
    pos = threshold_position(log_th, bit_width)
    ok = tf.logical_and(tf.math.is_finite(log_th),
                        tf.logical_and(log_th > -200.0, log_th < 200.0))
    ok = tf.logical_or(unset, tf.logical_and(ok, tf.logical_and(pos >= MIN_POS,
                                                                pos <= MAX_POS)))
    check = tf.debugging.Assert(
        ok, [f"decent_q: the trained threshold of quantization point {name} left the usable "
             f"range (log2 threshold, position; positions must lie in [{MIN_POS}, {MAX_POS}]):",
             log_th, pos, "the training diverged: lower the learning rate of the thresholds "
             "(decent_q.qat.threshold_variables()) or of the model"],
        name="check")
    with tf.control_dependencies([check]):
        return tf.identity(pos, name="checked_pos")


def _trained_threshold_grad(y, x, log_th, pos, bit_width, mode, arch_type, impl):
    """y with the TQT gradient (Jain et al. 2020; straight-through for rounding and ceil): for
    x whose code lies inside the integer range, d q / d x = 1 and d q / d log_th = ln 2 (q - x);
    outside it, d q / d x = 0 and d q / d log_th = ln 2 q. Nothing reaches the FixNeuron that
    computed y. The kernel computes both in one pass (FixNeuronTqtGrad); the TF-op path the
    same from standard ops, the sum in float64."""
    attrs = dict(bit_width=int(bit_width), method=1, mode=int(mode), phase=int(Phase.EVAL),
                 arch_type=arch_type)

    @tf.custom_gradient
    def tqt(quantized, inputs, threshold):
        def grad(dy):
            if impl == "kernel":
                d_inputs, total = load_library().fix_neuron_tqt_grad(dy, inputs, pos, **attrs)
            else:
                d_inputs, total = _tqt_grad_tf_ops(dy, inputs, quantized, pos, bit_width, mode,
                                                   arch_type)
            d_threshold = total * float(np.log(2.0))
            return None, d_inputs, tf.reshape(d_threshold, tf.shape(threshold))
        return tf.identity(quantized), grad

    return tqt(y, x, log_th)


def _tqt_grad_tf_ops(dy, x, q, pos, bit_width, mode, arch_type):
    """(dx, sum(dy * (inside ? q - x : q))) from standard TensorFlow ops (any device)."""
    high = 2.0 ** (bit_width - 1) - 1.0
    symmetric = arch_type == "DPUCADF8H" and Mode(mode) == Mode.ACTIVATION
    low = -high if symmetric else -high - 1.0  # the kernel's integer range
    scaled = x * tf.pow(2.0, tf.cast(pos, tf.float32))
    inside = tf.logical_and(scaled >= low - 0.5, scaled < high + 0.5)
    d_x = tf.where(inside, dy, tf.zeros_like(dy))
    q64, x64 = tf.cast(q, tf.float64), tf.cast(x, tf.float64)
    total = tf.reduce_sum(tf.cast(dy, tf.float64) * tf.where(inside, q64 - x64, q64))
    return d_x, tf.cast(total, tf.float32)


def _threshold_variables():
    """The variables of a trained-threshold point, built under its name scope:
    (Q/log_th_init, Q/log_th_trained); log2 t is their sum."""
    collections = [tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, THRESHOLDS_COLLECTION]
    start = tf.compat.v1.Variable(float("nan"), trainable=False, name=THRESHOLD_INIT,
                                  collections=collections)
    trained = tf.compat.v1.Variable(0.0, trainable=True, name=THRESHOLD_TRAINED,
                                    collections=collections +
                                    [tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES])
    return start, trained


def calibration_point(x, name, mode, bit_width=8, method=1, arch_type="DEFAULT", impl="auto"):
    """Builds a CALIB quantization point ``name`` on tensor ``x`` without a histogram.

    Post-training calibration fetches each point's position every batch and counts them
    itself (:mod:`decent_q.calibrate`), so its point is the FixNeuron, its output Identity
    ``name`` and the position it used, ``<name>/used`` (int32 scalar): 4 ops instead of
    quantize()'s 16, whose histogram variable QAT's checkpoints keep. The quantized output is
    the same.

    Returns:
      (the output tensor of the Identity named ``name``, the ``<name>/used`` tensor).
    """
    graph = x.graph
    with graph.as_default():
        impl = resolve_impl(impl, x)
    with graph.as_default(), graph.name_scope(name + "/"):
        pos = tf.constant(0, tf.int32, name="pos")
        y, used = fix_neuron_dynamic(x, pos, mode=mode, phase=Phase.CALIB, bit_width=bit_width,
                                     method=method, arch_type=arch_type, name="fix", impl=impl)
        used = tf.identity(used, name="used")
    with graph.as_default(), graph.name_scope(None):
        return tf.identity(y, name=name), used


def count_position(hist, used):
    """NumPy: adds one to `hist` (NUM_POS counts) at position `used`, as a histogram
    variable's one_hot update does (a position outside [MIN_POS, MAX_POS] counts nowhere)."""
    index = int(used) - MIN_POS
    if 0 <= index < NUM_POS:
        hist[index] += 1


def quantize(x, name, mode, phase, bit_width=8, method=1, arch_type="DEFAULT", impl="auto",
             trained_threshold=False):
    """Builds a quantization point ``name`` on tensor ``x`` in the default (live) graph.

    Args:
      x: float32 tensor to quantize.
      name: the point's full name (``N/aquant`` or ``W/wquant``); must not exist yet.
      mode, phase, bit_width, method, arch_type: as the FixNeuron attributes.
      impl: "auto" (default), "kernel" or "tf_ops" (see the module doc). With "tf_ops" the
        computation goes where ``x`` has a device (if it has one) and the histogram and its
        update stay on the CPU (int32 state; small).
      trained_threshold: the position comes from a trained log2 threshold (see the module
        doc) instead of the per-batch search (CALIB / TRAIN) or the histogram (EVAL).

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
            if trained_threshold:
                start_variable, trained = _threshold_variables()
                start = start_variable.value()
                log_th = tf.add(start, trained.value(), name=THRESHOLD_SUFFIX)
                if phase == Phase.EVAL:
                    pos = tf.identity(threshold_position(log_th, bit_width), name="pos")
                else:
                    # Until the first run sets log_th_init (NaN before), MIN_POS - 1 makes
                    # the kernel search the position.
                    unset = tf.math.is_nan(start)
                    pos = tf.where(unset, MIN_POS - 1,
                                   _checked_threshold_position(log_th, bit_width, name, unset),
                                   name="pos")
            elif phase == Phase.EVAL:
                pos = tf.identity(_kept_position(hist.value()), name="pos")
            else:
                pos = tf.constant(0, tf.int32, name="pos")
        fix_phase = Phase.EVAL if trained_threshold else phase
        with near_x():
            y, used = fix_neuron_dynamic(x, pos, mode=mode, phase=fix_phase,
                                         bit_width=bit_width, method=method,
                                         arch_type=arch_type, name="fix", impl=impl)
        init = []
        if trained_threshold and phase != Phase.EVAL:
            with host():
                # The first run's position p gives log_th_init = bit_width - 1 - p - 0.5 (an
                # all-zero batch, p = ZERO_POS, leaves it unset: the next run searches again);
                # later runs write the same value again (only this op writes it).
                searched = tf.cast(bit_width - 1 - used, tf.float32) - 0.5
                keep = tf.logical_or(tf.logical_not(unset), tf.equal(used, ZERO_POS))
                init = [tf.compat.v1.assign(start_variable, tf.where(keep, start, searched),
                                            name=SET_THRESHOLD).op]
                log_th = tf.where(unset, searched, log_th, name="threshold")
            with near_x():
                y = _trained_threshold_grad(y, x, log_th, used, bit_width, mode, arch_type,
                                            impl)
        deps = []
        if phase != Phase.EVAL:
            with host():
                # tf.group names the update "count" for ref and resource variables alike.
                deps.append(tf.group(tf.compat.v1.assign_add(
                    hist, tf.one_hot(used - MIN_POS, NUM_POS, dtype=tf.int32)), name="count"))
        deps += init
    with graph.as_default(), graph.name_scope(None), graph.control_dependencies(deps):
        return tf.identity(y, name=name)
