"""Pacing rules (the ``pacing=`` option): the rules on their own, and rollback through the PDT plug-in."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from test_pdt import make_data, make_model, train_epoch, weights

from torch_pdt import PDT
from torch_pdt.pacing import AdaptivePacing, AuthorsPacing, FixedPacing

# --- the rules ---------------------------------------------------------------------------


def test_fixed_ignores_the_loss():
    s = FixedPacing(horizon=5, interval=1)
    for loss in (1.0, 10.0, math.nan, None):
        d = s.observe(loss)
        assert (d.horizon, d.interval, d.rollback, d.verdict) == (5, 1, False, None)


def test_reference_rule_shrinks_on_rises_and_never_grows():
    s = AuthorsPacing(horizon=6, interval=1)
    trace = []
    for loss in [5.0, 4.0, 4.5, 4.0, 4.2, 4.8, 3.0, 2.0, 2.5, 2.6, 1.0]:
        d = s.observe(loss)
        trace.append((d.verdict, d.horizon, d.interval))
    assert trace == [
        (None, 6, 1),
        (None, 6, 1),
        ("rise", 5, 1),  # 4.5 > 4.0 but not > 5.0: by 1
        (None, 5, 1),
        ("rise", 4, 1),  # 4.2 > 4.0, not > 4.5
        ("rise", 2, 1),  # 4.8 > 4.2 and > 4.0: by 2
        (None, 2, 1),
        (None, 2, 1),
        ("rise", 1, 1),
        ("rise", 1, 2),  # tau already 1: the interval grows
        (None, 1, 2),
    ]


def test_adaptive_rule_backs_off_and_grows_back_within_bounds():
    s = AdaptivePacing(horizon=5, interval=1, tolerance=0.1, patience=2)
    assert s.observe(2.0).verdict is None  # nothing predicted yet
    s.predicted(2.0)
    d = s.observe(2.1)  # +5 %: within tolerance, good
    assert (d.verdict, d.rollback, d.reference_loss) == ("good", False, 2.0)
    s.predicted(2.1)
    d = s.observe(2.5)  # +19 %: bad
    assert (d.verdict, d.rollback, s.horizon, s.interval, s.rollbacks) == ("bad", True, 2, 3, 1)
    s.predicted(2.0)
    assert s.observe(math.nan).rollback  # a non-finite loss is always bad
    assert (s.horizon, s.interval) == (1, 7)
    for _ in range(4):
        s.observe(1.0)  # plain epochs are not judged
    assert (s.horizon, s.interval) == (1, 7)
    for loss in [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]:
        s.predicted(loss)
        s.observe(loss * 0.9)
    assert (s.horizon, s.interval) == (5, 1)  # grown back, never past the given values
    assert s.judged == 15 and s.rollbacks == 2


def test_adaptive_interval_backoff_is_capped():
    s = AdaptivePacing(horizon=4, interval=0, tolerance=0.0, patience=1)
    for _ in range(10):
        s.predicted(1.0)
        s.observe(2.0)
    assert (s.horizon, s.interval) == (1, 15)


# --- through the plug-in -----------------------------------------------------------------


def _setup(**kwargs):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pdt = PDT(opt, **(dict(history=3, horizon=4, start_epoch=2, interval=0, pacing="adaptive") | kwargs))
    return model, opt, pdt, make_data()


def test_a_bad_prediction_is_rolled_back_to_the_optimizers_weights(caplog):
    model, opt, pdt, data = _setup(criterion="none")
    for _ in range(3):
        train_epoch(model, opt, data)
        optimizer_weights = weights(model).clone()
        stats = pdt.step(loss=1.0)
    assert stats["predicted"] and stats["accepted"] == stats["numel"] and stats["horizon"] == 4
    train_epoch(model, opt, data)
    with caplog.at_level(logging.WARNING, logger="torch_pdt"):
        stats = pdt.step(loss=1.5)
    assert stats["rolled_back"] and not stats["predicted"] and stats["reason"] == "rolled back"
    assert stats["rollbacks"] == 1 and stats["pacing"]["verdict"] == "bad"
    assert (stats["pacing"]["horizon"], stats["pacing"]["interval"]) == (2, 1)
    assert "rolled back" in caplog.text and "horizon now 2" in caplog.text
    assert torch.equal(weights(model), optimizer_weights)  # exactly, from the history
    assert all(not opt.state[p]["momentum_buffer"].any() for p in model.parameters())
    newest = pdt.state_dict()["history"]["snapshots"][0][-1]
    assert torch.equal(newest, optimizer_weights)  # the discarded epoch never entered the history
    # The backed-off interval: one plain epoch, then a prediction with the halved horizon.
    plan = []
    for _ in range(3):
        train_epoch(model, opt, data)
        plan.append(pdt.step(loss=0.9))
    assert [s["predicted"] for s in plan] == [False, True, False]
    assert plan[1]["horizon"] == 2 and plan[0]["reason"] == "interval"


# The weights are broken by hand, with no optimizer step: PDT's misuse warning is expected.
@pytest.mark.filterwarnings("ignore::torch_pdt.PDTMisuseWarning")
def test_diverged_weights_after_a_jump_are_restored():
    """The next epoch's loss is NaN: the rollback brings back finite weights."""
    model, opt, pdt, data = _setup(criterion="none", horizon=2)
    for _ in range(3):
        train_epoch(model, opt, data)
        optimizer_weights = weights(model).clone()
        pdt.step(loss=1.0)
    with torch.no_grad():
        model[0].weight.fill_(math.inf)
    stats = pdt.step(loss=math.nan)
    assert stats["rolled_back"]
    assert torch.equal(weights(model), optimizer_weights)


