"""The fused passes (torch_pdt.kernel) against PDT's eager pass and a float64 reference.

Compiles are the cost here (seconds each on a loaded CPU), so the tensors are tiny and each
test reuses the graphs of the ones before it where it can.
"""

import math

import pytest
import torch
from torch import nn

from torch_pdt import PDT, kernel, prediction, reference, staging
from torch_pdt.criteria import CRITERIA, extremes
from torch_pdt.passes import Plan
from torch_pdt.snapshots import SnapshotHistory

H, TAU = 3, 3
APPLIED = {
    "pdt": {"consistency", "lower_bound", "upper_bound"},
    "authors": {"consistency", "lower_bound", "upper_bound"},
    "accel_only": {"lower_bound", "upper_bound"},
    "consistency_only": {"consistency"},
    "none": set(),
}

needs_compiler = pytest.mark.skipif(
    not kernel.compiles(torch.device("cpu")), reason="torch.compile cannot build kernels here (no C++ compiler)"
)


def _trajectory(sizes, dtype, epochs, seed=0):
    """Training-like weights (drift decaying 0.8 per epoch, plus noise), float64, per epoch."""
    g = torch.Generator().manual_seed(seed)
    w = [0.05 * torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    v = [1e-2 * torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    out = []
    for _ in range(epochs):
        for wi, vi in zip(w, v):
            wi += vi + 3e-3 * torch.randn(wi.shape, generator=g, dtype=torch.float64)
            vi *= 0.8
        out.append([wi.to(dtype) for wi in w])
    return out


def _reference(rows, param, steps, criterion, start_of_epoch, tau, origin_is_param=False):
    """Float64 decisions (torch_pdt.reference, the readable twin), new weights and rounding scale."""
    S = torch.stack([r.to(torch.float64) for r in rows])
    new = (param.to(torch.float64) if origin_is_param else S[-1]) + steps[tau] @ S
    # (With rounded snapshots the kernel starts from the weights, the twin from the newest
    # snapshot: the same decisions but for overflow, which these weights never reach.)
    accept = reference.apply_coefficients(S, param, steps, criterion, horizon=tau, start_of_epoch=start_of_epoch).accept
    # The size of the terms the float32 displacement sums: its rounding is a few units of this.
    X = torch.cat([S[:-1] - S[-1], S[-1:]])
    terms = kernel.ring_coefficients(steps, torch.float64, S.device)[tau].abs() @ X.abs()
    return accept, new, terms


def _run_pdt(criterion, sizes, dtype=torch.float32, forecast=None, epochs=H + 3, storage="same"):
    """Step a PDT over a trajectory; at every pass, run the fused passes on copies first.

    Returns, per prediction: (eager result, fused per-parameter accepted, fused totals, eager
    weights after, fused weights after, float64 reference (accept, new, terms) per parameter,
    weights before).
    """
    params = [nn.Parameter(torch.zeros(n, dtype=dtype)) for n in sizes]
    opt = torch.optim.SGD(params, lr=0.0)
    pdt = PDT(
        opt, history=H, horizon=TAU, start_epoch=H, interval=0, criterion=criterion, forecast=forecast, storage=storage
    )
    history = pdt._history
    fused = kernel.FusedPasses(*history.layout())
    start_of_epoch = pdt.config.start_of_epoch
    log = []
    eager_pass = pdt._pass

    def both(steps, plan):
        crit = plan.criterion
        before = [p.detach().clone().view(-1) for p in params]
        flats = [b.clone() for b in before]
        storage_rows = [s.clone() for s in history.layout()[0]]
        rows = history.rows()
        per_param, totals = _fused_counts(fused.predict(flats, rows, steps, plan))
        assert all(torch.equal(a, b) for a, b in zip(storage_rows, history.layout()[0])), "storage changed"
        refs = []
        for (bucket, offset, numel), p in zip(history.layout()[1], params):
            ring = [history.layout()[0][bucket][j, offset : offset + numel] for j in rows]
            origin_is_param = not history.exact and not start_of_epoch
            refs.append(_reference(ring, p.detach().view(-1), steps, crit, start_of_epoch, TAU, origin_is_param))
        result = eager_pass(steps, plan)
        log.append((result, per_param, totals, [p.detach().clone() for p in params], flats, refs, before))
        return result

    pdt._pass = both
    for weights in _trajectory(sizes, dtype, epochs):
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        pdt.step()
    assert log, "no prediction ran"
    return log


def _fused_counts(counts):
    """A pass's counts as the fused pass counts them: per parameter, and [finite, consistency, lower,
    upper, accepted]."""
    passing = counts.passing
    return counts.accepted, torch.cat([passing[3:], passing[:3], counts.accepted.sum()[None]])


def _counts(result):
    """The eager pass's statistics as the fused totals' [finite, consistency, lower, upper, accepted]."""
    n, rejected = result["numel"], result["rejected"]
    return (
        [n - rejected["nonfinite"]]
        + [n - rejected[c] for c in ("consistency", "lower_bound", "upper_bound")]
        + [result["accepted"]]
    )


def _check(log, applied, rtol):
    for result, per_param, totals, eager_after, fused_after, refs, _ in log:
        n = result["numel"]
        counts = totals.tolist()
        expected = _counts(result)
        for k, check in enumerate(("consistency", "lower_bound", "upper_bound"), start=1):
            if check not in applied:
                counts[k] = expected[k] = n  # not made: the eager pass reports no rejections
        assert counts == expected
        ratios = result["accepted_ratio_per_param"].values()
        assert per_param.tolist() == [round(r * p.numel()) for r, p in zip(ratios, eager_after)]
        for e, f, (accept, new, terms) in zip(eager_after, fused_after, refs):
            e, f = e.view(-1).double(), f.view(-1).double()
            # Both round the same float64 forecast: within a few units of the weight and of
            # the terms the displacement sums (the multiply-adds run in another order).
            scale = rtol * (e.abs() + terms)
            assert bool(((f - e).abs() <= scale).all()), float(((f - e).abs() / scale).max())
            assert bool(((f - new).abs()[accept] <= scale[accept]).all())


@needs_compiler
@pytest.mark.parametrize("criterion", ["pdt", "accel_only", "consistency_only", "authors", "none"])
def test_fused_passes_match_the_eager_pass(criterion):
    # One large parameter (its own call) for "pdt"; small ones share a staged call.
    sizes = [staging.SMALL + 5, 7, 1, 300] if criterion == "pdt" else [7, 1, 300]
    applied = APPLIED[criterion]
    for forecast in ("paper", "increment"):
        log = _run_pdt(criterion, sizes, forecast=forecast)
        _check(log, applied, rtol=4 * torch.finfo(torch.float32).eps)
        assert any(r["accepted"] for r, *_ in log)
        assert any(r["accepted"] < r["numel"] for r, *_ in log) == bool(applied)  # the mask decides


def _consistent_by_keys(steps, delta):
    keys = [kernel._order_key(s) for s in steps]
    low, high = keys[0], keys[0]
    for key in keys[1:]:
        low, high = torch.minimum(low, key), torch.maximum(high, key)
    return kernel._same_sign(low, high, delta)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_test_by_integer_keys_decides_as_sign_on_every_special_value(dtype):
    tiny = torch.finfo(dtype).tiny
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, tiny / 4, -tiny / 4, tiny, -1.5, 2.0]
    values = torch.tensor(specials, dtype=dtype)
    # Every delta against every three steps, decided as the eager pass does (criteria.py).
    d, a, b, c = torch.meshgrid(values, values, values, values, indexing="ij")
    delta, steps = d.reshape(-1), [a.reshape(-1), b.reshape(-1), c.reshape(-1)]
    expected = CRITERIA["consistency_only"](*extremes(torch.stack(steps)), None, delta, 3)["consistency"]
    torch.testing.assert_close(_consistent_by_keys(steps, delta), expected)
    compiled = torch.compile(_consistent_by_keys, dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled(steps, delta), expected)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_fused_passes_match_the_eager_pass_in_every_parameter_dtype(dtype):
    log = _run_pdt("pdt", [7, 1, 300], dtype=dtype)
    _check(log, APPLIED["pdt"], rtol=4 * torch.finfo(kernel.work_dtype(dtype)).eps + 2 * torch.finfo(dtype).eps)


@needs_compiler
def test_bf16_storage_forecasts_from_the_parameters():
    log = _run_pdt("pdt", [7, 1, 300], storage="bf16")
    _check(log, APPLIED["pdt"], rtol=4 * torch.finfo(torch.float32).eps)


def _tensors(sizes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dtype) for n in sizes]


