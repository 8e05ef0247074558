"""``jump="linear"``: the criterion judges the DMD forecast, accepted elements move to ``w + tau * delta``.

Checked on hand-worked passes (paper and authors' snapshots, graded), against the float64 reference
in a training loop, against two twins that differ only in the option, and through the compiled kernel.
"""

from __future__ import annotations

import pytest
import torch
from test_graded import mlp, train
from torch import nn

from torch_pdt import PDT, criteria, kernel, prediction, reference
from torch_pdt.passes import Plan

# Two snapshots s0, s1 of three elements; the optimizer's step is s1 - s0 = (1, -1, 0).
S = torch.tensor([[0.0, 0.0, 5.0], [1.0, -1.0, 5.0]], dtype=torch.float64)


def steps_along_delta(a: list[float], graded: bool) -> torch.Tensor:
    """Coefficients whose k-th predicted step is ``a[k-1] (s1 - s0)``, then the displacement(s)."""
    step = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    a_ = torch.tensor(a, dtype=torch.float64)
    cumulative = a_.cumsum(0)[:, None] * step
    return torch.cat([a_[:, None] * step, cumulative if graded else cumulative[-1:]])


def run_pass(steps: torch.Tensor, graded: bool, linear: bool, on_chunk=None) -> tuple[torch.Tensor, dict]:
    w = S[1].clone()
    tau = len(steps) // 2 if graded else len(steps) - 1
    plan = Plan(tau, "pdt", graded=graded, linear=linear)
    views = [(0, 0, S.clone())]
    counts = prediction.predict_pass(views, [w], steps, [0, 1], criteria.make("pdt"), plan, on_chunk=on_chunk)
    return w, counts.statistics(counts.counts(), ["w"], [3])


def test_hand_worked_the_accepted_elements_take_tau_times_the_last_step():
    """Steps (0.8, 0.7) x delta: D = 1.5 |delta| lies in (|delta|, 2 |delta|] with both steps along delta,
    so the two moving elements pass; the forecast puts them at s1 + 1.5 delta, the linear jump at s1 + 2 delta.
    The still element (delta = 0) passes no bound and stays."""
    steps = steps_along_delta([0.8, 0.7], graded=False)
    forecast, forecast_stats = run_pass(steps, graded=False, linear=False)
    landing = []
    w, stats = run_pass(steps, False, True, on_chunk=lambda i, start, accept, last, delta: landing.append(last / delta))
    assert forecast.tolist() == pytest.approx([2.5, -2.5, 5.0]) and w.tolist() == [3.0, -3.0, 5.0]
    assert stats == forecast_stats and stats["accepted"] == 2  # the same judgement, counts included
    assert landing[0][:2].tolist() == [1.0, 1.0]  # on_jump='rescale' sees the optimizer's own step
    twin = reference.apply_coefficients(S, S[1].clone(), steps, "pdt", horizon=2, linear=True)
    assert twin.weights.tolist() == [3.0, -3.0, 5.0]


def test_hand_worked_graded_lands_at_k_times_the_last_step():
    """Steps (1, 0.5, -1): the check passes at k = 2 only (see test_graded), so the element lands at s1 + 2 delta."""
    steps = steps_along_delta([1.0, 0.5, -1.0], graded=True)
    w, stats = run_pass(steps, graded=True, linear=True)
    assert w.tolist() == [3.0, -3.0, 5.0] and stats["accepted_per_horizon"] == [0, 2, 0]
    twin = reference.apply_coefficients(S, S[1].clone(), steps, "pdt", horizon=3, graded=True, linear=True)
    assert twin.weights.tolist() == [3.0, -3.0, 5.0] and twin.levels.tolist() == [2, 2, 0]


