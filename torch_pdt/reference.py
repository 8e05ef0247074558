r"""One PDT step the readable way, in float64: the twin the tests compare :class:`~torch_pdt.PDT` against.

Everything the fast path avoids, on purpose (as schedule_free keeps ``*_reference.py`` beside
its optimizers): the thin SVD of the ``N x (m-1)`` snapshot matrix, ``N``-sized complex modes,
their pseudo-inverse, every forecast as an ``N``-vector, and every predicted step's sign
compared one by one. With snapshots :math:`S = [s_0 \dots s_{m-1}]` (oldest first),
:math:`X = [s_0 \dots s_{m-2}]`, :math:`Y = [s_1 \dots s_{m-1}]`:

.. math::
    X = U\Sigma V^\top,\quad \tilde A = U^\top Y V \Sigma^{-1},\quad \tilde A\Psi = \Psi\Lambda,\quad
    \Phi = U\Psi \text{ (projected) or } YV\Sigma^{-1}\Psi \text{ (exact)},\quad b = \Phi^+ s_{m-1},

    \hat w_k = \operatorname{Re}\{\Phi\Lambda^k b\} \text{ (paper) or }
    s_{m-1} + \operatorname{Re}\{\Phi(\Lambda^k - I)b\} \text{ (increment)},\quad
    k = 1..\tau,\ \hat w_0 := s_{m-1}.

The predicted steps are :math:`\hat w_k - \hat w_{k-1}`, the displacement
:math:`D = \hat w_\tau - s_{m-1}`, and the optimizer's step :math:`\Delta = s_{m-1} - s_{m-2}`
(or, with start-of-epoch snapshots as in the authors' code, :math:`\delta = w - s_{m-1}`). The
criteria are those of :mod:`torch_pdt.criteria`, written out again here; an element is
accepted when it passes them and :math:`s_{m-1} + D` is finite in the weights' dtype.
Graded (``graded=True``): an element goes to :math:`\hat w_k` for the largest ``k <= tau``
that passes the criterion judged on the first ``k`` steps with ``tau = k`` (and is finite).
Linear (``jump="linear"``): the same judgement, but an accepted element goes to
:math:`s_{m-1} + \tau\Delta` (graded: :math:`s_{m-1} + k\Delta`) instead of to the forecast.
With the learning rates :math:`r_0 \dots r_{m-1}` recorded at the snapshots
(``horizon_by="lr"``), the horizon is :math:`\tau_{eff}` (:func:`horizon`): the rates of the
``tau`` epochs ahead, :math:`r_{m-1} + k(r_{m-1} - r_{m-2})` clipped at 0, summed over the
mean of :math:`r_0 \dots r_{m-2}`, rounded half up, within ``[1, tau]`` (``tau`` where that mean is 0).

PDT's own path (:mod:`torch_pdt.dmd`, :mod:`torch_pdt.prediction`) gets the same numbers from an
``h x h`` Gram matrix and one pass over the snapshots. This one costs ``O(N m)`` complex memory
and several passes; ``pdt-bench overhead --naive`` times it (with ``dtype=torch.float32``, the
precision of the authors' code) as the straightforward baseline.

Example:
    >>> x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    >>> snapshots = [x * 0.9**t for t in range(4)]  # a decaying mode, eigenvalue 0.9
    >>> w = snapshots[-1].clone()
    >>> result = step(snapshots, w, tau=3, criterion="none")
    >>> result.accepted, torch.allclose(w, x * 0.9**6)
    (3, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ALIASES

__all__ = ["Result", "apply_coefficients", "forecasts", "horizon", "judge", "step"]

CRITERIA = ("pdt", "authors", "accel_only", "consistency_only", "none", "random")


@dataclass
class Result:
    """What one reference step decided and wrote."""

    accept: Tensor
    """Accepted elements (bool, ``N``)."""
    weights: Tensor
    """The assembled weights, in the weights' dtype."""
    accepted: int
    rejected: dict[str, int]
    """Elements failing each check (``consistency``, ``lower_bound``, ``upper_bound``, ``nonfinite``)."""
    ratio: float | None = None
    """The random criterion's acceptance probability, if it ran."""
    levels: Tensor | None = None
    """Graded: each element's horizon ``k`` (int64, 0 where none passed)."""
    horizon: int = 0
    """The horizon the step forecast (:func:`step`: ``tau``, or :math:`\tau_{eff}` given learning rates)."""