@needs_compiler
@pytest.mark.parametrize("scope", ["model", "layer"])
def test_copy_in_matches_the_eager_history_and_never_recompiles_as_the_ring_turns(scope):
    sizes = [staging.SMALL + 5, 7, 1, 300]
    eager, fused = (SnapshotHistory(_tensors(sizes, torch.float32, 0), H, scope=scope) for _ in range(2))
    eager_passes = prediction.EagerPasses(*eager.layout(), scope=scope)
    fused_passes = kernel.FusedPasses(*fused.layout(), scope=scope)
    flats = _tensors(sizes, torch.float32, 1)
    fused.push(flats, fused_passes)  # compile before counting
    eager.push(flats, eager_passes)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for epoch in range(2, 2 * H + 2):
        flats = _tensors(sizes, torch.float32, epoch)
        eager.push(flats, eager_passes)
        fused.push(flats, fused_passes)
        assert all(torch.equal(a, b) for a, b in zip(eager.layout()[0], fused.layout()[0]))
        torch.testing.assert_close(fused.grams(), eager.grams(), rtol=1e-12, atol=0.0)
    assert fused.grams().shape[0] == (len(sizes) if scope == "layer" else 1)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@needs_compiler
def test_prediction_never_recompiles_as_the_ring_turns():
    _run_pdt("pdt", [staging.SMALL + 5, 7, 1, 300], epochs=H + 1)  # compiled here (or by the tests above)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    log = _run_pdt("pdt", [staging.SMALL + 5, 7, 1, 300], epochs=3 * H)
    assert len(log) >= 2 * H
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_small_parameters_share_one_call_per_pass():
    history = SnapshotHistory(_tensors([1] * 10_000 + [staging.SMALL, 3, 4], torch.float32, 0), H)
    groups = kernel.FusedPasses(*history.layout(), use_compiled=False).groups
    assert [len(g.members) for g in groups] == [10_000, 1, 2]


