"""Op-type patterns matched backwards from a tensor, over a frozen GraphDef or a live tf.Graph.

In the spirit of tf.contrib.quantize's graph_matcher: a pattern describes the ops that produce
a tensor, by op type and inputs, with alternatives and captured names::

    Op("Relu", [Op({"BiasAdd", "Add"}, [Op("Conv2D", {0: Data("input"),
                                                     1: Param("weight")}, name="compute"),
                                        Param("bias")], commutative=True)])

- :class:`Op`: an op of one of ``types`` whose data inputs match ``inputs`` (a list, or a dict
  {input index: pattern}; unlisted inputs are free). ``commutative``: a two-input op may match
  its inputs in either order. ``where(view, op_name)``: an extra condition (attributes).
- :class:`Tensor`: any tensor, or one of a ``kind`` the caller's :class:`Context` decides
  (``"param"``: a weight or constant; ``"data"``: not a parameter).
- :class:`OneOf`: the first alternative that matches (list the longer form first: that is how
  an optional op is written, ``OneOf(Op("BiasAdd", [inner, Param("b")]), inner)``).
- :class:`Bind` names the tensor an inner pattern matched; :class:`Ref` matches only the tensor
  bound to a name already, for forms that read one tensor twice (``Maximum(Mul(a, x), x)``).

A name bound twice must bind the same op or tensor. Matching backtracks over ``OneOf`` and
commutative inputs. The graph is read through one adapter, :func:`view`, so the same
declarations serve the frozen-graph passes and the live rewrites of QAT.
"""

import dataclasses
from typing import Callable, Dict, Optional, Tuple, Union

from decent_q.graph import utils
from decent_q.graph.utils import node_name, tensor_name


# -- the graph, read through one adapter -------------------------------------------------------

class GraphDefView:
    """A GraphDef (or its NodeMap), read by op name and tensor name."""

    def __init__(self, graph_def_or_map):
        self.nm = graph_def_or_map if isinstance(graph_def_or_map, utils.NodeMap) else \
            utils.NodeMap(graph_def_or_map)

    def op_type(self, name):
        node = self.nm.nodes.get(name)
        return None if node is None else node.op

    def data_inputs(self, name):
        return [tensor_name(i) for i in self.nm.data_inputs(self.nm[name])]

    def consumers(self, tensor):
        """Names of the ops that read `tensor` as data, without repeats."""
        return list(dict.fromkeys(n.name for n, _ in self.nm.consumers.get(tensor_name(tensor),
                                                                          ())))

    def attr(self, name, key, default=None):
        node = self.nm[name]
        return node.attr[key] if key in node.attr else default


class LiveView:
    """A live tf.Graph, read by op name and tensor name."""

    def __init__(self, graph):
        self.graph = graph

    def _op(self, name):
        try:
            return self.graph.get_operation_by_name(name)
        except KeyError:
            return None

    def op_type(self, name):
        op = self._op(name)
        return None if op is None else op.type

    def data_inputs(self, name):
        return [t.name for t in self._op(name).inputs]

    def consumers(self, tensor):
        return list(dict.fromkeys(op.name for op in
                                  self.graph.get_tensor_by_name(tensor_name(tensor)).consumers()))

    def attr(self, name, key, default=None):
        node_def = self._op(name).node_def
        return node_def.attr[key] if key in node_def.attr else default


def view(graph):
    """The adapter for a GraphDef, a NodeMap or a live tf.Graph (a view is returned as is)."""
    if isinstance(graph, (GraphDefView, LiveView)):
        return graph
    if hasattr(graph, "get_operation_by_name"):
        return LiveView(graph)
    return GraphDefView(graph)


# -- patterns --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
    types: Union[str, frozenset, None]  # None: any op type
    inputs: Union[list, dict, tuple, None] = None
    name: Optional[str] = None
    commutative: bool = False
    where: Optional[Callable] = None

    def input_patterns(self):
        """((index, pattern), ...) of the constrained inputs."""
        if self.inputs is None:
            return ()
        items = self.inputs.items() if isinstance(self.inputs, dict) else enumerate(self.inputs)
        return tuple(sorted(items, key=lambda item: item[0]))

    def accepts(self, op_type):
        if self.types is None:
            return True
        return op_type == self.types if isinstance(self.types, str) else op_type in self.types


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: Optional[str] = None
    kind: Optional[str] = None  # None: any tensor; else decided by Context.is_kind


def Param(name=None):  # pylint: disable=invalid-name
    """A parameter tensor (weight, bias, constant), as the Context decides."""
    return Tensor(name, "param")


def Weight(name=None):  # pylint: disable=invalid-name
    """A compute op's weight: a parameter unless the Context says otherwise."""
    return Tensor(name, "weight")


def Data(name=None):  # pylint: disable=invalid-name
    """A data tensor (not a parameter), as the Context decides."""
    return Tensor(name, "data")


@dataclasses.dataclass(frozen=True)
class OneOf:
    alternatives: Tuple

    def __init__(self, *alternatives):
        object.__setattr__(self, "alternatives", tuple(alternatives))


