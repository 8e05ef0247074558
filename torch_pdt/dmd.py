r"""Dynamic Mode Decomposition computed from a small Gram matrix.

Given ``m`` snapshots :math:`S = [s_0, \dots, s_{m-1}] \in \mathbb{R}^{N \times m}` of a
trajectory, standard DMD (Tu et al., 2014) fits a linear operator :math:`A` with
:math:`Y \approx A X`, where :math:`X = [s_0 \dots s_{m-2}]` and :math:`Y = [s_1 \dots s_{m-1}]`:

.. math::
    X = U \Sigma V^\top,\qquad
    \tilde A = U^\top Y V \Sigma^{-1},\qquad
    \tilde A \Psi = \Psi \Lambda,\qquad
    \Phi = U \Psi \ \text{(projected)} \quad\text{or}\quad \Phi = Y V \Sigma^{-1} \Psi \ \text{(exact)},

and forecasts :math:`k` steps past the newest snapshot with amplitudes
:math:`b = \Phi^{+} s_{m-1}` (the paper's Eq. 5/12):

.. math::
    \hat s_{m-1+k} = \operatorname{Re}\{\Phi \Lambda^k b\}
    \quad\text{("paper" form)},\qquad
    \hat s_{m-1+k} = s_{m-1} + \operatorname{Re}\{\Phi (\Lambda^k - I) b\}
    \quad\text{("increment" form)}.

The increment form is what the authors' code computes; it drops the part of
:math:`s_{m-1}` that lies outside the span of the modes.

**Why no N-sized SVD is needed.** Every quantity above is :math:`S` times a small matrix, so
all of DMD follows from inner products of the snapshots. Snapshots of a training run are
nearly parallel, and the plain Gram matrix :math:`S^\top S` squares their condition number,
so we take the inner products of a better-conditioned basis of the same span: the newest
snapshot and its backward differences,

.. math::
    B = [\,s_{m-1},\ \nabla s_{m-1},\ \nabla^2 s_{m-1},\ \dots,\ \nabla^{m-1} s_{m-1}\,] = S T,
    \qquad K = B^\top B,

with :math:`T` an integer matrix of signed binomial coefficients. After scaling :math:`K` to
unit diagonal, its eigendecomposition gives :math:`B = Q R` with :math:`Q` orthonormal
(never formed) and a small :math:`R`, hence :math:`S = Q R_S` with :math:`R_S = R\,T^{-1}`.
DMD of :math:`R_S` in float64 is DMD of :math:`S` (Q drops out of every formula), and
every forecast is returned as an ``m``-vector of coefficients :math:`c_k` with
:math:`\hat s_{m-1+k} = S c_k`: applying it costs one pass over the snapshots.

Example::

    >>> import torch
    >>> from torch_pdt import dmd
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> S = torch.stack([x * 0.9**i for i in range(6)], dim=1)  # s_i = 0.9**i * x
    >>> fit = dmd.fit(S)
    >>> round(fit.eigenvalues[0].real.item(), 12)
    0.9
    >>> fit.forecast(S, [1]).squeeze(1)  # the next state, 0.9**6 * [1, 2]
    tensor([0.5314, 1.0629], dtype=torch.float64)
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Iterable, Literal

import torch
from torch import Tensor

__all__ = ["DMD", "DMDError", "difference_basis", "difference_gram", "fit", "fit_gram"]

Forecast = Literal["paper", "increment"]
FORECASTS = ("paper", "increment")

_EPS = torch.finfo(torch.float64).eps


class DMDError(ValueError):
    """The snapshots do not support a decomposition (rank 0, non-finite values)."""


def difference_basis(m: int) -> Tensor:
    r"""The ``m x m`` float64 matrix :math:`T` with :math:`S T = [s_{m-1}, \nabla s_{m-1}, \dots]`.

    Column ``k`` holds :math:`(-1)^j \binom{k}{j}` in row ``m-1-j``.
    """
    T = torch.zeros(m, m, dtype=torch.float64)
    for k in range(m):
        for j in range(k + 1):
            T[m - 1 - j, k] = (-1) ** j * comb(k, j)
    return T


def difference_gram(snapshots: Tensor, chunk_size: int = 1 << 20) -> Tensor:
    """Float64 Gram matrix of the backward-difference basis of ``snapshots`` (shape ``N x m``).

    Works in chunks of ``chunk_size`` rows so that no N-sized float64 copy is made.
    """
    n, m = snapshots.shape
    T = difference_basis(m).to(snapshots.device)
    K = torch.zeros(m, m, dtype=torch.float64, device=snapshots.device)
    for start in range(0, n, chunk_size):
        B = snapshots[start : start + chunk_size].to(torch.float64) @ T
        K += B.T @ B
    return K


@dataclass(frozen=True)
class DMD:
    r"""A fitted DMD operator, stored only through ``m x r`` and ``r``-sized arrays.

    Attributes:
        eigenvalues: :math:`\Lambda`, complex128 of shape ``(r,)``.
        amplitudes: :math:`b = \Phi^{+} s_{m-1}`, complex128 of shape ``(r,)``.
        mode_coefficients: complex128 ``(m, r)`` matrix :math:`M` with :math:`\Phi = S M`.
        singular_values: the retained singular values of :math:`X`, float64 ``(r,)``.
    """

    eigenvalues: Tensor
    amplitudes: Tensor
    mode_coefficients: Tensor
    singular_values: Tensor

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    @property
    def num_snapshots(self) -> int:
        return int(self.mode_coefficients.shape[0])

    def coefficients(self, steps: Iterable[int], form: Forecast = "paper") -> Tensor:
        r"""Real float64 matrix ``C`` of shape ``(m, len(steps))`` with forecast ``= S @ C``.

        Column ``j`` gives the state ``steps[j]`` steps after the newest snapshot, in the
        chosen ``form`` (see the module docstring). ``steps`` may include 0.
        """
        if form not in FORECASTS:
            raise ValueError(f"form must be one of {FORECASTS}, got {form!r}")
        k = torch.as_tensor(list(steps), dtype=torch.float64)
        powers = self.eigenvalues[:, None] ** k[None, :]  # (r, len(steps))
        if form == "increment":
            powers = powers - 1
        C = (self.mode_coefficients @ (powers * self.amplitudes[:, None])).real
        if form == "increment":
            C[-1] += 1.0
        return C

    def modes(self, snapshots: Tensor) -> Tensor:
        r"""The DMD modes :math:`\Phi = S M`, complex ``N x r`` (for analysis; PDT never forms them)."""
        M = self.mode_coefficients.to(device=snapshots.device)
        return snapshots.to(torch.complex128) @ M

    def forecast(self, snapshots: Tensor, steps: Iterable[int], form: Forecast = "paper") -> Tensor:
        """Forecast states ``N x len(steps)`` as float64, from the snapshots the fit used."""
        C = self.coefficients(steps, form).to(device=snapshots.device)
        return snapshots.to(torch.float64) @ C


def _truncation_rank(s: Tensor, rank: int | float | None, rtol: float | None) -> int:
    """Number of singular values kept (``s`` sorted descending, numerically non-zero)."""
    r = s.numel()
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, (int, float)):
            raise ValueError(f"rank must be None, an int >= 1 or a float in (0, 1], got {rank!r}")
        if isinstance(rank, int):
            if rank < 1:
                raise ValueError(f"rank must be >= 1 when an int, got {rank}")
            r = min(r, rank)
        else:
            if not 0.0 < rank <= 1.0:
                raise ValueError(f"rank as an energy fraction must be in (0, 1], got {rank}")
            energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
            r = min(r, int(torch.searchsorted(energy, torch.tensor(rank, dtype=energy.dtype))) + 1)
    if rtol is not None:
        if not rtol >= 0.0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        r = min(r, int((s > rtol * s[0]).sum()))
    return r


def _check_form(exact: bool, rank: int | float | None, rtol: float | None) -> None:
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be a bool, got {exact!r}")
    _truncation_rank(torch.ones(1, dtype=torch.float64), rank, rtol)


def fit_gram(
    gram: Tensor,
    *,
    exact: bool = False,
    rank: int | float | None = None,
    rtol: float | None = None,
) -> DMD:
    r"""Fit DMD from the Gram matrix of the backward-difference basis (see :func:`difference_gram`).

    Args:
        gram: ``m x m`` matrix :math:`K = B^\top B`, ``m >= 2`` (any device; used in float64 on CPU).
        exact: exact modes :math:`Y V \Sigma^{-1} \Psi` instead of projected modes :math:`U\Psi`.
        rank: truncation of the SVD of :math:`X`: ``None`` keeps every numerically non-zero
            singular value, an ``int`` keeps that many, a ``float`` in (0, 1] keeps the fewest
            whose squared sum reaches that fraction of the energy.
        rtol: additionally drop singular values below ``rtol * sigma_max``.

    Raises:
        DMDError: the Gram matrix is not finite or the snapshots have rank 0.
    """
    _check_form(exact, rank, rtol)
    K = gram.detach().to(device="cpu", dtype=torch.float64)
    m = K.shape[0]
    if K.shape != (m, m) or m < 2:
        raise ValueError(f"gram must be a square matrix of size >= 2, got {tuple(gram.shape)}")
    if not torch.isfinite(K).all():
        raise DMDError("non-finite snapshot values")
    K = (K + K.T) / 2

    # B = Q R with Q orthonormal: eigendecomposition of K scaled to unit diagonal.
    d = K.diagonal().clamp(min=0).sqrt()
    live = d > d.max() * _EPS
    if not live.any():
        raise DMDError("rank 0: every snapshot is zero")
    inv_d = torch.where(live, 1 / torch.where(live, d, 1), 0)
    mu, E = torch.linalg.eigh(inv_d[:, None] * K * inv_d[None, :])
    keep = mu > mu.max() * m * _EPS
    mu, E = mu[keep], E[:, keep]
    R = mu.sqrt()[:, None] * E.T * d[None, :]  # (q, m): B = Q R
    RS = R @ torch.linalg.inv(difference_basis(m))  # S = Q RS
    RX, RY, r_last = RS[:, :-1], RS[:, 1:], RS[:, -1]

    U, s, Vh = torch.linalg.svd(RX, full_matrices=False)
    nonzero = int((s > s[0] * max(RX.shape) * _EPS).sum()) if s[0] > 0 else 0
    if nonzero == 0:
        raise DMDError("rank 0: X has no non-zero singular value")
    r = _truncation_rank(s[:nonzero], rank, rtol)
    if r == 0:
        raise DMDError("rank 0 after truncation")
    U, s, V = U[:, :r], s[:r], Vh[:r].T

    YVinv = RY @ V / s  # (q, r)
    A_tilde = U.T @ YVinv
    eigenvalues, Psi = torch.linalg.eig(A_tilde)
    modes_q = (YVinv if exact else U).to(torch.complex128) @ Psi  # modes in Q coordinates
    amplitudes = torch.linalg.lstsq(modes_q, r_last.to(torch.complex128)[:, None]).solution[:, 0]
    # Q = B W = S T W, so Phi = Q modes_q = S (T W modes_q).
    W = inv_d[:, None] * E / mu.sqrt()[None, :]
    mode_coefficients = (difference_basis(m) @ W).to(torch.complex128) @ modes_q
    return DMD(eigenvalues, amplitudes, mode_coefficients, s)


def fit(
    snapshots: Tensor,
    *,
    exact: bool = False,
    rank: int | float | None = None,
    rtol: float | None = None,
    chunk_size: int = 1 << 20,
) -> DMD:
    """Fit DMD to the columns of ``snapshots`` (``N x m``, oldest first); see :func:`fit_gram`."""
    if snapshots.dim() != 2 or snapshots.shape[1] < 2:
        raise ValueError(f"snapshots must be N x m with m >= 2, got {tuple(snapshots.shape)}")
    return fit_gram(difference_gram(snapshots, chunk_size), exact=exact, rank=rank, rtol=rtol)

