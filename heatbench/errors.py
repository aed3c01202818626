"""User-facing errors: the CLI prints their one-line message and exits with status 2."""


class HeatbenchError(Exception):
    """Bad input from the user (a file, a flag, a name); the message names the file or field."""


class DataError(HeatbenchError):
    """A data file or image that cannot be read or is malformed."""
