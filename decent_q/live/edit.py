"""Primitives that edit a live ``tf.Graph`` in place: rewiring inputs and finding free names.

TensorFlow has no public API to change an existing op's input; ``Operation._update_input`` is
the one place graph rewriters (tf.contrib.quantize, TFMOT) use, and only this module calls it.
"""


def set_input(op, index, tensor):
    """Makes input `index` of `op` read `tensor`."""
    op._update_input(index, tensor)  # pylint: disable=protected-access


def replace_input(op, old, new):
    """Makes every input of `op` that reads tensor `old` read `new`."""
    for index, tensor in enumerate(op.inputs):
        if tensor is old:
            set_input(op, index, new)


def rewire_consumers(tensor, new, skip=()):
    """Makes every consumer of `tensor` (except the ops in `skip`) read `new` instead."""
    for consumer in list(tensor.consumers()):
        if consumer not in skip:
            replace_input(consumer, tensor, new)


def free_name(graph, name):
    """`name`, or `name_1`, `name_2`, ... if an op of that name exists in `graph`."""
    candidate, k = name, 0
    while has_op(graph, candidate):
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def has_op(graph, name):
    """Whether `graph` has an op named `name`."""
    try:
        graph.get_operation_by_name(name)
    except KeyError:
        return False
    return True
