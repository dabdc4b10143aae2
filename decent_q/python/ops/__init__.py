"""``tensorflow.contrib.decent_q.python.ops``: see :mod:`decent_q.python.ops.fix_neuron_ops`."""
