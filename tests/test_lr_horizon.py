"""``horizon_by="lr"``: the horizon weighted by the learning rates ahead (:mod:`torch_pdt.horizon`).

Checked on hand-worked rates (in PDT's arithmetic and the float64 twin's), bit-identical to the
default under a constant learning rate, against the float64 twin on a hand-made annealed
schedule, through a resume, and with the eager, automatic and compiled passes.
"""

from __future__ import annotations

import pytest
import torch
from test_graded import mlp
from torch import nn

from torch_pdt import PDT, compat, kernel, reference
from torch_pdt.config import PDTConfig
from torch_pdt.horizon import checked_rates, effective_horizon, learning_rate

# (rates recorded at the snapshots, oldest first; tau; tau_eff worked by hand)
HAND_WORKED = [
    # A constant rate: tau whatever the rate and tau.
    ([0.1] * 5, 5, 5),
    ([0.004] * 4, 7, 7),
    # Linear decay: the history's increments ran at 0.10..0.07 (mean 0.085); ahead 0.06, 0.05, ..., 0.02
    # (sum 0.20): 2.35 epochs of the history's motion, 2.
    ([0.10, 0.09, 0.08, 0.07, 0.06], 5, 2),
    # The increments ran at 1.0 and 0.5 (mean 0.75); ahead 0.4, 0.3, 0.2, 0.1 (sum 1.0): 1.33, 1.
    # (Averaging all three rates, the newest one's epoch included, would give 1.58, rounded 2.)
    ([1.0, 0.5, 0.4], 4, 1),
    # A step down: ahead 0.4, 0.3, 0.2, 0.1, 0 (sum 1.0) over 0.5: 2. (Extrapolating from the step after
    # the newest rate instead of from it would give 0.6 / 0.5, 1.)
    ([0.5, 0.5, 0.5, 0.4], 5, 2),
    # Clipped at 0: ahead 0.2, 0.1, then 0: 0.3 / 0.35 = 0.86, 1.
    ([0.4, 0.3, 0.2], 5, 1),
    # Nearly nothing ahead: 0.1 / 1 rounds to 0, kept at 1 (a due prediction still runs, one epoch ahead).
    ([1.0, 1.0, 1.0, 0.1], 4, 1),
    # A warm-up: ahead 0.4 + 0.5 + 0.6 over 0.2 = 7.5, never longer than tau.
    ([0.1, 0.2, 0.3, 0.4], 3, 3),
    # The history did not move by its rate (mean 0): tau.
    ([0.0, 0.0, 0.1], 4, 4),
    # Slower decay: ahead 0.085 + 0.08 + ... + 0.065 = 0.375 over 0.095 = 3.95, 4.
    ([0.1, 0.095, 0.09, 0.085], 5, 4),
]


@pytest.mark.parametrize(("rates", "tau", "expected"), HAND_WORKED)
def test_hand_worked_effective_horizons(rates, tau, expected):
    assert effective_horizon(rates, tau) == expected
    assert reference.horizon(rates, tau) == expected


@pytest.mark.parametrize("lr", [1e-5, 0.004, 0.1, 0.3, 1.0, 3.7])
def test_a_constant_rate_keeps_every_horizon(lr):
    for h in range(2, 9):
        for tau in range(1, 33):
            assert effective_horizon([lr] * h, tau) == tau


def test_the_option_is_validated_and_old_states_load_at_its_default():
    assert PDTConfig().horizon_by == "epochs"
    with pytest.raises(ValueError, match="horizon_by must be one of"):
        PDTConfig(horizon_by="steps")
    state = compat.upgrade({"config": {"criterion": "pdt"}, "epoch": 0})
    assert state["config"]["horizon_by"] == "epochs" and state["learning_rates"] == []


def test_learning_rates_are_read_checked_and_saved_rates_validated():
    w = nn.Parameter(torch.zeros(2))
    v = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.3}])
    assert learning_rate(opt) == pytest.approx(0.2)  # the mean over groups
    opt.param_groups[1]["pdt"] = False
    assert learning_rate(opt) == 0.1  # over the groups PDT manages
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="finite learning rates"):
        learning_rate(opt)
    with pytest.raises(ValueError, match="finite learning rates"):
        PDT(opt, horizon_by="lr")
    assert checked_rates([0.1, 0.2], 2, True) == [0.1, 0.2]
    for bad, message in (([0.1], "hold 2"), ([0.1, -1.0], "finite floats"), ("0.1", "finite floats")):
        with pytest.raises(ValueError, match=message):
            checked_rates(bad, 2, True)
    with pytest.raises(ValueError, match="hold 0"):
        checked_rates([0.1, 0.2], 2, False)


