"""The lean PDT step: the fused pass and the whole step against the float64 reference
(:mod:`torch_pdt.reference`), incremental Gram, one-pass Cholesky-QR, storage options, and the
``pdt-bench overhead`` command on a tiny N."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pdt_bench import cli
from pdt_bench import overhead as bench
from torch_pdt import PDT, dmd, reference

TAU = 3
H = 4


def random_pdt(dtype: torch.dtype, n: int, chunk_size: int, criterion: str, seed: int, storage: str = "same"):
    """A PDT whose history holds ``H`` random, nearly parallel snapshots of one parameter, and
    the parameter (the optimizer's result) after them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    p = nn.Parameter(w.to(dtype))
    pdt = PDT(
        torch.optim.SGD([p], lr=0.0),
        history=H,
        horizon=TAU,
        start_epoch=100,
        criterion=criterion,
        chunk_size=chunk_size,
        storage=storage,
    )
    for _ in range(H):
        w = w + 1e-2 * torch.randn(n, generator=g, dtype=torch.float64)
        w[: n // 10] = w[: n // 10].round(decimals=1)  # elements that mostly do not move at all
        with torch.no_grad():
            p.copy_(w)
        pdt.step()
    if criterion == "authors":  # the optimizer moves on from the last start-of-epoch snapshot
        with torch.no_grad():
            p.add_(1e-2 * torch.randn(n, generator=g, dtype=torch.float64).to(dtype))
    return pdt, p, g


def random_steps(g: torch.Generator) -> torch.Tensor:
    """Coefficients of the steps (rows) on the snapshots (columns), the displacement last.

    Rows nearly sum to zero, as forecasts do (a constant trajectory predicts no motion), so
    predicted steps are of the size of the snapshots' differences and the bounds matter.
    """
    steps = torch.randn(TAU, H, generator=g, dtype=torch.float64)
    steps += 1e-3 - steps.mean(1, keepdim=True)
    return torch.cat([steps, steps.sum(0, keepdim=True)])


def bound_margin(S: torch.Tensor, weights: torch.Tensor, steps: torch.Tensor, start_of_epoch: bool) -> torch.Tensor:
    """Each element's distance from the bounds |D| = |delta| and |D| = tau |delta|, relative to
    |delta|: a decision closer than the pass's float32 rounding may go either way."""
    D = steps[TAU] @ S
    delta = weights.double() - S[-1] if start_of_epoch else S[-1] - S[-2]
    margin = torch.stack([(D.abs() - delta.abs()).abs(), (D.abs() - TAU * delta.abs()).abs()]).amin(0)
    return margin / delta.abs().clamp(min=1e-30)


DTYPES = [torch.float32, torch.float64, torch.bfloat16]
CRITERION_NAMES = ["pdt", "authors", "accel_only", "consistency_only", "none"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", CRITERION_NAMES)
def test_fused_pass_equals_the_plain_implementation(dtype, criterion):
    """Random snapshots and random coefficients, 1000 elements in chunks of 64 (1000 = 15 * 64 + 40):
    same mask and same weights as the float64 reference (:func:`torch_pdt.reference.apply_coefficients`),
    except where the float64 margin of a bound is within float32 rounding (there the fused pass,
    in float32, may decide either way)."""
    n = 1000
    seed = 10 * DTYPES.index(dtype) + CRITERION_NAMES.index(criterion)
    pdt, p, g = random_pdt(dtype, n, 64, criterion, seed)
    steps = random_steps(g)
    rows = pdt._history.rows()
    S = torch.cat([s.double() for s in pdt._history._storage], dim=1)[rows]
    before = p.detach().clone()
    twin = reference.apply_coefficients(S, before, steps, criterion, horizon=TAU, start_of_epoch=criterion == "authors")
    accept, expected = twin.accept, twin.weights
    margin = bound_margin(S, before, steps, start_of_epoch=criterion == "authors")
    stats = pdt._pass(steps, pdt._plan(TAU, criterion, write=True))
    got = p.detach()
    changed = got != before
    decided = margin > 1e-5
    assert decided.float().mean() > 0.99
    assert torch.equal(changed[decided], accept[decided] & (expected != before)[decided])
    assert stats["accepted"] == pytest.approx(int(accept.sum()), abs=int((~decided).sum()))
    # Weights agree to the rounding of the dtype, relative to the weight or to the steps
    # (1e-2): a weight that crosses zero has ulps far below its displacement's rounding.
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    both = accept & changed
    torch.testing.assert_close(got[both].double(), expected[both].double(), rtol=tol, atol=tol * 1e-2)
    assert torch.equal(got[~accept & decided], before[~accept & decided])


def test_fused_pass_statistics_equal_the_criteria_module():
    """Rejection counts and per-parameter ratios of the fused pass equal :func:`criteria.evaluate`
    applied to the same float32 quantities (float64 parameters: both sides exact to 1e-12)."""
    from torch_pdt.criteria import evaluate

    pdt, p, g = random_pdt(torch.float64, 777, 100, "pdt", seed=5)
    steps = random_steps(g)
    S = pdt._history._storage[0][pdt._history.rows()]
    P = steps @ S
    verdict = evaluate("pdt", P[:TAU], S[-1] - S[-2], TAU, P[TAU])
    stats = pdt._pass(steps, pdt._plan(TAU, "pdt", write=False))
    assert stats["accepted"] == int(verdict.accept.sum())
    for check in ("consistency", "lower_bound", "upper_bound"):
        assert stats["rejected"][check] == int(getattr(verdict, check).sum()), check
    assert stats["rejected"]["nonfinite"] == 0


@pytest.mark.parametrize("modes", ["projected", "exact"])
@pytest.mark.parametrize("forecast", ["paper", "increment"])
@pytest.mark.parametrize("criterion", [*CRITERION_NAMES, "random"])
def test_pdt_step_equals_the_reference_step(criterion, forecast, modes):
    """The whole step (Gram, DMD, coefficients, pass) against the readable SVD-based float64 step,
    on float64 weights relaxing towards a target with noise: the same decisions and counts, the
    same weights to float64 rounding of the forecast."""
    n = 600
    g = torch.Generator().manual_seed(CRITERION_NAMES.index(criterion) if criterion in CRITERION_NAMES else 9)
    target, start = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    p = nn.Parameter(start.clone())
    pdt = PDT(
        torch.optim.SGD([p], lr=0.0),
        history=H,
        horizon=TAU,
        start_epoch=0,
        interval=0,
        criterion=criterion,
        forecast=forecast,
        modes=modes,
    )
    for t in range(1, H + 1):
        with torch.no_grad():
            p.copy_(target + (start - target) * 0.7**t + 1e-2 * torch.randn(n, generator=g, dtype=torch.float64))
        before, w = pdt.state_dict()["history"]["snapshots"][0], p.detach().clone()
        stats = pdt.step()
        if stats["predicted"]:
            break
    assert stats["predicted"] and 0 < stats["accepted"] <= n
    snapshots = before if pdt.config.start_of_epoch else pdt.state_dict()["history"]["snapshots"][0]
    assert pdt.config.start_of_epoch or torch.equal(snapshots[-1], w)
    twin = reference.step(list(snapshots), w, TAU, criterion=criterion, forecast=forecast, modes=modes)
    # One DMD of the whole model, as the twin: no tensor goes unfitted.
    assert (stats["accepted"], stats["rejected"]) == (twin.accepted, twin.rejected | {"unfitted": 0})
    if criterion == "random":
        assert stats["random_ratio"] == twin.ratio
    torch.testing.assert_close(p.detach(), twin.weights, rtol=1e-9, atol=1e-12)


# --- the incremental Gram ----------------------------------------------------------------------


def direct_gram(history) -> torch.Tensor:
    S = torch.cat([s.double() for s in history._storage], dim=1)[history.rows()].T
    C = S @ dmd.consecutive_basis(S.shape[1])
    return C.T @ C


def test_incremental_gram_equals_the_direct_one_through_wraparound_replace_and_resume():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(300)), nn.Parameter(torch.randn(7, 11, dtype=torch.float64))]
    pdt = PDT(torch.optim.SGD(params, lr=0.0), history=3, start_epoch=100, chunk_size=50)
    history = pdt._history
    for t in range(7):
        with torch.no_grad():
            for q in params:
                q.add_(torch.randn_like(q), alpha=0.01 * (t + 1))
        pdt.step()
        torch.testing.assert_close(history.gram(), direct_gram(history), rtol=1e-12, atol=0)
    with torch.no_grad():
        params[0].mul_(1.01)
    history.replace_newest(pdt._flat_params(), pdt._passes)
    torch.testing.assert_close(history.gram(), direct_gram(history), rtol=1e-12, atol=0)
    other = PDT(torch.optim.SGD(params, lr=0.0), history=3, start_epoch=100, chunk_size=50)
    other.load_state_dict(pdt.state_dict())
    assert torch.equal(other._history.gram(), history.gram())


def test_gram_of_consecutive_basis_matches_snapshot_gram_of():
    S = torch.randn(200, 5, dtype=torch.float64)
    T = dmd.consecutive_basis(5)
    C = S @ T
    assert torch.equal(C[:, 0], S[:, -1]) and torch.equal(C[:, 1:], S[:, 1:] - S[:, :-1])
    W = torch.randn(5, 3, dtype=torch.float64)
    got = dmd.snapshot_gram_of(dmd.matrix_chunks(S, 13), 5, basis=T)(W)
    torch.testing.assert_close(got, (C @ W).T @ (C @ W), rtol=1e-12, atol=0)


# --- one Cholesky-QR pass or two ---------------------------------------------------------------


def trending(n: int, m: int, curvature: float, seed: int = 0) -> torch.Tensor:
    """Float32 snapshots ``w0 + v t + a t^2 + noise``: a drift that bends by ``curvature``,
    with independent per-element noise (as from minibatches) of 1% of a step."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(m, dtype=torch.float64)
    w0, v, a = (torch.randn(n, 1, generator=g, dtype=torch.float64) for _ in range(3))
    noise = torch.randn(n, m, generator=g, dtype=torch.float64)
    return (w0 + 1e-2 * v * t + 1e-2 * curvature * a * t**2 + 1e-4 * noise).float()


@pytest.mark.parametrize("curvature", [1.0, 1e-1, 1e-2])
def test_one_pass_factor_is_as_good_as_two_within_the_data_precision(curvature):
    """For float32 data the one-pass factor (when the rule takes it) gives the forecast of the
    two-pass factor to within float32 rounding of the weights."""
    S = trending(3000, 5, curvature)
    m = S.shape[1]
    T = dmd.consecutive_basis(m)
    calls = []

    def gram_of(W):
        calls.append(W)
        return dmd.snapshot_gram_of(dmd.matrix_chunks(S), m, basis=T)(W)

    K = gram_of(torch.eye(m, dtype=torch.float64))
    calls.clear()
    R1, W1 = dmd.orthogonal_factor(gram_of, m, gram=K, resolution=dmd.unit_roundoff(torch.float32))
    one = dmd.fit_factor(R1, W1, basis=T).forecast(S, [1, 5])
    two = dmd.fit(S.double()).forecast(S, [1, 5])
    scale = S.double().abs().max()
    assert (one - two).abs().max() < dmd.unit_roundoff(torch.float32) * scale
    if calls:  # the rule asked for the second pass: then it is the two-pass factor exactly
        assert len(calls) == 1


def test_exact_data_always_takes_the_second_pass():
    S = trending(500, 5, 1.0).double()
    m = 5
    passes = []
    gram = dmd.snapshot_gram_of(dmd.matrix_chunks(S), m)

    def gram_of(W):
        passes.append(1)
        return gram(W)

    dmd.orthogonal_factor(gram_of, m)
    assert len(passes) == 2


def test_pdt_reports_gram_passes():
    """Float32 parameters on a gently bending trajectory: one pass; float64 parameters: two."""
    for dtype, expected in ((torch.float32, 1), (torch.float64, 2)):
        S = trending(400, 6, 1.0).to(dtype)
        p = nn.Parameter(S[:, 0].clone())
        pdt = PDT(torch.optim.SGD([p], lr=0.0), history=5, horizon=2, start_epoch=4, interval=0, criterion="none")
        for j in range(5):
            with torch.no_grad():
                p.copy_(S[:, j])
            stats = pdt.step()
        assert stats["predicted"] and stats["gram_passes"] == expected, dtype


# --- storage ---------------------------------------------------------------------------------


def test_cpu_storage_on_cpu_is_the_same_as_same():
    results = []
    for storage in ("same", "cpu"):
        pdt, p, _ = random_pdt(torch.float32, 500, 64, "pdt", seed=1, storage=storage)
        pdt.config = dataclasses.replace(pdt.config, start_epoch=0)
        with torch.no_grad():
            p.add_(1e-2)
        stats = pdt.step()
        results.append((p.detach().clone(), stats["accepted"], pdt.snapshot_bytes))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1:] == results[1][1:]


def test_bf16_storage_halves_the_snapshots_and_still_predicts():
    pdt32, *_ = random_pdt(torch.float32, 500, 64, "pdt", seed=2)
    pdt16, p, _ = random_pdt(torch.float32, 500, 64, "none", seed=2, storage="bf16")
    assert pdt16.snapshot_bytes * 2 == pdt32.snapshot_bytes
    assert pdt16._history._storage[0].dtype == torch.bfloat16
    pdt16.config = dataclasses.replace(pdt16.config, start_epoch=0)
    with torch.no_grad():
        p.add_(1e-2)
    stats = pdt16.step()
    assert stats["predicted"] and stats["gram_passes"] == 1 and torch.isfinite(p).all()


def test_invalid_storage_names_the_argument():
    with pytest.raises(ValueError, match="storage"):
        PDT(torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1), storage="disk")


# --- the benchmark command ---------------------------------------------------------------------


def test_overhead_command_on_a_tiny_n(capsys):
    assert cli.main(["overhead", "--params", "20k", "--repeat", "2", "--naive", "--chunk-size", "3000"]) == 0
    out = capsys.readouterr().out
    for text in ("step", "copy-in + Gram update", "h x h algebra", "predict+mask+assemble", "floor", "step / floor"):
        assert text in out
    assert "naive / PDT step" in out and "Table 8" in out
    assert cli.main(["overhead", "--params", "-3"]) == 2


def test_sweep_table_and_parse_count():
    assert bench.parse_count("57M") == 57_000_000 and bench.parse_count("500k") == 500_000
    results = [bench.measure(n, history=3, horizon=2, repeat=2) for n in (1000, 4000)]
    table = bench.format_sweep(results)
    assert "4,000" in table and "ratio" in table
