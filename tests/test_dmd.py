"""Accuracy tests for :mod:`torch_pdt.dmd` against PyDMD and an independent numpy DMD.

``torch_pdt.dmd`` never forms an SVD of the ``N x m`` snapshot matrix: it works from
``m x m`` Gram matrices of a difference basis (two passes of Cholesky-QR). These tests check that this gives the same
DMD (eigenvalues, singular values, modes, both forecast forms) as a plain float64 SVD
implementation, on

* linear systems whose eigenvalues and future states are known exactly, and
* a real weight trajectory recorded while training a small MLP with SGD,

plus the truncation options, degenerate inputs, chunking, and one test showing why the
difference basis (rather than the plain Gram matrix ``S^T S``) is needed.

Errors are relative: ``norm(got - ref) / norm(ref)``. A forecast is ``s_last`` plus a small
displacement on nearly parallel snapshots, so for those we also check the displacement
``forecast - s_last`` on its own, which is the part PDT actually uses.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from torch_pdt import dmd

TAUS = list(range(1, 10))
FORMS = ("paper", "increment")
EXACT = (False, True)
TOL = 1e-8
EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Every array here is tiny; on a busy machine torch's thread pool makes this file 4x
    slower (27 s instead of 7 s measured on 2 loaded cores). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(got, ref) -> float:
    """Relative error ``||got - ref|| / ||ref||`` (Frobenius norm)."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def matching(got, ref) -> np.ndarray:
    """Index array ``p`` such that ``got[p]`` pairs each reference eigenvalue with its nearest.

    A sort (``np.sort_complex``) is fragile when two eigenvalues have real parts equal up to
    rounding (e.g. ``1 +- 1e-8 j`` from a Jordan block), so pairs are found with an optimal
    assignment on ``|got_i - ref_j|`` instead.
    """
    got, ref = np.asarray(got, complex), np.asarray(ref, complex)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    rows, cols = linear_sum_assignment(np.abs(got[:, None] - ref[None, :]))
    p = np.empty(len(ref), dtype=int)
    p[cols] = rows
    return p


def eig_err(got, ref) -> float:
    """Relative error between two eigenvalue sets, paired by :func:`matching`."""
    got, ref = np.asarray(got, complex), np.asarray(ref, complex)
    return rel_err(got[matching(got, ref)], ref)


def numpy_dmd(S: np.ndarray, exact: bool, r: int | None = None):
    """Textbook DMD (Tu et al. 2014) with ``np.linalg``; independent of ``torch_pdt``.

    ``r=None`` keeps the singular values of ``X`` above ``max(X.shape) * eps * s_max``.
    Returns ``(eigenvalues, modes Phi (N x r), amplitudes b = lstsq(Phi, s_last), s)``.
    """
    X, Y = S[:, :-1], S[:, 1:]
    U, s, Vh = np.linalg.svd(X, full_matrices=False)
    if r is None:
        r = int((s > s[0] * max(X.shape) * EPS).sum())
    U, s, V = U[:, :r], s[:r], Vh[:r].T
    YVinv = Y @ V / s
    lam, Psi = np.linalg.eig(U.T @ YVinv)
    Phi = (YVinv if exact else U) @ Psi
    b = np.linalg.lstsq(Phi, S[:, -1].astype(complex), rcond=None)[0]
    return lam, Phi, b, s


def numpy_forecast(lam, Phi, b, s_last, taus, form: str) -> np.ndarray:
    """The ``paper`` or ``increment`` forecast (module docstring of dmd.py), ``N x len(taus)``."""
    powers = lam[:, None] ** np.asarray(taus, dtype=float)[None, :]
    if form == "paper":
        return (Phi @ (powers * b[:, None])).real
    return s_last[:, None] + (Phi @ ((powers - 1) * b[:, None])).real


