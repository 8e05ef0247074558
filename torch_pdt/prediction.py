r"""The prediction pass: predict, mask and assemble, one chunk of one parameter at a time.

PDT's DMD gives every forecast as a combination of the stored snapshots
(:mod:`torch_pdt.dmd`): a ``(tau + 1) x m`` float64 matrix ``coefficients`` maps the snapshots
(oldest first) to the ``tau`` predicted steps :math:`\hat w_{i+k} - \hat w_{i+k-1}` and, in its
last row, to the displacement :math:`D = \hat w_{i+\tau} - \hat w_i`. :func:`predict_pass`
applies it in one read of the snapshots and one write of the parameters. Per chunk the work is
a handful of whole-chunk operations in the parameters' precision (float32 for float32,
bfloat16 and float16 parameters, float64 for float64 ones):

* :math:`X_j = s_j - s_{last}` for every row but the newest, which holds :math:`s_{last}`
  itself. For float32 snapshots these differences are exact (Sterbenz) wherever two snapshots
  are within a factor 2 of each other, and every predicted quantity is a small combination of
  them, so its rounding is a few units of the float32 rounding of the *displacement*, far below
  that of the weight. The snapshots themselves are never combined in float32: their rounding
  would be that of the weight times the size of the coefficients.
* one matrix product gives every step and the displacement;
* the consistency test of Eq. 7 needs only the smallest and largest step;
* the paper's :math:`\Delta = s_{last} - s_{prev} = -X_{prev}` is free: the mask is invariant
  under flipping the sign of steps, displacement and :math:`\Delta` together, so the product is
  taken with the negated coefficients and compared with :math:`X_{prev}` as it is.
* an element is accepted when its assembled value is finite *in the parameter's dtype* (a
  float32 forecast can overflow a float16 weight) and it passes every check of the criterion.

Statistics accumulate on the parameters' devices; the only host transfer is at the end.
:class:`EagerPasses` is this module's implementation of the three passes of
:mod:`torch_pdt.passes` (copy-in, second Gram pass, prediction); :mod:`torch_pdt.kernel` is the
compiled one (same arguments, same counts). What a pass does comes as a
:class:`~torch_pdt.passes.Plan`.

**Per layer** (``scope="layer"``): ``coefficients`` is one matrix per parameter (its own DMD),
or ``None`` for a parameter without a fit, whose elements are kept and counted as passing (PDT
reports them apart).

**Linear** (``linear=True``, ``PDT(jump="linear")``): the criterion judges the forecast as
above, but an accepted element gets :math:`s_{last} + \tau\Delta` (graded: :math:`k\Delta`), the
optimizer's step extrapolated; its finiteness is that of this value.

**Graded** (``graded=True``): ``coefficients`` is ``2 tau x m`` (:meth:`torch_pdt.dmd.DMD.step_coefficients`):
the steps, then the displacements :math:`D_k`, ``k = 1..tau``. An element goes to the largest
``k`` whose checks pass, the criterion applied with ``tau`` replaced by ``k`` to the first ``k``
steps (their running extremes) and :math:`D_k`, and whose new value is finite. The rejection
counts are those of the full horizon, as without grading; :attr:`PassCounts.per_horizon`
counts the elements landing at each ``k``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import criteria, dmd, staging
from .criteria import CHECKS, Criterion, extremes

if TYPE_CHECKING:
    from .passes import Plan

__all__ = ["Coefficients", "EagerPasses", "PassCounts", "predict_pass"]

EAGER_RUN = 32
"""The eager passes stage a run of small tensors (:mod:`torch_pdt.staging`) of at least this many: each
saves about 0.1 ms a predicting step (a dozen torch operations per chunk, one thread), and the shorter
runs of most models (a layer's bias and normalisation weights) keep the summation order of before."""

Coefficients = Tensor | Sequence[Tensor | None]
"""Step coefficients (module docstring): one float64 matrix, or per layer one per parameter (``None``: no fit)."""

OnChunk = Callable[[int, int, Tensor, Tensor, Tensor], None]
"""``on_chunk(i, start, accept, last_step, delta)`` after each chunk of parameter ``i`` (from
element ``start``): the accepted mask, the last predicted step and the optimizer's step (both
negated at the end of an epoch; their ratio is the same). :func:`torch_pdt.jump.updater` makes one."""


@dataclass
class PassCounts:
    """What one pass counted, on this process."""

    accepted: Tensor
    """int64 on the CPU: per parameter, its accepted elements (one tensor: a model of 10,000
    tensors spent 10 ms unbinding and restacking a list)."""
    passing: Tensor
    """int64 on the CPU: elements passing each check of :data:`~torch_pdt.criteria.CHECKS`, then finite ones."""
    applied: set[str]
    """The checks the criterion made (the others reject nothing)."""
    per_horizon: Tensor | None = None
    """Graded passes: int64 on the CPU, the elements accepted at each ``k = 1..tau``."""

    def counts(self) -> Tensor:
        """All counts in one int64 CPU tensor (accepted per parameter, :attr:`passing`, then
        :attr:`per_horizon` where graded), to sum over ranks."""
        graded = [] if self.per_horizon is None else [self.per_horizon]
        return torch.cat([self.accepted, self.passing, *graded])

    def statistics(self, counts: Tensor, names: Sequence[str], numels: Sequence[int]) -> dict[str, Any]:
        """PDT's statistics of the pass from :meth:`counts` (summed over ranks where sharded)."""
        both = counts.tolist()
        n = len(names)
        per_param, totals = both[:n], both[n : n + len(CHECKS) + 1]
        numel = sum(numels)
        rejected = {c: numel - n if c in self.applied else 0 for c, n in zip(CHECKS, totals)}
        rejected["nonfinite"] = numel - totals[-1]
        graded = {} if self.per_horizon is None else {"accepted_per_horizon": both[n + len(CHECKS) + 1 :]}
        return {
            "accepted": sum(per_param),
            "numel": numel,
            "rejected": rejected,
            "accepted_ratio_per_param": dict(zip(names, _ratios(per_param, numels))),
        } | graded


def _ratios(parts: Sequence[int], wholes: Sequence[int]) -> list[float]:
    """``part / whole`` each, 0.0 for an empty whole: a ``map``, 0.1 us an entry where a comprehension took 1."""
    if all(wholes):
        return list(map(operator.truediv, parts, wholes))
    return [a / k if k else 0.0 for a, k in zip(parts, wholes)]


class EagerPasses:
    """The three passes of :mod:`torch_pdt.passes` in chunked torch operations, for every option.

    Args:
        storage: the ring's ``(capacity, width)`` tensors, one per (device, dtype) bucket
            (:meth:`torch_pdt.snapshots.SnapshotHistory.layout`).
        slots: ``(bucket, column offset, numel)`` of every parameter, in parameter order.
        chunk_size: elements per chunk (bounds the working memory of every pass).
        scope: ``"layer"``: one Gram matrix and one forecast per parameter.

    Arithmetic on snapshots happens in float64 chunks on the tensors' own devices.
    """

    def __init__(
        self,
        storage: Sequence[Tensor],
        slots: Sequence[tuple[int, int, int]],
        chunk_size: int = dmd.CHUNK_SIZE,
        scope: str = "model",
    ) -> None:
        self.storage = list(storage)
        self.slots = list(slots)
        self.capacity = self.storage[0].shape[0]
        self.chunk_size = chunk_size
        self.scope = scope
        # Runs of fewer small tensors keep their own chunks: their float64 Gram sums then add up in
        # the order of earlier versions, whose checkpoints continue bit for bit.
        self.groups = staging.groups(self.slots, share=scope != "layer", least=EAGER_RUN)
        self._staged = staging.Staging(self.slots)

    def views(self) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(group index, start, rows)``: ``rows`` is a ``(capacity, c)`` view of the storage.

        Rows are in storage order; chunks never straddle two groups (:attr:`groups`) and hold at
        most ``chunk_size`` elements.
        """
        for g, group in enumerate(self.groups):
            storage = self.storage[group.bucket]
            for start in range(group.start, group.stop, self.chunk_size):
                stop = min(start + self.chunk_size, group.stop)
                yield g, start - group.start, storage[:, start:stop]

    def copy_in(self, tensors: Sequence[Tensor], row: int) -> Tensor:
        """Write ``tensors`` into ``row`` (the newest); the ``blocks x (capacity + 1) x 2`` float64
        inner products it changes (:meth:`torch_pdt.kernel.FusedPasses.copy_in`), on the CPU.

        One pass per chunk: convert the ``capacity`` rows to float64 once (the new one from
        the source, rounded to the storage dtype first), form every cyclic row difference
        (exact for float32 values), take the inner products of all of them and of the new
        snapshot with the new difference and with the new snapshot, and copy the chunk in.
        Sums stay on the tensors' devices until the end (no host sync per chunk); the final
        transfer of the sums also waits for asynchronous copies into pinned storage. Small tensors
        share chunks (:attr:`groups`, gathered into a buffer: flat ones).
        """
        h = self.capacity
        per_layer = self.scope == "layer"
        blocks = len(self.slots) if per_layer else 1
        work: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        if len(tensors) != len(self.slots):
            raise ValueError(f"copy_in takes {len(self.slots)} tensors, got {len(tensors)}")
        with torch.no_grad():
            for group in self.groups:
                storage, offset, numel = self.storage[group.bucket], group.start, group.stop - group.start
                i = group.members[0]
                flat = self._staged.source(group, tensors) if group.staged else tensors[i].reshape(-1)
                device = flat.device
                if device not in work:
                    size = min(self.chunk_size, max(g.stop - g.start for g in self.groups))
                    work[device] = (
                        torch.zeros(blocks, h + 1, 2, dtype=torch.float64, device=device),
                        torch.empty(h, size, dtype=torch.float64, device=device),
                        torch.empty(h + 2, size, dtype=torch.float64, device=device),
                    )
                sums, Ybuf, Zbuf = work[device]
                sums = sums[i if per_layer else 0]
                for start in range(0, numel, self.chunk_size):
                    stop = min(start + self.chunk_size, numel)
                    rows = storage[:, offset + start : offset + stop]
                    source = flat[start:stop]
                    Y, Z = Ybuf[:, : stop - start], Zbuf[:, : stop - start]
                    Y.copy_(rows.to(device, non_blocking=True))
                    Y[row].copy_(source if storage.dtype == source.dtype else source.to(storage.dtype))
                    rows[row].copy_(source, non_blocking=True)
                    torch.sub(Y[1:], Y[:-1], out=Z[1:h])
                    torch.sub(Y[0], Y[h - 1], out=Z[0])
                    # The new snapshot and (again) its difference, side by side for one product.
                    Z[h].copy_(Y[row])
                    Z[h + 1].copy_(Z[row])
                    sums.addmm_(Z[: h + 1], Z[h:].T)
        zero = torch.zeros(blocks, h + 1, 2, dtype=torch.float64)
        return sum((w[0].cpu() for w in work.values()), zero)

    def gram(self, rows: Sequence[int], W: Tensor | Sequence[Tensor | None]) -> Tensor:
        """The second Gram pass: given ``W`` (``m x q``; per layer one per tensor, ``None`` to
        skip it), the float64 ``blocks x q x q`` Gram matrices of the consecutive basis of the
        snapshots in ``rows`` times ``W`` (:func:`torch_pdt.dmd.snapshot_gram_of`; zero where skipped)."""
        m = len(rows)
        T = dmd.consecutive_basis(m)
        chunk = self.chunk_size
        if isinstance(W, Tensor):

            def everything() -> Iterator[Tensor]:
                for storage in self.storage:
                    index = torch.tensor(rows, device=storage.device)
                    for start in range(0, storage.shape[1], chunk):
                        yield storage[index, start : start + chunk]

            return dmd.snapshot_gram_of(everything, m, basis=T)(W)[None]
        q = next(w for w in W if w is not None).shape[1]
        K = torch.zeros(len(self.slots), q, q, dtype=torch.float64)
        for i, ((bucket, offset, numel), w) in enumerate(zip(self.slots, W, strict=True)):
            if w is None:
                continue
            storage = self.storage[bucket]
            index = torch.tensor(rows, device=storage.device)
            stop = offset + numel

            def chunks(index=index, storage=storage, offset=offset, stop=stop) -> Iterator[Tensor]:
                return (storage[index, start : min(start + chunk, stop)] for start in range(offset, stop, chunk))

            K[i] = dmd.snapshot_gram_of(chunks, m, basis=T)(w)
        return K

    def predict(
        self,
        flats: Sequence[Tensor],
        rows: Sequence[int],
        coefficients: Coefficients,
        plan: Plan,
        *,
        on_chunk: OnChunk | None = None,
        draws: criteria.RandomDraws | None = None,
    ) -> PassCounts:
        """:func:`predict_pass` over the whole storage (``draws``: the random criterion's generators),
        one target per group (:attr:`groups`): a parameter, or a staged run of small ones, whose
        counts per parameter come from the decisions ``on_chunk`` is handed and whose accepted
        values are written back after the pass."""
        criterion = criteria.make(plan.criterion, ratio=plan.ratio, draws=draws)
        newest = rows[-1] if plan.newest_is_param else None
        targets = [
            self._staged.source(g, flats, None if newest is None else self.storage[g.bucket][newest, g.start : g.stop])
            if g.staged
            else flats[g.members[0]]
            for g in self.groups
        ]
        if not isinstance(coefficients, Tensor):  # per layer: every group is one parameter
            coefficients = [coefficients[g.members[0]] for g in self.groups]
        decided: dict[int, list[Tensor]] = {g: [] for g, group in enumerate(self.groups) if group.staged}

        def hand_over(g: int, start: int, accept: Tensor, *values: Tensor) -> None:
            group = self.groups[g]
            if group.staged:
                decided[g].append(accept)  # chunks in order
            if on_chunk is not None:
                self._staged.hand_over(group, start, on_chunk, accept, *values)

        hook = hand_over if decided or on_chunk is not None else None
        counts = predict_pass(self.views(), targets, coefficients, rows, criterion, plan, on_chunk=hook)
        per_param = [
            self._staged.per_member(group, flats, torch.cat(decided[g] or [targets[g][:0]]))
            if group.staged
            else counts.accepted[g : g + 1]
            for g, group in enumerate(self.groups)
        ]
        if plan.write:
            for g, group in enumerate(self.groups):
                if group.staged:
                    self._staged.write_back(group, flats, per_param[g])
        return replace(counts, accepted=torch.cat([t.cpu() for t in per_param]))


def predict_pass(
    views: Iterable[tuple[int, int, Tensor]],
    targets: Sequence[Tensor],
    coefficients: Coefficients,
    rows: Sequence[int],
    criterion: Criterion,
    plan: Plan,
    *,
    on_chunk: OnChunk | None = None,
) -> PassCounts:
    """Predict, mask and (if ``plan.write``) assemble every element, chunk by chunk.

    Args:
        views: ``(i, start, rows)`` chunks of the snapshot storage (:meth:`EagerPasses.views`):
            ``rows`` is ``(capacity, c)``, elements ``start:start + c`` of target ``i``.
        targets: the flat parameters (:func:`torch_pdt.params.flat_views`), written in place.
        coefficients: ``(tau + 1) x m`` float64, snapshots oldest first (module docstring);
            ``2 tau x m`` where graded; or a list of them, one per target (``None``: keep the target).
        rows: the storage rows of the ``m`` snapshots, oldest first.
        criterion: the mask (:func:`torch_pdt.criteria.make`), the one ``plan`` names.
        plan: what the pass does (:class:`torch_pdt.passes.Plan`): ``start_of_epoch`` snapshots
            (the optimizer's step is ``target - s_last`` and the forecast starts from ``s_last``;
            else the newest snapshot is the optimizer's result and its step ``s_last - s_prev``),
            ``origin_is_param`` (the forecast starts from the target: bf16 storage), ``graded``,
            ``linear`` and ``write`` (module docstring).
        on_chunk: called after each chunk (see :data:`OnChunk`).
    """
    per_layer = not isinstance(coefficients, Tensor)
    tau, graded, linear = plan.horizon, plan.graded, plan.linear
    start_of_epoch, origin_is_param = plan.start_of_epoch, plan.origin_is_param
    last, prev = rows[-1], rows[-2]
    negated = not start_of_epoch  # the coefficients' sign is flipped (module docstring)
    accepted = [torch.zeros((), dtype=torch.int64, device=t.device) for t in targets]
    counts: dict[torch.device, Tensor] = {}
    levels: dict[torch.device, Tensor] = {}
    coefs: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
    work: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}
    with torch.no_grad():
        for i, start, V in views:
            flat = targets[i][start : start + V.shape[1]]
            device, dtype = flat.device, torch.float64 if flat.dtype == torch.float64 else torch.float32
            c = V.shape[1]
            if device not in counts:
                counts[device] = torch.zeros(len(CHECKS) + 1, dtype=torch.int64, device=device)
                levels[device] = torch.zeros(tau + 1, dtype=torch.int64, device=device)
            mine = coefficients[i] if per_layer else coefficients
            if mine is None:  # no fit for this target: kept, and blamed on no check
                counts[device] += c
                continue
            key = (device, dtype)
            coef_key = (i if per_layer else 0, device, dtype)
            if coef_key not in coefs:
                # Coefficients in storage order; the newest row of X holds s_last, so its column
                # takes the sum of all coefficients: S c = sum_{j != last} c_j X_j + (sum_j c_j) s_last.
                coef = torch.zeros(mine.shape[0], V.shape[0], dtype=torch.float64)
                coef[:, list(rows)] = -mine if negated else mine
                coef[:, last] = coef.sum(1)
                coefs[coef_key] = coef.to(device=device, dtype=dtype)
            C = coefs[coef_key]
            if key not in work or work[key][0].shape[1] < c:  # buffers for the longest chunk so far
                work[key] = (
                    torch.empty(V.shape[0], c, dtype=dtype, device=device),
                    torch.empty(C.shape[0], c, dtype=dtype, device=device),
                    torch.empty(c, dtype=dtype, device=device),
                )
            Xbuf, Mbuf, Abuf = work[key]
            X, M, anchor = Xbuf[:, :c], Mbuf[:, :c], Abuf[:c]
            V = V.to(device, non_blocking=True)
            anchor.copy_(V[last])
            if V.dtype == dtype:
                torch.sub(V, anchor, out=X)
            else:
                X.copy_(V)
                X.sub_(anchor)
            X[last].copy_(anchor)
            torch.mm(C, X, out=M)
            if start_of_epoch:
                delta = torch.sub(flat, anchor) if flat.dtype == dtype else flat.to(dtype) - anchor
            else:
                delta = X[prev]  # -(s_last - s_prev), matching the negated coefficients
            origin = anchor
            if origin_is_param:
                origin = flat if flat.dtype == dtype else flat.to(dtype)
            displacement = M[-1]  # D at tau: the last row, graded or not
            low, high = extremes(M[:tau]) if criterion.needs_steps else (None, None)
            passed = criterion(low, high, displacement, delta, tau)
            if linear:  # the checks are made: the displacement's buffer takes the linear one
                torch.mul(delta, tau, out=displacement)
            new = torch.sub(origin, displacement, out=displacement) if negated else displacement.add_(origin)
            if flat.dtype != dtype:  # finite in the parameter's dtype: float16 overflows where float32 does not
                new = new.to(flat.dtype)
            accept = new.abs() < math.inf  # finite (NaN fails too); 2.5x faster than isfinite on CPU
            tally = counts[device]
            tally[-1] += torch.count_nonzero(accept)
            for check, mask in passed.items():
                if check in CHECKS:
                    tally[CHECKS.index(check)] += torch.count_nonzero(mask)
                accept &= mask
            if graded:
                level, new = _grade(M, tau, accept, new, origin, delta, criterion, negated, linear)
                levels[device] += torch.bincount(level, minlength=tau + 1)
                accept = level > 0
            accepted[i] += torch.count_nonzero(accept)
            if plan.write:
                torch.where(accept, new, flat, out=flat)
            if on_chunk is not None:
                if linear:  # every step of the jump is the optimizer's
                    landing = delta
                elif graded:
                    landing = M[:tau].gather(0, (level - 1).clamp(min=0)[None])[0]
                else:
                    landing = M[tau - 1]
                on_chunk(i, start, accept, landing, delta)
    passing = sum((t.cpu() for t in counts.values()), torch.zeros(len(CHECKS) + 1, dtype=torch.int64))
    per_horizon = None
    if graded:
        per_horizon = sum((t.cpu() for t in levels.values()), torch.zeros(tau + 1, dtype=torch.int64))[1:]
    return PassCounts(torch.stack([a.cpu() for a in accepted]), passing, set(plan.checks), per_horizon)


def _grade(
    M: Tensor,
    tau: int,
    accept: Tensor,
    new: Tensor,
    origin: Tensor,
    delta: Tensor,
    criterion: Criterion,
    negated: bool,
    linear: bool = False,
) -> tuple[Tensor, Tensor]:
    """Each element's landing horizon (int64, 0 for none) and its new value.

    ``M`` is a graded pass's ``2 tau x c`` product, ``accept`` and ``new`` the decision and value
    at ``tau``. Going down from ``tau - 1``, an element not yet placed lands at ``k`` when the
    criterion passes with ``tau = k`` on the first ``k`` steps and :math:`D_k`, and
    ``origin + D_k`` (``linear``: ``origin + k delta``) is finite in ``new``'s dtype.
    """
    level = torch.where(accept, tau, 0)
    lows = highs = None
    if criterion.needs_steps and tau > 1:
        lows, highs = torch.cummin(M[:tau], 0).values, torch.cummax(M[:tau], 0).values
    for k in range(tau - 1, 0, -1):
        D = M[tau + k - 1]
        move = k * delta if linear else D
        candidate = (origin - move if negated else origin + move).to(new.dtype)
        ok = (level == 0) & (candidate.abs() < math.inf)
        low, high = (lows[k - 1], highs[k - 1]) if lows is not None else (None, None)
        for mask in criterion(low, high, D, delta, k).values():
            ok &= mask
        level = torch.where(ok, k, level)
        new = torch.where(ok, candidate, new)
    return level, new
