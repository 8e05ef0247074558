r"""PDT on every rank of a ``torch.distributed`` process group, without a rank-0 bottleneck.

**Replicated parameters (DDP).** Every rank holds the same weights and the same snapshots, so
every rank computes the same prediction on its own: no collective is needed. ``verify=True``
(a debugging aid) compares a checksum of the weights across ranks after every step.

**Sharded parameters (FSDP2).** With ``torch.distributed.fsdp.fully_shard`` the parameters are
DTensors and each rank holds a shard :math:`S_r` (rows of the ``N x h`` snapshot matrix). PDT
keeps snapshots of the local shards only (``1/world`` of the memory), and everything DMD needs
is the ``h x h`` Gram matrix, a sum over ranks:

.. math::
    S^\top S = \sum_r S_r^\top S_r .

So a prediction is one ``all_reduce`` of ``h x h`` numbers (each rank keeps its local Gram
matrix up to date as snapshots enter; a second Gram pass, made only when the first factor is
not accurate enough, is a second one); every rank then fits the same DMD, predicts, masks and
writes its own shard, and one ``all_reduce`` of the acceptance counts makes the statistics
global.

**Faults (sharded).** A rank that fails to take a snapshot stores a NaN snapshot in its place
(its ring stays in step with the others'); a rank whose local Gram is non-finite sets its flag
in the same ``all_reduce`` that sums the Gram. Every rank then sees the same flags and skips
the prediction with the same reason; no rank waits for a collective another rank never enters.
A snapshot lost this way blocks predictions until it leaves the window (``history`` steps).
An exception anywhere else (a Gram pass, the prediction pass) propagates on its rank; the other
ranks then fail in their next collective (at once when the failed process exits, else at the
process group's timeout).

Example (one process per rank, e.g. under ``torchrun``)::

    model = fully_shard(model)  # or DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters())
    pdt = DistributedPDT(opt, history=5, horizon=5)
    for epoch in range(epochs):
        train_one_epoch(model, opt)
        pdt.step()  # same call, same statistics on every rank
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import dmd
from .pdt import PDT, DTensor, local_shard

__all__ = ["DistributedPDT", "ReplicaMismatchError"]


class ReplicaMismatchError(RuntimeError):
    """With ``verify=True``: the ranks of a replicated run hold different weights."""


class DistributedPDT(PDT):
    r""":class:`~torch_pdt.PDT` for data-parallel (DDP) and sharded (FSDP2) training.

    Construct it on every rank with the same arguments and call :meth:`step` on every rank at
    the same point (or use ``every_n_steps``); the statistics it returns are global.

    Args:
        optimizer, \*args, \*\*kwargs: as for :class:`~torch_pdt.PDT`.
        group: the process group (default: the world). The default process group must be
            initialised.
        sharded: whether each rank holds a different part of the parameters. ``None`` (default)
            means: if any parameter is a DTensor (FSDP2). ``True`` also suits parameters that a
            user shards by hand (each rank passes its own part as a plain tensor).
        verify: replicated only: after every :meth:`step`, check with one ``all_reduce`` that
            all ranks hold the same weights; raises :class:`ReplicaMismatchError` if not.

    Example::

        >>> import tempfile, torch.distributed as dist
        >>> store = f"file://{tempfile.mkdtemp()}/store"
        >>> dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        >>> model = torch.nn.Linear(4, 2)
        >>> pdt = DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.1), verify=True)
        >>> pdt.sharded
        False
        >>> dist.destroy_process_group()
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *args: Any,
        group: dist.ProcessGroup | None = None,
        sharded: bool | None = None,
        verify: bool = False,
        **kwargs: Any,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("DistributedPDT needs an initialised default process group (torch.distributed)")
        if sharded is None:
            sharded = any(isinstance(p, DTensor) for group_ in optimizer.param_groups for p in group_["params"])
        if verify and sharded:
            raise ValueError("verify compares replicated weights; it does not apply to sharded parameters")
        # Set before PDT.__init__, which may already take a snapshot (criterion="reference").
        self.group = group
        self.sharded = sharded
        self.verify = verify
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        super().__init__(optimizer, *args, **kwargs)
        backend = str(dist.get_backend(group))
        # Collectives run on the CPU where the backend takes CPU tensors (gloo), else on the
        # parameters' device (NCCL).
        self._comm_device = torch.device("cpu") if "gloo" in backend else local_shard(self.params[0]).device

    def step(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """:meth:`torch_pdt.PDT.step` on this rank; with ``verify=True`` then the replica check."""
        stats = super().step(*args, **kwargs)
        if self.verify:
            self._verify_replicas()
        return stats

    def _snapshot(self) -> None:
        if not self.sharded:
            super()._snapshot()  # replicated: an error is this rank's own, let it propagate
            return
        newest = self._history.rows()[-1:]
        try:
            super()._snapshot()
        except Exception as e:  # any failure: the other ranks must learn of it, not hang
            warnings.warn(f"PDT rank {self.rank}: snapshot failed ({e!r}); all ranks will skip predictions")
            # The ring advances once, as on every other rank (the schedule depends on its
            # length); a NaN row makes each Gram holding it non-finite, which the next
            # all_reduce reports.
            lost = [
                torch.full((q.numel(),), float("nan"), dtype=q.dtype, device=q.device)
                for q in map(local_shard, self.params)
            ]
            if self._history.rows()[-1:] == newest:  # failed before the ring advanced
                self._history.push(lost)
            else:
                self._history.replace_newest(lost)

    def _reduce_gram(self, gram: Tensor) -> Tensor:
        if not self.sharded:
            return gram
        q = gram.shape[0]
        # One message per Gram pass: the q x q local Gram, then one failure flag per rank.
        message = torch.zeros(q * q + self.world_size, dtype=torch.float64)
        message[: q * q] = gram.reshape(-1)
        if not torch.isfinite(gram).all():
            message[q * q + self.rank] = 1.0
        message = message.to(self._comm_device)
        dist.all_reduce(message, group=self.group)
        message = message.cpu()
        failed = torch.nonzero(message[q * q :]).flatten().tolist()
        if failed:
            raise dmd.DMDError(f"rank(s) {failed} lost a snapshot or hold non-finite snapshot values")
        return message[: q * q].reshape(q, q)

    def _reduce_counts(self, counts: Tensor) -> Tensor:
        if not self.sharded:
            return counts
        counts = counts.to(self._comm_device)
        dist.all_reduce(counts, group=self.group)
        return counts.cpu()

    def _verify_replicas(self) -> None:
        """Raise :class:`ReplicaMismatchError` unless every rank holds bit-identical weights."""
        with torch.no_grad():
            local = torch.stack(
                [torch.stack([f.double().sum(), f.double().square().sum()]) for f in self._flat_params()]
            ).flatten()
        # max(x) and max(-x) = -min(x) in one all_reduce.
        both = torch.cat([local, -local]).to(self._comm_device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        high, low = both.cpu().chunk(2)
        if not torch.equal(high, -low):
            bad = [n for n, hi, lo in zip(self.names, high.view(-1, 2), -low.view(-1, 2)) if not torch.equal(hi, lo)]
            raise ReplicaMismatchError(f"PDT ranks disagree after epoch {self.epoch - 1} on {bad}")
