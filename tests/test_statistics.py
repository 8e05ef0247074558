"""What ``PDT.step()`` returns, and the misuse warnings.

The statistics: the same keys every epoch (those of the ``PDTStatistics`` TypedDict), every value
plain JSON, whatever the epoch did. The warnings: each kind of misuse said once per PDT, and no
warning on correct use.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from test_pdt import make_data, make_model, train_epoch
from torch import nn

from torch_pdt import PDT, PDTMisuseWarning, PDTStatistics
from torch_pdt.misuse import EVERY_STEP_CALLS
from torch_pdt.statistics import PacingStatistics, RejectionCounts, scalars

KEYS = set(PDTStatistics.__annotations__)
JSON_TYPES = (bool, int, float, str, type(None))


def plain_json(value) -> bool:
    """Only JSON's own types (no tensor, numpy scalar, complex, tuple) and no NaN or infinity."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(map(plain_json, value))
    return type(value) in JSON_TYPES and not (isinstance(value, float) and not math.isfinite(value))


def check_epochs(stats: list, names: list[str]) -> None:
    """Every epoch's statistics: the TypedDict's keys, plain JSON, ``json.dumps`` without NaN, a round trip."""
    for s in stats:
        assert set(s) == KEYS, s["epoch"]
        assert set(s["rejected"]) == set(RejectionCounts.__annotations__)
        assert set(s["pacing"]) == set(PacingStatistics.__annotations__)
        assert list(s["accepted_ratio_per_param"]) == names
        assert plain_json(s), s
        assert json.loads(json.dumps(s, allow_nan=False)) == s


def lr(opt: torch.optim.Optimizer, value: float) -> None:
    for group in opt.param_groups:
        group["lr"] = value


def test_every_epoch_has_the_same_keys_and_is_plain_json():
    """Warm-up, predictions, a rollback, interval epochs, predict=False, a failed decomposition."""
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=4, start_epoch=2, interval=0, pacing="adaptive", criterion="none", model=model)
    # (loss, learning rate, predict): the 1.5 rolls back the prediction of epoch 2; the last
    # epoch's infinite learning rate makes the weights non-finite and the loss NaN.
    plan = [(1.0, 0.2, True)] * 3 + [(1.5, 0.2, True), (1.0, 0.2, True), (1.0, 0.2, False)]
    plan += [(1.0, 0.2, True), (1.0, 0.2, True), (math.nan, math.inf, True)]
    stats = []
    for loss, rate, predict in plan:
        lr(opt, rate)
        train_epoch(model, opt, data)
        stats.append(pdt.step(loss=loss, predict=predict))
    reasons = [s["reason"] for s in stats]
    expected = ["warm-up", "warm-up", None, "rolled back", "interval", "disabled by the caller", None, "interval"]
    assert reasons[:8] == expected
    assert reasons[8].startswith("decomposition failed")
    check_epochs(stats, [n for n, _ in model.named_parameters()])
    for s in stats:
        if s["predicted"]:
            assert s["accepted"] == s["numel"] and s["horizon"] >= 1 and s["rank"] >= 1 and s["gram_passes"] >= 1
            assert len(s["eigenvalues"]) == s["rank"] and all(len(z) == 2 for z in s["eigenvalues"])
        else:  # the "nothing happened" values
            assert (s["accepted"], s["accepted_ratio"], s["horizon"], s["rank"], s["eigenvalues"]) == (0, 0.0, 0, 0, [])
            assert set(s["accepted_ratio_per_param"].values()) == {0.0} and set(s["rejected"].values()) == {0}
            assert s["numel"] == pdt.numel and s["random_ratio"] is None and s["optimizer_state_untouched"] == []
    assert [s["gram_passes"] for s in stats if not s["predicted"]] == [0] * 6 + [1]  # the failure tried one
    assert stats[3]["rolled_back"] and stats[3]["pacing"]["verdict"] == "bad" and stats[3]["rollbacks"] == 1
    assert stats[-1]["pacing"]["loss"] is None  # NaN is not JSON
    assert stats[0]["pacing"]["loss"] == 1.0 and stats[0]["pacing"]["reference_loss"] is None


