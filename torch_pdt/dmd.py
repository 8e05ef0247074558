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
snapshot and every snapshot's difference to it,

.. math::
    B = [\,s_{m-1},\ s_0 - s_{m-1},\ \dots,\ s_{m-2} - s_{m-1}\,] = S T,
    \qquad K = B^\top B,

with :math:`T` a matrix of 0 and :math:`\pm 1`. Two passes of Cholesky-QR on it
(:func:`orthogonal_factor`: eigendecompositions of two ``m x m`` Gram matrices) give
:math:`B = Q R` with :math:`Q` orthonormal (never formed) and a small :math:`R` as accurate
as a Householder QR, hence :math:`S = Q R_S` with :math:`R_S = R\,T^{-1}`. DMD of
:math:`R_S` in float64 is DMD of :math:`S` (Q drops out of every formula), and every
forecast is returned as an ``m``-vector of coefficients :math:`c_k` with
:math:`\hat s_{m-1+k} = S c_k`: applying it costs one pass over the snapshots.

**One Gram pass or two.** A second pass costs a full read of the snapshots, so
:func:`orthogonal_factor` takes it only when the first cannot be trusted to the precision of
the data. After one pass the columns of :math:`Q_1` lose orthogonality by about
:math:`\varepsilon\kappa^2` (:math:`\varepsilon` the float64 unit roundoff, :math:`\kappa` the
condition number of the column-scaled basis), i.e. :math:`R_1` is the exact factor of the
data perturbed by less than that relative amount. When this is below the rounding the
snapshots already carry (``resolution``: 0 for exact data, the unit roundoff of the
storage dtype for PDT's float32 or bfloat16 snapshots), the second pass could only refine
digits the data does not have, and is skipped. :func:`fit` treats its input as exact and
always takes both passes; for float32 snapshots one pass suffices up to
:math:`\kappa \approx 2\cdot 10^4`.

**Incremental Gram (PDT).** The Gram matrix of the anchored basis changes completely when a
new newest snapshot arrives. That of the *consecutive* basis

.. math::
    C = [\,s_{m-1},\ s_1 - s_0,\ \dots,\ s_{m-1} - s_{m-2}\,] = S\,T_c

(:func:`consecutive_basis`) does not: a new snapshot adds one difference and a new first
column, so only their ``2m - 1`` inner products with the stored columns are new, one pass
that reads each snapshot once (:class:`torch_pdt.snapshots.SnapshotHistory`). The
differences are formed exactly (float64 differences of float32 values) and accumulated in
float64; :func:`orthogonal_factor` and :func:`fit_factor` accept any such basis. Its
conditioning is that of the anchored basis or better: the anchored differences are partial
sums of the consecutive ones, which smooths out exactly the changes of direction that
carry the small singular values.

Resolution: a direction of the basis whose share of its scaled Gram matrix is below
``100 * m * eps`` (an amplitude below about 1e-7 of the basis vectors) cannot be told from
rounding and is dropped; so is a difference no larger than the rounding of its snapshots.

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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DMD",
    "DMDError",
    "consecutive_basis",
    "difference_basis",
    "finish_factor",
    "first_factor",
    "fit",
    "fit_factor",
    "matrix_chunks",
    "orthogonal_factor",
    "snapshot_gram_of",
    "unit_roundoff",
    "validate_options",
]

Forecast = Literal["paper", "increment"]
FORECASTS = ("paper", "increment")

CHUNK_SIZE = 1 << 16
"""Default elements per chunk: small enough for cache-resident float64 temporaries (measured
fastest on CPU among 2^12..2^20) and a few MB of working memory."""

_EPS = torch.finfo(torch.float64).eps
_GRAM_RTOL = 100 * _EPS  # times m: a share of an m x m Gram matrix's spectrum below this is rounding


class DMDError(ValueError):
    """The snapshots do not support a decomposition (rank 0, non-finite values)."""


def difference_basis(m: int) -> Tensor:
    r"""The ``m x m`` float64 matrix :math:`T` with :math:`S T = [s_{m-1}, s_0 - s_{m-1}, \dots, s_{m-2} - s_{m-1}]`."""
    T = torch.zeros(m, m, dtype=torch.float64)
    T[m - 1, :] = -1.0
    T[m - 1, 0] = 1.0
    T[torch.arange(m - 1), torch.arange(1, m)] = 1.0
    return T


