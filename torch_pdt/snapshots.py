"""A ring buffer of parameter snapshots in flat per-(device, dtype) storage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import dmd

__all__ = ["SnapshotHistory"]


@dataclass(frozen=True)
class _Slot:
    """Where one parameter lives in its bucket's flat storage."""

    bucket: int
    offset: int
    numel: int


class SnapshotHistory:
    """The last ``capacity`` values of a fixed list of tensors, oldest first.

    Storage is preallocated once: one ``(capacity, n)`` tensor per (device, dtype), with the
    tensors laid out one after another along ``n``. A snapshot is stored in the tensors' own
    dtype, so it is an exact copy; all arithmetic on snapshots happens in float64 chunks.
    """

    def __init__(self, tensors: Sequence[Tensor], capacity: int) -> None:
        self.capacity = capacity
        keys: list[tuple[torch.device, torch.dtype]] = []
        sizes: list[int] = []
        self._slots: list[_Slot] = []
        for t in tensors:
            key = (t.device, t.dtype)
            if key not in keys:
                keys.append(key)
                sizes.append(0)
            b = keys.index(key)
            self._slots.append(_Slot(b, sizes[b], t.numel()))
            sizes[b] += t.numel()
        self._storage = [torch.empty(capacity, n, device=d, dtype=dt) for (d, dt), n in zip(keys, sizes)]
        self.count = 0
        self._next = 0

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self._storage)

    def _order(self) -> list[int]:
        """Storage rows from oldest to newest."""
        first = (self._next - self.count) % self.capacity
        return [(first + i) % self.capacity for i in range(self.count)]

    def _write(self, row: int, tensors: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for slot, t in zip(self._slots, tensors, strict=True):
                self._storage[slot.bucket][row, slot.offset : slot.offset + slot.numel].copy_(t.reshape(-1))

    def push(self, tensors: Sequence[Tensor]) -> None:
        """Append a snapshot, dropping the oldest one when full."""
        self._write(self._next, tensors)
        self._next = (self._next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)

    def replace_newest(self, tensors: Sequence[Tensor]) -> None:
        self._write((self._next - 1) % self.capacity, tensors)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(tensor index, start, snapshots)`` with ``snapshots`` of shape ``(count, c)``.

        Chunks never straddle two tensors, and hold at most ``chunk_size`` elements per row.
        """
        rows = self._order()
        index = {s.device: torch.tensor(rows, device=s.device) for s in self._storage}
        for i, slot in enumerate(self._slots):
            storage = self._storage[slot.bucket]
            for start in range(0, slot.numel, chunk_size):
                stop = min(start + chunk_size, slot.numel)
                yield i, start, storage[index[storage.device], slot.offset + start : slot.offset + stop]

    def row_chunks(self, chunk_size: int) -> Iterator[Tensor]:
        """All snapshots, oldest first, as ``(count, c)`` chunks of the flat storage."""
        rows = self._order()
        for storage in self._storage:
            index = torch.tensor(rows, device=storage.device)
            for start in range(0, storage.shape[1], chunk_size):
                yield storage[index, start : start + chunk_size]

    def gram_of(self, chunk_size: int) -> dmd.GramOf:
        """``gram_of(W)`` of the current snapshots for :func:`torch_pdt.dmd.orthogonal_factor`."""
        return dmd.snapshot_gram_of(lambda: self.row_chunks(chunk_size), self.count)

    def state_dict(self) -> dict[str, Any]:
        rows = self._order()
        return {
            "numels": [s.numel for s in self._slots],
            "snapshots": [s[rows].clone() for s in self._storage],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["numels"]) != [s.numel for s in self._slots]:
            raise ValueError(
                "saved snapshots were taken of parameters with other sizes: "
                f"{list(state['numels'])} vs {[s.numel for s in self._slots]}"
            )
        saved = state["snapshots"]
        count = saved[0].shape[0] if saved else 0
        if (
            len(saved) != len(self._storage)
            or count > self.capacity
            or any(t.shape != (count, s.shape[1]) or t.dtype != s.dtype for t, s in zip(saved, self._storage))
        ):
            raise ValueError("saved snapshots do not match this history's layout (device/dtype groups)")
        for t, s in zip(saved, self._storage):
            s[:count].copy_(t)
        self.count = count
        self._next = count % self.capacity
