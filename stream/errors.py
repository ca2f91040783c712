"""Typed errors of the runtime. Library code raises these; only the CLI turns them into one line and exit 2."""
from engines.errors import CheckpointError, MissingDependency, UserError


class MediaError(UserError):
    """A video file cannot be read or written: the message names the file and what to do."""


__all__ = ["CheckpointError", "MediaError", "MissingDependency", "UserError"]
