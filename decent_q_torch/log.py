"""vai_q_pytorch's log lines: ``[VAIQ_NOTE]``, ``[VAIQ_WARN]``, ``[VAIQ_ERROR]`` prefixes, in
colour (green, yellow, red) only when the stream is a terminal."""

import sys

_COLOURS = {"NOTE": "\033[1;32m", "WARN": "\033[1;33m", "ERROR": "\033[1;31m"}


def _line(kind, message, stream=None):
    stream = stream or sys.stdout
    prefix = f"[VAIQ_{kind}]"
    if getattr(stream, "isatty", lambda: False)():
        prefix = f"{_COLOURS[kind]}{prefix}\033[0m"
    print(f"{prefix}: {message}", file=stream, flush=True)


def note(message):
    _line("NOTE", message)


def warn(message):
    _line("WARN", message)


def error(message):
    _line("ERROR", message, sys.stderr)