@dataclasses.dataclass(frozen=True)
class Bind:
    name: str
    pattern: object


@dataclasses.dataclass(frozen=True)
class Ref:
    name: str


class Context:
    """What the patterns leave to the caller: which tensors are parameters and which ops may
    take part in a match (e.g. only ops of the quantized range)."""

    def __init__(self, is_param=None, allowed=None, is_data=None, is_weight=None):
        self.is_param = is_param or (lambda tensor: False)
        self.allowed = allowed or (lambda name: True)
        self.is_data = is_data or (lambda tensor: not self.is_param(tensor))
        self.is_weight = is_weight or self.is_param

    def is_kind(self, kind, tensor):
        return {"param": self.is_param, "data": self.is_data,
                "weight": self.is_weight}[kind](tensor)


# -- matching --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Match:
    """A match: ``captures`` {name: op name (Op) or tensor name}, ``ops`` the matched op names
    (inputs before their consumers), ``interior`` the tensors of matched ops that other matched
    ops read."""
    root: str
    captures: Dict[str, str]
    ops: Tuple[str, ...]
    interior: Tuple[str, ...]

    def get(self, name, default=None):
        return self.captures.get(name, default)

    def __getitem__(self, name):
        return self.captures[name]

    def closed(self, graph_view, after=()):
        """True if no op outside the match reads an interior tensor (produced by an op of
        ``after``, if given: e.g. only the ops after a layer's compute op)."""
        ops = set(self.ops)
        return all(set(graph_view.consumers(t)) <= ops for t in self.interior
                   if not after or node_name(t) in after)


def _bind(captures, name, value):
    if name is None:
        return captures
    if name in captures:
        return captures if captures[name] == value else None
    new = dict(captures)
    new[name] = value
    return new


def _states(pattern, tensor, state, graph_view, context):
    """Yields every (captures, ops, interior) extending `state` where `pattern` matches."""
    captures, ops, interior = state
    if isinstance(pattern, OneOf):
        for alternative in pattern.alternatives:
            yield from _states(alternative, tensor, state, graph_view, context)
    elif isinstance(pattern, Bind):
        for captures2, ops2, interior2 in _states(pattern.pattern, tensor, state, graph_view,
                                                 context):
            bound = _bind(captures2, pattern.name, tensor)
            if bound is not None:
                yield bound, ops2, interior2
    elif isinstance(pattern, Ref):
        if captures.get(pattern.name) == tensor:
            yield state
    elif isinstance(pattern, Tensor):
        if pattern.kind is None or context.is_kind(pattern.kind, tensor):
            bound = _bind(captures, pattern.name, tensor)
            if bound is not None:
                yield bound, ops, interior
    else:
        yield from _op_states(pattern, tensor, state, graph_view, context)


def _op_states(pattern, tensor, state, graph_view, context):
    name = node_name(tensor)
    op_type = graph_view.op_type(name)
    if op_type is None or not pattern.accepts(op_type) or not context.allowed(name):
        return
    if pattern.where is not None and not pattern.where(graph_view, name):
        return
    captures = _bind(state[0], pattern.name, name)
    if captures is None:
        return
    inputs = graph_view.data_inputs(name)
    items = pattern.input_patterns()
    if any(index >= len(inputs) for index, _ in items):
        return
    orders = [items]
    if pattern.commutative and len(inputs) == 2 and len(items) == 2:
        # The same patterns, in the same order, against the swapped inputs (a Ref still comes
        # after the Bind it refers to).
        orders.append(((1, items[0][1]), (0, items[1][1])))
    for order in orders:
        for captures2, ops2, interior2 in _inputs(order, inputs, (captures, state[1], state[2]),
                                                  graph_view, context):
            yield captures2, ops2 + (name,) if name not in ops2 else ops2, interior2


def _inputs(items, inputs, state, graph_view, context):
    if not items:
        yield state
        return
    (index, pattern), rest = items[0], items[1:]
    tensor = inputs[index]
    for captures, ops, interior in _states(pattern, tensor, state, graph_view, context):
        if node_name(tensor) in ops and tensor not in interior:
            interior = interior + (tensor,)
        yield from _inputs(rest, inputs, (captures, ops, interior), graph_view, context)


def match(pattern, tensor, graph, context=None):
    """The first match of `pattern` at `tensor` (a tensor or op name; op output 0 for an op
    name) in `graph` (a GraphDef, NodeMap, tf.Graph or view), or None."""
    for found in matches(pattern, tensor, graph, context):
        return found
    return None


def matches(pattern, tensor, graph, context=None):
    """Every match of `pattern` at `tensor`, in the order the alternatives are declared."""
    graph_view = view(graph)
    context = context or Context()
    tensor = tensor_name(tensor)
    for captures, ops, interior in _states(pattern, tensor, ({}, (), ()), graph_view, context):
        yield Match(node_name(tensor), captures, ops, interior)
