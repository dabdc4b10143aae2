"""Dump the simulation results of a quantized model, for comparison with the DPU.

For batch ``i`` (counted from 1, as the guide's table shows) of ``input_fn`` the folder
``output_dir/dump_results_{i}`` holds, for each FixNeuron ``N`` (``/`` in names becomes ``_``):

    N_int8.bin   the output as integers value * 2^pos, raw int8 (bit width <= 8)
    N_int8.txt   the same, one value a line
    N_int16.bin / N_int16.txt    instead, for bit widths 9..16 (raw int16)

With ``dump_float=1`` also ``<node>_float.bin`` (raw float32) and ``<node>_float.txt`` for every
node with a floating-point output. Outputs of constants (weights, biases and their FixNeurons)
are the same for every batch and are written once, in the first folder. Output ``k > 0`` of a
node is written as ``<node>_k``. The same inputs give byte-identical files.

``layout="1.4.1"`` writes what the 1.4.1 release's ``decent_q.dump`` wrote (its old callers
read these paths): batches counted from 0 (``dump_results_0``, ...), integer files without the
``_int8`` suffix (``N.bin``, ``N.txt``), and the constant outputs in ``dump_results_weights``.
"""

import logging
import os

import numpy as np
import tensorflow as tf

from decent_q import calibrate, checks, inputs
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import quantized
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name

log = logging.getLogger("decent_q")


def dump(input_frozen_graph, input_fn, max_dump_batches=1, dump_float=0,
         output_dir="./quantize_results", dump_input_tensors="", config=None,
         session_config=None, layout="guide"):
    """Runs a quantize_eval_model on `max_dump_batches` batches and writes the dump folders.

    Args:
      input_frozen_graph: path of (or GraphDef of) a quantize_eval_model.
      input_fn: callable(step) -> {placeholder name: array}, or "module.function".
      max_dump_batches: number of batches (input_fn(0) .. input_fn(n-1)).
      dump_float: 1 also dumps the float output of every node.
      output_dir: where the dump_results_{i} folders go.
      dump_input_tensors: comma-separated tensors that input_fn feeds although they are not
        placeholders (e.g. the output of an in-graph data pipeline); each is replaced by a
        placeholder of the same name, dtype and shape.
      config: optional QuantizeConfig for the session options (gpu, gpu_memory_fraction).
      session_config: optional tf.compat.v1.ConfigProto for the session (wins over config).
      layout: "guide" (the guide's file names, the default) or "1.4.1" (the old release's
        file names; see the module docstring).

    Returns:
      The list of folders written.

    Raises:
      QuantizeError: the graph, input_fn or its data is wrong.
    """
    legacy = _check_arguments(layout, max_dump_batches)
    checks.check_output_dir(output_dir)
    fn, fn_name = inputs.load_input_fn(input_fn)
    graph_def = (utils.load_graph_def(input_frozen_graph)
                 if isinstance(input_frozen_graph, (str, os.PathLike)) else input_frozen_graph)
    fixes = quantized.fix_neurons(graph_def)
    if not fixes:
        log.warning("the graph has no FixNeuron nodes (is it a quantize_eval_model?); only "
                    "float values can be dumped")
    graph_def = replace_by_placeholders(graph_def, dump_input_tensors)
    graph = utils.import_graph(graph_def)
    constant = _constant_nodes(graph_def)
    fetches = _fetches(graph, fixes, dump_float)
    if session_config is None and config is not None:
        session_config = calibrate.session_config(config)
    folders = []
    with tf.compat.v1.Session(graph=graph, config=session_config) as sess:
        for step in range(max_dump_batches):
            batch = inputs.call_input_fn(fn, step, fn_name)
            feed = inputs.feed_dict(graph, batch, step, fn_name)
            folders.append(_dump_batch(sess, fetches, feed, constant, step, fn_name, output_dir,
                                       legacy))
    return folders


