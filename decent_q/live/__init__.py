"""Live-graph rewrites: passes that edit a ``tf.Graph`` in place, for quantization-aware training.

QAT rewrites the user's own training and evaluation graphs, so gradients, variables, update ops
and the user's Python tensors keep working; these passes cannot be GraphDef -> GraphDef
functions. Each mirrors a pure pass of :mod:`decent_q.transforms` and shares its matching::

    cleanup            function calls inlined, dropout and Identity aliases bypassed
                       (transforms.cleanup / transforms.inline_functions)
    fold_batch_norms   the QAT batch-norm fold: batch statistics, the batch norm's own gradient
                       (transforms.fold_batch_norms folds constants for inference)
    simulate_dpu       what the DPU computes (transforms.simulate_dpu)

:mod:`decent_q.live.edit` holds the few primitives that rewire a live graph.
"""
