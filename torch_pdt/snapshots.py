r"""A ring buffer of parameter snapshots in flat storage, with its Gram matrix kept up to date.

Storage is preallocated once: one ``(capacity, n)`` tensor per parameter (device, dtype),
the parameters laid out one after another along ``n``, a snapshot one row. Rows are reused
in a ring, so taking a snapshot allocates nothing.

Alongside, the history keeps the float64 Gram matrix of the consecutive basis
:math:`C = [s_{newest}, s_1 - s_0, \dots]` (:func:`torch_pdt.dmd.consecutive_basis`), indexed by
storage row: entry ``(j, k)`` is :math:`\langle d_j, d_k\rangle` with :math:`d_j` the snapshot in
row ``j`` minus the one in the row before it (cyclically), and index ``capacity`` stands for
the newest snapshot itself. A new snapshot changes only its own difference and the newest
snapshot, so :meth:`push` copies the parameters in and computes those ``2 capacity`` inner
products in the same pass over the rows: :math:`O(N h)` work per epoch, not :math:`O(N h^2)`.

With ``scope="layer"`` the same pass sums the inner products of each tensor apart, keeping
one such Gram matrix per tensor (:meth:`grams`); the whole snapshot's Gram matrix is then
their sum.

The ring only stores: the pass that copies a snapshot in and computes its inner products is
given to :meth:`push` (:mod:`torch_pdt.passes`: eager or compiled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_args

import torch
from torch import Tensor

from . import dmd, kernel
from .config import Scope, Storage, as_int

__all__ = ["STORAGE", "CopyIn", "SnapshotHistory"]

STORAGE = get_args(Storage)
"""Where snapshots live: beside the parameters, in (pinned) CPU memory, or in bfloat16."""


class CopyIn(Protocol):
    """A copy-in pass (:meth:`torch_pdt.passes.Passes.copy_in`): writes ``tensors`` into ring row
    ``row`` and returns the ``blocks x (capacity + 1) x 2`` inner products the row changes."""

    def copy_in(self, tensors: Sequence[Tensor], row: int) -> Tensor: ...


@dataclass(frozen=True)
class _Slot:
    """Where one parameter lives in its bucket's flat storage."""

    bucket: int
    offset: int
    numel: int


