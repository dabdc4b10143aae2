"""Console-script entry points (``vai_q_tensorflow``, ``decent_q``, ``freeze_graph``).

The command line is parsed before TensorFlow is imported, so ``--help``, ``--version`` and usage
errors answer at once (TensorFlow takes seconds to import). ``decent_q/__init__`` imports
TensorFlow and loads the kernel, so the parser's modules (cli, config, errors, version; freeze:
plain Python at import) are loaded under a bare stand-in for the package, which is dropped
again before the real import.

TensorFlow 2.21 prints its C++ start-up notes (oneDNN, CUDA probing) to stderr before its log
settings apply, so TF_CPP_MIN_LOG_LEVEL cannot silence them. The commands import TensorFlow
with stderr pointed at /dev/null (restored right after; an import failure is re-raised with
its Python message). ``--debug`` keeps everything.
"""

import importlib
import importlib.util
import os
import sys
import types


def import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up notes muted (unless --debug is given)."""
    if "--debug" in sys.argv or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def running_as_main():
    """True in ``python -m decent_q`` (the interpreter's own command line says so)."""
    argv = list(getattr(sys, "orig_argv", ()))
    return "-m" in argv and argv.index("-m") + 1 < len(argv) and \
        argv[argv.index("-m") + 1] == "decent_q"


def _light_module(name):
    """decent_q.<name> (cli or freeze) loaded without running decent_q/__init__ (no
    TensorFlow). When the package is already in sys.modules (imported, or being imported by
    ``python -m decent_q``), the module is imported from it: these modules' own imports need
    none of the package's names."""
    if "decent_q" in sys.modules:
        return importlib.import_module(f"decent_q.{name}")
    spec = importlib.util.find_spec("decent_q")
    stand_in = types.ModuleType("decent_q")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["decent_q"] = stand_in
    try:
        return importlib.import_module(f"decent_q.{name}")
    finally:
        for name in [n for n in sys.modules if n == "decent_q" or n.startswith("decent_q.")]:
            del sys.modules[name]


def _parse_only(argv, command="cli"):
    """The exit status if parsing `argv` ends the command (--help, --version, a usage
    error), else None."""
    module = _light_module(command)
    if command == "cli":
        argv = module._negative_values(list(argv))  # pylint: disable=protected-access
    try:
        module.build_parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    return None


def exit_if_parsing_ends():
    """Exits when the command line is --help, --version or a usage error."""
    code = _parse_only(sys.argv[1:])
    if code is not None:
        sys.exit(code)


def vai_q_tensorflow():
    code = _parse_only(sys.argv[1:])
    if code is not None:
        return code
    import_tensorflow_quietly()
    from decent_q.cli import main  # pylint: disable=import-outside-toplevel
    return main()


def freeze_graph():
    code = _parse_only(sys.argv[1:], "freeze")
    if code is not None:
        return code
    import_tensorflow_quietly()
    from decent_q.freeze import main  # pylint: disable=import-outside-toplevel
    return main()