LONG_RUN = [staging.SMALL + 5] + [7, 1, 30] * 12  # 36 small tensors after a large one


def test_the_eager_passes_stage_only_a_long_run_of_small_tensors():
    history = SnapshotHistory(_tensors(LONG_RUN + [staging.SMALL, 3, 4], torch.float32, 0), H)
    groups = prediction.EagerPasses(*history.layout()).groups
    assert prediction.EAGER_RUN <= 36 and [len(g.members) for g in groups] == [1, 36, 1, 1, 1]


@needs_compiler
def test_fused_passes_match_the_eager_pass_that_stages_a_long_run():
    _check(_run_pdt("pdt", LONG_RUN), APPLIED["pdt"], rtol=4 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("graded", [False, True])
def test_the_eager_pass_decides_a_staged_run_as_it_decides_each_tensor_alone(monkeypatch, graded):
    """Counts, written weights and what on_jump's hook is handed, per parameter, with the run staged
    and with every tensor in chunks of its own."""
    history = SnapshotHistory(_tensors(LONG_RUN, torch.float32, 0), H)
    for weights in _trajectory(LONG_RUN, torch.float32, H):
        history.push(weights, prediction.EagerPasses(*history.layout()))
    steps = torch.tensor([[0.5, -1.5, 1.0], [0.25, -0.75, 0.5], [1.0, -3.0, 2.0], [1.75, -5.25, 3.5]]).double()
    if graded:
        steps = torch.cat([steps[:3], steps[:3].cumsum(0)])
    plan = Plan(TAU, "pdt", newest_is_param=True, graded=graded)

    def run(least):
        monkeypatch.setattr(prediction, "EAGER_RUN", least)
        passes = prediction.EagerPasses(*history.layout())
        handed = {i: [] for i in range(len(LONG_RUN))}
        flats = [w.clone() for w in weights]
        counts = passes.predict(
            flats, history.rows(), steps, plan, on_chunk=lambda i, s, *a: handed[i].append((s, *(t.clone() for t in a)))
        )
        return passes, counts, flats, handed

    (staged, *one), (alone, *other) = run(32), run(10**9)
    assert len(staged.groups) == 2 and len(alone.groups) == len(LONG_RUN)
    (counts, flats, handed), (counts_alone, flats_alone, handed_alone) = one, other
    assert torch.equal(counts.accepted, counts_alone.accepted) and counts.accepted.sum() > 0
    assert torch.equal(counts.passing, counts_alone.passing)
    assert graded == (counts.per_horizon is not None) and (
        not graded or torch.equal(counts.per_horizon, counts_alone.per_horizon)
    )
    # The matrix product rounds by chunk shape (and by thread count): within a few units of the
    # rounding of the largest weights, whose terms a small weight's forecast sums.
    eps, scale = torch.finfo(torch.float32).eps, max(float(w.abs().max()) for w in weights)
    for i in range(len(LONG_RUN)):
        torch.testing.assert_close(flats[i], flats_alone[i], rtol=4 * eps, atol=4 * eps * scale)
        assert [a[0] for a in handed[i]] == [0]  # from its own start, in one piece (views of work buffers: cloned)
        for mine, theirs in zip(handed[i][0][1:], handed_alone[i][0][1:]):
            torch.testing.assert_close(mine, theirs, rtol=4 * eps, atol=4 * eps * scale)


def test_the_uncompiled_functions_agree_with_the_compiled_ones_bit_for_bit_in_decisions():
    """The eager path of the kernel (the same functions, uncompiled) as a second reference."""
    sizes = [7, 1, 300]
    for use_compiled in (False, True) if kernel.compiles(torch.device("cpu")) else (False,):
        history = SnapshotHistory(_tensors(sizes, torch.float32, 0), H)
        fused = kernel.FusedPasses(*history.layout(), use_compiled=use_compiled)
        for epoch, weights in enumerate(_trajectory(sizes, torch.float32, H)):
            history.push(weights, fused)
        steps = torch.tensor([[0.5, -1.5, 1.0], [0.25, -0.75, 0.5], [1.0, -3.0, 2.0], [1.75, -5.25, 3.5]])
        flats = [w.clone() for w in weights]
        per_param, totals = _fused_counts(fused.predict(flats, history.rows(), steps.double(), Plan(3, "pdt")))
        if not use_compiled:
            expected = (per_param, totals, flats)
        else:
            assert torch.equal(per_param, expected[0]) and torch.equal(totals, expected[1])
            for a, b in zip(flats, expected[2]):
                torch.testing.assert_close(a, b, rtol=4 * torch.finfo(torch.float32).eps, atol=1e-9)


@needs_compiler
def test_decisions_differ_from_the_eager_pass_and_the_float64_reference_within_the_bound():
    n = 1 << 20
    log = _run_pdt("pdt", [n], epochs=H + 2)
    for result, _, totals, eager_after, fused_after, refs, before in log:
        fused = fused_after[0] != before[0]  # accepted (a forecast equal to the weight is immaterial)
        eager = eager_after[0].view(-1) != before[0]
        reference = refs[0][0] & (refs[0][1] != before[0].double())
        assert 0.05 < result["accepted"] / n < 0.95
        for other in (eager, reference):
            assert int((fused != other).sum()) <= kernel.DECISION_BOUND * n
        assert abs(int(totals[4]) - result["accepted"]) <= kernel.DECISION_BOUND * n


def _train(kernel_name, sizes, dtype=torch.float32, criterion="pdt", epochs=H + 4, history=H, horizon=TAU, **kwargs):
    """PDT with the given kernel over a trajectory: its statistics and final weights (the optimizer, SGD
    with momentum, never steps: its velocities are random, for ``on_jump`` to scale)."""
    params = [nn.Parameter(torch.zeros(n, dtype=dtype)) for n in sizes]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    for p in params:
        optimizer.state[p]["momentum_buffer"] = torch.randn(p.shape, generator=g).to(dtype)
    pdt = PDT(
        optimizer,
        history=history,
        horizon=horizon,
        start_epoch=history,
        interval=0,
        criterion=criterion,
        kernel=kernel_name,
        **kwargs,
    )
    stats = []
    for weights in _trajectory(sizes, dtype, epochs):
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        stats.append(pdt.step())
    return pdt, stats, params


def _same_run(a, b, rtol):
    (_, stats_a, params_a), (_, stats_b, params_b) = a, b
    assert [s["predicted"] for s in stats_a] == [s["predicted"] for s in stats_b] and stats_a[-1]["predicted"]
    for x, y in zip(stats_a, stats_b):
        for key in ("accepted", "rejected", "accepted_ratio_per_param", "rank", "accepted_per_horizon"):
            assert x.get(key) == y.get(key), key
        torch.testing.assert_close(torch.tensor(x.get("eigenvalues", [])), torch.tensor(y.get("eigenvalues", [])))
    for p, q in zip(params_a, params_b):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-7)