@pytest.mark.parametrize(
    "options",
    [
        dict(criterion="random", random_ratio=0.25),
        dict(criterion="authors", on_jump="reset"),
        dict(every_n_steps=4, kernel="eager"),
        dict(scope="layer"),
        dict(graded=True),
    ],
)
def test_the_keys_are_the_same_for_every_option(options):
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=1, model=model, **options)
    stats = []
    for _ in range(6):
        train_epoch(model, opt, data)  # 4 optimizer steps: one PDT step in step mode
        stats.append(pdt.step() if pdt.config.every_n_steps is None else pdt.last_stats)
    assert [s["predicted"] for s in stats] == [False, False, True, False, True, False]
    check_epochs(stats, [n for n, _ in model.named_parameters()])
    predicted = [s for s in stats if s["predicted"]]
    if options.get("criterion") == "random":
        assert all(s["random_ratio"] == 0.25 for s in predicted)
    if "on_jump" in options:
        assert all(s["optimizer_state_untouched"] == [] for s in stats)


def test_scalars_are_named_numbers_the_same_every_epoch():
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, model=model)
    stats = []
    for _ in range(4):
        train_epoch(model, opt, data)
        stats.append(pdt.step())
    flat = [scalars(s) for s in stats]
    assert all(set(f) == set(flat[0]) for f in flat)
    assert all(type(v) is float for f in flat for v in f.values())
    names = {"accepted_ratio", "predicted", "rejected/consistency", "pacing/horizon"}
    names.add("accepted_ratio_per_param/0.bias")
    assert names <= set(flat[0]) and not {"reason", "eigenvalues", "pacing/verdict"} & set(flat[0])
    assert (flat[0]["predicted"], flat[2]["predicted"]) == (0.0, 1.0)
    assert flat[2]["accepted"] == stats[2]["accepted"] > 0
    assert flat[2]["rejected/upper_bound"] == stats[2]["rejected"]["upper_bound"]


@pytest.mark.parametrize("criterion", ["pdt", "random"])
def test_scalar_names_vary_only_by_the_documented_ones(criterion):
    """The names outside docs/statistics.md's exceptions are the same every epoch, whatever the criterion."""
    varying = {"pacing/loss", "pacing/reference_loss", "random_ratio"}
    page = (Path(__file__).resolve().parents[1] / "docs" / "statistics.md").read_text()
    sentence = page[page.index("The names are the same") :].split(".\n")[0]
    assert all(f"`{name}`" in sentence for name in varying), sentence
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=1, model=model, criterion=criterion)
    flat = []
    for _ in range(6):
        train_epoch(model, opt, data)
        flat.append(set(scalars(pdt.step())))
    assert len({frozenset(f - varying) for f in flat}) == 1
    assert any("random_ratio" in f for f in flat) == (criterion == "random")


# --- misuse ------------------------------------------------------------------------------


def misuse(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PDTMisuseWarning)]


def test_step_mode_with_an_explicit_step_says_that_pdt_steps_itself():
    """every_n_steps=K and the user's own step() at the epoch's end: the advice is not "once per epoch"."""
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, model=model, every_n_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            train_epoch(model, opt, data)  # 4 optimizer steps: the hook steps PDT after the 4th
            pdt.step()
    said = misuse(caught)
    assert len(said) == 1 and "called by hand" in said[0], said
    assert "every_n_steps" in said[0] and "once per epoch" not in said[0], said


