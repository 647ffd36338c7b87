"""The one error type users see: it names the file, tensor or argument and what was expected."""


class ModelError(ValueError):
    """A user-facing failure (bad file, bad tensor, bad argument). The CLI prints it on one line, exit 2."""
