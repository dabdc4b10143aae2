"""The one exception type of decent_q's PyTorch flow."""


class QuantizeError(ValueError):
    """A problem with the user's model, configuration, files or order of calls; the message
    names it and the fix."""