def consecutive_basis(m: int) -> Tensor:
    r"""The ``m x m`` float64 :math:`T_c` with :math:`S T_c = [s_{m-1}, s_1 - s_0, \dots, s_{m-1} - s_{m-2}]`."""
    T = torch.zeros(m, m, dtype=torch.float64)
    T[m - 1, 0] = 1.0
    j = torch.arange(1, m)
    T[j, j] = 1.0
    T[j - 1, j] = -1.0
    return T


def unit_roundoff(dtype: torch.dtype) -> float:
    """Relative rounding error of values stored in ``dtype`` (0 for an integer dtype: exact)."""
    return torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 0.0


GramOf = Callable[[Tensor], Tensor]
"""``gram_of(W)`` returns the float64 Gram matrix :math:`(BW)^\top (BW)` of the data's basis ``B``."""


def snapshot_gram_of(chunks: Callable[[], Iterable[Tensor]], m: int, basis: Tensor | None = None) -> GramOf:
    """``gram_of`` over snapshots given as chunks of shape ``(m, c)`` (one row per snapshot).

    The basis is ``S @ basis`` (default :func:`difference_basis`). ``chunks()`` is called once
    per Gram pass. Each chunk is converted to float64 before differencing, so no N-sized
    float64 copy is made and differences of float32 snapshots are exact. Sums stay on the
    chunks' devices until the end (no host sync per chunk).
    """
    T = difference_basis(m) if basis is None else basis

    def gram_of(W: Tensor) -> Tensor:
        TWt = (T @ W).T
        on: dict[torch.device, tuple[Tensor, Tensor]] = {}
        for S in chunks():
            if S.device not in on:
                on[S.device] = (
                    TWt.to(S.device),
                    torch.zeros(W.shape[1], W.shape[1], dtype=torch.float64, device=S.device),
                )
            TWt_d, K = on[S.device]
            BW = TWt_d @ S.to(torch.float64)
            K += BW @ BW.T
        return sum((K.cpu() for _, K in on.values()), torch.zeros(W.shape[1], W.shape[1], dtype=torch.float64))

    return gram_of


def matrix_chunks(snapshots: Tensor, chunk_size: int = CHUNK_SIZE) -> Callable[[], Iterable[Tensor]]:
    """Chunks ``(m, c)`` of an ``N x m`` snapshot matrix, for :func:`snapshot_gram_of`."""
    return lambda: (snapshots[start : start + chunk_size].T for start in range(0, snapshots.shape[0], chunk_size))


def _eigen_factor(K: Tensor, scale: Tensor, *, floor: float = 0.0, drop: float | None = None) -> tuple[Tensor, Tensor]:
    """``(R, W)`` with ``B = Q R`` and ``Q = B W`` orthonormal, from ``K = B^T B``.

    Uses the eigendecomposition of ``K`` with rows and columns divided by ``scale`` (zero for
    a zero column). Eigenvalues below ``drop`` times the largest are removed; those below
    ``floor`` times the largest are raised to it, which keeps ``W R`` the identity.
    """
    inv = torch.where(scale > 0, 1 / torch.where(scale > 0, scale, 1), 0)
    scaled = inv[:, None] * K * inv[None, :]
    if not torch.isfinite(scaled).all():
        raise DMDError("the snapshots' Gram matrix overflows float64")
    try:
        mu, E = torch.linalg.eigh(scaled)
    except torch.linalg.LinAlgError as e:  # LAPACK gives up on some ill-conditioned matrices
        raise DMDError(f"the Gram matrix's eigendecomposition did not converge ({e})") from e
    if drop is not None:
        keep = mu > mu.max() * drop
        mu, E = mu[keep], E[:, keep]
    mu = mu.clamp(min=mu.max() * floor)
    return mu.sqrt()[:, None] * E.T * scale[None, :], inv[:, None] * E / mu.sqrt()[None, :]