def _check_arguments(layout, max_dump_batches):
    """True for the 1.4.1 layout, False for the guide's; ValueError / ConfigError for a bad
    layout or batch count."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout={layout!r}; use one of {', '.join(_LAYOUTS)}")
    legacy = layout == "1.4.1"
    if not isinstance(max_dump_batches, int) or max_dump_batches <= 0:
        raise ConfigError(f"max_dump_batches={max_dump_batches!r} must be a positive integer")
    return legacy


def _fetches(graph, fixes, dump_float):
    """{file stem: (tensor, "int" or "float", FixNeuron node or None)}: every FixNeuron's
    output, and with dump_float every floating-point output of every node."""
    fetches = {}
    for name, node in fixes.items():
        fetches[_stem(name)] = (graph.get_tensor_by_name(f"{name}:0"), "int", node)
    if dump_float:
        for op in graph.get_operations():
            for k, tensor in enumerate(op.outputs):
                if tensor.dtype.is_floating:
                    stem = _stem(op.name) + (f"_{k}" if k else "")
                    fetches[f"{stem}_float"] = (tensor, "float", None)
    return fetches


def _dump_batch(sess, fetches, feed, constant, step, fn_name, output_dir, legacy):
    """Runs batch `step` and writes its folder (constant outputs only on step 0, into the
    weights folder in the 1.4.1 layout); returns the batch folder."""
    wanted = [s for s in sorted(fetches) if step == 0 or
              node_name(fetches[s][0].name) not in constant]
    try:
        values = sess.run([fetches[s][0] for s in wanted], feed)
    except tf.errors.OpError as err:
        raise QuantizeError(f"running the graph on {fn_name}({step}) failed: "
                            f"{err.message.strip().splitlines()[0]}") from err
    folder = os.path.join(output_dir, f"dump_results_{step + (0 if legacy else 1)}")
    weights_folder = os.path.join(output_dir, "dump_results_weights") if legacy else folder
    for path in sorted({folder, weights_folder}):
        utils.prepare_output_dir(path)
    for stem, value in zip(wanted, values):
        _, kind, fix = fetches[stem]
        where = weights_folder if node_name(fetches[stem][0].name) in constant else folder
        if kind == "int":
            _write_int(where, stem, value, fix, suffix=not legacy)
        else:
            _write(where, stem, np.asarray(value, np.float32), "%.9g")
    log.info("dumped batch %d to %s (%d tensors)", step + 1, folder, len(wanted))
    return folder


_LAYOUTS = ("guide", "1.4.1")


def replace_by_placeholders(graph_def, tensors):
    """A copy of graph_def where each named tensor (comma-separated) is a Placeholder.

    Output 0 of node N: N itself becomes a Placeholder named N. Output k > 0: a Placeholder
    named ``N_k`` is added and N's consumers of output k read it.
    """
    names = [t.strip() for t in (tensors or "").split(",") if t.strip()]
    if not names:
        return graph_def
    node_map = utils.NodeMap(graph_def)
    utils.check_nodes_exist(node_map, names, "dump_input_tensors entry")
    graph = utils.import_graph(graph_def)
    replace = {}
    for name in names:
        try:
            tensor = graph.get_tensor_by_name(tensor_name(name))
        except (KeyError, ValueError) as err:
            raise QuantizeError(f"dump_input_tensors entry {name!r} is not a tensor of the "
                                "graph; write node or node:index") from err
        index = int(tensor_name(name).rsplit(":", 1)[1])
        placeholder = node_name(name) if index == 0 else f"{node_name(name)}_{index}"
        shape = tensor.shape
        replace[tensor_name(name)] = utils.make_node(
            "Placeholder", placeholder, dtype=tensor.dtype,
            shape=tf.compat.v1.AttrValue(shape=shape.as_proto()))
    out = utils.with_nodes(graph_def)
    for node in graph_def.node:
        if tensor_name(node.name) in replace:
            out.node.append(replace[tensor_name(node.name)])
            continue
        new = out.node.add()
        new.CopyFrom(node)
        for i, inp in enumerate(new.input):
            if not utils.is_control(inp) and tensor_name(inp) in replace:
                new.input[i] = replace[tensor_name(inp)].name
    for tensor, node in sorted(replace.items()):
        if not tensor.endswith(":0"):
            out.node.append(node)
    return out


def _constant_nodes(graph_def):
    """Nodes whose value does not depend on any input (constants and what they feed only)."""
    nodes = {n.name: n for n in graph_def.node}
    constant = {}

    def is_const(name, depth=0):
        if name in constant:
            return constant[name]
        node = nodes.get(name)
        if node is None or depth > 500:
            return False
        if node.op == "Const":
            result = True
        elif node.op in ("Placeholder", "PlaceholderWithDefault") or not node.input:
            result = False
        else:
            result = all(is_const(node_name(i), depth + 1) for i in node.input)
        constant[name] = result
        return result

    for name in utils.topological_order(graph_def):
        is_const(name)
    return {n for n, c in constant.items() if c}


def _stem(name):
    return name.replace("/", "_").replace(":", "_")


def _write_int(folder, stem, value, fix, suffix=True):
    bits = quantized.bit_width(fix)
    pos = quantized.position(fix)
    dtype, kind = (np.int8, "int8") if bits <= 8 else (np.int16, "int16")
    ints = np.rint(np.asarray(value, np.float64) * 2.0 ** pos)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    _write(folder, f"{stem}_{kind}" if suffix else stem,
           np.clip(ints, lo, hi).astype(dtype), "%d")


def _write(folder, stem, array, fmt):
    array = np.ascontiguousarray(array)
    utils.write_atomic(os.path.join(folder, f"{stem}.bin"), array.tobytes())
    text = "\n".join(fmt % v for v in array.reshape(-1).tolist())
    utils.write_atomic(os.path.join(folder, f"{stem}.txt"),
                       (text + "\n" if text else "").encode())
