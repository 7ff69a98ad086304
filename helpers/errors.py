"""Errors the helpers raise for bad input; the command lines print them and exit non-zero."""


class DataError(Exception):
    """The data cannot be used as asked; the message says why and what to do."""


class DataSourceError(DataError):
    """A data source could not deliver the dataset (offline, bad credentials, bad checksum)."""


class DataLayoutError(DataError):
    """A folder does not hold the class folders the study needs."""


class StaleSplitError(DataError):
    """A saved split no longer matches the data on disk or the seed asked for."""
