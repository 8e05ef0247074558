"""Crash-safe checkpoints: a kill at any moment leaves either the old file or the new one, whole.

:func:`save_atomic` writes to a temporary file in the destination's directory, flushes it to
disk (``fsync``), renames it over the destination with :func:`os.replace` (atomic on POSIX
and Windows within one file system), then syncs the directory so that the rename itself
survives a power loss.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
    >>> save_atomic({"epoch": 3, "w": torch.ones(2)}, path)
    >>> torch.load(path, weights_only=True)["epoch"]
    3
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic"]


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written.

    The temporary file lives beside ``path`` (a rename across file systems would not be
    atomic) and is removed if saving fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable; Windows has no directory fsync
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