def test_hand_worked_start_of_epoch_snapshots_extrapolate_from_the_snapshot():
    """Start-of-epoch snapshots (the authors' code): the snapshot s1 is where the epoch started,
    delta = w - s1 = (0.5, -0.5, 0), and the forecast D = 1.5 (s1 - s0) is within [|delta|, 3 |delta|]
    along delta: the forecast would put the moving elements at s1 + D, the linear jump puts them at s1 + 2 delta."""
    steps = torch.tensor([[-0.75, 0.75], [-0.75, 0.75], [-1.5, 1.5]], dtype=torch.float64)  # tau = 2
    written = {}
    for linear in (False, True):
        w = torch.tensor([1.5, -1.5, 5.0], dtype=torch.float64)
        plan = Plan(2, "authors", start_of_epoch=True, linear=linear)
        prediction.predict_pass([(0, 0, S.clone())], [w], steps, [0, 1], criteria.make("authors"), plan)
        written[linear] = w.tolist()
    assert written == {False: [2.5, -2.5, 5.0], True: [2.0, -2.0, 5.0]}


def test_a_linear_jump_that_overflows_the_dtype_is_rejected():
    """The value written is the one checked: s1 + 2 delta = 75,000 overflows float16 and is kept, though the
    forecast s1 + 1.2 delta = 55,000 would not have."""
    S16 = torch.tensor([[0.0, 0.0], [25000.0, 1.0]], dtype=torch.float16)
    steps = torch.tensor([[-0.6, 0.6], [-0.6, 0.6], [-1.2, 1.2]], dtype=torch.float64)  # D = 1.2 delta, tau = 2
    for linear, expected, nonfinite in ((False, [55000.0, 2.2], 0), (True, [25000.0, 3.0], 1)):
        w = S16[1].clone()
        plan = Plan(2, "pdt", linear=linear)
        counts = prediction.predict_pass([(0, 0, S16.clone())], [w], steps, [0, 1], criteria.make("pdt"), plan)
        stats = counts.statistics(counts.counts(), ["w"], [2])
        assert w.tolist() == pytest.approx(expected, rel=1e-3) and stats["rejected"]["nonfinite"] == nonfinite


@pytest.mark.parametrize("criterion", ["pdt", "authors", "none"])
@pytest.mark.parametrize("graded", [False, True])
def test_pdt_matches_the_float64_reference(criterion, graded):
    if graded and criterion == "none":
        pytest.skip("criterion='none' passes at tau: grading is the plain jump")
    h, tau = 4, 3
    kwargs = dict(history=h, horizon=tau, start_epoch=h, criterion=criterion, graded=graded, jump="linear")
    model, _, seen, stats = train(kwargs, h + 1)
    start = torch.cat([p.detach().reshape(-1) for p in mlp().parameters()])  # the authors' first snapshot
    assert stats[-1]["predicted"] and stats[-1]["accepted"] > 0
    history = [start, *seen][-h - 1 : -1] if criterion == "authors" else seen[-h:]
    expected = reference.step(history, seen[-1].clone(), tau, criterion=criterion, graded=graded, jump="linear")
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, expected.weights, rtol=0, atol=1e-12)
    assert stats[-1]["accepted"] == expected.accepted


def test_criterion_none_is_a_plain_linear_extrapolation_of_every_element():
    """Independent of the DMD: with every element accepted, the weights are w + tau (w - w_prev)."""
    h, tau = 3, 4
    model, _, seen, stats = train(dict(history=h, horizon=tau, start_epoch=h, criterion="none", jump="linear"), h + 1)
    assert stats[-1]["accepted"] == stats[-1]["numel"]
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, seen[-1] + tau * (seen[-1] - seen[-2]), rtol=0, atol=1e-14)