def pydmd_fit(S: np.ndarray, exact: bool, svd_rank=-1, ntau: int = 9):
    """PyDMD's eigenvalues and both forecast forms for ``tau = 1..ntau`` from ``s_last``.

    ``opt=-1`` makes PyDMD fit the amplitudes to the last snapshot, as dmd.py does. Its
    reconstruction over ``t = m-1 .. m-1+ntau`` gives ``Re(Phi Lambda^tau b)``: column 0 is
    ``tau = 0``, used to form the increment ``s_last + Re(Phi (Lambda^tau - 1) b)``.
    """
    from pydmd import DMD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = DMD(svd_rank=svd_rank, exact=exact, opt=-1)
        d.fit(S)
        tend = d.original_time["tend"]
        d.dmd_time["t0"] = tend
        d.dmd_time["tend"] = tend + ntau
        R = d.reconstructed_data
        eigs = np.asarray(d.eigs, complex)
    assert R.shape[1] == ntau + 1
    return eigs, {
        "paper": R[:, 1:].real,
        "increment": S[:, -1:] + (R[:, 1:] - R[:, :1]).real,
    }


def torch_forecasts(fit: dmd.DMD, S: np.ndarray) -> dict[str, np.ndarray]:
    """Both forecast forms of a fitted :class:`dmd.DMD` for ``TAUS``, as numpy arrays."""
    St = torch.from_numpy(S)
    return {form: fit.forecast(St, TAUS, form).numpy() for form in FORMS}


def displacement_err(got, ref, s_last) -> float:
    """Relative error of the forecast displacement ``forecast - s_last``."""
    return rel_err(got - s_last[:, None], ref - s_last[:, None])


def mode_contributions(fit: dmd.DMD, S: np.ndarray) -> np.ndarray:
    """Columns ``phi_k b_k``: each mode scaled by its amplitude, free of eigenvector scaling."""
    return fit.modes(torch.from_numpy(S)).numpy() * fit.amplitudes.numpy()[None, :]


# --------------------------------------------------------------------------------------
# data: linear systems with known eigenvalues
# --------------------------------------------------------------------------------------


