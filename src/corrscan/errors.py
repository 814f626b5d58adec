"""Exceptions raised by corrscan.

Every error a user can cause names the offending input (file, field or argument) and, where
there is one, the fix.
"""


class CorrscanError(Exception):
    """Base class of all corrscan errors."""


class InputError(CorrscanError, ValueError):
    """Bad input: wrong shape, NaN/Inf, mismatched pixel size, empty search space, ..."""


class FileFormatError(CorrscanError, OSError):
    """A file is missing, unreadable, truncated or not of the expected format."""


class ConfigError(CorrscanError, ValueError):
    """A configuration file or field is invalid."""


class ResultExistsError(CorrscanError, FileExistsError):
    """A finished result already exists and overwriting was not requested."""
