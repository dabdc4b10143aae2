"""Gradients for the arithmetic the live (QAT) passes add to a user's training graph.

A training script of the TF1 era builds its train op as::

    with tf.control_dependencies(update_ops):
        train_op = optimizer.minimize(loss)

TensorFlow gives every op built inside that block whose data inputs all come from outside it
one control input per update op. TensorFlow's own gradients of a broadcasting ``Mul``, of
``DivNoNan`` and of ``Reshape`` build such ops: the operands' shapes and the reduction axes as
constants, ``-x / y / y`` from forward tensors, and (under the optimizer's default
``gate_gradients``) a ``NoOp`` grouping the two input gradients. On NASNetMobile (384 batch-norm
updates) the batch-norm folds' weight arithmetic thereby added ~2,400 such ops and ~1 M
control edges to the 1.6 M of float training, and TensorFlow's set-up of a graph (building the
gradients, each session's conversion and placement) grows with the edges.

The gradients here compute the same values with the same kernels in the same order
(bit-identical to TensorFlow's), but:

- constants and the gradient factors that read only forward tensors are built by the pass
  next to its forward op (names ``<op>/grad_axes``, ``<op>/grad_shape``, ``<op>/grad_factor``,
  see :func:`multiply`, :func:`divide_no_nan`, :func:`reshape`) and looked up by name; without
  them (a graph edited afterwards) the gradient builds them itself, as TensorFlow does;
- an input that is a constant gets no gradient (TensorFlow computes one that nothing can
  read), so an op with one variable input returns one gradient and needs no grouping.

The ops carry ``_gradient_op_type`` (``gradient_override_map``); decent_q registers these
names on import, so a training graph read back in another process differentiates the same.
"""

import tensorflow as tf

MUL = "DecentQMul"
DIV_NO_NAN = "DecentQDivNoNan"
RESHAPE = "DecentQReshape"


def multiply(x, y, name="mul"):
    """x * y (broadcasting) with the gradient below; its reduction constants built beside it."""
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"Mul": MUL}):
        out = tf.multiply(x, y, name=name)
    x, y = out.op.inputs
    with tf.name_scope(out.op.name + "/"):
        for index, (operand, other) in enumerate(((x, y), (y, x))):
            axes = _reduction_axes(operand.shape, other.shape)
            if axes is not None and not _is_constant(operand) and \
                    _must_reduce(axes, operand.shape, other.shape):
                tf.constant(axes, tf.int32, name=f"grad_axes_{index}")
                if operand.shape.is_fully_defined():
                    tf.constant(operand.shape.as_list(), tf.int32, name=f"grad_shape_{index}")
    return out


def divide_no_nan(x, y, name):
    """div_no_nan(x, y) of equal static shapes with the gradient below; d/dy's factor
    div_no_nan(div_no_nan(-x, y), y) built beside it (it reads forward tensors only)."""
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"DivNoNan": DIV_NO_NAN}):
        out = tf.math.divide_no_nan(x, y, name=name)
    if not _is_constant(y):
        with tf.name_scope(out.op.name + "/"):
            tf.math.divide_no_nan(tf.math.divide_no_nan(-x, y), y, name="grad_factor")
    return out


def reshape(x, shape, name="Reshape"):
    """tf.reshape with the gradient below; x's static shape built beside it."""
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({"Reshape": RESHAPE}):
        out = tf.reshape(x, shape, name=name)
    if x.shape.is_fully_defined():
        with tf.name_scope(out.op.name + "/"):
            tf.constant(x.shape.as_list(), tf.int32, name="grad_shape")
    return out


@tf.RegisterGradient(MUL)
def _multiply_grad(op, grad):
    x, y = op.inputs
    gx = None if _is_constant(x) else tf.multiply(grad, y)
    gy = None if _is_constant(y) else tf.multiply(x, grad)
    return _unbroadcast(op, gx, 0, x, y), _unbroadcast(op, gy, 1, y, x)


@tf.RegisterGradient(DIV_NO_NAN)
def _divide_no_nan_grad(op, grad):
    x, y = op.inputs
    if x.shape != y.shape or not x.shape.is_fully_defined():
        raise ValueError(f"{op.name}: decent_q's DivNoNan gradient takes operands of one static "
                         f"shape, not {x.shape} and {y.shape}")
    gx = None if _is_constant(x) else tf.math.divide_no_nan(grad, y)
    gy = None
    if not _is_constant(y):
        factor = _beside(op, "grad_factor")
        if factor is None:
            factor = tf.math.divide_no_nan(tf.math.divide_no_nan(-x, y), y)
        gy = grad * factor
    return gx, gy


@tf.RegisterGradient(RESHAPE)
def _reshape_grad(op, grad):
    shape = _beside(op, "grad_shape")
    if shape is None:
        shape = tf.shape(op.inputs[0])
    return tf.reshape(grad, shape), None


def _unbroadcast(op, grad, index, operand, other):
    """`grad` summed over the axes along which `operand` was broadcast against `other`
    (TensorFlow's reduce_sum(keepdims=True) and reshape to the operand's shape)."""
    if grad is None:
        return None
    axes = _reduction_axes(operand.shape, other.shape)
    if axes is not None and not _must_reduce(axes, operand.shape, other.shape):
        return grad
    axes_t, shape_t = _beside(op, f"grad_axes_{index}"), _beside(op, f"grad_shape_{index}")
    if axes_t is None:
        if axes is None:  # a broadcast decided by dynamic sizes
            x_shape, y_shape = tf.shape(op.inputs[0]), tf.shape(op.inputs[1])
            axes_t = tf.raw_ops.BroadcastGradientArgs(s0=x_shape, s1=y_shape)[index]
        else:
            axes_t = tf.constant(axes, tf.int32)
    if shape_t is None:
        shape_t = tf.shape(operand)
    return tf.reshape(tf.reduce_sum(grad, axes_t, keepdims=True), shape_t)


def _reduction_axes(shape, other):
    """The axes of the broadcast result along which an operand of `shape` was broadcast
    against one of `other` (TensorFlow's rule); None where that depends on sizes known only
    at run time."""
    if shape.rank is None or other.rank is None:
        return None
    rank = max(shape.rank, other.rank)
    dims = [1] * (rank - shape.rank) + shape.as_list()
    others = [1] * (rank - other.rank) + other.as_list()
    axes = []
    for axis, (dim, other_dim) in enumerate(zip(dims, others)):
        if dim == 1 and other_dim != 1:
            axes.append(axis)
        elif other_dim == 1 and dim != 1:
            continue
        elif dim is None or other_dim is None:
            return None
    return axes


def _must_reduce(axes, shape, other):
    return bool(axes) or shape.rank < other.rank


def _beside(op, name):
    """The tensor `<op>/<name>` the pass built beside op, or None."""
    try:
        return op.graph.get_tensor_by_name(f"{op.name}/{name}:0")
    except KeyError:
        return None


def _is_constant(tensor):
    """Whether `tensor` takes no gradient: a constant, or behind tf.stop_gradient."""
    return tensor.op.type in ("Const", "StopGradient")
