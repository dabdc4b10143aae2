"""The package's error types: one base class, so callers can catch decent_q failures alone."""


class QuantizeError(Exception):
    """A decent_q operation failed; the message names the problem and the fix."""


class ConfigError(QuantizeError, ValueError):
    """A configuration value is invalid (a usage error: the CLI exits with status 2)."""
