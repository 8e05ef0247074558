r"""The seam where PDT's passes over the snapshots fork: one plan, one interface, two implementations.

A PDT step reads the snapshots in at most three passes; everything else is ``h x h`` algebra
(:mod:`torch_pdt.dmd`). Every implementation offers the same three (:class:`Passes`):

* ``copy_in(flats, row)``: copy the parameters into ring row ``row`` and return the inner
  products that row changes in the history's Gram matrix
  (:class:`~torch_pdt.snapshots.SnapshotHistory`);
* ``gram(rows, W)``: the second Cholesky-QR Gram pass, :math:`(BTW)^\top (BTW)` of the
  consecutive basis (:func:`torch_pdt.dmd.orthogonal_factor`);
* ``predict(flats, rows, coefficients, plan)``: predict, mask and assemble every element from
  the DMD's step coefficients, returning the :class:`~torch_pdt.prediction.PassCounts`.

What a prediction pass does travels as a :class:`Plan` (the horizon, the criterion and its
declared checks, the snapshots' origin, graded, linear, write), never decoded from the
coefficients' shape. The implementations are :class:`torch_pdt.prediction.EagerPasses`
(chunked torch operations, every option) and :class:`torch_pdt.kernel.FusedPasses` (one
``torch.compile``\ d loop per parameter and pass); :mod:`torch_pdt.reference` is their float64
twin. A new criterion or landing rule touches the plan, these two and the twin.

:func:`choose` picks the implementation for ``PDT(kernel=...)``, and :class:`Backend` runs it,
falling back to the eager passes once if compiling fails under ``kernel="auto"``.

**Hooks of a sharded subclass.** :class:`~torch_pdt.distributed.DistributedPDT` keeps these
passes local to its shard and overrides, on :class:`~torch_pdt.PDT`: ``_choose_kernel`` (which
:class:`Backend` it runs: it sets ``self._passes``), ``_snapshot`` (a failed copy-in becomes a
lost snapshot on every rank), ``_reduce_gram`` (sums the ranks' Gram matrices, first and second
pass alike), ``_reduce_counts`` (sums the pass's counts) and ``_model_numels`` (elements of
each parameter over all ranks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from . import criteria, kernel, prediction
from .config import PDTConfig
from .prediction import Coefficients, PassCounts
from .snapshots import SnapshotHistory

__all__ = ["Backend", "Passes", "Plan", "choose"]

logger = logging.getLogger("torch_pdt")


@dataclass(frozen=True)
class Plan:
    """What one prediction pass does, for every implementation alike.

    Attributes:
        horizon: ``tau``, epochs ahead; the coefficients are ``(tau + 1) x m`` (graded: ``2 tau x m``).
        criterion: the criterion's canonical name (:mod:`torch_pdt.criteria`).
        start_of_epoch: the snapshots are the weights each epoch started from (the authors'
            code): the optimizer's step is the parameter minus the newest snapshot; else the
            newest snapshot is the optimizer's result and its step the last difference.
        origin_is_param: the forecast starts from the parameter rather than the newest snapshot
            (the snapshots round the parameters: bf16 storage).
        newest_is_param: the newest snapshot holds the parameters exactly (PDT's end-of-epoch
            snapshot, stored in their dtype, just taken): a pass may read them from it, and a
            failed pass restore them from it.
        graded: each element lands at the largest horizon whose checks pass.
        linear: an accepted element moves by ``tau`` (graded: ``k``) times the optimizer's step.
        write: assemble into the parameters; else only count.
        ratio: ``criterion="random"``: the probability of accepting an element.
    """

    horizon: int
    criterion: str
    start_of_epoch: bool = False
    origin_is_param: bool = False
    newest_is_param: bool = False
    graded: bool = False
    linear: bool = False
    write: bool = True
    ratio: float = 0.0

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks the criterion declares (:data:`torch_pdt.criteria.DECLARED`)."""
        return criteria.DECLARED[self.criterion]


class Passes(Protocol):
    """The three passes over the snapshots (module docstring); ``rows`` are storage rows, oldest first."""

    def copy_in(self, flats: Sequence[Tensor], row: int) -> Tensor: ...

    def gram(self, rows: Sequence[int], W: Tensor | Sequence[Tensor | None]) -> Tensor: ...

    def predict(
        self, flats: Sequence[Tensor], rows: Sequence[int], coefficients: Coefficients, plan: Plan, **hooks: Any
    ) -> PassCounts:
        """``hooks``: ``on_chunk`` (:data:`torch_pdt.prediction.OnChunk`, for ``on_jump``) and
        ``draws`` (the random criterion's generators)."""