@needs_compiler
@pytest.mark.parametrize("criterion", ["pdt", "authors"])
def test_pdt_with_the_compiled_kernel_runs_as_with_the_eager_one(criterion, caplog):
    sizes = [staging.SMALL + 5, 7, 1, 300]
    with caplog.at_level("INFO", logger="torch_pdt"):
        compiled = _train("compiled", sizes, criterion=criterion)
    assert "compiled passes" in caplog.text
    _same_run(compiled, _train("eager", sizes, criterion=criterion), rtol=1e-6)
    assert compiled[0]._passes.compiled is not None


@needs_compiler
@pytest.mark.parametrize(
    "options",
    [
        dict(scope="layer"),
        dict(graded=True, criterion="accel_only"),
        dict(scope="layer", graded=True, criterion="authors"),
        dict(graded=True, criterion="consistency_only", jump="linear"),
        dict(graded=True),
        dict(graded=True, criterion="none", dtype=torch.float64),
    ],
    ids=["layer", "graded", "layer-graded-authors", "graded-linear", "graded-pdt", "graded-none-float64"],
)
def test_layerwise_and_graded_run_compiled_as_eager(options):
    """One operator per tensor and the graded landing: the same decisions, counts per horizon and weights
    as the eager passes."""
    sizes = [staging.SMALL + 5, 7, 1, 300]
    compiled = _train("compiled", sizes, **options)
    eager = _train("eager", sizes, **options)
    assert compiled[0]._passes.compiled.scope == options.get("scope", "model")
    _same_run(compiled, eager, rtol=1e-6)
    if options.get("criterion") in ("accel_only", "authors", "consistency_only"):  # some land short of tau
        assert any(any(s["accepted_per_horizon"][:-1]) for s in compiled[1] if s["predicted"])


