"""Post-training quantization of a frozen GraphDef: prepare, calibrate, write the models.

    frozen float graph
      -> inference clean-up, batch-norm folding            (transforms.prepare_float_graph)
      -> plan: where FixNeurons go                           (plan.plan_quantization)
      -> calibrate: CALIB FixNeurons, histogram per point    (calibrate_positions)
      -> eval model: EVAL FixNeurons with the kept positions  (plan.apply_to_graph_def)
      -> position passes: align_concat, shift cut / bias    (transforms.adjust_positions)
      -> quantize_eval_model.pb, deploy_model.pb
"""

import collections
import dataclasses
import importlib
import logging
import os
import sys
import time
import traceback

import numpy as np
import tensorflow as tf

from decent_q import ops
from decent_q import plan as plan_lib
from decent_q.errors import ConfigError, QuantizeError
from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name

log = logging.getLogger("decent_q")


import_graph = utils.import_graph  # pylint: disable=invalid-name


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


def calibrate_positions(graph_def, plan, batches, config, progress=None, s_config=None):
    """Runs CALIB FixNeurons on `batches` and returns {point name: kept position}.

    Args:
      graph_def: the prepared float GraphDef the plan was made on.
      plan: its Plan.
      batches: an iterable of (step, feed) where feed maps tensor names to arrays, or a
        callable input_fn(step) -> dict, called config.calib_iter times.
      config: QuantizeConfig.
      progress: optional callable(step) after each batch.
      s_config: optional tf.compat.v1.ConfigProto for the session (else from config).
    """
    graph = import_graph(graph_def)
    with graph.as_default():
        built = plan_lib.apply_to_graph(graph, plan, ops.Phase.CALIB,
                                        arch_type=config.arch_type,
                                        impl=config.fix_neuron_impl)
        hists = ops.histogram_variables(graph)
        # Running a point's output op runs its histogram update (a control dependency);
        # looking the update up by name fails with resource variables (TF2 behaviour on).
        counts = [built[p.name].op for p in plan.points]
        init = tf.compat.v1.variables_initializer(
            tf.compat.v1.get_collection(ops.POSITIONS_COLLECTION))
    with tf.compat.v1.Session(graph=graph, config=session_config(config, s_config)) as sess:
        sess.run(init)
        for step in range(config.calib_iter):
            batch = batches(step)
            try:
                sess.run(counts, feed_dict(graph, batch, step))
            except tf.errors.OpError as err:
                raise QuantizeError(f"calibration failed on batch {step}: "
                                    f"{op_error_text(err)}") from err
            if progress is not None:
                progress(step)
        values = sess.run(hists)
    positions = {}
    for name in sorted(values):
        kept = ops.kept_position_np(values[name])
        if kept is None:
            raise QuantizeError(f"FixNeuron {name} saw no data during calibration")
        positions[name] = kept
    return positions


def session_config(config, s_config=None):
    """The session options: the caller's ConfigProto `s_config` if given (a copy), else what
    the CLI's --gpu / --gpu_memory_fraction ask for."""
    if s_config is not None:
        options = tf.compat.v1.ConfigProto()
        options.CopyFrom(s_config)
        return options
    options = tf.compat.v1.ConfigProto()
    options.gpu_options.per_process_gpu_memory_fraction = float(config.gpu_memory_fraction)
    options.gpu_options.visible_device_list = str(config.gpu)
    options.gpu_options.allow_growth = True
    return options



# -- post-training quantization of a frozen graph ---------------------------------------------

