"""``freeze_graph``: a GraphDef + checkpoint (or a SavedModel) -> one frozen GraphDef.

TensorFlow 2 wheels no longer install the ``freeze_graph`` command the guide uses; this one
takes the same flags::

    freeze_graph --input_graph inf_graph.pb --input_checkpoint model.ckpt-1000 \\
        --input_binary true --output_graph frozen_graph.pb --output_node_names logits
    freeze_graph --input_saved_model_dir export/ --saved_model_tags serve \\
        --output_graph frozen_graph.pb --output_node_names logits

A graph + checkpoint whose variables are all ref variables (TF1's default) is frozen by
TensorFlow's own ``tensorflow.python.tools.freeze_graph`` (still shipped as a library in
TensorFlow 2), after decent_q has checked the files, the output nodes and that the checkpoint
belongs to the graph, so mistakes get decent_q's messages. Resource variables (TF2 behaviour,
Keras) are restored by decent_q itself: TensorFlow's function builds a ``Saver`` from the
graph's ``<variable>:0`` tensors, which for a resource variable is its handle, and the restore
then fails with "Could not find variable". decent_q assigns the checkpoint's values to the
imported graph's variables (ref or resource) and replaces them by constants
(``convert_variables_to_constants``). SavedModels must be TF1-style (graph + variables, as
``tf.compat.v1.saved_model`` writes them).
"""

import argparse
import logging
import os
import sys

from decent_q.errors import ConfigError, QuantizeError

log = logging.getLogger("decent_q")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="freeze_graph", description="Freeze a TensorFlow graph: variables from a "
                                         "checkpoint become constants.")
    parser.add_argument("--input_graph", default="", help="GraphDef file (binary or text, see "
                                                          "--input_binary)")
    parser.add_argument("--input_binary", nargs="?", const=True, default=False, type=_bool,
                        help="whether --input_graph is binary (true) or text (false, default)")
    parser.add_argument("--input_checkpoint", default="",
                        help="checkpoint prefix (model.ckpt-1000) or its folder (the latest "
                             "checkpoint in it)")
    parser.add_argument("--input_saved_model_dir", default="",
                        help="TF1 SavedModel folder, instead of --input_graph/--input_checkpoint")
    parser.add_argument("--saved_model_tags", default="serve",
                        help="comma-separated tags of the SavedModel's MetaGraph (default serve)")
    parser.add_argument("--output_graph", required=True, help="where to write the frozen graph")
    parser.add_argument("--output_node_names", required=True,
                        help="comma-separated names of the output nodes")
    parser.add_argument("--clear_devices", nargs="?", const=True, default=True, type=_bool,
                        help="remove device placements (default true)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def freeze(output_node_names, input_graph="", input_checkpoint="", input_binary=False,
           input_saved_model_dir="", saved_model_tags="serve", clear_devices=True):
    """The frozen GraphDef of a graph + checkpoint or of a TF1 SavedModel.

    Raises:
      ConfigError: the arguments do not name one input.
      QuantizeError: a file is missing or unreadable, or an output node is not in the graph.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from decent_q.graph import utils  # pylint: disable=import-outside-toplevel
    outputs = [n.strip() for n in output_node_names.split(",") if n.strip()]
    if not outputs:
        raise ConfigError("--output_node_names is empty; give the output node names, comma "
                          "separated")
    if bool(input_saved_model_dir) == bool(input_graph):
        raise ConfigError("give either --input_graph with --input_checkpoint, or "
                          "--input_saved_model_dir")
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        if input_saved_model_dir:
            if not os.path.isdir(input_saved_model_dir):
                raise QuantizeError(f"SavedModel folder {input_saved_model_dir} does not exist")
            tags = [t.strip() for t in saved_model_tags.split(",") if t.strip()]
            try:
                meta = tf.compat.v1.saved_model.loader.load(sess, tags, input_saved_model_dir)
            except (RuntimeError, OSError, ValueError, tf.errors.OpError) as err:
                raise QuantizeError(f"cannot load SavedModel {input_saved_model_dir} with tags "
                                    f"{tags}: {str(err).splitlines()[0]}") from err
            graph_def = meta.graph_def
        else:
            if not input_checkpoint:
                raise ConfigError("--input_graph needs --input_checkpoint (the checkpoint "
                                  "prefix, e.g. model.ckpt-1000)")
            graph_def = _read_graph(input_graph, input_binary)
            if clear_devices:
                for node in graph_def.node:
                    node.device = ""
            checkpoint = _checkpoint_path(input_checkpoint)
            utils.check_nodes_exist(utils.NodeMap(graph_def), outputs, "output node")
            _check_checkpoint_matches(graph_def, checkpoint)
            if not any(n.op == "VarHandleOp" for n in graph_def.node):
                return _freeze_with_tensorflow(graph_def, checkpoint, outputs)
            tf.graph_util.import_graph_def(graph_def, name="")
            _restore(sess, graph, checkpoint)
            graph_def = graph.as_graph_def()
        utils.check_nodes_exist(utils.NodeMap(graph_def), outputs, "output node")
        try:
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph_def, outputs)
        except (tf.errors.OpError, ValueError, AssertionError) as err:
            raise QuantizeError(f"freezing failed: {str(err).strip().splitlines()[0]}; are "
                                "all variables in the checkpoint?") from err
    return frozen


def _reader(checkpoint):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
        return tf.compat.v1.train.NewCheckpointReader(checkpoint)
    except (tf.errors.OpError, ValueError) as err:
        raise QuantizeError(f"cannot read checkpoint {checkpoint}: "
                            f"{str(err).strip().splitlines()[0]}") from err


def _check_checkpoint_matches(graph_def, checkpoint):
    """Raises QuantizeError if the checkpoint holds none of the graph's variables."""
    from decent_q import registry  # pylint: disable=import-outside-toplevel
    stored = set(_reader(checkpoint).get_variable_to_shape_map())
    names = {n.name for n in graph_def.node if n.op in registry.VARIABLE_OPS}
    if names and not names & stored:
        raise QuantizeError(f"checkpoint {checkpoint} holds none of the graph's variables; "
                            "is it the checkpoint of this graph?")