def test_auto_runs_eager_where_the_kernel_does_not_apply_or_pay_off(caplog):
    with caplog.at_level("INFO", logger="torch_pdt"):
        pdt, _, _ = _train("auto", [7, 300], epochs=1)
    assert pdt._passes.compiled is None and "eager passes (a small model)" in caplog.text
    for kwargs in ({"criterion": "random"}, {"on_jump": "reset"}):  # compiled passes for every option
        pdt, _, _ = _train("auto", [1] * kernel.AUTO_MIN_TENSORS, epochs=1, **kwargs)
        assert pdt._passes.compiled is not None
    with pytest.raises(ValueError, match="kernel must be one of"):
        _train("fast", [7], epochs=1)
    # A long graded horizon compiles too: its graph does not grow with tau.
    params = [nn.Parameter(torch.zeros(3)) for _ in range(kernel.AUTO_MIN_TENSORS)]
    assert PDT(torch.optim.SGD(params, lr=0.0), history=3, horizon=130, graded=True)._passes.compiled is not None


def _consistent_at_every_horizon(steps, delta):
    horizons = torch.arange(1, len(steps) + 1, dtype=torch.int32)[:, None]
    consistent = kernel._consistent_up_to(torch.stack(steps), delta, horizons)
    return torch.stack([consistent(k) for k in range(1, len(steps) + 1)])


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_graded_sign_test_in_closed_form_decides_as_the_running_extremes_on_every_special_value(dtype):
    """Eq. 7 for every horizon at once (two minima over the steps) against the eager pass's sign test of
    the first k steps' extremes, for every k, on every delta and every three steps of special values."""
    tiny = torch.finfo(dtype).tiny
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, tiny / 4, -tiny / 4, tiny, -1.5, 2.0]
    values = torch.tensor(specials, dtype=dtype)
    d, a, b, c = torch.meshgrid(values, values, values, values, indexing="ij")
    delta, steps = d.reshape(-1), [a.reshape(-1), b.reshape(-1), c.reshape(-1)]
    rule = CRITERIA["consistency_only"]
    expected = torch.stack(
        [rule(*extremes(torch.stack(steps[:k])), None, delta, k)["consistency"] for k in range(1, 4)]
    )
    torch.testing.assert_close(_consistent_at_every_horizon(steps, delta), expected)
    compiled = torch.compile(_consistent_at_every_horizon, dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled(steps, delta), expected)