def linear_system(seed, dim, n=500, radius=(0.6, 1.0), angle=(0.1, 0.8), real=(0.3, 1.0)):
    """A random ``dim``-dimensional linear map ``A = P D P^-1`` lifted into ``R^n``.

    ``D`` is real block-diagonal: ``dim // 3`` rotation-scaling blocks (complex-conjugate
    eigenvalue pairs ``rho e^{+-i theta}``) and real eigenvalues spread over ``real``.
    The defaults give the slow dynamics of a training run (eigenvalues near 1).

    Returns ``(A, lift, z0, eigenvalues)`` where ``lift`` is an orthonormal ``n x dim``
    matrix: the state ``x_k = lift @ A^k z0`` evolves by ``x_{k+1} = (lift A lift^T) x_k``.
    """
    g = np.random.default_rng(seed)
    blocks, lam = [], []
    for _ in range(dim // 3):
        rho, theta = g.uniform(*radius), g.uniform(*angle)
        c, s = np.cos(theta), np.sin(theta)
        blocks.append(rho * np.array([[c, -s], [s, c]]))
        lam += [rho * np.exp(1j * theta), rho * np.exp(-1j * theta)]
    n_real = dim - 2 * (dim // 3)
    for x in np.linspace(*real, n_real) + g.uniform(-0.03, 0.03, n_real):
        blocks.append(np.array([[x]]))
        lam.append(complex(x))
    D = np.zeros((dim, dim))
    i = 0
    for blk in blocks:
        D[i : i + len(blk), i : i + len(blk)] = blk
        i += len(blk)
    P = g.standard_normal((dim, dim)) + 3 * np.eye(dim)
    A = P @ D @ np.linalg.inv(P)
    lift = np.linalg.qr(g.standard_normal((n, dim)))[0]
    return A, lift, g.standard_normal(dim), np.array(lam)


def linear_trajectory(seed, dim, m, ntau=9, **kw):
    """``m`` snapshots of :func:`linear_system`, the next ``ntau`` true states, eigenvalues."""
    A, lift, z, lam = linear_system(seed, dim, **kw)
    states = [z]
    for _ in range(m - 1 + ntau):
        states.append(A @ states[-1])
    Z = lift @ np.stack(states, axis=1)
    return Z[:, :m], Z[:, m:], lam


# (seed, state dim, number of snapshots): m - 1 == dim (X square in the state space) and
# m - 1 > dim (X rank-deficient: dmd.py must find rank dim by itself).
LINEAR_CASES = [(seed, dim, dim + 1 + extra) for seed in range(3) for dim in (6, 7, 8) for extra in (0, 2)]


@pytest.mark.parametrize("exact", EXACT)
@pytest.mark.parametrize("seed,dim,m", LINEAR_CASES)
def test_linear_system_known_eigenvalues_and_future(seed, dim, m, exact):
    """With ``m - 1 >= dim`` snapshots the dynamics are identifiable: DMD must return exactly
    the ``dim`` eigenvalues of ``A`` and both forecast forms must equal the true future
    states ``A^tau x_last``."""
    S, future, lam = linear_trajectory(seed, dim, m)
    fit = dmd.fit(torch.from_numpy(S), exact=exact)
    assert fit.rank == dim
    assert fit.eigenvalues.dtype == torch.complex128
    assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
    for form, got in torch_forecasts(fit, S).items():
        assert rel_err(got, future) < TOL, form


@pytest.mark.parametrize("exact", EXACT)
@pytest.mark.parametrize("seed,dim,m", LINEAR_CASES)
def test_linear_system_matches_numpy_and_pydmd(seed, dim, m, exact):
    """Same data as above, compared with the numpy reference and PyDMD: eigenvalues, singular
    values of X, per-mode contributions ``phi_k b_k`` and both forecast forms.

    PyDMD's ``svd_rank=-1`` keeps even numerically zero singular values, so when X is
    rank-deficient (``m - 1 > dim``) PyDMD is told the rank instead.
    """
    S, _, _ = linear_trajectory(seed, dim, m)
    fit = dmd.fit(torch.from_numpy(S), exact=exact)
    got = torch_forecasts(fit, S)
    lam, Phi, b, s = numpy_dmd(S, exact)
    assert fit.rank == len(lam) == dim
    assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
    assert rel_err(fit.singular_values.numpy(), s) < TOL
    p = matching(fit.eigenvalues.numpy(), lam)
    assert rel_err(mode_contributions(fit, S)[:, p], Phi * b[None, :]) < TOL
    for form in FORMS:
        assert rel_err(got[form], numpy_forecast(lam, Phi, b, S[:, -1], TAUS, form)) < TOL, form

    py_eigs, py_fc = pydmd_fit(S, exact, svd_rank=-1 if m - 1 == dim else dim)
    assert eig_err(fit.eigenvalues.numpy(), py_eigs) < TOL
    for form in FORMS:
        assert rel_err(got[form], py_fc[form]) < TOL, form


# --------------------------------------------------------------------------------------
# data: a real weight trajectory
# --------------------------------------------------------------------------------------

WINDOW = 5


@pytest.fixture(scope="module")
def mlp_trajectory() -> np.ndarray:
    """Flattened float64 parameters of a 20-64-64-5 MLP after each of 10 SGD "epochs".

    Shape ``(5829, 11)``: the initial weights then one column per epoch (4 minibatch steps
    of 64 on 256 fixed synthetic samples, lr 0.05). Successive columns differ by about 1%,
    so any window of them is nearly parallel, as in PDT.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g)).argmax(dim=1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def flat() -> np.ndarray:
        return torch.nn.utils.parameters_to_vector(net.parameters()).detach().double().numpy().copy()

    snapshots = [flat()]
    for _ in range(10):
        perm = torch.randperm(256, generator=g)
        for batch in perm.split(64):
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        snapshots.append(flat())
    W = np.stack(snapshots, axis=1)
    steps = np.linalg.norm(np.diff(W, axis=1), axis=0) / np.linalg.norm(W, axis=0)[1:]
    assert np.all((1e-4 < steps) & (steps < 0.1)), steps  # nearly parallel, yet moving
    return W


def mlp_windows(W: np.ndarray):
    """All windows of ``WINDOW`` consecutive snapshots."""
    return [W[:, i : i + WINDOW] for i in range(W.shape[1] - WINDOW + 1)]


# Measured on the MLP windows (both mode types, both forms, numpy and PyDMD): forecasts agree
# to <= 6e-13 and their displacements to <= 1e-11, so the displacement is held to 1e-8 too.
DISPLACEMENT_TOL = 1e-8


@pytest.mark.parametrize("exact", EXACT)
def test_mlp_trajectory_matches_numpy(mlp_trajectory, exact):
    """On real, nearly parallel weight snapshots dmd.py equals the numpy SVD DMD: eigenvalues,
    singular values, per-mode contributions and both forecast forms, including the small
    displacement from the newest snapshot."""
    for S in mlp_windows(mlp_trajectory):
        fit = dmd.fit(torch.from_numpy(S), exact=exact)
        lam, Phi, b, s = numpy_dmd(S, exact)
        assert fit.rank == len(lam) == WINDOW - 1
        assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
        assert rel_err(fit.singular_values.numpy(), s) < TOL
        p = matching(fit.eigenvalues.numpy(), lam)
        assert rel_err(mode_contributions(fit, S)[:, p], Phi * b[None, :]) < TOL  # measured 7e-10
        for form, got in torch_forecasts(fit, S).items():
            ref = numpy_forecast(lam, Phi, b, S[:, -1], TAUS, form)
            assert rel_err(got, ref) < TOL, form
            assert displacement_err(got, ref, S[:, -1]) < DISPLACEMENT_TOL, form


@pytest.mark.parametrize("exact", EXACT)
def test_mlp_trajectory_matches_pydmd(mlp_trajectory, exact):
    """The same windows against PyDMD (``svd_rank=-1``, amplitudes from the last snapshot)."""
    for S in mlp_windows(mlp_trajectory):
        fit = dmd.fit(torch.from_numpy(S), exact=exact)
        py_eigs, py_fc = pydmd_fit(S, exact)
        assert eig_err(fit.eigenvalues.numpy(), py_eigs) < TOL
        for form, got in torch_forecasts(fit, S).items():
            assert rel_err(got, py_fc[form]) < TOL, form
            assert displacement_err(got, py_fc[form], S[:, -1]) < DISPLACEMENT_TOL, form


def test_mlp_trajectory_float32_input(mlp_trajectory):
    """Float32 snapshots (how PDT stores weights) give the float64 fit of the same values."""
    S32 = mlp_trajectory[:, :WINDOW].astype(np.float32)
    fit = dmd.fit(torch.from_numpy(S32))
    lam, Phi, b, _ = numpy_dmd(S32.astype(np.float64), exact=False)
    got = fit.forecast(torch.from_numpy(S32), TAUS).numpy()
    assert got.dtype == np.float64
    assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
    assert rel_err(got, numpy_forecast(lam, Phi, b, S32[:, -1].astype(np.float64), TAUS, "paper")) < TOL


# --------------------------------------------------------------------------------------
# truncation
# --------------------------------------------------------------------------------------


def singular_values_of_x(S: np.ndarray) -> np.ndarray:
    return np.linalg.svd(S[:, :-1], compute_uv=False)


@pytest.mark.parametrize("exact", EXACT)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_integer_rank_truncation(mlp_trajectory, rank, exact):
    """``rank=k`` keeps the k largest singular values: same DMD as numpy and PyDMD truncated
    to k (``svd_rank=k``)."""
    S = mlp_trajectory[:, :WINDOW]
    fit = dmd.fit(torch.from_numpy(S), exact=exact, rank=rank)
    assert fit.rank == rank
    lam, Phi, b, s = numpy_dmd(S, exact, r=rank)
    assert rel_err(fit.singular_values.numpy(), s) < TOL
    assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
    py_eigs, py_fc = pydmd_fit(S, exact, svd_rank=rank)
    assert eig_err(fit.eigenvalues.numpy(), py_eigs) < TOL
    for form, got in torch_forecasts(fit, S).items():
        assert rel_err(got, numpy_forecast(lam, Phi, b, S[:, -1], TAUS, form)) < TOL, form
        assert rel_err(got, py_fc[form]) < TOL, form


def test_integer_rank_above_available_is_clipped(mlp_trajectory):
    """Asking for more singular values than X has keeps them all."""
    S = mlp_trajectory[:, :WINDOW]
    assert dmd.fit(torch.from_numpy(S), rank=100).rank == WINDOW - 1


def energy_fractions(s: np.ndarray) -> list[float]:
    """Fractions strictly between consecutive cumulative energies (and a few fixed ones),
    none within 1e-9 of a boundary, so rounding cannot flip the expected rank."""
    energy = np.cumsum(s**2) / np.sum(s**2)
    lo = np.concatenate([[0.0], energy[:-1]])
    mids = [(a + b) / 2 for a, b in zip(lo, energy) if b - a > 2e-9]
    fixed = [0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-6]
    return [f for f in mids + fixed if f < 1 - 1e-9 and np.min(np.abs(energy - f)) > 1e-9]


@pytest.mark.parametrize("exact", EXACT)
def test_energy_fraction_rank_matches_pydmd(mlp_trajectory, exact):
    """``rank=<float>`` keeps ``searchsorted(cumsum(s^2)/sum(s^2), frac) + 1`` singular values,
    which is PyDMD's ``svd_rank=<float>`` rule; the resulting fits agree."""
    for S in (mlp_trajectory[:, :WINDOW], linear_trajectory(0, 6, 7)[0]):
        s = singular_values_of_x(S)
        energy = np.cumsum(s**2) / np.sum(s**2)
        for frac in energy_fractions(s):
            expected = int(np.searchsorted(energy, frac)) + 1
            fit = dmd.fit(torch.from_numpy(S), exact=exact, rank=frac)
            assert fit.rank == expected, frac
            py_eigs, py_fc = pydmd_fit(S, exact, svd_rank=frac)
            assert len(py_eigs) == expected, frac
            assert eig_err(fit.eigenvalues.numpy(), py_eigs) < TOL, frac
            assert rel_err(torch_forecasts(fit, S)["paper"], py_fc["paper"]) < TOL, frac


def test_energy_fraction_one_keeps_everything(mlp_trajectory):
    """``rank=1.0`` (all the energy) keeps every non-zero singular value."""
    S = mlp_trajectory[:, :WINDOW]
    assert dmd.fit(torch.from_numpy(S), rank=1.0).rank == WINDOW - 1


def test_rtol_truncation(mlp_trajectory):
    """``rtol=t`` drops singular values below ``t * s_max``; thresholds placed halfway (in log
    scale) between singular values must keep exactly those above; combined with ``rank`` the
    smaller of the two ranks wins."""
    S = mlp_trajectory[:, :WINDOW]
    s = singular_values_of_x(S)
    St = torch.from_numpy(S)
    for k in range(1, len(s)):
        rtol = float(np.sqrt(s[k - 1] * s[k]) / s[0])
        fit = dmd.fit(St, rtol=rtol)
        assert fit.rank == k
        assert rel_err(fit.singular_values.numpy(), s[:k]) < TOL
        lam, *_ = numpy_dmd(S, exact=False, r=k)
        assert eig_err(fit.eigenvalues.numpy(), lam) < TOL
        assert dmd.fit(St, rtol=rtol, rank=1).rank == 1
        assert dmd.fit(St, rtol=rtol, rank=len(s)).rank == k
    assert dmd.fit(St, rtol=0.0).rank == len(s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 0},
        {"rank": -2},
        {"rank": 0.0},
        {"rank": -0.5},
        {"rank": 1.5},
        {"rank": True},
        {"rank": "3"},
        {"rtol": -1e-3},
        {"rtol": float("nan")},
        {"exact": 1},
    ],
)
def test_invalid_options_raise(kwargs):
    """Invalid truncation options are rejected with ValueError (before any computation)."""
    S = torch.from_numpy(linear_trajectory(0, 6, 7)[0])
    m = S.shape[1]
    with pytest.raises(ValueError):
        dmd.fit(S, **kwargs)
    with pytest.raises(ValueError):
        dmd.fit_factor(*dmd.orthogonal_factor(dmd.snapshot_gram_of(dmd.matrix_chunks(S), m), m), **kwargs)