def test_step_again_without_an_optimizer_step_is_said_once():
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, start_epoch=0)
    train_epoch(model, opt, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdt.step()
        pdt.step()  # again, no optimizer step in between
        pdt.step()
        train_epoch(model, opt, data)
        pdt.step()
        pdt.step()
    said = misuse(caught)
    assert len(said) == 1 and "no optimizer step in between" in said[0] and "once per epoch" in said[0]
    assert caught[0].filename == __file__  # the warning points at the user's call


def test_distributed_pdt_warns_once_at_the_users_line():
    import torch.distributed as dist

    from torch_pdt.distributed import DistributedPDT

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model, data = make_model(), make_data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.warns(PDTMisuseWarning, match="tolerance") as caught:
            pdt = DistributedPDT(opt, history=3, tolerance=0.1)
        train_epoch(model, opt, data)
        with pytest.warns(PDTMisuseWarning, match="no optimizer step") as repeated:
            pdt.step()
            pdt.step()
            pdt.step()
        assert len(repeated) == 1 and caught[0].filename == repeated[0].filename == __file__
        check_epochs([pdt.last_stats], pdt.names)
    finally:
        dist.destroy_process_group()


def test_step_after_every_optimizer_step_points_to_every_n_steps():
    model, data = make_model(), make_data()
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pdt = PDT(opt, history=3, start_epoch=1000)  # the warning does not need predictions
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2 * EVERY_STEP_CALLS + 2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i % 4 :: 4]), y[i % 4 :: 4]).backward()
            opt.step()
            pdt.step()  # misuse: after every batch
            if i == EVERY_STEP_CALLS - 1:
                assert misuse(caught) == []  # not before EVERY_STEP_CALLS calls in a row
    said = misuse(caught)
    assert len(said) == 1 and "every_n_steps" in said[0] and "followed every optimizer step" in said[0]


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(tolerance=0.1), "tolerance"),
        (dict(patience=2, pacing="authors"), "patience"),
        (dict(random_ratio=0.5), "random_ratio"),
        (dict(history_after_jump="assembled", criterion="authors"), "history_after_jump"),
    ],
)
def test_an_option_the_configuration_ignores_is_said(options, named):
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.warns(PDTMisuseWarning, match=named) as caught:
        PDT(opt, **options)
    assert len(caught) == 1 and "leave it out" in str(caught[0].message)
    assert caught[0].filename == __file__


@pytest.mark.filterwarnings("error::torch_pdt.PDTMisuseWarning")
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(pacing="adaptive", tolerance=0.1, patience=2),
        dict(criterion="random", random_ratio=0.5, seed=3),  # seed is never reported
        dict(criterion="authors", pacing="authors"),
        dict(history_after_jump="assembled", seed=1),
        dict(every_n_steps=1),  # step mode after every optimizer step: the user's explicit choice
    ],
)
def test_no_warning_on_correct_use(options):
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, **options)
    for epoch in range(8):
        train_epoch(model, opt, data)
        if pdt.config.every_n_steps is None:
            pdt.step(loss=1.0 / (epoch + 1))
    assert pdt.epoch == (8 if pdt.config.every_n_steps is None else 32)


@pytest.mark.filterwarnings("error::torch_pdt.PDTMisuseWarning")
def test_updates_without_the_optimizer_and_a_closed_pdt_are_not_judged():
    """Weights a user updates by hand (full-batch GD, a toy problem) and steps after close() raise nothing."""
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    pdt = PDT(opt, history=3, start_epoch=2)
    for _ in range(2 * EVERY_STEP_CALLS):
        with torch.no_grad():
            p.mul_(0.99)
        pdt.step()
    model, data = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = PDT(opt, history=3, start_epoch=2)
    train_epoch(model, opt, data)
    pdt.step()
    pdt.close()
    pdt.step()


# --- configuration refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(forecast=""), "forecast must be one of"),
        (dict(rtol=math.inf), "rtol must be a finite float"),
        (dict(rtol=math.nan), "rtol must be a finite float"),
        (dict(tolerance=math.inf), "tolerance must be a finite float"),
    ],
)
def test_empty_and_non_finite_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        PDT(torch.optim.SGD(make_model().parameters(), lr=0.1), **options)


def test_an_unknown_option_is_named_with_the_valid_ones():
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(TypeError) as raised:
        PDT(opt, horizn=3, colour="red")
    message = str(raised.value)
    assert "'horizn' (did you mean 'horizon'?)" in message and "'colour'" in message
    assert "the options are: history, horizon, start_epoch, interval, criterion" in message


def test_an_option_from_before_the_renames_is_refused_with_its_new_name():
    opt = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"unknown PDT option 'scheduler' \(renamed 'pacing'\)"):
        PDT(opt, scheduler="adaptive")
