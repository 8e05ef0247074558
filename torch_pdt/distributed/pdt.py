r"""PDT on every rank of a ``torch.distributed`` process group, without a rank-0 bottleneck.

**Replicated parameters (DDP).** Every rank holds the same weights and the same snapshots, so
every rank computes the same prediction on its own: the prediction needs no collective.
``verify=True`` (a debugging aid) compares checksums of the weights' bits across ranks after
every step.

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
global. With ``scope="layer"`` the message holds every parameter's ``h x h`` block, stacked:
still one ``all_reduce`` per Gram pass.

**Agreement.** The ranks must take every decision together, or they drift apart (DDP) or pair
collectives of different epochs (FSDP2). So:

* at construction one ``all_reduce`` tells every rank whether the others' constructors
  succeeded (a rank whose arguments are invalid raises its own error; the others raise
  ``ValueError`` naming it instead of waiting), and a second compares a hash of every setting
  and of the parameter layout; a difference raises ``ValueError`` on every rank, naming the
  settings and the ranks (sharded: a third sums the parts' sizes, for the statistics);
* every :meth:`~DistributedPDT.step` starts with one ``all_reduce`` of each rank's step
  counter, optimizer steps since construction, loss and ``predict`` flag. The pacing rule sees
  the **mean of the ranks' losses** :math:`\bar L = \frac1W \sum_r L_r` (a float64 sum in rank
  order, the same on every rank), so rollbacks and the :math:`\tau`/:math:`T_i` schedule are
  the same everywhere. Ranks at different counters raise :class:`RanksOutOfStepError`, and a
  rank whose arguments are invalid (or that passes a loss, or ``predict``, unlike the others)
  makes every rank raise ``ValueError``, all before anything changes;
* every collective PDT issues in a step is two ``all_reduce`` calls: first a header of
  ``5 W`` numbers in which each rank writes its instance (a token agreed at construction, and
  an ordinal), its step counter, the collective's kind and a flag, then the payload (a vote,
  such as the one after each compiled pass, is the header alone). All headers have
  one length, whatever the instance, so a rank that raised inside :meth:`~DistributedPDT.step`
  and stepped on, or that steps two PDT instances in another order than the others, meets a
  header that differs, and every rank raises :class:`RanksOutOfStepError` at once, naming the
  ranks, instances and counters (never a size mismatch, which aborts gloo);
* the first columns of each step's gather also hold each rank's optimizer steps since its
  previous :meth:`~DistributedPDT.step` (a rank that skipped or repeated a call differs by an
  epoch of steps) and the **origin** of its state: a hash of the run token for a fresh start,
  or of the resumed state (its counters and pacing; replicated, also a checksum of its
  snapshots). Ranks that resumed different checkpoints (another run's, another epoch's,
  another rank's), or where only some ranks resumed, raise ``ValueError`` on every rank at
  their first step, naming the ranks on each side, before anything changes.

**Uneven inputs (DDP).** Under :class:`torch.distributed.algorithms.Join` the ranks take
different numbers of optimizer steps in an epoch, which the step check would take for a
skipped call. Pass the PDT to ``Join`` beside the model, ``Join([model, pdt])``: it is a
:class:`~torch.distributed.algorithms.Joinable` whose post-hook marks the epoch uneven, and the
next step then compares only the step counters (DDP's join hook has made the replicas equal).
Step mode and sharded parameters are refused by ``Join`` up front (their collectives cannot be
shadowed).

**Compiled passes.** ``kernel="compiled"`` and ``"auto"`` choose as in :class:`~torch_pdt.PDT`
(``"auto"``: by the model's size, global for DTensors) and the ranks agree on the choice: at
construction the vote that tells the ranks of each other's success also tells which ranks run
the compiled passes, and under ``"auto"`` one rank that cannot compile puts every rank on the
eager passes. Each compiled pass (the snapshot's copy-in, the second Gram pass, the prediction
pass) then ends in one ``all_reduce``, a header with a failure flag per rank: a pass that fails
on one rank (in practice its first call, which compiles) raises :class:`CompiledPassError` on
every rank at once, and PDT's own fallback runs everywhere alike: ``"auto"`` goes eager on
every rank (a prediction pass that failed after writing restores the weights from the newest
snapshot on the ranks where it succeeded, as on the one where it failed), ``"compiled"`` raises
on every rank. Sharded, the compiled pass counts this rank's elements, reduced with the eager
pass's message.

**Faults (sharded).** A rank that fails to take a snapshot stores a NaN snapshot in its place
(its ring stays in step with the others'); a rank whose local Gram is non-finite sets its flag
in the same ``all_reduce`` that sums the Gram. Every rank then sees the same flags and skips
the prediction with the same reason; no rank waits for a collective another rank never enters.
A snapshot lost this way blocks predictions until it leaves the window (``history`` steps).
An exception anywhere else (an eager Gram or prediction pass) propagates on its rank; the other
ranks then fail in their next collective (at once when the failed process exits, else at the
process group's timeout).

Example (one process per rank, e.g. under ``torchrun``)::

    model = fully_shard(model)  # or DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters())
    pdt = DistributedPDT(opt, history=5, horizon=5, pacing="adaptive")
    for epoch in range(epochs):
        loss = train_one_epoch(model, opt)  # this rank's mean loss
        pdt.step(loss=loss)  # same call, same decision, same statistics on every rank
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import secrets
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.join import Joinable, JoinHook

from .. import compat, dmd, kernel, passes
from ..params import DTensor, local_shard
from ..pdt import PDT
from ..prediction import Coefficients, PassCounts

__all__ = ["CompiledPassError", "DistributedPDT", "RanksOutOfStepError", "ReplicaMismatchError"]

logger = logging.getLogger("torch_pdt")

# The kinds of collective a DistributedPDT issues; each header carries its kind and step counter.
_KINDS = ("step", "gram", "counts", "verify", "kernel")
_HASH_BITS = 52  # a hash must survive float64, the dtype of every message
_HEADER = 5  # per rank: instance token, instance ordinal, step counter, kind, flag
_ordinals = itertools.count(1)  # DistributedPDT instances constructed in this process


class ReplicaMismatchError(RuntimeError):
    """With ``verify=True``: the ranks of a replicated run hold different weights."""


class RanksOutOfStepError(RuntimeError):
    """The ranks met in a collective from different :meth:`DistributedPDT.step` calls (or instances)."""


class CompiledPassError(RuntimeError):
    """A compiled pass failed on some rank; every rank raises it after the same collective.

    ``kernel="auto"`` catches it and runs the eager passes on every rank; ``"compiled"`` lets it through.
    """


def _hash(value: Any) -> int:
    """A hash of ``repr(value)`` that is the same in every process (``hash`` of a str is salted)."""
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _HASH_BITS)


def _bit_checksums(flat: Tensor, chunk_size: int) -> Tensor:
    """Two checksums of ``flat``'s bits, equal for equal tensors whatever the summation order.

    The plain sum and a position-weighted sum of the bit patterns (as 8-, 16- or 32-bit integers),
    in int64 modulo :math:`2^{64}` (associative, so exact in any order), then reduced modulo
    :math:`2^{52}` to fit a float64 message. NaNs are first made one canonical NaN, so equal
    NaNs compare equal.
    """
    width = {1: torch.int8, 2: torch.int16}.get(flat.element_size(), torch.int32)
    total = torch.zeros(2, dtype=torch.int64, device=flat.device)
    nan = torch.tensor(math.nan, dtype=flat.dtype, device=flat.device)
    offset = 0
    for start in range(0, flat.numel(), chunk_size):
        chunk = flat[start : start + chunk_size]
        bits = torch.where(chunk.isnan(), nan, chunk).view(width).to(torch.int64)
        weights = torch.arange(offset, offset + bits.numel(), device=flat.device) % 65521 + 1
        offset += bits.numel()
        total[0] += bits.sum()
        total[1] += (bits * weights).sum()
    return (total & ((1 << _HASH_BITS) - 1)).cpu().double()


class _UnevenEpoch(JoinHook):
    """``Join``'s hook for a :class:`DistributedPDT`: nothing to shadow; afterwards, mark the epoch uneven."""

    def __init__(self, pdt: DistributedPDT) -> None:
        self.pdt = pdt

    def post_hook(self, is_last_joiner: bool) -> None:
        self.pdt._uneven = True


