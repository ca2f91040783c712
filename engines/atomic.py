"""Atomic file output: write to a temporary file beside the target, then os.replace.

A reader (or a crash) never sees half a file, and the finished file gets the ordinary permissions
that the user's umask gives.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def create_temp_beside(target: Path, suffix: str = ".tmp") -> Path:
    """Create an empty, hidden, uniquely named file in `target`'s folder (same file system, so renaming it
    onto `target` is atomic). `suffix` lets a writer that picks its format by extension (a muxer) see it."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
    # mode 0o666, narrowed by the umask as for any new file: the finished file gets ordinary permissions
    # (mkstemp would make it 0600), and reading the umask would mean setting it process-wide
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success it becomes `path`, on any error it is deleted."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = create_temp_beside(target, suffix)
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, flushed to disk before the rename."""
    with atomic_output(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
