r"""Which parameters share one call of a pass over the snapshots, and the buffer they share it through.

A pass pays a fixed cost per call whatever its size: tens of microseconds for a compiled call
(:mod:`torch_pdt.kernel`), as much for the dozen torch operations of an eager chunk
(:mod:`torch_pdt.prediction`). For a model of 10,000 one-element tensors that was seconds a
step. So a run of parameters under :data:`SMALL` elements, adjacent in one storage bucket,
shares each call (a :class:`Group`): their values are gathered into one contiguous buffer
(*staged*), the pass reads and writes the buffer, the parameters with an accepted element get
their values back, and each one's count of accepted elements is the difference of a cumulative
sum of the decisions at its bounds. Both implementations of :mod:`torch_pdt.passes` group alike;
with ``scope="layer"`` every parameter is a group of its own (its own Gram matrix and forecast).

Example:
    >>> [(list(g.members), g.start, g.stop, g.staged) for g in groups([(0, 0, 3), (0, 3, 2), (0, 5, SMALL)])]
    [([0, 1], 0, 5, True), ([2], 5, 16389, False)]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SMALL", "Group", "Staging", "groups"]

SMALL = 1 << 14
"""Parameters with fewer elements than this share one call per pass with their neighbours in
the storage (module docstring)."""


@dataclass(frozen=True)
class Group:
    """One call of each pass: a large parameter, or a run of small ones adjacent in the storage
    (consecutive parameters: ``members`` is a range, so that their tensors are a slice of a list),
    in storage bucket ``bucket``, columns ``start:stop``."""

    members: range
    bucket: int
    start: int
    stop: int

    @property
    def staged(self) -> bool:
        """Several parameters, copied into one contiguous tensor for the call."""
        return len(self.members) > 1


def groups(slots: Sequence[tuple[int, int, int]], share: bool = True, least: int = 2) -> list[Group]:
    """The calls for ``slots`` (``(bucket, column offset, numel)`` per parameter): a group per large
    parameter and (``share``) per run of at least ``least`` small ones, else one per parameter."""
    found: list[Group] = []
    run: list[int] = []

    def close() -> None:
        if len(run) >= least:
            bucket, offset, _ = slots[run[0]]
            last = slots[run[-1]]
            found.append(Group(range(run[0], run[-1] + 1), bucket, offset, last[1] + last[2]))
        else:
            found.extend(Group(range(i, i + 1), slots[i][0], slots[i][1], slots[i][1] + slots[i][2]) for i in run)
        run.clear()

    for i, (bucket, offset, numel) in enumerate(slots):
        if numel >= SMALL or not share:
            close()
            found.append(Group(range(i, i + 1), bucket, offset, offset + numel))
            continue
        if run:
            prev = slots[run[-1]]
            if prev[0] != bucket or prev[1] + prev[2] != offset:
                close()
        run.append(i)
    close()
    return found


class Staging:
    """The staged groups' buffers for parameters of the sizes in ``slots``, each made once.

    Kept: for 10,000 one-element tensors, splitting a buffer into views costs 3.4 ms and the
    bounds 1.1 ms per predicting step (one thread), a fifth of what the compiled passes cost.
    """

    def __init__(self, slots: Sequence[tuple[int, int, int]]) -> None:
        self.slots = list(slots)
        self._made: dict[Group, tuple[Tensor, list[Tensor], Tensor]] = {}

    def _buffers(self, group: Group, flats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor], Tensor]:
        """A staged group's contiguous buffer, its per-parameter views and their bounds."""
        found = self._made.get(group)
        if found is None:
            members = flats[group.members.start : group.members.stop]
            dtype = functools.reduce(torch.promote_types, (f.dtype for f in members))
            sizes = [self.slots[i][2] for i in group.members]
            buffer = torch.empty(sum(sizes), dtype=dtype, device=members[0].device)
            bounds = torch.tensor([0, *sizes], device=buffer.device).cumsum(0)
            found = self._made[group] = (buffer, list(buffer.split(sizes)), bounds)
        return found

    def source(self, group: Group, flats: Sequence[Tensor], newest: Tensor | None = None) -> Tensor:
        """The group's parameters as one 1-D tensor: the parameter itself, or (staged) its buffer
        filled, from the parameters or from ``newest``, the group's columns of a ring row that
        holds them (one copy, where gathering 10,000 one-element tensors took 1 ms)."""
        if not group.staged:
            return flats[group.members[0]]
        buffer = self._buffers(group, flats)[0]
        if newest is not None:
            return buffer.copy_(newest)
        return torch.cat(flats[group.members.start : group.members.stop], out=buffer)

    def per_member(self, group: Group, flats: Sequence[Tensor], landed: Tensor) -> Tensor:
        """int64 per member: its elements where ``landed`` (one value per element of the group) is nonzero."""
        bounds = self._buffers(group, flats)[2]
        cumulative = torch.cat([bounds.new_zeros(1), (landed != 0).cumsum(0, dtype=torch.int64)])
        return cumulative[bounds[1:]] - cumulative[bounds[:-1]]  # empty tensors too

    def write_back(self, group: Group, flats: Sequence[Tensor], accepted: Tensor) -> None:
        """Copy the buffer back into the members with an accepted element (``accepted``: :meth:`per_member`).

        The others' values in the buffer are their own; each tensor copied costs 0.3-0.4 us on
        one thread.
        """
        parts = self._buffers(group, flats)[1]
        written = accepted.nonzero()[:, 0].tolist()
        first = group.members.start
        if written:
            torch._foreach_copy_([flats[first + j] for j in written], [parts[j] for j in written])

    def hand_over(
        self, group: Group, start: int, on_chunk: Callable[..., None], accept: Tensor, *values: Tensor
    ) -> None:
        """``on_chunk(i, start, accept, *values)`` per member ``i`` with elements among the group's
        ``start:start + n`` (``accept`` and each of ``values``: one entry per element), from its own start."""
        stop = start + accept.numel()
        offset = 0
        for i in group.members:
            lo, hi = max(start, offset), min(stop, offset + self.slots[i][2])
            if lo < hi:
                part = slice(lo - start, hi - start)
                on_chunk(i, lo - offset, accept[part], *(v[part] for v in values))
            offset += self.slots[i][2]