def test_invalid_shapes_and_form_raise():
    """Snapshots must be ``N x m`` with ``m >= 2``; forecast forms are "paper"/"increment"."""
    S = torch.from_numpy(linear_trajectory(0, 6, 7)[0])
    for bad in (S[:, :1], S[:, 0], S[None]):
        with pytest.raises(ValueError):
            dmd.fit(bad)
    with pytest.raises(ValueError):
        dmd.fit(S).coefficients([1], form="other")


# --------------------------------------------------------------------------------------
# degenerate inputs
# --------------------------------------------------------------------------------------


def test_all_zero_snapshots_raise():
    with pytest.raises(dmd.DMDError):
        dmd.fit(torch.zeros(50, 5, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_snapshots_raise(bad):
    S = torch.from_numpy(linear_trajectory(0, 6, 7)[0]).clone()
    S[3, 2] = bad
    with pytest.raises(dmd.DMDError):
        dmd.fit(S)


def check_constant_snapshots(m: int, exact: bool) -> None:
    """Identical snapshots: one eigenvalue 1 and every forecast equals the snapshot."""
    w = np.random.default_rng(1).standard_normal(300)
    S = np.repeat(w[:, None], m, axis=1)
    fit = dmd.fit(torch.from_numpy(S), exact=exact)
    assert fit.rank == 1
    assert abs(fit.eigenvalues[0].item() - 1) < TOL
    for got in torch_forecasts(fit, S).values():
        assert rel_err(got, np.repeat(w[:, None], len(TAUS), axis=1)) < TOL


@pytest.mark.parametrize("exact", EXACT)
@pytest.mark.parametrize("m", [2, 3, 4, 5, 6, 8])
def test_constant_snapshots_are_a_fixed_point(m, exact):
    """Constant snapshots (a converged run) must not raise and must forecast themselves."""
    check_constant_snapshots(m, exact)


@pytest.mark.parametrize("exact", EXACT)
def test_two_snapshots(exact):
    """m = 2 (a single X column): rank 1 with eigenvalue ``<x, y> / <x, x>``; matches numpy
    and PyDMD."""
    g = np.random.default_rng(2)
    x = g.standard_normal(400)
    S = np.stack([x, 0.97 * x + 0.05 * g.standard_normal(400)], axis=1)
    fit = dmd.fit(torch.from_numpy(S), exact=exact)
    assert fit.rank == 1
    assert abs(fit.eigenvalues[0].item() - S[:, 0] @ S[:, 1] / (S[:, 0] @ S[:, 0])) < TOL
    lam, Phi, b, _ = numpy_dmd(S, exact)
    py_eigs, py_fc = pydmd_fit(S, exact)
    assert eig_err(fit.eigenvalues.numpy(), py_eigs) < TOL
    for form, got in torch_forecasts(fit, S).items():
        assert rel_err(got, numpy_forecast(lam, Phi, b, S[:, -1], TAUS, form)) < TOL, form
        assert rel_err(got, py_fc[form]) < TOL, form


def test_increment_form_at_step_zero_is_the_last_snapshot(mlp_trajectory):
    """The increment forecast 0 steps ahead is exactly ``s_last`` (coefficients ``e_m``)."""
    S = torch.from_numpy(mlp_trajectory[:, :WINDOW])
    C = dmd.fit(S).coefficients([0, 3], form="increment")
    assert C.shape == (WINDOW, 2)
    assert torch.equal(C[:, 0], torch.eye(WINDOW, dtype=torch.float64)[:, -1])


# --------------------------------------------------------------------------------------
# the difference basis and chunking
# --------------------------------------------------------------------------------------


def test_difference_basis_definition():
    """``S @ difference_basis(m)`` is ``[s_last, s_0 - s_last, ..., s_{m-2} - s_last]``."""
    S = torch.from_numpy(np.random.default_rng(3).standard_normal((40, 6)))
    B = S @ dmd.difference_basis(6)
    expected = torch.cat([S[:, -1:], S[:, :-1] - S[:, -1:]], dim=1)
    assert torch.allclose(B, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_chunking(mlp_trajectory, dtype):
    """``chunk_size`` only changes the summation order (500 rows = 71 chunks of 7 + 3)."""
    S = torch.from_numpy(mlp_trajectory[:500, : WINDOW + 2]).to(dtype)
    W = torch.from_numpy(np.random.default_rng(4).standard_normal((S.shape[1], 3)))
    m = S.shape[1]
    full = dmd.snapshot_gram_of(dmd.matrix_chunks(S), m)(W)
    chunked = dmd.snapshot_gram_of(dmd.matrix_chunks(S, chunk_size=7), m)(W)
    assert full.dtype == chunked.dtype == torch.float64
    assert rel_err(chunked.numpy(), full.numpy()) < 1e-12
    BW = S.double().numpy() @ dmd.difference_basis(S.shape[1]).numpy() @ W.numpy()
    assert rel_err(full.numpy(), BW.T @ BW) < 1e-12


def test_orthogonal_factor_is_a_qr_of_the_difference_basis(mlp_trajectory):
    """``S T = Q R`` with ``Q = S T W`` orthonormal, to float64 accuracy, on nearly parallel snapshots."""
    S = torch.from_numpy(mlp_trajectory[:, :WINDOW])
    R, W = dmd.orthogonal_factor(dmd.snapshot_gram_of(dmd.matrix_chunks(S), WINDOW), WINDOW)
    B = (S @ dmd.difference_basis(WINDOW)).numpy()
    Q = B @ W.numpy()
    assert np.abs(Q.T @ Q - np.eye(Q.shape[1])).max() < 1e-10
    assert rel_err(Q @ R.numpy(), B) < 1e-14
    assert rel_err(np.linalg.svd(R.numpy(), compute_uv=False), np.linalg.svd(B, compute_uv=False)) < 1e-12


def nearly_parallel_trajectory(seed, m, n=2000, ntau=9):
    """``w0 + sum_j c_j u_j lam_j^i`` with ``|w0| = 1``, ``|c| = 1e-3, 1e-5, 1e-6`` and
    ``lam = 0.9, 0.6, -0.5``: snapshots that differ by ~1e-4 relative, like weights in
    training, with known eigenvalues ``1, 0.9, 0.6, -0.5``."""
    g = np.random.default_rng(seed)
    i = np.arange(m + ntau)
    w0 = g.standard_normal(n)
    Z = (w0 / np.linalg.norm(w0))[:, None] * np.ones_like(i, dtype=float)
    for c, lam in zip((1e-3, 1e-5, 1e-6), (0.9, 0.6, -0.5)):
        u = g.standard_normal(n)
        Z = Z + (c * u / np.linalg.norm(u))[:, None] * lam ** i[None, :]
    return Z[:, :m], Z[:, m:], np.array([1.0, 0.9, 0.6, -0.5], complex)


def plain_gram_fit(S: np.ndarray, exact: bool) -> dmd.DMD:
    """The naive route: every inner product taken from the plain Gram ``S^T S`` in float64
    (``W^T T^T S^T S T W``). Same factorisation and DMD afterwards: only where the rounding
    of the inner products happens differs from :func:`dmd.snapshot_gram_of`."""
    G = torch.from_numpy(S.T @ S)
    T = dmd.difference_basis(S.shape[1])
    R, W = dmd.orthogonal_factor(lambda V: (T @ V).T @ G @ (T @ V), S.shape[1])
    return dmd.fit_factor(R, W, exact=exact)


@pytest.mark.parametrize("exact", EXACT)
def test_difference_basis_beats_plain_gram(exact):
    """Nearly parallel snapshots: inner products of differences keep DMD at SVD accuracy;
    the plain Gram squares the condition number (~1e6 here) and loses many digits.

    Measured over these 20 fits, relative to numpy: difference basis <= 2e-11 (forecast),
    <= 8e-8 (displacement), <= 2e-10 (eigenvalues); plain Gram up to 7e-7 (forecast) and
    between 2e-4 and 3e-3 (displacement), i.e. at least 6000x worse on the displacement. The
    asserted factor of 100 is far inside that gap. (numpy itself is within 2e-10 of the
    true displacement, so the 8e-8 is dmd.py's own error, hence the 1e-6 bound on it.)
    """
    for seed in range(5):
        for m in (5, 6):
            S, future, lam_true = nearly_parallel_trajectory(seed, m)
            lam, Phi, b, _ = numpy_dmd(S, exact)
            ref = numpy_forecast(lam, Phi, b, S[:, -1], TAUS, "paper")
            assert rel_err(ref, future) < 1e-12  # the reference itself is right
            assert eig_err(lam, lam_true) < 1e-6

            good = dmd.fit(torch.from_numpy(S), exact=exact)
            naive = plain_gram_fit(S, exact)
            good_fc, naive_fc = (f.forecast(torch.from_numpy(S), TAUS).numpy() for f in (good, naive))

            assert good.rank == 4
            assert eig_err(good.eigenvalues.numpy(), lam) < TOL
            assert rel_err(good_fc, ref) < TOL
            assert displacement_err(good_fc, ref, S[:, -1]) < 1e-6

            naive_disp = displacement_err(naive_fc, ref, S[:, -1])
            assert naive_disp > 100 * displacement_err(good_fc, ref, S[:, -1])
            assert naive_disp > 1e-6


# --------------------------------------------------------------------------------------
# cases that broke an earlier backward-difference basis
# --------------------------------------------------------------------------------------


def polynomial_trajectory(degree, m, n=2000, seed=0, ntau=9):
    """``w0 + v i (+ a i^2)`` with ``|v|/|w0| = 1e-3``, ``|a|/|w0| = 1e-6``: constant velocity
    (or acceleration), the simplest training-like trajectory: the differences span only
    ``degree`` directions, and any further direction is rounding noise."""
    g = np.random.default_rng(seed)
    i = np.arange(m + ntau, dtype=float)
    Z = np.zeros((n, m + ntau))
    for power, scale in zip(range(degree + 1), (1.0, 1e-3, 1e-6)):
        u = g.standard_normal(n)
        Z += (scale * u / np.linalg.norm(u))[:, None] * i[None, :] ** power
    return Z[:, :m], Z[:, m:]


@pytest.mark.parametrize("degree,m", [(1, 4), (1, 6), (2, 5), (2, 6)])
def test_polynomial_trajectory_matches_numpy(degree, m):
    """A constant-velocity / constant-acceleration trajectory must forecast like numpy DMD
    (which is exact here to ~1e-11): rounding-noise directions must not become modes.

    (A backward-difference basis scaled to unit diagonal once blew such noise up to unit
    weight and was off by up to 2e+4.)
    """
    S, future = polynomial_trajectory(degree, m)
    lam, Phi, b, _ = numpy_dmd(S, exact=False)
    ref = numpy_forecast(lam, Phi, b, S[:, -1], TAUS, "paper")
    assert rel_err(ref, future) < 1e-9
    got = dmd.fit(torch.from_numpy(S)).forecast(torch.from_numpy(S), TAUS).numpy()
    assert rel_err(got, ref) < TOL


def test_fast_oscillating_system_matches_numpy():
    """Eigenvalues spread over the unit disk (-0.8, 0.08, 1.01, 0.78+-0.63i, 0.81+-0.49i), 7
    states, m = 12: numpy SVD DMD recovers the future to ~1e-14, and so must dmd.py.

    (Backward differences of such a trajectory grow like 1.8^k; a basis built from them lost
    up to 9 digits here.)
    """
    S, future, _ = linear_trajectory(10, 7, 12, radius=(0.6, 1.02), angle=(0.2, 2.5), real=(-0.8, 1.0))
    lam_np, Phi, b, _ = numpy_dmd(S, exact=False)
    ref = numpy_forecast(lam_np, Phi, b, S[:, -1], TAUS, "paper")
    assert rel_err(ref, future) < 1e-11
    got = dmd.fit(torch.from_numpy(S)).forecast(torch.from_numpy(S), TAUS).numpy()
    assert rel_err(got, ref) < TOL


def test_a_gram_near_the_float64_limit_is_factored_without_overflow():
    # Entries near 1e308: the symmetrisation must not add two of them (inf), nor fail in LAPACK.
    K = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64) * 1.5e308
    R1, W1, _ = dmd.first_factor(K, 2)
    assert torch.isfinite(R1).all() and torch.isfinite(W1).all()
    torch.testing.assert_close(W1 @ R1, torch.eye(2, dtype=torch.float64))


def test_a_gram_whose_scaled_form_overflows_is_a_decomposition_error():
    # Not a valid Gram (off-diagonal far beyond the diagonal), as rounding of huge snapshots can give:
    # refused as a DMDError, which PDT turns into a skipped prediction, never a LinAlgError.
    K = torch.tensor([[1e-300, 1e300], [1e300, 1e-300]], dtype=torch.float64)
    with pytest.raises(dmd.DMDError):
        dmd.first_factor(K, 2)