def quantize_frozen(input_frozen_graph, input_fn, config=None, s_config=None, skip_check=None,
                    progress=True):
    """Post-training quantization: frozen float graph -> quantize_eval_model.pb, deploy_model.pb.

    The first five parameters are in the order of the original's
    ``quantize_frozen(input_graph_def, input_fn, q_config, s_config, skip_check)``.

    Args:
      input_frozen_graph: path of a frozen GraphDef (binary or text), or a GraphDef.
      input_fn: callable(step) -> {placeholder name: numpy array}, or its import path
        ``"module.function"`` (imported with the current folder on sys.path).
      config: QuantizeConfig; input_nodes, output_nodes and input_shapes are required.
      s_config: optional tf.compat.v1.ConfigProto for the sessions that run the graph (the
        float check and calibration); None: from config's gpu and gpu_memory_fraction.
      skip_check: optional 0/1; overrides config.skip_check.
      progress: show a progress bar on stderr during calibration (only if it is a terminal).

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}. Nothing is written unless every
      step succeeded.

    Raises:
      ConfigError: a required option is missing or malformed.
      QuantizeError: the graph, a node name, input_fn or its data is wrong; the message says
        what to fix.
    """
    start = time.time()
    if config is None:
        raise ConfigError("config is required: pass decent_q.QuantizeConfig(input_nodes=[...], "
                          "output_nodes=[...], input_shapes=[[...]]) as the third argument")
    s_config = check_session_config(s_config)
    if skip_check is not None:
        config = dataclasses.replace(config, skip_check=skip_check)
    config.require_nodes()
    check_output_dir(config.output_dir)
    fn, fn_name = load_input_fn(input_fn)
    graph_def = (utils.load_graph_def(input_frozen_graph)
                 if isinstance(input_frozen_graph, (str, os.PathLike)) else input_frozen_graph)
    check_config_nodes(graph_def, config)
    check_frozen(graph_def, config)
    graph_def = set_input_shapes(graph_def, config)

    first = call_input_fn(fn, 0, fn_name)
    if not config.skip_check:
        check_float_model(graph_def, config, first, fn_name, s_config)
    float_gd = prepare_float_graph(graph_def, config)
    plan = plan_lib.plan_quantization(float_gd, config)
    if not plan.points:
        raise QuantizeError("nothing to quantize between input_nodes "
                            f"{config.input_nodes} and output_nodes {config.output_nodes}; "
                            "check that the output nodes are reached from the input nodes")

    bar = Progress(config.calib_iter, enabled=progress)

    def batches(step):
        return first if step == 0 else call_input_fn(fn, step, fn_name)

    log.info("calibrating %d FixNeurons on %d batches from %s", len(plan.points),
             config.calib_iter, fn_name)
    try:
        positions = calibrate_positions(float_gd, plan, batches, config, progress=bar.update,
                                        s_config=s_config)
    finally:
        bar.close()
    eval_gd = plan_lib.apply_to_graph_def(float_gd, plan, positions, arch_type=config.arch_type)
    paths = write_models(eval_gd, config)
    log_summary(plan, paths, time.time() - start)
    return paths


def write_models(eval_graph_def, config, suffix=""):
    """Applies the position passes, builds the deploy model and writes both files.

    Both models are built before anything is written; each file is written atomically.

    Returns:
      {"quantize_eval_model": path, "deploy_model": path}.
    """
    from decent_q.deploy import deploy_graph_def  # pylint: disable=import-outside-toplevel
    eval_gd = adjust_positions(eval_graph_def, config)
    deploy_gd = deploy_graph_def(eval_gd, config)
    utils.prepare_output_dir(config.output_dir)
    paths = {"quantize_eval_model": os.path.join(config.output_dir,
                                                 f"quantize_eval_model{suffix}.pb"),
             "deploy_model": os.path.join(config.output_dir, f"deploy_model{suffix}.pb")}
    utils.save_graph_def(eval_gd, paths["quantize_eval_model"])
    utils.save_graph_def(deploy_gd, paths["deploy_model"])
    return paths


def prepare_float_graph(graph_def, config):
    """transforms.prepare_float_graph: clean-up, batch-norm folding, CLE, simulate_dpu."""
    from decent_q import transforms  # pylint: disable=import-outside-toplevel
    return transforms.prepare_float_graph(graph_def, config)


def adjust_positions(eval_graph_def, config):
    """transforms.adjust_positions: align_concat, shift cut, shift bias."""
    from decent_q import transforms  # pylint: disable=import-outside-toplevel
    return transforms.adjust_positions(eval_graph_def, config)


# -- checks ------------------------------------------------------------------------------------

