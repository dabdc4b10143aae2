"""The ``vai_q_tensorflow`` (and ``decent_q``) command: argument parsing only.

    vai_q_tensorflow quantize --input_frozen_graph frozen.pb --input_nodes input \\
        --output_nodes logits --input_shapes ?,224,224,3 --input_fn my_input_fn.calib_input
    vai_q_tensorflow inspect --input_frozen_graph frozen.pb
    vai_q_tensorflow dump --input_frozen_graph quantize_results/quantize_eval_model.pb \\
        --input_fn my_input_fn.dump_input --max_dump_batches 1 --dump_float 0
    vai_q_tensorflow analyze --input_frozen_graph frozen.pb --input_nodes input \\
        --output_nodes logits --input_shapes ?,224,224,3 --input_fn my_input_fn.calib_input
    vai_q_tensorflow export --input_frozen_graph quantize_results/quantize_eval_model.pb \\
        [--onnx_opset 13] [--onnx_rounding dpu]

Quantization options come from :data:`decent_q.config.OPTIONS`, so the CLI and the Python API
share their defaults. Exit status: 0 success, 2 usage error, 1 failure, 130 interrupted
(Ctrl-C; like a shell's 128 + SIGINT). Errors are one line; --debug adds the traceback.
"""

import argparse
import dataclasses
import logging
import os
import re
import sys
import traceback

from decent_q import config as config_lib
from decent_q.errors import ConfigError, QuantizeError
from decent_q.version import __version__

log = logging.getLogger("decent_q")

_COMMANDS = {
    "quantize": "post-training quantization of a frozen graph: writes quantize_eval_model.pb "
                "and deploy_model.pb",
    "inspect": "list op types, estimated input/output nodes and what would be quantized",
    "dump": "dump the simulation results of a quantize_eval_model.pb per batch",
    "analyze": "per-layer quantization error (SQNR with weights only, activations only and "
               "both quantized) of a frozen graph: writes analyze_report.md, .json and .png "
               "and prints the table",
    "export": "convert a quantize_eval_model.pb into ONNX: writes <output_dir>/<its name>.onnx "
              "(QuantizeLinear / DequantizeLinear; input_nodes / output_nodes, if given, are "
              "the ONNX model's inputs and outputs)",
}


def build_parser(prog="vai_q_tensorflow"):
    """The argument parser: subcommands quantize, inspect, dump, analyze, export; every
    QuantizeConfig option whose metadata says cli=True."""
    common = argparse.ArgumentParser(add_help=False)
    files = common.add_argument_group("files")
    files.add_argument("--input_frozen_graph", required=True,
                       help="frozen GraphDef (.pb, binary or text); for dump, a "
                            "quantize_eval_model.pb")
    files.add_argument("--input_fn", default="",
                       help="module_name.function_name of the input function (imported with "
                            "the current folder on sys.path); it takes the step number and "
                            "returns {placeholder_name: numpy array}")
    options = common.add_argument_group("options (QuantizeConfig fields, same defaults as the Python API)")
    for field in config_lib.OPTIONS:
        if not field.metadata["cli"]:
            continue
        default = field.default if field.default is not dataclasses.MISSING \
            else ""
        kind = type(default) if isinstance(default, (int, float, str)) else str
        help_text = field.metadata["help"] + f" (default: {_show(default)})"
        options.add_argument(f"--{field.name}", type=kind, default=default,
                             choices=field.metadata["choices"], help=help_text,
                             metavar=field.name.upper() if not field.metadata["choices"]
                             else None)
    run = common.add_argument_group("output")
    run.add_argument("--quiet", action="store_true", help="only warnings and errors; no "
                                                          "progress bar")
    run.add_argument("--debug", action="store_true", help="debug logging; show the traceback "
                                                          "of errors")

    parser = argparse.ArgumentParser(
        prog=prog, description="decent_q (vai_q_tensorflow): power-of-two quantization of "
                               "TensorFlow frozen graphs for DPUs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(_COMMANDS) + "}")
    sub.required = True
    for name, help_text in _COMMANDS.items():
        sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    return parser


def _show(default):
    return "''" if default in ("", []) else default


def _config(args):
    return config_lib.QuantizeConfig(**{f.name: getattr(args, f.name)
                                        for f in config_lib.OPTIONS if f.metadata["cli"]})


def _quantize(args, config):
    from decent_q import ptq  # pylint: disable=import-outside-toplevel
    ptq.quantize_frozen(args.input_frozen_graph, args.input_fn, config,
                        progress=not args.quiet)


def _inspect(args, config):
    from decent_q import inspection  # pylint: disable=import-outside-toplevel
    info = inspection.inspect_graph(args.input_frozen_graph, config)
    print(inspection.format_report(info))


def _dump(args, config):
    from decent_q.dump import dump  # pylint: disable=import-outside-toplevel
    dump(args.input_frozen_graph, args.input_fn, config.max_dump_batches,
              config.dump_float, config.output_dir, config.dump_input_tensors, config=config)


def _analyze(args, config):
    from decent_q import analysis, analysis_report  # pylint: disable=import-outside-toplevel
    result = analysis.analyze(args.input_frozen_graph, args.input_fn, config,
                              progress=not args.quiet)
    if not args.quiet:
        print(analysis_report.markdown(result), end="")


def _export(args, config):
    from decent_q import onnx_export  # pylint: disable=import-outside-toplevel
    name = os.path.splitext(os.path.basename(args.input_frozen_graph))[0] + ".onnx"
    path = onnx_export.export(args.input_frozen_graph, os.path.join(config.output_dir, name),
                              config.onnx_opset, config.onnx_rounding,
                              config.input_nodes or None, config.output_nodes or None)
    log.info("wrote %s", path)


def _setup_logging(quiet, debug):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.get_logger().setLevel(logging.DEBUG if debug else logging.ERROR)


class _Formatter(logging.Formatter):
    """'[decent_q] message'; warnings and errors say so."""

    def format(self, record):
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[decent_q] {level}{record.getMessage()}"


def _negative_values(argv):
    """'--input_shapes -1,224,224,3' -> '--input_shapes=-1,224,224,3' (argparse would read the
    value as an option)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" not in arg and i + 1 < len(argv) and \
                re.match(r"-\d", argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv=None):
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit status."""
    argv = _negative_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return stop.code if isinstance(stop.code, int) else 2
    try:
        _setup_logging(args.quiet, args.debug)
        config = _config(args)
        if args.command not in ("inspect", "export") and not args.input_fn:
            raise ConfigError(f"{args.command} needs --input_fn module_name.function_name, "
                              "e.g. --input_fn my_input_fn.calib_input")
        {"quantize": _quantize, "inspect": _inspect, "dump": _dump,
         "analyze": _analyze, "export": _export}[args.command](args, config)
    except ConfigError as err:
        _error(err, args.debug)
        return 2
    except QuantizeError as err:
        _error(err, args.debug)
        return 1
    except KeyboardInterrupt:
        # Files are written atomically at the end: an interrupted run leaves each output file
        # as it was (or complete and new), never partial.
        print("[decent_q] ERROR: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as err:  # pylint: disable=broad-except
        _error(f"internal error: {type(err).__name__}: {err}"
               + ("" if args.debug else " (rerun with --debug for the traceback)"), args.debug)
        return 1
    return 0


def _error(err, debug):
    if debug:
        traceback.print_exc()
    text = " ".join(str(err).split("\n"))
    print(f"[decent_q] ERROR: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