class _AgreedPasses:
    """:class:`torch_pdt.kernel.FusedPasses` whose every call ends in a vote of the ranks on its success.

    ``agree(pass, error)`` returns when every rank's call succeeded, else raises
    :class:`CompiledPassError` on every rank (held weakly: the PDT owns the backend that owns this),
    which :class:`torch_pdt.passes.Backend` then handles alike on every rank.
    """

    def __init__(self, fused: kernel.FusedPasses, agree: weakref.WeakMethod) -> None:
        self.fused = fused
        self._agree = agree

    def _agreed(self, what: str, run: Callable[[], Any]) -> Any:
        try:
            result = run()
        except Exception as e:
            self._agree()(what, e)
            raise  # not reached: the vote raises on every rank
        self._agree()(what, None)
        return result

    def copy_in(self, flats: Sequence[Tensor], row: int) -> Tensor:
        return self._agreed("snapshot pass", lambda: self.fused.copy_in(flats, row))

    def gram(self, rows: Sequence[int], W: Tensor | Sequence[Tensor | None]) -> Tensor:
        return self._agreed("second Gram pass", lambda: self.fused.gram(rows, W))

    def predict(
        self,
        flats: Sequence[Tensor],
        rows: Sequence[int],
        coefficients: Coefficients,
        plan: passes.Plan,
        **hooks: Any,
    ) -> PassCounts:
        return self._agreed("prediction pass", lambda: self.fused.predict(flats, rows, coefficients, plan, **hooks))


