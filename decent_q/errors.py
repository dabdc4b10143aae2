"""The package's error types (one base class, so callers can catch decent_q failures alone)
and the one-line text of a TensorFlow op error."""


class QuantizeError(Exception):
    """A decent_q operation failed; the message names the problem and the fix."""


class ConfigError(QuantizeError, ValueError):
    """A configuration value is invalid (a usage error: the CLI exits with status 2)."""


def first_line(text):
    """The first non-blank line of `text` (str() of anything), '' if there is none."""
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
    return useful[0] if useful else first_line(err.message)