@pytest.mark.parametrize("lr", [0.05, 0.0])
def test_rescale_keeps_the_velocity_of_a_linear_jump(lr):
    """A linear jump lands every element with the optimizer's own step, so on_jump='rescale' scales by
    r = delta / delta = 1; at lr 0 every step is zero (0 / 0) and the velocity is kept as well."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=4, start_epoch=3, criterion="none", jump="linear", on_jump="rescale")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        velocities = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        stats = pdt.step()
    assert stats["predicted"] and stats["accepted"] == stats["numel"]
    for p, before in zip(model.parameters(), velocities):
        assert before.abs().sum() > 0
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], before, rtol=1e-12, atol=0)


def test_the_option_changes_where_elements_go_not_which():
    """Two twins, identical up to the first prediction: the same elements jump, to different places."""
    h, tau = 3, 4
    runs = {
        jump: train(dict(history=h, horizon=tau, start_epoch=h, jump=jump), h + 1) for jump in ("forecast", "linear")
    }
    (forecast, _, seen, f_stats), (linear, _, _, l_stats) = runs["forecast"], runs["linear"]
    assert f_stats[-1]["accepted"] == l_stats[-1]["accepted"] > 0
    w = seen[-1]
    f = torch.cat([p.detach().reshape(-1) for p in forecast.parameters()])
    lin = torch.cat([p.detach().reshape(-1) for p in linear.parameters()])
    assert torch.equal(f != w, lin != w)
    moved = lin != w
    torch.testing.assert_close(lin[moved], (w + tau * (w - seen[-2]))[moved], rtol=0, atol=1e-14)
    assert not torch.allclose(f[moved], lin[moved])


def test_the_option_is_checked_and_saved():
    with pytest.raises(ValueError, match="jump must be one of"):
        PDT(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), jump="linar")
    model = nn.Linear(2, 2)
    saved = PDT(torch.optim.SGD(model.parameters(), lr=0.1), jump="linear").state_dict()
    with pytest.raises(ValueError, match="jump='linear' \\(saved\\) vs 'forecast' \\(now\\)"):
        PDT(torch.optim.SGD(model.parameters(), lr=0.1)).load_state_dict(saved)
    older = PDT(torch.optim.SGD(model.parameters(), lr=0.1)).state_dict()
    del older["config"]["jump"]  # a checkpoint from before the option: saved at its default
    PDT(torch.optim.SGD(model.parameters(), lr=0.1)).load_state_dict(older)


@pytest.mark.skipif(not kernel.compiles(torch.device("cpu")), reason="torch.compile cannot build kernels here")
def test_the_compiled_kernel_jumps_as_the_eager_pass():
    h, tau = 3, 3
    base = dict(history=h, horizon=tau, start_epoch=h, interval=0, jump="linear")
    eager, _, _, e_stats = train(base | {"kernel": "eager"}, h + 2, dtype=torch.float32)
    fused, _, _, c_stats = train(base | {"kernel": "compiled"}, h + 2, dtype=torch.float32)
    assert [s["accepted"] for s in e_stats] == [s["accepted"] for s in c_stats]
    assert sum(s["accepted"] for s in e_stats) > 0
    for a, b in zip(eager.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_measured_random_ratio_counts_a_linear_jump_that_overflows_as_rejected():
    """criterion='random' accepts the fraction 'pdt' accepts at the same step: with the linear jump, not the
    element whose forecast stays below float16's largest value (64,256) but whose s + tau delta does not
    (60,000 + 4 x 1,500). PDT and its float64 twin measure the same ratio, 2 of 3."""
    c, b = torch.tensor([73500.0, 1.0, 2.0]), torch.tensor([18500.0, 0.5, -0.3])
    snapshots = [(c - b * 0.9**k).to(torch.float16) for k in range(4)]  # a constant and a decaying mode
    twin = reference.step(snapshots, snapshots[-1].clone(), 4, criterion="random", jump="linear", write=False)
    assert twin.ratio == pytest.approx(2 / 3)
    p = nn.Parameter(snapshots[0].clone())
    options = dict(history=4, horizon=4, start_epoch=3, interval=0, criterion="random", jump="linear")
    pdt = PDT(torch.optim.SGD([p], lr=0.1), **options)
    for s in snapshots:  # the weights set by hand, epoch by epoch
        with torch.no_grad():
            p.copy_(s)
        stats = pdt.step()
    assert stats["predicted"] and stats["random_ratio"] == pytest.approx(2 / 3)