@needs_compiler
@pytest.mark.parametrize(
    "options",
    [
        dict(criterion="random"),
        dict(on_jump="reset"),
        dict(on_jump="rescale"),
        dict(on_jump="rescale", graded=True, criterion="accel_only"),
        dict(on_jump="rescale", jump="linear", scope="layer"),
    ],
    ids=["random", "reset", "rescale", "rescale-graded", "rescale-linear-layer"],
)
def test_random_and_on_jump_run_compiled_as_eager(options, monkeypatch):
    """The random criterion draws the eager pass's numbers (CPU generators draw in element order,
    whatever the calls), and on_jump scales the same velocities, in calls of 1,000 elements."""
    monkeypatch.setattr(kernel, "CALL_CHUNK", 1000)
    sizes = [staging.SMALL + 5, 7, 1, 300]
    compiled, eager = _train("compiled", sizes, **options), _train("eager", sizes, **options)
    assert compiled[0]._passes.compiled is not None
    _same_run(compiled, eager, rtol=1e-6)
    for p, q in zip(compiled[2], eager[2]):
        a, b = compiled[0].optimizer.state[p]["momentum_buffer"], eager[0].optimizer.state[q]["momentum_buffer"]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        if options.get("on_jump") == "reset":
            assert torch.equal(a == 0, b == 0)


@needs_compiler
def test_the_graded_pass_compiles_once_for_every_horizon_and_in_chunks_decides_as_eager(monkeypatch):
    """One graph serves every tau (compile time independent of it); chunks of the graded pass (here of
    100 elements, across a large parameter and a staged group) decide as the eager pass."""
    sizes = [staging.SMALL + 5, 7, 1, 300]
    _train("compiled", sizes, graded=True, horizon=2)  # compiled here (or by the tests above)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    monkeypatch.setattr(kernel, "CALL_CHUNK", 100)
    for horizon in (3, 7):
        compiled = _train("compiled", sizes, graded=True, horizon=horizon)
        _same_run(compiled, _train("eager", sizes, graded=True, horizon=horizon), rtol=1e-6)
    # At most one more graph: a chunk's storage offset is not zero (dynamic shapes specialise on it).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= graphs + 1


