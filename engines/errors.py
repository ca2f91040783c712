"""Errors the engines raise. The CLI prints a UserError as one line and exits with code 2."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file, what is wrong and what to do."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, of an unknown format, or asks to run code."""


class MissingDependency(UserError):
    """An optional package or model is not installed; the message names the extra or the file."""