def orthogonal_factor(
    gram_of: GramOf, m: int, *, gram: Tensor | None = None, resolution: float = 0.0
) -> tuple[Tensor, Tensor]:
    r"""Factor the data's basis :math:`B = ST = QR` by Cholesky-QR, twice where needed.

    One Gram pass gives :math:`B \approx Q_1 R_1`; a second pass over :math:`Q_1 = B W_1`
    re-orthogonalises it, which makes :math:`R = R_2 R_1` as accurate as a Householder QR of
    :math:`B` as long as the kept directions are above float64 resolution. The second pass
    is skipped when the first one's loss of orthogonality, :math:`\varepsilon\kappa^2`, is
    at most ``resolution`` (see the module docstring).

    Args:
        gram_of: ``gram_of(W)`` is the float64 Gram matrix of :math:`BW`.
        m: number of snapshots.
        gram: :math:`B^\top B` when already known (PDT keeps it up to date); else ``gram_of(I)``.
        resolution: relative rounding of the snapshot values (0: exact data, two passes).

    Returns:
        ``R`` (``q x m``) and ``W`` (``m x q``) with :math:`Q = S T W` orthonormal; ``q`` is the
        numerical rank (singular values of ``R`` above ``10 m eps`` of the largest).

    Raises:
        DMDError: the snapshots are not finite or all zero.
    """
    K1 = gram_of(torch.eye(m, dtype=torch.float64)) if gram is None else gram
    R1, W1, enough = first_factor(K1, m, resolution)
    return finish_factor(R1, W1, m, None if enough else gram_of(W1))


def first_factor(K1: Tensor, m: int, resolution: float = 0.0) -> tuple[Tensor, Tensor, bool]:
    r"""The first Cholesky-QR pass of :func:`orthogonal_factor` from :math:`K_1 = B^\top B`.

    Returns ``(R1, W1, enough)``: ``enough`` when the pass's loss of orthogonality is at most
    ``resolution`` (no second pass needed). Split from :func:`orthogonal_factor` so that PDT's
    per-layer fit (``scope="layer"``) can make the second Gram pass of every layer in one pass over the snapshots.

    Raises:
        DMDError: the snapshots are not finite or all zero.
    """
    if not torch.isfinite(K1).all():
        raise DMDError("non-finite snapshot values")
    if not K1.diagonal().max() > 0:
        raise DMDError("rank 0: every snapshot is zero")
    # A difference no larger than the rounding of the snapshots it comes from is zero.
    noise = (4 * m * _EPS) ** 2 * K1.diagonal().max()
    K1 = torch.where(K1.diagonal()[:, None].minimum(K1.diagonal()[None, :]) > noise, K1 / 2 + K1.T / 2, 0)
    # The first factor keeps every direction, so that B W1 R1 = B holds exactly; its small
    # directions are inaccurate, and the second pass, now well conditioned, sorts them out.
    scale = K1.diagonal().sqrt()
    R1, W1 = _eigen_factor(K1, scale, floor=m * _EPS)
    return R1, W1, _orthogonality_loss(K1, scale) <= resolution