@needs_compiler
def test_auto_compiles_for_many_tensors_and_falls_back_to_eager_when_compiling_fails(caplog):
    sizes = [3] * kernel.AUTO_MIN_TENSORS
    # A history length no other test compiles for, and no compiler: every compile fails.
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        with caplog.at_level("INFO", logger="torch_pdt"):
            failed = _train("auto", sizes, history=H + 3)
    assert "compiled passes" in caplog.text and "could not compile" in caplog.text
    assert failed[0]._passes.compiled is None
    _same_run(failed, _train("eager", sizes, history=H + 3), rtol=0.0)


@needs_compiler
def test_empty_tensors_in_a_bucket_count_nothing():
    history = SnapshotHistory(_tensors([0, 7, 0, 300, 0], torch.float32, 0), H)
    fused = kernel.FusedPasses(*history.layout())
    for weights in _trajectory([0, 7, 0, 300, 0], torch.float32, H):
        history.push(weights, fused)
    steps = torch.tensor([[0.5, -1.5, 1.0], [0.25, -0.75, 0.5], [1.0, -3.0, 2.0], [1.75, -5.25, 3.5]]).double()
    counts = fused.predict([w.clone() for w in weights], history.rows(), steps, Plan(3, "pdt"))
    per_param, totals = _fused_counts(counts)
    assert per_param[[0, 2, 4]].tolist() == [0, 0, 0] and int(per_param.sum()) == int(totals[4])


@needs_compiler
def test_a_compiled_run_resumed_from_its_state_dict_continues_bit_identically():
    sizes = [staging.SMALL + 5, 7, 1, 300]
    whole = _train("compiled", sizes, epochs=H + 4)
    params = [nn.Parameter(torch.zeros(n)) for n in sizes]
    opt = torch.optim.SGD(params, lr=0.0)
    first = PDT(opt, history=H, horizon=TAU, start_epoch=H, interval=0, kernel="compiled")
    trajectory = _trajectory(sizes, torch.float32, H + 4)
    for epoch, weights in enumerate(trajectory):
        if epoch == H + 1:
            state = first.state_dict()
            first = PDT(opt, history=H, horizon=TAU, start_epoch=H, interval=0, kernel="compiled")
            first.load_state_dict(state)
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        first.step()
    for p, q in zip(params, whole[2]):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_overflow_threshold_is_where_the_cast_becomes_inf(dtype):
    limit = torch.tensor(kernel.overflow_threshold(dtype), dtype=torch.float32)
    below = torch.nextafter(limit, torch.tensor(0.0))
    assert torch.isinf(limit.to(dtype)) and torch.isinf((-limit).to(dtype))
    assert torch.isfinite(below.to(dtype)) and torch.isfinite((-below).to(dtype))


@needs_compiler
@pytest.mark.parametrize("kernel_choice", ["eager", "compiled"])
def test_a_forecast_that_overflows_float16_is_rejected_by_both_passes(kernel_choice):
    """Every weight finite (at most 55,000) but the linear trend's forecast beyond float16's 65,504."""
    p = nn.Parameter(torch.zeros(1000, dtype=torch.float16))
    pdt = PDT(
        torch.optim.SGD([p], lr=0.0),
        history=4,
        horizon=5,
        start_epoch=4,
        interval=0,
        criterion="none",
        kernel=kernel_choice,
    )
    for e in range(6):
        with torch.no_grad():
            p.fill_(30000 + 5000 * e)
        stats = pdt.step()
    assert stats["predicted"] and stats["accepted"] == 0 and stats["rejected"]["nonfinite"] == 1000
    assert torch.isfinite(p).all()


