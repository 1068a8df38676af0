"""The one exception type for bad input data."""


class DataError(ValueError):
    """Input data cannot be used; the message names the file, row or key and how to fix it."""