def finish_factor(R1: Tensor, W1: Tensor, m: int, K2: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""``(R, W)`` of :func:`orthogonal_factor` from :func:`first_factor`'s ``R1, W1`` and, where it
    was not enough, the second pass :math:`K_2 = (BW_1)^\top (BW_1)` (``m x m``).

    Raises:
        DMDError: ``K2`` is not finite.
    """
    if K2 is None:
        return _trim(R1, W1, m)
    if not torch.isfinite(K2).all():
        raise DMDError("non-finite snapshot values")
    R2, W2 = _eigen_factor((K2 + K2.T) / 2, torch.ones(K2.shape[0], dtype=K2.dtype), drop=_GRAM_RTOL * m)
    return _trim(R2 @ R1, W1 @ W2, m)


def _orthogonality_loss(K: Tensor, scale: Tensor) -> float:
    r"""About :math:`\varepsilon\kappa^2`: how far one Cholesky-QR pass is from orthogonal.

    :math:`\kappa` is the condition number of the basis with its non-zero columns scaled to
    unit norm; inf when they are (numerically) dependent.
    """
    nz = scale > 0
    mu = torch.linalg.eigvalsh(K[nz][:, nz] / (scale[nz, None] * scale[None, nz]))
    return float(_EPS * mu[-1] / mu[0]) if mu[0] > 0 else float("inf")


def _trim(R: Tensor, W: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Drop directions of ``B = Q R`` at rounding level (R's singular values below ``10 m eps``)."""
    # They carry no data but, through huge entries of W, would amplify rounding in every
    # later product with S.
    U, sv, Vh = torch.linalg.svd(R, full_matrices=False)
    k = int((sv > sv[0] * 10 * m * _EPS).sum())
    return sv[:k, None] * Vh[:k], W @ U[:, :k]


@dataclass(frozen=True)
class DMD:
    r"""A fitted DMD operator, stored only through ``m x r`` and ``r``-sized arrays.

    Forecasts use the reduced operator directly: with :math:`\Phi = M\Psi` and
    :math:`\tilde A = \Psi\Lambda\Psi^{-1}`, :math:`\Phi\Lambda^k\Phi^{+} s = M \tilde A^k M^{+} s`.
    That is the same number wherever the eigendecomposition exists, and stays accurate when
    :math:`\tilde A` is close to defective (a weight moving at constant acceleration gives a
    triple eigenvalue 1), where :math:`\Psi` is too ill-conditioned to invert.

    Attributes:
        eigenvalues: :math:`\Lambda`, complex128 of shape ``(r,)``.
        amplitudes: :math:`b = \Phi^{+} s_{m-1}`, complex128 of shape ``(r,)``.
        mode_coefficients: complex128 ``(m, r)`` matrix with :math:`\Phi = S \cdot` this.
        singular_values: the retained singular values of :math:`X`, float64 ``(r,)``.
        operator: :math:`\tilde A`, float64 ``(r, r)``.
        lift: float64 ``(m, r)``, the map :math:`M` from reduced coordinates to states,
            as coefficients of the snapshots.
        reduced_state: :math:`M^{+} s_{m-1}`, float64 ``(r,)``.
    """

    eigenvalues: Tensor
    amplitudes: Tensor
    mode_coefficients: Tensor
    singular_values: Tensor
    operator: Tensor
    lift: Tensor
    reduced_state: Tensor

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    def coefficients(self, steps: Iterable[int], form: Forecast = "paper") -> Tensor:
        r"""Real float64 matrix ``C`` of shape ``(m, len(steps))`` with forecast ``= S @ C``.

        Column ``j`` gives the state ``steps[j]`` steps after the newest snapshot, in the
        chosen ``form`` (see the module docstring). ``steps`` must be non-negative integers.
        """
        if form not in FORECASTS:
            raise ValueError(f"form must be one of {FORECASTS}, got {form!r}")
        steps = list(steps)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
            raise ValueError(f"steps must be non-negative ints, got {steps}")
        z = [self.reduced_state]
        for _ in range(max(steps, default=0)):
            z.append(self.operator @ z[-1])
        Z = torch.stack([z[k] for k in steps], dim=1) if steps else self.reduced_state.new_zeros(self.rank, 0)
        if form == "increment":
            C = self.lift @ (Z - self.reduced_state[:, None])
            C[-1] += 1.0
            return C
        return self.lift @ Z

    def step_coefficients(self, tau: int, form: Forecast = "paper", graded: bool = False) -> Tensor:
        r"""Float64 ``(tau + 1) x m`` matrix mapping the snapshots to the predicted steps and the displacement.

        Row ``k - 1`` gives :math:`\hat s_{m-1+k} - \hat s_{m-2+k}` for ``k = 1..tau``, with
        :math:`\hat s_{m-1} := s_{m-1}` (the newest snapshot itself, not its reconstruction);
        the last row gives their sum, the displacement :math:`\hat s_{m-1+\tau} - s_{m-1}`.
        With ``graded`` the matrix is ``2 tau x m``: the ``tau`` steps, then the displacement
        :math:`D_k = \hat s_{m-1+k} - s_{m-1}` of every ``k = 1..tau`` (the last row as above).
        """
        C = self.coefficients(range(1, tau + 1), form)
        C[-1] -= 1.0  # displacements from the newest snapshot
        steps = torch.diff(C.T, dim=0, prepend=torch.zeros(1, C.shape[0], dtype=C.dtype))
        return torch.cat([steps, C.T if graded else C[:, -1:].T])

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


def validate_options(exact: bool, rank: int | float | None, rtol: float | None) -> None:
    """Raise ``ValueError`` unless ``exact``, ``rank`` and ``rtol`` are valid for :func:`fit_factor`."""
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be a bool, got {exact!r}")
    _truncation_rank(torch.ones(1, dtype=torch.float64), rank, rtol)


def _least_squares(A: Tensor, b: Tensor) -> Tensor:
    """The minimum-norm solution of ``A x = b`` for a vector ``b``, the same bits on every call.

    On the CPU, LAPACK's default ``gelsy`` (QR with column pivoting) rounded the same small
    system differently from one call to the next (93 of 300 calls at 5 x 3): it made two
    identical runs of PDT differ in the last bit. The SVD-based ``gelsd`` gave 0 of 16,000.
    CUDA's ``lstsq`` has the one driver ``gels``.
    """
    driver = "gelsd" if A.device.type == "cpu" else None
    return torch.linalg.lstsq(A, b[:, None], driver=driver).solution[:, 0]


def fit_factor(
    R: Tensor,
    W: Tensor,
    *,
    basis: Tensor | None = None,
    exact: bool = False,
    rank: int | float | None = None,
    rtol: float | None = None,
) -> DMD:
    r"""Fit DMD from the factor of a basis of the snapshots (see :func:`orthogonal_factor`).

    Args:
        R, W: ``q x m`` and ``m x q`` float64, with :math:`ST = QR` and :math:`Q = STW` orthonormal.
        basis: :math:`T`, default :func:`difference_basis`.
        exact: exact modes :math:`Y V \Sigma^{-1} \Psi` instead of projected modes :math:`U\Psi`.
        rank: truncation of the SVD of :math:`X`: ``None`` keeps every numerically non-zero
            singular value, an ``int`` keeps that many, a ``float`` in (0, 1] keeps the fewest
            whose squared sum reaches that fraction of the energy.
        rtol: additionally drop singular values below ``rtol * sigma_max``.

    Raises:
        DMDError: :math:`X` has rank 0, or the truncation keeps no singular value (``rtol >= 1``).
    """
    validate_options(exact, rank, rtol)
    m = R.shape[1]
    T = difference_basis(m) if basis is None else basis
    RS = R @ torch.linalg.inv(T)  # S = Q RS
    RX, RY, r_last = RS[:, :-1], RS[:, 1:], RS[:, -1]

    U, s, Vh = torch.linalg.svd(RX, full_matrices=False)
    nonzero = int((s > s[0] * 10 * m * _EPS).sum()) if s.numel() and s[0] > 0 else 0
    if nonzero == 0:
        raise DMDError("rank 0: X has no non-zero singular value")
    r = _truncation_rank(s[:nonzero], rank, rtol)
    if r == 0:  # a rank-0 operator forecasts zeros: never a prediction
        raise DMDError(f"rank 0: the truncation (rank={rank!r}, rtol={rtol!r}) keeps no singular value")
    U, s, V = U[:, :r], s[:r], Vh[:r].T

    YVinv = RY @ V / s  # (q, r)
    A_tilde = U.T @ YVinv
    eigenvalues, Psi = torch.linalg.eig(A_tilde)
    M = YVinv if exact else U  # Phi = M Psi, in Q coordinates
    reduced_state = _least_squares(M, r_last)
    modes_q = M.to(torch.complex128) @ Psi
    amplitudes = _least_squares(modes_q, r_last.to(torch.complex128))
    # Q = S T W: coordinates in Q become coefficients of the snapshots through T W.
    TW = T @ W
    return DMD(
        eigenvalues=eigenvalues,
        amplitudes=amplitudes,
        mode_coefficients=TW.to(torch.complex128) @ modes_q,
        singular_values=s,
        operator=A_tilde,
        lift=TW @ M,
        reduced_state=reduced_state,
    )


def fit(
    snapshots: Tensor,
    *,
    exact: bool = False,
    rank: int | float | None = None,
    rtol: float | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> DMD:
    """Fit DMD to the columns of ``snapshots`` (``N x m``, oldest first); see :func:`fit_factor`."""
    if snapshots.dim() != 2 or snapshots.shape[1] < 2:
        raise ValueError(f"snapshots must be N x m with m >= 2, got {tuple(snapshots.shape)}")
    validate_options(exact, rank, rtol)
    m = snapshots.shape[1]
    R, W = orthogonal_factor(snapshot_gram_of(matrix_chunks(snapshots, chunk_size), m), m)
    return fit_factor(R, W, exact=exact, rank=rank, rtol=rtol)