def _freeze_with_tensorflow(graph_def, checkpoint, outputs):
    """TensorFlow's freeze_graph on a graph of ref variables (see the module docstring)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.python.tools import freeze_graph as tf_freeze  # pylint: disable=import-outside-toplevel,no-name-in-module
    try:
        return tf_freeze.freeze_graph_with_def_protos(
            input_graph_def=graph_def, input_saver_def=None, input_checkpoint=checkpoint,
            output_node_names=",".join(outputs), restore_op_name="", filename_tensor_name="",
            output_graph="", clear_devices=False, initializer_nodes="")
    except (tf.errors.OpError, ValueError, TypeError, AssertionError) as err:
        raise QuantizeError(f"freezing failed: {str(err).strip().splitlines()[0]}; are "
                            "all variables in the checkpoint?") from err


def _restore(sess, graph, checkpoint):
    """Assigns the checkpoint's values to the graph's variables (ref and resource)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from decent_q import registry  # pylint: disable=import-outside-toplevel
    reader = _reader(checkpoint)
    assigns = []
    with graph.as_default():
        for key in sorted(reader.get_variable_to_shape_map()):
            try:
                op = graph.get_operation_by_name(key)
            except KeyError:
                continue
            value = tf.constant(reader.get_tensor(key))
            if op.type == "VarHandleOp":
                assigns.append(tf.raw_ops.AssignVariableOp(resource=op.outputs[0], value=value))
            elif op.type in registry.VARIABLE_OPS:  # ref variables
                assigns.append(tf.raw_ops.Assign(ref=op.outputs[0], value=value))
    if not assigns:
        raise QuantizeError(f"checkpoint {checkpoint} holds none of the graph's variables; "
                            "is it the checkpoint of this graph?")
    try:
        sess.run(assigns)
    except (tf.errors.OpError, ValueError) as err:
        raise QuantizeError(f"restoring {checkpoint} into the graph failed: "
                            f"{str(err).strip().splitlines()[0]}") from err


def _read_graph(path, binary):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
        raise QuantizeError(f"input graph {path} does not exist; check --input_graph")
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        data = f.read()
    try:
        if binary:
            graph_def.ParseFromString(data)
        else:
            text_format.Merge(data.decode("utf-8"), graph_def)
    except Exception as err:  # protobuf raises several types  pylint: disable=broad-except
        other = "false" if binary else "true"
        raise QuantizeError(f"input graph {path} cannot be parsed as a "
                            f"{'binary' if binary else 'text'} GraphDef; try --input_binary "
                            f"{other}") from err
    return graph_def


def _checkpoint_path(path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise QuantizeError(f"checkpoint folder {path} holds no checkpoint")
        return latest
    if not (os.path.exists(path + ".index") or os.path.exists(path)):
        raise QuantizeError(f"checkpoint {path} does not exist (no {path}.index); give the "
                            "prefix, e.g. model.ckpt-1000")
    return path


def main(argv=None):
    """The freeze_graph command; returns the exit status (0 ok, 2 usage, 1 failure)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        frozen = freeze(args.output_node_names, args.input_graph, args.input_checkpoint,
                        args.input_binary, args.input_saved_model_dir, args.saved_model_tags,
                        args.clear_devices)
        from decent_q.graph import utils  # pylint: disable=import-outside-toplevel
        folder = os.path.dirname(os.path.abspath(args.output_graph))
        os.makedirs(folder, exist_ok=True)
        utils.save_graph_def(frozen, args.output_graph)
    except ConfigError as err:
        print(f"[decent_q] ERROR: {err}", file=sys.stderr)
        return 2
    except QuantizeError as err:
        print(f"[decent_q] ERROR: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # pylint: disable=broad-except
        if args.debug:
            raise
        print(f"[decent_q] ERROR: {type(err).__name__}: {err} (rerun with --debug)",
              file=sys.stderr)
        return 1
    print(f"[decent_q] froze {len(frozen.node)} nodes into {args.output_graph}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
