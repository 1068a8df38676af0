"""The errors a user can cause, shared by every layer (this is the lowest one).

Each message names the file, row, key or host at fault and says how to fix it; the command line
turns them into one line and exit code 2.
"""


class DataError(ValueError):
    """Input data cannot be used; the message names the file, row or key and how to fix it."""


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the key and how to fix it."""


class CheckpointError(ValueError):
    """A saved model or training checkpoint cannot be used; the message names the file and what to do."""