def train(
    pdt_kwargs: dict, schedule: list[float], state: dict | None = None, start: int = 0, dtype=torch.float64
) -> tuple[nn.Module, PDT, list[torch.Tensor], list, dict]:
    """Train an MLP with PDT for the epochs ``start..len(schedule) - 2``: epoch ``e`` runs at
    ``schedule[e]``, and the rate is set to ``schedule[e + 1]`` before ``pdt.step()`` (as a
    scheduler stepped at the end of the epoch does). Returns a checkpoint taken after the last epoch too."""
    model = mlp(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=schedule[start], momentum=0.5)
    pdt = PDT(opt, model=model, **pdt_kwargs)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        pdt.load_state_dict(state["pdt"])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g).to(dtype), torch.randn(64, 3, generator=g).to(dtype)
    seen, stats = [], []
    for epoch in range(start, len(schedule) - 1):
        opt.param_groups[0]["lr"] = schedule[epoch]
        for i in range(0, 64, 16):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
        seen.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        opt.param_groups[0]["lr"] = schedule[epoch + 1]
        stats.append(pdt.step())
    checkpoint = {"model": model.state_dict(), "opt": opt.state_dict(), "pdt": pdt.state_dict()}
    return model, pdt, seen, stats, checkpoint


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("criterion", ["pdt", "authors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_under_a_constant_rate_the_option_changes_nothing(criterion, dtype):
    """Bit-identical weights and statistics, epoch by epoch, to the default at a constant rate."""
    kwargs = dict(history=4, horizon=5, start_epoch=4, interval=0, criterion=criterion)
    runs = {by: train(kwargs | {"horizon_by": by}, [0.05] * 13, dtype=dtype) for by in ("epochs", "lr")}
    (model_e, _, seen_e, stats_e, _), (model_l, pdt_l, seen_l, stats_l, _) = runs["epochs"], runs["lr"]
    assert sum(s["predicted"] for s in stats_l) >= 7 and sum(s["accepted"] for s in stats_l) > 0
    assert stats_l == stats_e and all(s["horizon"] == 5 for s in stats_l if s["predicted"])
    assert all(torch.equal(a, b) for a, b in zip(seen_e, seen_l))
    assert torch.equal(weights(model_e), weights(model_l))
    assert pdt_l.state_dict()["learning_rates"] == [0.05] * 4


# Epoch e runs at SCHEDULE[e]; PDT records SCHEDULE[e + 1] with the snapshot after epoch e.
SCHEDULE = [0.11, 0.105, 0.1, 0.09, 0.08, 0.07]


@pytest.mark.parametrize(
    ("criterion", "rates", "expected"),
    [
        # Snapshots after epochs 1..4; ahead 0.07, 0.06, ..., 0.03 (sum 0.25) over 0.09: 2.78, 3.
        ("pdt", SCHEDULE[2:6], 3),
        # Start-of-epoch snapshots, taken after epochs 0..3; ahead 0.08, ..., 0.04 (0.30) over 0.0983: 3.05, 3.
        ("authors", SCHEDULE[1:5], 3),
    ],
)
def test_pdt_matches_the_float64_twin_on_an_annealed_schedule(criterion, rates, expected):
    h, tau = 4, 5
    kwargs = dict(history=h, horizon=tau, start_epoch=h, criterion=criterion, horizon_by="lr")
    model, pdt, seen, stats, _ = train(kwargs, SCHEDULE)
    assert stats[-1]["predicted"] and stats[-1]["accepted"] > 0
    assert stats[-1]["horizon"] == expected and stats[-1]["pacing"]["horizon"] == tau
    assert reference.horizon(rates, tau) == expected
    start = weights(mlp())  # the authors' first snapshot
    history = [start, *seen][-h - 1 : -1] if criterion == "authors" else seen[-h:]
    twin = reference.step(history, seen[-1].clone(), tau, criterion=criterion, learning_rates=rates)
    assert twin.horizon == expected
    torch.testing.assert_close(weights(model), twin.weights, rtol=0, atol=1e-12)
    assert stats[-1]["accepted"] == twin.accepted
    # The option is what made the difference: the default forecasts tau = 5 epochs ahead, elsewhere.
    fixed = reference.step(history, seen[-1].clone(), tau, criterion=criterion)
    assert fixed.horizon == tau and not torch.allclose(fixed.weights, twin.weights, rtol=0, atol=1e-9)


# A cosine-like decay over 14 epochs.
ANNEALED = [0.05 * (1 + torch.cos(torch.tensor(torch.pi * e / 14)).item()) / 2 + 1e-4 for e in range(15)]


def test_resume_is_bit_identical_and_restores_the_recorded_rates():
    kwargs = dict(history=4, horizon=6, start_epoch=4, interval=0, horizon_by="lr")
    model, pdt, _, stats, _ = train(kwargs, ANNEALED)
    horizons = [s["horizon"] for s in stats if s["predicted"]]
    assert len(set(horizons)) >= 3 and max(horizons) <= 6  # the horizon follows the decay
    _, _, _, first, checkpoint = train(kwargs, ANNEALED[:8])
    assert checkpoint["pdt"]["learning_rates"] == pytest.approx(ANNEALED[4:8], rel=0, abs=0)
    resumed, _, _, rest, _ = train(kwargs, ANNEALED, state=checkpoint, start=7)
    assert first + rest == stats
    assert torch.equal(weights(resumed), weights(model))
    # Without its rates the history cannot say what horizon to use: the state is refused.
    broken = checkpoint["pdt"] | {"learning_rates": checkpoint["pdt"]["learning_rates"][1:]}
    with pytest.raises(ValueError, match="learning_rates"):
        pdt.load_state_dict(broken)
    with pytest.raises(ValueError, match="horizon_by"):
        PDT(torch.optim.SGD(mlp().parameters(), lr=0.1), history=4, horizon=6).load_state_dict(checkpoint["pdt"])


@pytest.mark.parametrize(
    "kernel_choice",
    [
        "eager",
        "auto",
        pytest.param(
            "compiled",
            marks=pytest.mark.skipif(
                not kernel.compiles(torch.device("cpu")), reason="no C++ compiler for torch.compile"
            ),
        ),
    ],
)
def test_every_kernel_follows_the_changing_horizon(kernel_choice):
    """Each distinct tau_eff is a horizon of its own for the passes (compiled: one graph each)."""
    kwargs = dict(history=4, horizon=6, start_epoch=4, interval=0, horizon_by="lr")
    model_e, _, _, stats_e, _ = train(kwargs | {"kernel": "eager"}, ANNEALED, dtype=torch.float32)
    model, _, _, stats, _ = train(kwargs | {"kernel": kernel_choice}, ANNEALED, dtype=torch.float32)
    assert [s["horizon"] for s in stats] == [s["horizon"] for s in stats_e]
    assert len({s["horizon"] for s in stats if s["predicted"]}) >= 3
    assert [s["accepted"] for s in stats] == [s["accepted"] for s in stats_e]
    torch.testing.assert_close(weights(model), weights(model_e), rtol=1e-6, atol=1e-6)


def test_the_recorded_rates_travel_through_a_dcp_checkpoint(tmp_path):
    """``torch.distributed.checkpoint`` (one process): the rates are part of the state saved once."""
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch_pdt.distributed.dcp import DCPState

    kwargs = dict(history=4, horizon=6, start_epoch=4, interval=0, horizon_by="lr")
    _, pdt, _, _, _ = train(kwargs, ANNEALED[:7])
    dcp.save({"pdt": DCPState(pdt)}, checkpoint_id=tmp_path, no_dist=True)
    model = mlp()
    resumed = PDT(torch.optim.SGD(model.parameters(), lr=0.1), model=model, **kwargs)
    dcp.load({"pdt": DCPState(resumed)}, checkpoint_id=tmp_path, no_dist=True)
    assert resumed.state_dict()["learning_rates"] == pdt.state_dict()["learning_rates"] == ANNEALED[3:7]


@pytest.mark.parametrize(
    ("rates", "tau", "expected"),
    [
        # A constant rate near the float limit: the sums overflowed to Inf, the ratio was NaN
        # and PDT.step() raised "cannot convert float NaN to integer" after taking its snapshot.
        ([1e308] * 3, 4, 4),
        # A step down from there: ahead 1e307 (then clipped at 0) over 1e308: 0.1, 1 (was 0 / Inf: 1 by luck).
        ([1e308, 1e308, 1e307], 4, 1),
        # A warm-up from a subnormal rate: the ratio overflowed (OverflowError); never longer than tau.
        ([1e-320, 1e-320, 0.1], 4, 4),
    ],
)
def test_rates_at_the_float_limits_give_a_horizon(rates, tau, expected):
    assert effective_horizon(rates, tau) == expected
    assert reference.horizon(rates, tau) == expected


def test_a_learning_rate_near_the_float_limit_predicts():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e308)  # no gradient: the weights stay finite
    pdt = PDT(opt, history=3, horizon=4, start_epoch=3, interval=0, horizon_by="lr")
    stats = [pdt.step() for _ in range(5)]
    assert [s["horizon"] for s in stats if s["predicted"]] == [4, 4]
    assert all(torch.isfinite(p).all() for p in model.parameters())
