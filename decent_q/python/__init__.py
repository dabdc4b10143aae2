"""The original quantizer's module layout, for old callers.

``tensorflow.contrib.decent_q.python.quantize_graph``, ``...python.decent_q`` and
``...python.ops.fix_neuron_ops`` resolve to the modules of this package (the import alias of
``_decent_q_contrib``); they keep the 1.4.1 release's argument orders and file names and call
decent_q's own API.
"""