class DistributedPDT(PDT, Joinable):
    r""":class:`~torch_pdt.PDT` for data-parallel (DDP) and sharded (FSDP2) training.

    Construct it on every rank with the same arguments and call :meth:`step` on every rank at
    the same point (or use ``every_n_steps``); the statistics it returns are global. Construction
    is a collective (it compares the settings), and so is every :meth:`step`.

    Args:
        optimizer, \*args, \*\*kwargs: as for :class:`~torch_pdt.PDT`.
        group: the process group (default: the world). The default process group must be
            initialised.
        sharded: whether each rank holds a different part of the parameters. ``None`` (default)
            means: if any parameter is a DTensor (FSDP2). ``True`` also suits parameters that a
            user shards by hand (each rank passes its own part of each parameter as a plain
            tensor, under the same names; the statistics count the parts of all ranks).
        verify: replicated only: after every :meth:`step`, check with one ``all_reduce`` that
            all ranks hold bit-identical weights (equal NaNs count as equal); raises
            :class:`ReplicaMismatchError` if not.

    Raises:
        ValueError: on every rank, when the ranks' settings or parameter layouts differ, or
            when the construction raised on another rank.

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
        Joinable.__init__(self)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._ordinal = next(_ordinals)
        # Collectives run on the CPU where the backend takes CPU tensors (gloo), else on the
        # parameters' device (NCCL).
        params = [p for g in getattr(optimizer, "param_groups", []) for p in g["params"]]
        if "gloo" in str(dist.get_backend(group)) or not params:
            self._comm_device = torch.device("cpu")
        else:
            self._comm_device = local_shard(params[0]).device
        self._token = None  # no pass votes before the construction vote (which settles the kernel)
        try:
            if sharded is None:
                sharded = any(isinstance(p, DTensor) for p in params)
            if verify and sharded:
                raise ValueError("verify compares replicated weights; it does not apply to sharded parameters")
            # Set before PDT.__init__, which may already take a snapshot (criterion="reference").
            self.sharded = sharded
            self.verify = verify
            super().__init__(optimizer, *args, **kwargs)
        except Exception:
            self._vote(failed=True)  # the others must not wait for this rank's settings
            raise
        # The run's token (rank 0's draw) names this instance in every header; a fresh state's
        # origin is the token itself.
        self._token, compiling = self._vote(failed=False, compiled=self._passes.compiled is not None)
        self._run = self._token
        if self._passes.compiled is not None and len(compiling) < self.world_size:
            self._all_eager(compiling)
        self._origin, self._origin_note = _hash(("fresh", self._run)), "a fresh start"
        self._check_agreement()
        self._uneven = False
        self._steps_at_last = self._watch.optimizer_steps
        # Statistics count the whole model: a DTensor's numel is global already, a hand-sharded
        # plain tensor's is this rank's part.
        self._numels = [p.numel() for p in self.params]
        if sharded:
            parts = torch.tensor([0 if isinstance(p, DTensor) else p.numel() for p in self.params], dtype=torch.int64)
            parts = parts.to(self._comm_device)
            dist.all_reduce(parts, group=self.group)
            self._numels = [p.numel() if isinstance(p, DTensor) else int(n) for p, n in zip(self.params, parts.cpu())]
            self.numel = sum(self._numels)

    def _vote(self, failed: bool, compiled: bool = False) -> tuple[int, list[int]]:
        """Raise ``ValueError`` on every rank that constructed if another rank's construction raised;
        else return rank 0's random token (the same on every rank) and the ranks that chose the
        compiled passes."""
        world = self.world_size
        flags = torch.zeros(2 * world + 1, dtype=torch.float64)
        flags[self.rank] = float(failed)
        flags[world + self.rank] = float(compiled)
        if self.rank == 0:
            flags[-1] = secrets.randbits(_HASH_BITS)
        flags = flags.to(self._comm_device)
        dist.all_reduce(flags, group=self.group)
        flags = flags.cpu()
        ranks = flags[:world].nonzero().flatten().tolist()
        if ranks and not failed:
            raise ValueError(f"DistributedPDT could not be constructed on rank(s) {ranks} (see their error)")
        return int(flags[-1]), flags[world:-1].nonzero().flatten().tolist()

    def _all_eager(self, compiling: list[int]) -> None:
        """``kernel="auto"`` where only the ranks ``compiling`` chose the compiled passes: every rank runs eager."""
        eager = sorted(set(range(self.world_size)) - set(compiling))
        logger.warning("PDT runs the eager passes on every rank: rank(s) %s cannot compile", eager)
        self._passes.compiled = None
        if len(self._history):  # the first snapshot (start-of-epoch criteria): its Gram row as eager ranks have it
            self._history.replace_newest(self._flat_params(), self._passes)

    def _check_agreement(self) -> None:
        """Raise ``ValueError`` on every rank unless all ranks have the same settings and layout."""
        layout = [
            (name, tuple(p.shape) if isinstance(p, DTensor) or not self.sharded else "local", str(p.dtype))
            for name, p in zip(self.names, self.params)
        ]
        fields = self._agreement() | {"sharded": self.sharded, "verify": self.verify, "parameters": layout}
        names = sorted(fields)
        rows = torch.zeros(self.world_size, len(names), dtype=torch.float64)
        rows[self.rank] = torch.tensor([float(_hash(fields[k])) for k in names], dtype=torch.float64)
        rows = rows.to(self._comm_device)
        dist.all_reduce(rows, group=self.group)  # each rank fills its own row: a gather
        rows = rows.cpu()
        differ = []
        for j, name in enumerate(names):
            groups = _groups(rows[:, j].tolist())
            if len(groups) > 1:
                mine = fields[name] if name != "parameters" else f"{len(layout)} tensors"
                differ.append(f"{name} (ranks {' vs '.join(map(str, groups))}; rank {self.rank} has {mine!r})")
        if differ:
            raise ValueError("DistributedPDT settings differ across ranks: " + "; ".join(differ))

    def _all_reduce(self, kind: str, payload: Tensor) -> Tensor:
        """Sum ``payload`` (float64) over the ranks; first check (:meth:`_header`) that every rank is
        in the same collective."""
        self._header(kind)
        message = payload.to(torch.float64).to(self._comm_device)
        dist.all_reduce(message, group=self.group)
        return message.cpu().view_as(payload)

    def _header(self, kind: str, flag: bool = False) -> Tensor:
        """Check that every rank is in the same collective; return every rank's ``flag`` (0 or 1).

        A header of ``W x 5`` numbers, each rank filling its own row with its instance's token
        and ordinal, its step counter, ``kind`` and ``flag``: the same length for every instance
        and kind, so gloo pairs any two headers, and PDT tells them apart before it sends a
        payload whose length could differ. A vote needs no payload: its flags ride in the header.
        """
        header = torch.zeros(self.world_size, _HEADER, dtype=torch.float64)
        mine = (self._token, self._ordinal, self.epoch, _KINDS.index(kind), float(flag))
        header[self.rank] = torch.tensor(mine, dtype=torch.float64)
        header = header.to(self._comm_device)
        dist.all_reduce(header, group=self.group)
        header = header.cpu()
        if not (header[:, :4] == header[self.rank, :4]).all():

            def where(row: list[float]) -> str:
                token, ordinal, epoch, k, _ = row
                what = _KINDS[int(k)] if k == int(k) and 0 <= k < len(_KINDS) else "?"
                instance = "" if token == self._token else f" of another PDT instance (#{int(ordinal)})"
                return f"step {int(epoch)} ({what}){instance}"

            seen = ", ".join(f"rank {r} at {where(row)}" for r, row in enumerate(header.tolist()))
            raise RanksOutOfStepError(
                f"PDT ranks are out of step: {seen}. Every rank must call step() once per epoch, and step "
                "several PDT instances in the same order (a rank skipped or repeated step(), or raised inside "
                "it and went on)"
            )
        return header[:, 4]

    def step(self, loss: float | Tensor | None = None, *, predict: bool = True) -> dict[str, Any]:
        """:meth:`torch_pdt.PDT.step` on every rank with the mean of the ranks' losses.

        One gather first collects every rank's step counter, optimizer steps since its previous
        call, state origin, ``loss`` and ``predict``; the pacing rule then sees the mean loss on
        every rank. With ``verify=True``, the replica check follows.

        Raises:
            RanksOutOfStepError: on every rank, when the ranks are at different step counters
                or took different numbers of optimizer steps since their previous call (outside
                ``Join``).
            ValueError: on every rank, when the ranks' states have different origins (they
                resumed different checkpoints), when a rank's arguments are invalid (its own
                message on that rank), or when the ranks disagree on passing a loss, on
                ``predict`` or, with ``horizon_by="lr"``, on the learning rate.
        """
        error, rate = None, None
        try:
            value = self._validate(loss, predict)
            rate = self._rate()
        except ValueError as e:
            error, value = e, None
        trained_now = self._watch.optimizer_steps - self._steps_at_last
        # Row r: optimizer steps since the previous step(), epoch made uneven by Join, state origin,
        # arguments valid, loss given, loss, predict, learning rate (horizon_by="lr").
        has_loss = value is not None
        columns = [trained_now, self._uneven, self._origin, error is None, has_loss, value or 0.0, predict is True]
        columns.append(rate or 0.0)
        rows = torch.zeros(self.world_size, len(columns), dtype=torch.float64)
        rows[self.rank] = torch.tensor([float(c) for c in columns], dtype=torch.float64)
        rows = self._all_reduce("step", rows)
        trained, uneven, origins, valid, given, losses, predicts, rates = rows.T
        if not uneven.any() and not (trained == trained[0]).all():
            seen = ", ".join(f"rank {r} after {int(n)}" for r, n in enumerate(trained.tolist()))
            raise RanksOutOfStepError(
                f"PDT ranks are out of step: all at step {self.epoch}, but {seen} optimizer steps since their "
                "previous step(). Every rank must call step() once per epoch (a rank skipped or repeated step()); "
                "with uneven inputs, pass the PDT to torch.distributed.algorithms.Join beside the model"
            )
        groups = _groups(origins.tolist())
        if len(groups) > 1:
            raise ValueError(
                f"PDT ranks hold states of different origins: ranks {' vs '.join(map(str, groups))} (rank "
                f"{self.rank} holds {self._origin_note}). Every rank must resume the same checkpoint (sharded: "
                "each rank its own file of it), or none"
            )
        if error is not None:
            raise error
        if (valid == 0).any():
            raise ValueError(f"PDT rank(s) {(valid == 0).nonzero().flatten().tolist()} rejected their step() arguments")
        for what, column in (("a loss", given), ("predict=True", predicts)):
            if not (column == column[0]).all():
                ranks = column.nonzero().flatten().tolist()
                raise ValueError(f"PDT ranks disagree: only rank(s) {ranks} passed {what}; no rank stepped")
        if not (rates == rates[0]).all():
            # Each rank would forecast its own horizon from its own rates: the replicas would part.
            # Every digit (repr): rates a few bits apart would otherwise read as the same rate twice.
            seen = ", ".join(f"rank {r} at {lr!r}" for r, lr in enumerate(rates.tolist()))
            raise ValueError(
                f'PDT ranks disagree on the learning rate horizon_by="lr" records: {seen}; no rank stepped. '
                "Every rank's optimizer and scheduler must be at the same rate"
            )
        mean = losses.mean().item() if given[0] else None
        if uneven.any():
            self._watch.expect_empty_epoch()
        stats = super().step(mean, predict=predict)
        self._uneven, self._steps_at_last = False, self._watch.optimizer_steps
        if self.verify:
            self._verify_replicas()
        return stats

    # --- Join (uneven inputs) ---------------------------------------------------------------

    def join_hook(self, **kwargs: Any) -> JoinHook:
        """For ``Join([model, pdt])``: step mode and sharded parameters are refused here, up front."""
        if self.config.every_n_steps is not None:
            raise ValueError(
                "DistributedPDT with every_n_steps steps inside optimizer steps, which a rank that has joined "
                "no longer takes: uneven inputs need epoch mode"
            )
        if self.sharded:
            raise ValueError("DistributedPDT under Join: uneven inputs are supported for replicated (DDP) parameters")
        return _UnevenEpoch(self)

    @property
    def join_device(self) -> torch.device:
        return self._comm_device

    @property
    def join_process_group(self) -> Any:
        return self.group if self.group is not None else dist.group.WORLD

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """:meth:`torch_pdt.PDT.state_dict` and the run it belongs to: its token, this rank and the world size.

        Replicated, the state is every rank's; sharded, save one file per rank (or use
        :func:`torch_pdt.distributed.dcp.checkpointable`, which reshards).
        """
        return super().state_dict() | {
            "ranks": {"run": self._run, "rank": self.rank, "world_size": self.world_size, "sharded": self.sharded}
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """:meth:`torch_pdt.PDT.load_state_dict`; sharded, the state must be this rank's of a run of this size.

        Files saved before the ``"ranks"`` entry existed (or by :class:`~torch_pdt.PDT`) load
        without that check. The next :meth:`step` compares every rank's resumed state.
        """
        ranks = state_dict.get("ranks") if isinstance(state_dict, dict) else None
        if ranks is not None:
            if not isinstance(ranks, dict) or not {"run", "rank", "world_size", "sharded"} <= set(ranks):
                raise ValueError("saved ranks entry must be a dict with run, rank, world_size and sharded")
            # Checked here, before anything is loaded: a refusal after the load would leave it half-done.
            integers = [ranks[k] for k in ("run", "rank", "world_size")]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in integers):
                raise ValueError(f"saved ranks entry: run, rank and world_size must be ints, got {integers}")
            if not isinstance(ranks["sharded"], bool):
                raise ValueError(f"saved ranks entry: sharded must be a bool, got {ranks['sharded']!r}")
            if self.sharded and (ranks["rank"], ranks["world_size"]) != (self.rank, self.world_size):
                raise ValueError(
                    f"PDT rank {self.rank} of {self.world_size}: this is rank {ranks['rank']}'s state of a sharded "
                    f"run on {ranks['world_size']} ranks; each rank must load its own file (or use "
                    "torch_pdt.distributed.dcp to load on another world size)"
                )
        super().load_state_dict(state_dict)
        self._resumed(state_dict, None if ranks is None else ranks["run"])

    def _load_resharded(self, state_dict: dict[str, Any], run: int | None) -> None:
        """Load a state whose snapshots are this rank's shards already (from :mod:`torch_pdt.distributed.dcp`)."""
        PDT.load_state_dict(self, state_dict)
        self._resumed(state_dict, run)

    def _resumed(self, state_dict: dict[str, Any], run: int | None) -> None:
        """Record the origin of a state just loaded: what every rank's must equal at the next step."""
        state_dict = compat.upgrade(state_dict)
        shared = [state_dict[k] for k in ("epoch", "plain_epochs", "optimizer_steps", "pacing")]
        if not self.sharded:  # the snapshots are every rank's too
            snapshots = state_dict["history"]["snapshots"]
            shared.append([_bit_checksums(t.reshape(-1), self.chunk_size).tolist() for t in snapshots])
        if run is not None:
            self._run = run
        self._origin = _hash((run, shared))
        where = "" if run is None else f" of run {run:x}"
        self._origin_note = f"a state resumed at step {self.epoch}{where}"

    # --- hooks of PDT ------------------------------------------------------------------------

    def _snapshot(self) -> None:
        if not self.sharded:
            super()._snapshot()  # replicated: an error is this rank's own, let it propagate
            return
        newest = self._history.rows()[-1:]
        try:
            super()._snapshot()
        except CompiledPassError:  # kernel="compiled": every rank raises it together
            raise
        except Exception as e:  # any other failure: the other ranks must learn of it, not hang
            warnings.warn(f"PDT rank {self.rank}: snapshot failed ({e!r}); all ranks will skip predictions")
            # The ring advances once, as on every other rank (the schedule depends on its
            # length); a NaN row makes each Gram holding it non-finite, which the next
            # all_reduce reports.
            lost = [
                torch.full((q.numel(),), float("nan"), dtype=q.dtype, device=q.device)
                for q in map(local_shard, self.params)
            ]
            if self._history.rows()[-1:] == newest:  # failed before the ring advanced
                self._history.push(lost, self._passes)
            else:
                self._history.replace_newest(lost, self._passes)

    def _reduce_gram(self, gram: Tensor) -> Tensor:
        if not self.sharded:
            return gram
        n = gram.numel()
        # One message per Gram pass: the local Gram (q x q, or every layer's stacked), then one
        # failure flag per rank.
        message = torch.zeros(n + self.world_size, dtype=torch.float64)
        message[:n] = gram.reshape(-1)
        if not torch.isfinite(gram).all():
            message[n + self.rank] = 1.0
        message = self._all_reduce("gram", message)
        failed = torch.nonzero(message[n:]).flatten().tolist()
        if failed:
            raise dmd.DMDError(f"rank(s) {failed} lost a snapshot or hold non-finite snapshot values")
        return message[:n].reshape(gram.shape)

    def _model_numels(self) -> list[int]:
        return self._numels

    def _choose_kernel(self) -> None:
        super()._choose_kernel()
        backend = self._passes
        if backend.compiled is not None:
            backend.compiled = _AgreedPasses(backend.compiled, weakref.WeakMethod(self._agree_on_pass))

    def _agree_on_pass(self, what: str, error: Exception | None) -> None:
        """After a compiled pass: raise :class:`CompiledPassError` on every rank if it failed on any."""
        if self._token is None:  # constructing: a failure is this rank's, and the construction vote follows
            if error is not None:
                raise error
            return
        failed = self._header("kernel", flag=error is not None).nonzero().flatten().tolist()
        if failed:
            mine = "see its error" if error is None else f"{type(error).__name__}: {_first_line(error)}"
            raise CompiledPassError(f"PDT's compiled {what} failed on rank(s) {failed} ({mine})") from error

    def _reduce_counts(self, counts: Tensor) -> Tensor:
        if not self.sharded:
            return counts
        # float64 holds every count below 2**53 exactly.
        return self._all_reduce("counts", counts.double()).round().to(counts.dtype)

    def _verify_replicas(self) -> None:
        """Raise :class:`ReplicaMismatchError` unless every rank holds bit-identical weights."""
        with torch.no_grad():
            local = torch.cat([_bit_checksums(f, self.chunk_size) for f in self._flat_params()])
        # Rank r's checksums in row r: the sum gathers them all.
        rows = torch.zeros(self.world_size, local.numel(), dtype=torch.float64)
        rows[self.rank] = local
        rows = self._all_reduce("verify", rows)
        same = (rows == rows[0]).view(self.world_size, -1, 2).all(2).all(0)
        if not same.all():
            bad = [n for n, ok in zip(self.names, same.tolist()) if not ok]
            raise ReplicaMismatchError(f"PDT ranks disagree after epoch {self.epoch - 1} on {bad}")


def _first_line(error: Exception) -> str:
    """The first line of an error's message, at most 200 characters (a compiler's can be pages)."""
    return (str(error).strip().splitlines() or [""])[0][:200]


def _groups(values: list[float]) -> list[list[int]]:
    """The ranks grouped by equal value, in order of first appearance."""
    groups: dict[float, list[int]] = {}
    for r, value in enumerate(values):
        groups.setdefault(value, []).append(r)
    return list(groups.values())
