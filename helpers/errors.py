"""Errors the helpers raise for bad input; the command lines print them and exit non-zero."""

# How to get out of a refused split, in every message that refuses one.
REMAKE_SPLIT = ("Make a new split: NEW_SPLIT = True in notebook 01 (`--set NEW_SPLIT=true` "
                "with python -m helpers.study), or `--force` with python -m helpers.data "
                "prepare or split (results made with the old split do not compare with new "
                "ones), or use another run folder.")


class DataError(Exception):
    """The data cannot be used as asked; the message says why and what to do."""


class DataSourceError(DataError):
    """A data source could not deliver the dataset (offline, bad credentials, bad checksum)."""


class DataLayoutError(DataError):
    """A folder does not hold the class folders the study needs."""


class StaleSplitError(DataError):
    """A saved split no longer matches the data on disk or the seed asked for."""
