"""GraphDef helpers: names, node maps, consumers, the quantized range, loading and saving."""

import collections
import difflib
import functools
import gc
import heapq
import os
import re
import tempfile

import numpy as np
import tensorflow as tf
from google.protobuf import message as pb_message

from decent_q.errors import QuantizeError


def gc_paused(function):
    """Runs `function` with Python's cyclic garbage collector off (as it was before, after).

    Rewriting a graph allocates millions of small objects while the graph's own objects stay
    alive; every collection of the oldest generation walks all of them, so a rewrite's time
    grew faster than the graph (QAT of a 2,000-layer chain: 38 ms a layer against 24 at 100 with
    the collector on, 27 with it off). Reference counting still frees what the passes drop;
    only cycles wait for the next collection. Not used around a user's code (input_fn)."""
    @functools.wraps(function)
    def paused(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return paused


def node_name(tensor_or_input):
    """'^a', 'a:1', 'a' -> 'a'."""
    name = tensor_or_input[1:] if tensor_or_input.startswith("^") else tensor_or_input
    head, _, tail = name.rpartition(":")
    return head if head and tail.isdigit() else name


def tensor_name(name):
    """'a' -> 'a:0'; 'a:1' stays."""
    name = name[1:] if name.startswith("^") else name
    head, _, tail = name.rpartition(":")
    return name if head and tail.isdigit() else name + ":0"


def is_control(inp):
    return inp.startswith("^")


class NodeMap:
    """Name -> NodeDef and tensor -> consumers of a GraphDef, in the GraphDef's order."""

    def __init__(self, graph_def):
        self.graph_def = graph_def
        self.nodes = collections.OrderedDict((n.name, n) for n in graph_def.node)
        self.consumers = collections.defaultdict(list)  # 'a:0' -> [(node, input index)]
        self.control_consumers = collections.defaultdict(list)
        self._users = collections.defaultdict(dict)  # node name -> {consumer name: consumer}
        for node in graph_def.node:
            for i, inp in enumerate(node.input):
                if is_control(inp):
                    self.control_consumers[node_name(inp)].append(node)
                else:
                    self.consumers[tensor_name(inp)].append((node, i))
                    self._users[node_name(inp)][node.name] = node

    def __getitem__(self, name):
        return self.nodes[name]

    def __contains__(self, name):
        return name in self.nodes

    def get(self, name):
        return self.nodes.get(node_name(name))

    def producer(self, inp):
        return self.nodes.get(node_name(inp))

    def data_inputs(self, node):
        return [i for i in node.input if not is_control(i)]

    def input_node(self, node, index):
        return self.producer(self.data_inputs(node)[index])

    def ancestors(self, names, stop=(), data_only=False):
        """`names` and every node they are computed from (control inputs too unless
        `data_only`), not walking past the nodes in `stop` (which are included)."""
        seen, stack = set(), [n for n in names if n in self.nodes]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in stop:
                continue
            stack.extend(node_name(i) for i in self.nodes[name].input
                         if node_name(i) in self.nodes and not (data_only and is_control(i)))
        return seen

    def node_consumers(self, name):
        """All data consumers of any output of node `name`, in graph order, without repeats."""
        return list(self._users.get(name, {}).values())

    def users(self, name):
        """Names of the nodes that read node `name`, as data or control."""
        return set(self._users.get(name, {})) | \
            {n.name for n in self.control_consumers.get(name, ())}

    def const(self, inp):
        """The Const node producing input or tensor `inp`, or None."""
        node = self.producer(inp)
        return node if node is not None and node.op == "Const" else None


def check_nodes_exist(node_map, names, what):
    """Raises QuantizeError naming the first missing node and the closest existing names;
    `node_map` is a NodeMap or a set of the graph's node names."""
    known = node_map.nodes if isinstance(node_map, NodeMap) else node_map
    for name in names:
        if node_name(name) not in known:
            close = difflib.get_close_matches(node_name(name), list(known), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                "; run 'vai_q_tensorflow inspect' to list candidate nodes"
            raise QuantizeError(f"{what} {name!r} is not in the graph{hint}")


def topological_order(graph_def):
    """Node names in a topological order that follows the GraphDef's own order on ties."""
    nodes = {n.name: n for n in graph_def.node}
    position = {n.name: i for i, n in enumerate(graph_def.node)}
    indegree = {name: 0 for name in nodes}
    users = collections.defaultdict(list)
    for node in graph_def.node:
        for inp in set(node_name(i) for i in node.input):
            if inp in nodes:
                indegree[node.name] += 1
                users[inp].append(node.name)
    ready = [(position[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for user in users[name]:
            indegree[user] -= 1
            if indegree[user] == 0:
                heapq.heappush(ready, (position[user], user))
    if len(order) != len(nodes):
        # Cycles (while loops): keep the remaining nodes in GraphDef order.
        done = set(order)
        order += [n.name for n in graph_def.node if n.name not in done]
    return order


def range_nodes(node_map, input_nodes, output_nodes):
    """Names of the nodes between input_nodes and output_nodes (both included): ancestors of an
    output that are reached from an input without passing through another input."""
    ancestors = node_map.ancestors(output_nodes, stop=set(input_nodes), data_only=True)
    forward = set()
    stack = [n for n in input_nodes if n in ancestors]
    while stack:
        name = stack.pop()
        if name in forward:
            continue
        forward.add(name)
        stack.extend(c.name for c in node_map.node_consumers(name) if c.name in ancestors)
    return forward


def import_graph(graph_def):
    """A new tf.Graph holding `graph_def` with its own names (no prefix).

    Raises:
      QuantizeError: TensorFlow cannot load the graph (an op type it does not know, a bad
        attribute or edge); the message names the problem.
    """
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as err:
            unknown = re.search(r"Op type not registered '([^']+)'", str(err))
            if unknown:
                raise QuantizeError(
                    f"the graph uses op type {unknown.group(1)!r}, which this TensorFlow does "
                    "not know; load the library that registers it (tf.load_op_library, e.g. "
                    "in the input_fn module) or export the graph without it") from err
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise QuantizeError(f"the graph cannot be loaded into TensorFlow: {first}") from err
    return graph


def load_graph_def(path):
    """Reads a frozen GraphDef (binary or text) and explains every way that can go wrong."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            raise QuantizeError(
                f"{path} is a SavedModel folder, not a frozen graph; freeze it first, e.g. "
                "'freeze_graph --input_saved_model_dir ... --output_graph frozen.pb "
                "--output_node_names ...'")
        raise QuantizeError(f"{path} is a folder; give the path of a frozen graph .pb file")
    if not os.path.exists(path):
        raise QuantizeError(f"input graph {path} does not exist; check the path")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise QuantizeError(f"cannot read input graph {path}: {err.strerror}") from err
    if not data:
        raise QuantizeError(f"input graph {path} is empty; re-export the frozen graph")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (pb_message.DecodeError, RuntimeError, ValueError):
        from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
        try:
            text_format.Merge(data.decode("utf-8"), graph_def)
        except (UnicodeDecodeError, text_format.ParseError) as err:
            raise QuantizeError(f"input graph {path} is not a TensorFlow GraphDef (binary or "
                                "text); it may be truncated or another file type") from err
    if not graph_def.node:
        raise QuantizeError(f"input graph {path} holds no nodes; it is not a frozen GraphDef")
    return graph_def


TEMP_PREFIX = ".tmp-"  # write_atomic's temporary files: .tmp-<pid>-<random>


def write_atomic(path, data):
    """Writes bytes to path through a temporary file and a rename: readers see the old file or
    the complete new one, never a partial file.

    A process killed while writing (SIGKILL) leaves a hidden ``.tmp-<pid>-*`` file, never a
    partial `path`; :func:`remove_stale_temp_files` (run by prepare_output_dir) deletes it."""
    commit_temp(write_temp(path, data), path)


def write_temp(path, data):
    """The first half of :func:`write_atomic`: `data` written and synced to a new temporary
    file beside `path`; returns its path (for :func:`commit_temp`)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=folder)
    try:
        # mkstemp makes the file 0600; a tool's output follows the umask like open() would
        # (0644 under umask 022), so a compiler container running as another user can read it.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_temp(tmp)
        raise
    return tmp


def commit_temp(tmp, path):
    """The second half of :func:`write_atomic`: the temporary file renamed to `path`."""
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_temp(tmp)
        raise


def remove_temp(tmp):
    if os.path.exists(tmp):
        os.remove(tmp)


def current_umask():
    """The process umask, read without changing it (Linux: /proc; else set and restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder):
    """Deletes the temporary files of write_atomic calls whose process is gone (killed)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in sorted(names):
        pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not name.startswith(TEMP_PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def prepare_output_dir(path):
    """Creates output_dir if needed and removes temporary files a killed run left in it;
    raises QuantizeError if it is a file or not writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise QuantizeError(f"output_dir {path} is a file; give a folder path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise QuantizeError(f"cannot create output_dir {path}: {err.strerror}; choose a "
                            "writable folder") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise QuantizeError(f"output_dir {path} is not writable; choose a writable folder")
    remove_stale_temp_files(path)
    return path


def save_graph_def(graph_def, path):
    """Serializes deterministically and writes atomically."""
    write_atomic(path, graph_def.SerializeToString(deterministic=True))
    return path


def with_nodes(template, nodes=()):
    """A new GraphDef with `template`'s versions and function library and the given nodes."""
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(template.versions)
    out.library.CopyFrom(template.library)
    out.node.extend(nodes)
    return out


def make_node(op, name, inputs=(), **attrs):
    """A NodeDef with attributes given as tf.compat.v1.AttrValue or plain Python values."""
    node = tf.compat.v1.NodeDef(op=op, name=name, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value if isinstance(value, tf.compat.v1.AttrValue)
                                else attr_value(value))
    return node


def attr_value(value):
    if isinstance(value, bool):
        return tf.compat.v1.AttrValue(b=value)
    if isinstance(value, int):
        return tf.compat.v1.AttrValue(i=value)
    if isinstance(value, float):
        return tf.compat.v1.AttrValue(f=value)
    if isinstance(value, str):
        return tf.compat.v1.AttrValue(s=value.encode())
    if isinstance(value, tf.DType):
        return tf.compat.v1.AttrValue(type=value.as_datatype_enum)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return tf.compat.v1.AttrValue(list=tf.compat.v1.AttrValue.ListValue(i=list(value)))
    raise TypeError(f"unsupported attr value {value!r}")


# Numeric dtypes whose multi-element tensors TensorFlow stores as raw bytes (tensor_content),
# C order, little-endian as numpy holds them here.
_RAW_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8,
                                              np.int16, np.int32, np.int64, np.uint8))


def const_node(name, array, dtype=None):
    """A Const NodeDef holding `array` (cast to `dtype` if given).

    A weight tensor's bytes go into the node once: the same TensorProto that
    tf.make_tensor_proto makes (tensor_content for more than one element of a numeric
    dtype), without its copies through an AttrValue (ResNet50's folded weights: 100 MB)."""
    array = np.asarray(array if dtype is None else array.astype(dtype))
    if array.size <= 1 or array.dtype not in _RAW_DTYPES:
        return make_node("Const", name, dtype=tf.as_dtype(array.dtype),
                         value=tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(array)))
    node = tf.compat.v1.NodeDef(op="Const", name=name)
    node.attr["dtype"].type = tf.as_dtype(array.dtype).as_datatype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = node.attr["dtype"].type
    tensor.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    tensor.tensor_content = array.tobytes()
    return node


def const_value(node):
    """The numpy value of a Const node. Read-only when the tensor is stored as raw bytes: a
    view of the bytes read from the proto (one copy instead of tf.make_ndarray's two); copy
    it before changing it."""
    tensor = node.attr["value"].tensor
    if tensor.tensor_content:
        dtype = np.dtype(tf.as_dtype(tensor.dtype).as_numpy_dtype)
        if dtype in _RAW_DTYPES:
            shape = [d.size for d in tensor.tensor_shape.dim]
            return np.frombuffer(tensor.tensor_content, dtype).reshape(shape)
    return tf.make_ndarray(tensor)