class SnapshotHistory:
    """The last ``capacity`` values of a fixed list of tensors, oldest first.

    Args:
        tensors: the tensors to snapshot (their shapes, dtypes and devices fix the layout).
        capacity: number of snapshots kept.
        storage: ``"same"`` keeps each snapshot in its tensor's device and dtype (an exact
            copy); ``"cpu"`` in CPU memory, pinned and filled by asynchronous copies when the
            tensors are on an accelerator (the same as ``"same"`` for CPU tensors);
            ``"bf16"`` in bfloat16 on the tensors' device (half the memory of float32, but
            differences below 2^-8 of a weight are lost: see the README).
        chunk_size: elements per chunk of the eager passes over the snapshots.
        scope: ``"layer"`` keeps one Gram matrix per tensor (:meth:`grams`), ``"model"`` one in all.
    """

    def __init__(
        self,
        tensors: Sequence[Tensor],
        capacity: int,
        storage: str = "same",
        chunk_size: int = dmd.CHUNK_SIZE,
        scope: Scope = "model",
    ) -> None:
        if storage not in STORAGE:
            raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
        self.capacity = capacity
        self.chunk_size = chunk_size
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
        self._keys = keys
        # Zero-filled, so that rows not yet written hold finite values (their inner products
        # are computed alongside and never used). Each row starts kernel.PAD elements into its
        # allocation, so that no row view has storage offset 0 (see torch_pdt.kernel).
        self._storage = [
            torch.zeros(
                capacity,
                kernel.PAD + n,
                dtype=torch.bfloat16 if storage == "bf16" else dt,
                device="cpu" if storage == "cpu" else d,
                pin_memory=storage == "cpu" and d.type != "cpu" and torch.cuda.is_available(),
            )[:, kernel.PAD :]
            for (d, dt), n in zip(keys, sizes)
        ]
        self.count = 0
        self._next = 0
        self.scope = scope
        # One Gram matrix per tensor, or one (in a leading dimension of 1) for all of them.
        blocks = len(self._slots) if scope == "layer" else 1
        self._gram = torch.zeros(blocks, capacity + 1, capacity + 1, dtype=torch.float64)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self._storage)

    @property
    def resolution(self) -> float:
        """Relative rounding of the stored values: the unit roundoff of the most precise storage dtype."""
        return min(dmd.unit_roundoff(s.dtype) for s in self._storage)

    @property
    def exact(self) -> bool:
        """Whether every snapshot is an exact copy (no storage dtype other than its tensor's)."""
        return all(s.dtype == dt for s, (_, dt) in zip(self._storage, self._keys))

    def layout(self) -> tuple[list[Tensor], list[tuple[int, int, int]]]:
        """The ring storage (one ``(capacity, n)`` tensor per bucket) and every tensor's
        ``(bucket, column offset, numel)`` in it, for the passes (:mod:`torch_pdt.passes`)."""
        return self._storage, [(s.bucket, s.offset, s.numel) for s in self._slots]

    def rows(self) -> list[int]:
        """Storage rows from oldest to newest."""
        first = (self._next - self.count) % self.capacity
        return [(first + i) % self.capacity for i in range(self.count)]

    def _set_gram(self, row: int, dots: Tensor) -> None:
        """Enter the ``blocks x (capacity + 1) x 2`` inner products of the snapshot now in ``row``."""
        h = self.capacity
        self._gram[:, h, :] = self._gram[:, :, h] = dots[:, :, 0]
        self._gram[:, row, :] = self._gram[:, :, row] = dots[:, :, 1]

    def push(self, tensors: Sequence[Tensor], passes: CopyIn) -> None:
        """Append a snapshot, dropping the oldest one when full, copied in by ``passes``."""
        row = self._next
        self._next = (self._next + 1) % self.capacity
        self.count = min(self.count + 1, self.capacity)
        self._set_gram(row, passes.copy_in(tensors, row))

    def replace_newest(self, tensors: Sequence[Tensor], passes: CopyIn) -> None:
        row = (self._next - 1) % self.capacity
        self._set_gram(row, passes.copy_in(tensors, row))

    def copy_newest_to(self, tensors: Sequence[Tensor]) -> None:
        """Write the newest snapshot into ``tensors`` (flat, in the order given at construction).

        Exact only when :attr:`exact`; the storage and its Gram matrix are unchanged.
        """
        row = (self._next - 1) % self.capacity
        with torch.no_grad():
            for slot, t in zip(self._slots, tensors, strict=True):
                t.copy_(self._storage[slot.bucket][row, slot.offset : slot.offset + slot.numel])

    def gram(self) -> Tensor:
        r"""Float64 :math:`C^\top C` of the consecutive basis of the current snapshots (``count x count``)."""
        grams = self.grams()
        return grams[0] if grams.shape[0] == 1 else grams.sum(0)

    def grams(self) -> Tensor:
        r"""The Gram matrices :math:`C^\top C`, one per tensor with ``scope="layer"`` (else one):
        float64 ``blocks x count x count``."""
        index = [self.capacity, *self.rows()[1:]]
        return self._gram[:, index][:, :, index].clone()

    def state_dict(self) -> dict[str, Any]:
        rows = self.rows()
        index = [self.capacity, *rows]
        return {
            "numels": [s.numel for s in self._slots],
            "snapshots": [s[rows].clone() for s in self._storage],
            # The ring position too: the prediction pass sums over rows in storage order, so
            # the same layout gives bit-identical results after a resume.
            "next": self._next,
            # Saved rather than recomputed on load: another summation order would change the
            # last bits, and resuming must be exact.
            "gram": self._saved_gram(self._gram[:, index][:, :, index].clone()),
        }

    def _saved_gram(self, grams: Tensor) -> Tensor:
        """As checkpoints hold it: one matrix for the whole model (as before ``scope``), else a stack."""
        return grams if self.scope == "layer" else grams[0]

    def check_state(self, state: Any) -> dict[str, Any]:
        """Validate a :meth:`state_dict` for this history (``ValueError`` naming the field); nothing changes."""
        if not isinstance(state, dict) or not {"numels", "snapshots", "next", "gram"} <= set(state):
            raise ValueError("saved snapshot history must be a dict with numels, snapshots, next and gram")
        numels = state["numels"]
        if not isinstance(numels, (list, tuple)) or list(numels) != [s.numel for s in self._slots]:
            raise ValueError(
                "saved snapshots were taken of parameters with other sizes (numels): "
                f"{numels!r} vs {[s.numel for s in self._slots]}"
            )
        saved, gram = state["snapshots"], state["gram"]
        if not isinstance(saved, (list, tuple)) or not all(isinstance(t, Tensor) for t in saved):
            raise ValueError("saved snapshots must be a list of tensors")
        count = saved[0].shape[0] if saved and saved[0].dim() == 2 else 0
        if (
            len(saved) != len(self._storage)
            or count > self.capacity
            or any(t.shape != (count, s.shape[1]) or t.dtype != s.dtype for t, s in zip(saved, self._storage))
        ):
            raise ValueError("saved snapshots do not match this history's layout (device/dtype groups)")
        shape = self._saved_gram(torch.empty(self._gram.shape[0], count + 1, count + 1)).shape
        if not isinstance(gram, Tensor) or not gram.is_floating_point() or gram.shape != shape:
            raise ValueError(f"saved gram must be a {tuple(shape)} floating-point tensor")
        return {"count": count, "next": as_int("saved ring position 'next'", state["next"], 0, self.capacity - 1)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validates it completely (:meth:`check_state`) before changing anything."""
        checked = self.check_state(state)
        self.count = checked["count"]
        self._next = checked["next"]
        rows = self.rows()
        for t, s in zip(state["snapshots"], self._storage):
            s[rows] = t.to(s.device)
        index = [self.capacity, *rows]
        self._gram.zero_()
        gram = state["gram"].to(torch.float64)
        self._gram[:, torch.tensor(index)[:, None], torch.tensor(index)[None, :]] = (
            gram if self.scope == "layer" else gram[None]
        )