def test_no_rollback_without_a_prediction_that_changed_weights():
    model, opt, pdt, data = _setup(start_epoch=100)
    for loss in [1.0, 5.0, math.nan, 1e9]:
        train_epoch(model, opt, data)
        assert not pdt.step(loss=loss)["rolled_back"]


@pytest.mark.parametrize("loss", [None, "1.0", torch.ones(2), True, 1j])
def test_adaptive_needs_a_real_loss(loss):
    _, _, pdt, _ = _setup()
    with pytest.raises(ValueError, match="loss"):
        pdt.step(loss=loss)


def test_authors_pacing_shrinks_the_horizon_in_use():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=5, start_epoch=2, interval=0, pacing="reference", criterion="reference")
    data = make_data()
    horizons = []
    for loss in [3.0, 2.0, 2.5, 2.4, 2.6]:
        train_epoch(model, opt, data)
        stats = pdt.step(loss=loss)
        horizons.append(stats.get("horizon"))
    assert horizons == [0, 0, 4, 4, 2]  # 0: nothing predicted


def test_resume_with_a_pending_judgement_is_bit_identical():
    losses = [2.0, 1.8, 1.7, 1.75, 2.5, 1.6, 1.5, 1.4, 1.45, 1.3]
    data = make_data()

    def train(model, opt, pdt, epochs):
        stats = []
        for _ in range(epochs):
            train_epoch(model, opt, data)
            stats.append(pdt.step(loss=losses[pdt.epoch]))
        return stats

    full, opt, pdt, _ = _setup(on_jump="rescale", tolerance=0.02)
    stats = train(full, opt, pdt, 10)
    assert any(s["rolled_back"] for s in stats) and sum(s["predicted"] for s in stats) >= 3

    model, opt, pdt, _ = _setup(on_jump="rescale", tolerance=0.02)
    train(model, opt, pdt, 3)
    assert pdt.pacing.pending is not None  # saved while a prediction awaits its judgement
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pdt": pdt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model2, opt2, pdt2, _ = _setup(on_jump="rescale", tolerance=0.02)
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    pdt2.load_state_dict(checkpoint["pdt"])
    train(model2, opt2, pdt2, 7)
    assert torch.equal(weights(full), weights(model2))


def test_the_pacing_rule_is_part_of_the_saved_configuration():
    saved = _setup()[2].state_dict()
    with pytest.raises(ValueError, match="pacing='adaptive' \\(saved\\) vs 'fixed'"):
        _setup(pacing="fixed")[2].load_state_dict(saved)


def test_earlier_names_still_work():
    """The option value of the authors' rule under its earlier name, and a checkpoint in earlier names."""
    runs = []
    for name in ("reference", "authors"):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        pdt = PDT(opt, history=3, horizon=5, start_epoch=2, interval=0, pacing=name, criterion=name)
        assert (pdt.config.pacing, pdt.config.criterion, pdt.pacing.name) == ("authors", "authors", "authors")
        for loss in [3.0, 2.0, 2.5, 2.4]:
            train_epoch(model, opt, make_data())
            pdt.step(loss=loss)
        runs.append((weights(model), pdt.state_dict()))
    assert torch.equal(runs[0][0], runs[1][0])
    old = runs[0][1] | {"config": runs[0][1]["config"] | {"criterion": "reference", "scheduler": "reference"}}
    pdt.load_state_dict(old)  # a checkpoint that says "reference" loads into "authors"