def forecasts(
    snapshots: Tensor,
    tau: int,
    *,
    form: str = "paper",
    modes: str = "projected",
    rank: int | float | None = None,
    rtol: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The forecasts :math:`\\hat w_1 \\dots \\hat w_\\tau` (``tau x N``) and the eigenvalues :math:`\\Lambda`.

    ``snapshots`` is ``N x m`` in the dtype to compute in. Truncation as in
    :func:`torch_pdt.dmd.fit_factor`: singular values below ``10 m eps`` of the largest are
    zero; ``rank`` keeps that many (int) or the fewest reaching that energy fraction (float);
    ``rtol`` drops those below ``rtol`` times the largest. Raises ``ValueError`` at rank 0.
    """
    X, Y, last = snapshots[:, :-1], snapshots[:, 1:], snapshots[:, -1]
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    m = snapshots.shape[1]
    r = int((s > s[0] * 10 * m * torch.finfo(s.dtype).eps).sum()) if s[0] > 0 else 0
    if isinstance(rank, int):
        r = min(r, rank)
    elif rank is not None:
        energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
        r = min(r, int((energy < rank).sum()) + 1)
    if rtol is not None:
        r = min(r, int((s > rtol * s[0]).sum()))
    if r == 0:
        raise ValueError("rank 0: no singular value kept")
    U, s, V = U[:, :r], s[:r], Vh[:r].T
    A = U.T @ Y @ V / s
    eigenvalues, Psi = torch.linalg.eig(A)
    Phi = (U if modes == "projected" else Y @ V / s).to(Psi.dtype) @ Psi
    b = torch.linalg.pinv(Phi) @ last.to(Phi.dtype)
    rows = []
    for k in range(1, tau + 1):
        if form == "paper":
            rows.append((Phi @ (eigenvalues**k * b)).real)
        else:
            rows.append(last + (Phi @ ((eigenvalues**k - 1) * b)).real)
    return torch.stack(rows), eigenvalues


def horizon(learning_rates: Sequence[float], tau: int) -> int:
    """:math:`\tau_{eff}` (module docstring) from the rates recorded at the snapshots, oldest first, in float64.

    >>> horizon([0.10, 0.09, 0.08, 0.07, 0.06], 5)  # (0.06 + 0.05 + 0.04 + 0.03 + 0.02) / 0.085 = 2.35
    2
    """
    r = torch.tensor(learning_rates, dtype=torch.float64)
    if not r.max() > 0:
        return tau
    r = torch.ldexp(r, -torch.frexp(r.max()).exponent)  # a power of two, exact: no overflow near 1e308
    past = r[:-1].mean()  # the rate of each of the m - 1 increments, on average
    if not past > 0:
        return tau
    ahead = r[-1] + torch.arange(tau, dtype=torch.float64) * (r[-1] - r[-2])  # the next tau epochs
    ratio = float(ahead.clamp(min=0).sum() / past)
    return tau if not ratio < tau else max(1, int(torch.floor(torch.tensor(ratio + 0.5))))


def judge(
    increments: Tensor,
    displacement: Tensor,
    delta: Tensor,
    tau: int,
    criterion: str,
    *,
    ratio: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The masks of the elements passing each check of ``criterion``, written out step by step.

    ``increments`` is ``tau x N`` (the predicted steps), ``displacement`` their sum :math:`D`,
    ``delta`` the optimizer's step. ``"random"`` passes each element with probability
    ``ratio`` (uniforms from ``generator``).
    """
    criterion = ALIASES["criterion"].get(criterion, criterion)
    D = displacement
    if criterion == "random":
        return {"random": torch.rand(D.shape, generator=generator, device=D.device) < ratio}
    if criterion == "authors":
        return {
            "consistency": torch.sign(D) == torch.sign(delta),
            "lower_bound": D.abs() >= delta.abs(),
            "upper_bound": D.abs() <= (tau + 1) * delta.abs(),
        }
    consistency = torch.ones_like(D, dtype=torch.bool)
    for k in range(tau):  # Eq. 7: every predicted step has the sign of the optimizer's
        consistency &= torch.sign(increments[k]) == torch.sign(delta)
    lower_bound, upper_bound = D.abs() > delta.abs(), D.abs() <= tau * delta.abs()  # Eq. 6
    return {
        "pdt": {"consistency": consistency, "lower_bound": lower_bound, "upper_bound": upper_bound},
        "accel_only": {"lower_bound": lower_bound, "upper_bound": upper_bound},
        "consistency_only": {"consistency": consistency},
        "none": {},
    }[criterion]


def _assemble(
    increments: Tensor,
    displacement: Tensor,
    origin: Tensor,
    delta: Tensor,
    weights: Tensor,
    criterion: str,
    write: bool,
    graded: bool = False,
    linear: bool = False,
    **draw,
) -> Result:
    """Mask and assemble: accepted elements get ``origin + D`` (finite in the weights' dtype).

    Graded: ``origin + D_k`` (``D_k`` the sum of the first ``k`` steps) for the largest passing ``k``.
    Linear: ``tau * delta`` (graded: ``k * delta``) in place of ``D`` (``D_k``) in the new value.
    """
    tau = increments.shape[0]
    new = (origin + (tau * delta if linear else displacement)).to(weights.dtype)
    finite = torch.isfinite(new)
    passed = judge(increments, displacement, delta, tau, criterion, **draw)
    accept = finite.clone()
    for mask in passed.values():
        accept &= mask
    n = weights.numel()
    checks = ("consistency", "lower_bound", "upper_bound")
    rejected = {c: n - int(passed[c].sum()) if c in passed else 0 for c in checks}
    rejected["nonfinite"] = n - int(finite.sum())
    levels = None
    if graded:
        levels = torch.zeros(n, dtype=torch.int64, device=weights.device)
        new = torch.zeros_like(new)
        for k in range(1, tau + 1):  # the largest k wins: later ones overwrite
            D_k = increments[:k].sum(0)
            candidate = (origin + (k * delta if linear else D_k)).to(weights.dtype)
            ok = torch.isfinite(candidate)
            for mask in judge(increments[:k], D_k, delta, k, criterion).values():
                ok &= mask
            levels[ok] = k
            new[ok] = candidate[ok]
        accept = levels > 0
    assembled = torch.where(accept, new, weights)
    if write:
        weights.copy_(assembled)
    return Result(accept, assembled, int(accept.sum()), rejected, draw.get("ratio"), levels)


def step(
    snapshots: Sequence[Tensor],
    weights: Tensor,
    tau: int,
    *,
    criterion: str = "pdt",
    forecast: str | None = None,
    modes: str = "projected",
    rank: int | float | None = None,
    rtol: float | None = None,
    start_of_epoch: bool | None = None,
    random_ratio: float | str = "measured",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    write: bool = True,
    graded: bool = False,
    jump: str = "forecast",
    learning_rates: Sequence[float] | None = None,
) -> Result:
    """One PDT prediction from ``snapshots`` (flat, oldest first) for the flat ``weights``.

    Options as :class:`~torch_pdt.PDT`'s (``forecast`` defaults to ``"increment"`` for
    ``"authors"``, else ``"paper"``; ``start_of_epoch`` to ``criterion == "authors"``). With
    end-of-epoch snapshots the newest is the optimizer's result, ``weights`` itself. ``"random"``
    draws from a fresh generator seeded with ``seed``. Writes the assembled weights into
    ``weights`` when ``write``. Computes in ``dtype``. ``graded``, ``jump``: see the module docstring.
    ``learning_rates``: the rate recorded with each snapshot (``horizon_by="lr"``): the step
    forecasts :func:`horizon` epochs ahead instead of ``tau``.
    """
    criterion = ALIASES["criterion"].get(criterion, criterion)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if jump not in ("forecast", "linear"):
        raise ValueError(f"jump must be 'forecast' or 'linear', got {jump!r}")
    forecast = forecast or ("increment" if criterion == "authors" else "paper")
    start_of_epoch = criterion == "authors" if start_of_epoch is None else start_of_epoch
    if learning_rates is not None:
        if len(learning_rates) != len(snapshots):
            raise ValueError(f"one learning rate per snapshot: {len(learning_rates)} for {len(snapshots)}")
        tau = horizon(learning_rates, tau)
    S = torch.stack([s.reshape(-1).to(dtype) for s in snapshots], dim=1)
    F, _ = forecasts(S, tau, form=forecast, modes=modes, rank=rank, rtol=rtol)
    origin = S[:, -1]
    increments, D = torch.diff(F, dim=0, prepend=origin[None]), F[-1] - origin
    delta = weights.reshape(-1).to(dtype) - origin if start_of_epoch else origin - S[:, -2]
    draw = {}
    if criterion == "random":
        ratio = random_ratio
        if ratio == "measured":  # the fraction the paper's criterion accepts at this step
            # ... with this step's landing: where a linear jump overflows, "pdt" does not accept
            measured = _assemble(increments, D, origin, delta, weights, "pdt", False, linear=jump == "linear")
            ratio = measured.accepted / weights.numel()
        draw = {"ratio": ratio, "generator": torch.Generator(device=weights.device).manual_seed(seed)}
    if graded and criterion == "random":
        raise ValueError("graded needs checks to grade by; criterion 'random' has none")
    result = _assemble(increments, D, origin, delta, weights, criterion, write, graded, jump == "linear", **draw)
    result.horizon = tau
    return result


def apply_coefficients(
    snapshots: Tensor,
    weights: Tensor,
    coefficients: Tensor,
    criterion: str,
    *,
    horizon: int,
    start_of_epoch: bool = False,
    graded: bool = False,
    linear: bool = False,
) -> Result:
    """The prediction pass given its coefficients: ``coefficients`` (``(horizon + 1) x m``) map the
    snapshots (rows of the ``m x N`` matrix ``snapshots``, oldest first) to the ``horizon``
    predicted steps and the displacement, as :func:`torch_pdt.prediction.predict_pass` takes
    them (graded: ``2 horizon x m``, whose displacements past the steps this twin recomputes as
    their sums). In float64; does not write; ``linear`` as ``jump="linear"``."""
    P = coefficients.to(torch.float64) @ snapshots.to(torch.float64)
    origin = snapshots[-1].to(torch.float64)
    delta = weights.to(torch.float64) - origin if start_of_epoch else origin - snapshots[-2].to(torch.float64)
    return _assemble(P[:horizon], P[-1], origin, delta, weights, criterion, False, graded, linear)