def _smooth(sizes, epochs, seed=0):
    """A drift decaying 0.8 per epoch, float32: differences parallel but for rounding (about 1e-5
    of them), a basis so ill-conditioned that the first Cholesky-QR pass is not enough (the second
    runs), and forecasts well inside the criterion's bounds."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    v = [1e-2 * torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    return [[(wi + vi * (1 - 0.8**e) / 0.2).float() for wi, vi in zip(w, v)] for e in range(epochs)]


def _step_along_smooth(pdt, params, sizes):
    """PDT's statistics at each of ``H + 3`` epochs of :func:`_smooth`, the parameters set to each."""
    stats = []
    for weights in _smooth(sizes, H + 3):
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        stats.append(pdt.step())
    return stats


@needs_compiler
@pytest.mark.parametrize("scope", ["model", "layer"])
def test_the_second_gram_pass_matches_the_eager_one(scope):
    sizes = [staging.SMALL + 5, 7, 0, 1, 300]
    epochs = _smooth(sizes, H + 2)
    history = SnapshotHistory(epochs[0], H, scope=scope)
    eager = prediction.EagerPasses(*history.layout(), chunk_size=1 << 10, scope=scope)
    for flats in epochs[1:]:
        history.push(flats, eager)
    fused = kernel.FusedPasses(*history.layout(), scope=scope)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(H, H, generator=g, dtype=torch.float64) * 1e3  # entries like 1/sigma_min
    if scope == "layer":
        W = [None if i == 1 else W * (i + 1) for i in range(len(sizes))]
    expected = eager.gram(history.rows(), W)
    got = fused.gram(history.rows(), W)
    if scope == "layer":
        assert not got[1].any()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


@needs_compiler
@pytest.mark.parametrize("scope", ["model", "layer"])
def test_a_smooth_history_takes_the_second_gram_pass_compiled_as_eager(scope):
    sizes = [staging.SMALL + 5, 7, 1, 300]
    runs = []
    for kernel_name in ("compiled", "eager"):
        params = [nn.Parameter(torch.zeros(n)) for n in sizes]
        optimizer = torch.optim.SGD(params, lr=0.0)
        pdt = PDT(optimizer, history=H, horizon=TAU, start_epoch=H, interval=0, kernel=kernel_name, scope=scope)
        calls = []
        if pdt._passes.compiled is not None:  # count the compiled second passes
            second = pdt._passes.compiled._second
            pdt._passes.compiled._second = lambda *a, second=second: calls.append(1) or second(*a)
        stats = _step_along_smooth(pdt, params, sizes)
        assert all(s["gram_passes"] == 2 for s in stats if s["predicted"]) and stats[-1]["predicted"]
        runs.append((pdt, stats, params, calls))
    assert runs[0][3] and not runs[1][3]
    _same_run(runs[0][:3], runs[1][:3], rtol=1e-6)


@needs_compiler
def test_a_second_gram_pass_that_fails_to_compile_runs_eager_under_auto_and_raises_under_compiled(caplog):
    sizes = [3] * kernel.AUTO_MIN_TENSORS

    def run(kernel_name, break_second):
        params = [nn.Parameter(torch.zeros(n)) for n in sizes]
        optimizer = torch.optim.SGD(params, lr=0.0)
        pdt = PDT(optimizer, history=H, horizon=TAU, start_epoch=H, interval=0, kernel=kernel_name)

        def fails(*args):
            raise RuntimeError("no compiler for the second pass")

        if break_second:
            pdt._passes.compiled._second = fails
        return pdt, _step_along_smooth(pdt, params, sizes), params

    with caplog.at_level("WARNING", logger="torch_pdt"):
        failed = run("auto", True)
    assert "could not compile" in caplog.text and "second pass" in caplog.text
    assert failed[0]._passes.compiled is None and all(s["gram_passes"] == 2 for s in failed[1] if s["predicted"])
    _same_run(failed, run("eager", False), rtol=1e-6)
    with pytest.raises(RuntimeError, match="second pass"):
        run("compiled", True)