def check_output_dir(path):
    """Raises QuantizeError if output_dir cannot be created or written; creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise QuantizeError(f"output_dir {path} is a file; give a folder path")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QuantizeError(f"output_dir {path} is not writable ({parent} is not); choose a "
                            "writable folder")


def check_config_nodes(graph_def, config):
    """Every node the config names exists in the graph (did-you-mean otherwise)."""
    node_map = utils.NodeMap(graph_def)
    if any(n.op == "FixNeuron" for n in graph_def.node):
        raise QuantizeError("the input graph already holds FixNeuron nodes (it is quantized); "
                            "give the float frozen graph")
    for what, names in (("input node", config.input_nodes),
                        ("output node", config.output_nodes),
                        ("ignore_nodes entry", config.ignore_nodes),
                        ("nodes_bit entry", list(config.nodes_bit)),
                        ("nodes_method entry", list(config.nodes_method))):
        utils.check_nodes_exist(node_map, names, what)


def set_input_shapes(graph_def, config):
    """A copy of graph_def whose input placeholders have config.input_shapes (-1: unknown).

    Input nodes that are not placeholders (in-graph preprocessing) are left alone.

    Raises:
      QuantizeError: a shape contradicts a known dimension of the placeholder.
    """
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    nodes = {n.name: n for n in out.node}
    for name, shape in zip(config.input_nodes, config.input_shapes):
        node = nodes[name]
        if node.op != "Placeholder":
            continue
        if "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            old = [d.size for d in node.attr["shape"].shape.dim]
            if len(old) != len(shape) or any(o >= 0 and s >= 0 and o != s
                                             for o, s in zip(old, shape)):
                raise QuantizeError(
                    f"input_shapes gives {_shape_text(shape)} for {name!r} but the graph "
                    f"says {_shape_text(old)}; fix --input_shapes")
            shape = [s if s >= 0 else o for s, o in zip(shape, old)]
        node.attr["shape"].shape.CopyFrom(
            tf.TensorShape([None if s < 0 else s for s in shape]).as_proto())
    return out


def _shape_text(shape):
    return ",".join("?" if d < 0 else str(d) for d in shape)


def check_session_config(s_config):
    """s_config if it is None or a ConfigProto; else a ConfigError naming what to pass."""
    if s_config is None or isinstance(s_config, tf.compat.v1.ConfigProto):
        return s_config
    hint = " (progress is a keyword argument: progress=False)" if isinstance(s_config, bool) \
        else ""
    raise ConfigError(f"s_config must be a tf.compat.v1.ConfigProto (the session options), got "
                      f"{type(s_config).__name__}{hint}")


def check_float_model(graph_def, config, batch, fn_name, s_config=None):
    """Runs the float graph on one batch; its output nodes must give finite values."""
    graph = import_graph(graph_def)
    feed = feed_dict(graph, batch, 0, fn_name)
    fetches = [graph.get_tensor_by_name(tensor_name(n)) for n in config.output_nodes]
    with tf.compat.v1.Session(graph=graph, config=session_config(config, s_config)) as sess:
        try:
            values = sess.run(fetches, feed)
        except tf.errors.OpError as err:
            raise QuantizeError(
                f"the float graph fails on {fn_name}(0): {op_error_text(err)}; check "
                "the input_fn data and that the graph is an inference graph (skip_check=1 "
                "skips this check)") from err
    for name, value in zip(config.output_nodes, values):
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise QuantizeError(
                f"the float graph gives NaN or Inf at output node {name!r} on {fn_name}(0); "
                "check the float model and the input_fn preprocessing")


def _first_line(text):
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def op_error_text(err):
    """The line of a tf.errors.OpError that says what went wrong, with the node it names
    ('Graph execution error:' and the creation stack trace dropped)."""
    lines = [l.strip() for l in str(err.message).splitlines() if l.strip()]
    node = next((l[len("Node: "):] for l in lines if l.startswith("Node: ")), None)
    if node is not None:
        after = lines[lines.index(f"Node: {node}") + 1:]
        reason = next((l for l in after if not l.startswith("[[")), "")
        return f"{reason} (node {node.strip(chr(39))})" if reason else lines[-1]
    useful = [l for l in lines if l != "Graph execution error:" and not l.startswith("[[")]
    return useful[0] if useful else _first_line(err.message)


def check_frozen(graph_def, config):
    """Raises QuantizeError if the output nodes depend on variables (the graph is not
    frozen); variables nothing uses, like a left-over global_step, are allowed."""
    node_map = utils.NodeMap(graph_def)
    seen, stack, variables = set(), list(config.output_nodes), []
    while stack:
        name = node_name(stack.pop())
        if name in seen or name not in node_map:
            continue
        seen.add(name)
        node = node_map[name]
        if node.op in _VARIABLE_OPS:
            variables.append(name)
        stack.extend(node.input)
    if variables:
        shown = ", ".join(sorted(variables)[:3]) + (
            f" and {len(variables) - 3} more" if len(variables) > 3 else "")
        raise QuantizeError(
            f"the graph is not frozen: the output nodes read {len(variables)} variable(s) "
            f"({shown}); freeze it first, e.g. 'freeze_graph --input_graph graph.pb "
            "--input_checkpoint model.ckpt --input_binary true --output_graph frozen.pb "
            f"--output_node_names {','.join(config.output_nodes)}'")


_VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp"})


# -- input_fn --------------------------------------------------------------------------------

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
                            f"{type(err).__name__}: {_first_line(err) or repr(err)}") from err


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


# -- reporting -------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar with batches/s on stderr, shown only on a terminal."""

    def __init__(self, total, enabled=True, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = bool(enabled) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.time()
        self.shown = False

    def update(self, step):
        if not self.enabled:
            return
        done = step + 1
        rate = done / max(time.time() - self.start, 1e-9)
        width = 30
        filled = int(width * done / self.total)
        self.stream.write(f"\r[decent_q] calibration [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{self.total} {rate:.1f} batches/s")
        self.stream.flush()
        self.shown = True

    def close(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def log_summary(plan, paths, seconds):
    """Logs what was quantized, what stayed float and why, the files and the time."""
    quantized = {node_name(p.tensor) for p in plan.points}
    log.info("quantized: %d FixNeurons on %d nodes, %d compute layers", len(plan.points),
             len(quantized), len(plan.layers))
    reasons = collections.Counter(_reason_kind(r) for r in plan.float_nodes.values())
    if reasons:
        log.info("left float: %d nodes (%s)", len(plan.float_nodes),
                 ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    for path in paths.values():
        log.info("wrote %s", path)
    log.info("done in %.1f s", seconds)


def _reason_kind(reason):
    """'Softmax is not quantized by design' -> 'not quantized by design' (groups reasons)."""
    for key in ("not quantized by design", "not supported", "in ignore_nodes",
                "an input is not quantized", "not parameters"):
        if key in reason:
            return key
    return reason
