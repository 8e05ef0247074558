r"""The prediction pass: predict, mask and assemble, one chunk of one parameter at a time.

PDT's DMD gives every forecast as a combination of the stored snapshots
(:mod:`torch_pdt.dmd`): a ``(tau + 1) x m`` float64 matrix ``steps`` maps the snapshots
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
  taken with ``-steps`` and compared with :math:`X_{prev}` as it is ("mirrored").
* an element is accepted when its assembled value is finite *in the parameter's dtype* (a
  float32 forecast can overflow a float16 weight) and it passes every check of the criterion.

Statistics accumulate on the parameters' devices; the only host transfer is at the end. The
pass is eager torch; it is the seam a compiled kernel replaces (same arguments, same counts).

**Layerwise** (``scope="layer"``): ``steps`` is one matrix per parameter (its own DMD), or
``None`` for a parameter without a fit, whose elements are kept and counted as passing (PDT
reports them apart).

**Linear** (``linear=True``, ``PDT(jump="linear")``): the criterion judges the forecast as
above, but an accepted element gets :math:`s_{last} + \tau\Delta` (graded: :math:`k\Delta`), the
optimizer's step extrapolated; its finiteness is that of this value.

**Graded** (``graded=True``): ``steps`` is ``2 tau x m`` (:meth:`torch_pdt.dmd.DMD.step_coefficients`):
the steps, then the displacements :math:`D_k`, ``k = 1..tau``. An element goes to the largest
``k`` whose checks pass, the criterion applied with ``tau`` replaced by ``k`` to the first ``k``
steps (their running extremes) and :math:`D_k`, and whose new value is finite. The rejection
counts are those of the full horizon, as without grading; :attr:`PassCounts.per_horizon`
counts the elements landing at each ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .criteria import CHECKS, Criterion, extremes

__all__ = ["PassCounts", "predict_pass"]

OnChunk = Callable[[int, int, Tensor, Tensor, Tensor], None]
"""``on_chunk(i, start, accept, last_step, delta)`` after each chunk of parameter ``i`` (from
element ``start``): the accepted mask, the last predicted step and the optimizer's step (both
negated when mirrored; their ratio is the same). :func:`torch_pdt.jump.updater` makes one."""


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
            "accepted_ratio_per_param": {n: a / k if k else 0.0 for n, a, k in zip(names, per_param, numels)},
        } | graded


def predict_pass(
    views: Iterable[tuple[int, int, Tensor]],
    targets: Sequence[Tensor],
    steps: Tensor | Sequence[Tensor | None],
    rows: Sequence[int],
    criterion: Criterion,
    *,
    write: bool,
    start_of_epoch: bool = False,
    origin_is_param: bool = False,
    on_chunk: OnChunk | None = None,
    graded: bool = False,
    linear: bool = False,
) -> PassCounts:
    """Predict, mask and (if ``write``) assemble every element, chunk by chunk.

    Args:
        views: ``(i, start, rows)`` chunks of the snapshot storage
            (:meth:`~torch_pdt.snapshots.SnapshotHistory.views`): ``rows`` is ``(capacity, c)``,
            elements ``start:start + c`` of target ``i``.
        targets: the flat parameters (:func:`torch_pdt.params.flat_views`), written in place.
        steps: ``(tau + 1) x m`` float64, snapshots oldest first (module docstring); ``2 tau x m``
            where ``graded``; or a list of them, one per target (``None``: keep the target).
        rows: the storage rows of the ``m`` snapshots, oldest first.
        criterion: the mask (:func:`torch_pdt.criteria.make`).
        write: assemble into ``targets``; ``False`` only counts.
        start_of_epoch: snapshots are start-of-epoch weights (the authors' code): the optimizer's
            step is ``target - s_last`` and the forecast starts from ``s_last``; else the newest
            snapshot is the optimizer's result and its step ``s_last - s_prev``.
        origin_is_param: the forecast starts from the target itself rather than ``s_last``
            (the snapshots round the parameters: bf16 storage).
        on_chunk: called after each chunk (see :data:`OnChunk`).
        graded: each element to the largest horizon whose checks pass (module docstring).
        linear: accepted elements move by ``tau`` (graded: ``k``) times the optimizer's step
            instead of by the forecast (module docstring).
    """
    layerwise = not isinstance(steps, Tensor)
    some = next(s for s in steps if s is not None) if layerwise else steps
    tau = some.shape[0] // 2 if graded else some.shape[0] - 1
    last, prev = rows[-1], rows[-2]
    mirrored = not start_of_epoch
    accepted = [torch.zeros((), dtype=torch.int64, device=t.device) for t in targets]
    applied: set[str] = set()
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
            mine = steps[i] if layerwise else steps
            if mine is None:  # no fit for this target: kept, and blamed on no check
                counts[device] += c
                continue
            key = (device, dtype)
            coef_key = (i if layerwise else 0, device, dtype)
            if coef_key not in coefs:
                # Coefficients in storage order; the newest row of X holds s_last, so its column
                # takes the sum of all coefficients: S c = sum_{j != last} c_j X_j + (sum_j c_j) s_last.
                coef = torch.zeros(mine.shape[0], V.shape[0], dtype=torch.float64)
                coef[:, list(rows)] = -mine if mirrored else mine
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
                delta = X[prev]  # -(s_last - s_prev), matching the mirrored coefficients
            origin = anchor
            if origin_is_param:
                origin = flat if flat.dtype == dtype else flat.to(dtype)
            displacement = M[-1]  # D at tau: the last row, graded or not
            low, high = extremes(M[:tau]) if criterion.needs_steps else (None, None)
            passed = criterion(low, high, displacement, delta, tau)
            applied.update(k for k in passed if k in CHECKS)
            if linear:  # the checks are made: the displacement's buffer takes the linear one
                torch.mul(delta, tau, out=displacement)
            new = torch.sub(origin, displacement, out=displacement) if mirrored else displacement.add_(origin)
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
                level, new = _grade(M, tau, accept, new, origin, delta, criterion, mirrored, linear)
                levels[device] += torch.bincount(level, minlength=tau + 1)
                accept = level > 0
            accepted[i] += torch.count_nonzero(accept)
            if write:
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
    return PassCounts(torch.stack([a.cpu() for a in accepted]), passing, applied, per_horizon)


def _grade(
    M: Tensor,
    tau: int,
    accept: Tensor,
    new: Tensor,
    origin: Tensor,
    delta: Tensor,
    criterion: Criterion,
    mirrored: bool,
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
        candidate = (origin - move if mirrored else origin + move).to(new.dtype)
        ok = (level == 0) & (candidate.abs() < math.inf)
        low, high = (lows[k - 1], highs[k - 1]) if lows is not None else (None, None)
        for mask in criterion(low, high, D, delta, k).values():
            ok &= mask
        level = torch.where(ok, k, level)
        new = torch.where(ok, candidate, new)
    return level, new
