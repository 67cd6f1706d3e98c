"""The one exception of the data package."""


class DataError(Exception):
    """Data cannot be found, prepared or loaded; the message says what to do."""