class Backend:
    """The passes a PDT runs: compiled where :func:`choose` chose them, else eager.

    Under ``kernel="auto"`` a compiled pass that raises is replaced by the eager one, for this
    call and every later one (one warning); under ``kernel="compiled"`` the error propagates.
    A prediction pass that fails part-way is redone eagerly where the parameters it may have
    written can be restored exactly and it has not yet touched the optimizer's state
    (``on_jump``); otherwise its error propagates. The newest snapshot restores them at the end
    of an epoch when stored exactly; elsewhere (start-of-epoch snapshots, ``storage="bf16"``)
    the first call of each kind of pass, the one that compiles, runs beside a copy of the
    parameters: a compile failure, the failure ``"auto"`` exists for, then loses nothing, for
    one transient copy of the parameters per kind of pass.

    Args:
        history: the snapshot ring the passes read and write.
        config: the PDT options (``kernel``, ``chunk_size``, ``scope``).
        compiled: the compiled passes, or ``None`` for eager only.
    """

    def __init__(self, history: SnapshotHistory, config: PDTConfig, compiled: kernel.FusedPasses | None = None) -> None:
        self.kernel = config.kernel
        self.eager = prediction.EagerPasses(*history.layout(), chunk_size=config.chunk_size, scope=config.scope)
        self.compiled = compiled
        self._history = history
        self._compiled_kinds: set[tuple[Any, ...]] = set()

    def _fall_back(self, error: Exception) -> None:
        if self.kernel == "compiled":
            raise error
        logger.warning(
            "PDT could not compile its passes (%s: %s); it runs the eager passes", type(error).__name__, error
        )
        self.compiled = None

    def copy_in(self, flats: Sequence[Tensor], row: int) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled.copy_in(flats, row)
            except Exception as e:
                self._fall_back(e)  # the row is written afresh below
        return self.eager.copy_in(flats, row)

    def gram(self, rows: Sequence[int], W: Tensor | Sequence[Tensor | None]) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled.gram(rows, W)
            except Exception as e:
                self._fall_back(e)
        return self.eager.gram(rows, W)

    def predict(
        self, flats: Sequence[Tensor], rows: Sequence[int], coefficients: Coefficients, plan: Plan, **hooks: Any
    ) -> PassCounts:
        if self.compiled is not None:
            touched: list[bool] = []  # velocities scaled by on_jump cannot be restored
            # Only the hooks the plan uses: a wrapper of the compiled passes may take none.
            noted = {"draws": hooks["draws"]} if plan.criterion == "random" and "draws" in hooks else {}
            on_chunk = hooks.get("on_chunk")
            if on_chunk is not None:

                def on_chunk_noted(*args: Any) -> None:
                    touched.append(True)
                    on_chunk(*args)

                noted["on_chunk"] = on_chunk_noted
            # Elsewhere than where the newest snapshot holds the parameters, a pass of a kind not
            # yet compiled runs beside a copy.
            from_snapshot = plan.newest_is_param
            kind = (replace(plan, ratio=0.0), on_chunk is not None)  # one graph serves every ratio
            copies = None
            if self.kernel == "auto" and plan.write and not from_snapshot and kind not in self._compiled_kinds:
                copies = [f.clone() for f in flats]
            try:
                counts = self.compiled.predict(flats, rows, coefficients, plan, **noted)
            except Exception as e:
                if self.kernel == "compiled" or touched or not (from_snapshot or copies is not None):
                    raise
                if from_snapshot:
                    self._history.copy_newest_to(flats)
                else:
                    torch._foreach_copy_(list(flats), copies)
                self._fall_back(e)
            else:
                self._compiled_kinds.add(kind)
                return counts
        return self.eager.predict(flats, rows, coefficients, plan, **hooks)


def choose(history: SnapshotHistory, config: PDTConfig, flats: Sequence[Tensor], numel: int) -> Backend:
    """The :class:`Backend` for ``config.kernel``, logging which passes run and why.

    ``flats`` are the tensors the passes read and write (local shards where sharded), ``numel``
    the elements of the whole model.

    ``kernel="compiled"`` raises ``ValueError`` (before any snapshot) where the compiled passes
    cannot run: snapshots on another device than the parameters, no compiler, or a compiler that
    fails on a probe.
    ``"auto"`` also stays eager for a small model (:data:`~torch_pdt.kernel.AUTO_MIN_NUMEL`
    elements and :data:`~torch_pdt.kernel.AUTO_MIN_TENSORS` tensors).
    """
    storage, _ = history.layout()
    devices = {f.device for f in flats}
    unsupported = [
        reason
        for reason, applies in (
            ("snapshots on another device", {s.device for s in storage} != devices),
            ("no compiler for " + ", ".join(sorted(map(str, devices))), not all(map(kernel.compiles, devices))),
        )
        if applies
    ]
    if config.kernel == "compiled" and unsupported:
        raise ValueError(f"kernel='compiled' is not available here: {'; '.join(unsupported)}")
    small = numel < kernel.AUTO_MIN_NUMEL and len(flats) < kernel.AUTO_MIN_TENSORS
    if config.kernel == "eager" or unsupported or (config.kernel == "auto" and small):
        if config.kernel == "eager":
            reason = "kernel='eager'"
        elif unsupported:
            reason = "; ".join(unsupported)
        else:
            reason = "a small model"
        logger.info("PDT runs the eager passes (%s)", reason)
        return Backend(history, config)
    if config.kernel == "compiled":
        _probe(flats, history.capacity, config.storage)
    logger.info("PDT runs the compiled passes (kernel=%r)", config.kernel)
    return Backend(history, config, kernel.FusedPasses(*history.layout(), scope=config.scope))


def _probe(flats: Sequence[Tensor], capacity: int, storage: str) -> None:
    """``kernel="compiled"``: ``ValueError`` now, not at the first step, if the compiler is present
    but cannot build the copy-in pass (a broken toolchain, a failing inductor).

    The pass is compiled and run once on a stand-in of 8 elements per (device, dtype) and the
    same ring capacity and storage: its dynamic-shape graph is the one the real snapshots then
    reuse, so the probe costs no second compilation.
    """
    kinds = {(t.device, t.dtype): torch.zeros(8, dtype=t.dtype, device=t.device) for t in flats}
    stand_ins: list[Any] = list(kinds.values())
    probe = SnapshotHistory(stand_ins, capacity, storage)
    try:
        probe.push(stand_ins, kernel.FusedPasses(*probe.layout()))
    except Exception as e:
        raise ValueError(
            f"kernel='compiled' is not available here: compiling the snapshot pass failed "
            f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}); "
            "use kernel='auto' or 'eager'"
        ) from e
