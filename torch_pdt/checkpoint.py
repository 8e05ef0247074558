"""Checkpoints: crash-safe files, and saved states checked before they are loaded.

A kill at any moment leaves either the old file or the new one, whole.

:func:`save_atomic` writes to a temporary file in the destination's directory, flushes it to
disk (``fsync``), renames it over the destination with :func:`os.replace` (atomic on POSIX
and Windows within one file system), then syncs the directory so that the rename itself
survives a power loss. For the user's file it behaves like ``torch.save(obj, path)``: a new
file gets the permissions the umask allows (``0o666 & ~umask``), an existing one keeps its
own, and a symbolic link is written through (its target is replaced, the link stays).

:func:`check_loadable` refuses a saved state holding a tensor without values in memory (read with
``map_location="meta"``, or sparse), naming its key, before any part of it is loaded: a load that
failed half-way would leave a history half old, half new.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
    >>> save_atomic({"epoch": 3, "w": torch.ones(2)}, path)
    >>> torch.load(path, weights_only=True)["epoch"]
    3
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_loadable", "save_atomic"]


def check_loadable(state: Any, key: str = "state_dict") -> None:
    """``ValueError`` naming the first tensor of ``state`` (nested dicts, lists, tuples) that is not
    dense in memory: on the meta device (no values), or of a sparse or other non-strided layout.
    A container that holds itself is refused too (a walk would never end).

    >>> check_loadable({"history": {"snapshots": [torch.zeros(2, device="meta")]}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: state_dict['history']['snapshots'][0] is a meta tensor ...; load a checkpoint read onto a real device
    """
    _check_loadable(state, key, set())


def _check_loadable(state: Any, key: str, open_containers: set[int]) -> None:
    if isinstance(state, Tensor):
        if state.is_meta:
            raise ValueError(
                f"{key} is a meta tensor (no values: read with map_location='meta'?); "
                "load a checkpoint read onto a real device"
            )
        if state.layout != torch.strided:
            raise ValueError(f"{key} is a {state.layout} tensor; PDT states hold dense tensors: pass t.to_dense()")
        return
    if isinstance(state, Mapping):
        items: Any = ((f"{key}[{k!r}]", v) for k, v in state.items())
    elif isinstance(state, (list, tuple)):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(state))
    else:
        return
    if id(state) in open_containers:
        raise ValueError(f"{key} contains itself: not a saved PDT state")
    open_containers.add(id(state))
    for k, v in items:
        _check_loadable(v, k, open_containers)
    open_containers.discard(id(state))


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file in ``path``'s directory, created with mode ``0o666`` (the
    umask applies, as for the ``open()`` inside ``torch.save``; ``tempfile.mkstemp`` would give ``0o600``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written.

    The temporary file lives beside the file that ``path`` names, after following symbolic
    links (a rename across file systems would not be atomic, and renaming over the link
    would replace it), and is removed if saving fails.
    """
    path = Path(os.path.realpath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # torch.save into an existing file keeps its mode
    except FileNotFoundError:
        mode = None
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable; Windows has no directory fsync
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
