"""Weight averaging and stacking: LAWA against a hand-computed mean, PDT evaluated on averages,
PDT on schedule-free at the chosen point, and the per-step schedules of the modern recipes."""

import math

import pytest
import torch
from torch import nn

from pdt_bench import tasks
from pdt_bench.methods import LAWA_K, make_schedule, parse_method
from pdt_bench.peers import LAWA
from pdt_bench.train import RunConfig, run
from torch_pdt import PDT

TINY = tasks.TaskOptions(tiny=True)
QUICK = dict(epochs=4, history=2, start_epoch=1, interval=0, task_options=TINY)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten().double() for t in model.state_dict().values() if t.is_floating_point()])


def test_lawa_is_the_mean_of_the_last_k_checkpoints_parameters_and_batch_norm_statistics():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    lawa = LAWA(model, k=3)
    seen = []
    for e in range(5):
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(torch.randn_like(t))
        model[1].num_batches_tracked.fill_(10 * e)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        lawa.update(model)
        window = seen[-3:]
        for name, value in lawa.module.state_dict().items():
            if value.is_floating_point():
                by_hand = sum(c[name] for c in window) / len(window)
                torch.testing.assert_close(value, by_hand)
            else:
                assert value.item() == 10 * e  # a count is the newest checkpoint's, not a mean
    # The live model is only read.
    assert all(torch.equal(v, seen[-1][k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="k >= 1"):
        LAWA(model, k=0)


def _trajectory(method: str) -> tuple[dict, list[torch.Tensor]]:
    weights = []
    r = run(RunConfig("mnist1d-mlp", method, **QUICK), on_weights=lambda e, m: weights.append(_flat(m)))
    return r, weights


@pytest.mark.parametrize(("live", "averaged"), [("baseline", "lawa@k=2"), ("pdt", "pdt-lawa@k=2")])
def test_lawa_evaluates_the_mean_of_the_live_epochs_while_training_continues_on_them(live, averaged):
    r_live, w_live = _trajectory(live)
    r_avg, w_avg = _trajectory(averaged)
    # Training is untouched: the same batches give the same losses (PDT accepts the same elements).
    assert [e["batch_loss"] for e in r_avg["epochs"]] == [e["batch_loss"] for e in r_live["epochs"]]
    if live == "pdt":
        assert sum(e["pdt"]["accepted"] for e in r_live["epochs"]) > 0  # the average sees the jumps
    # on_weights sees the evaluated model: the live one for the baseline, the mean of two epochs for LAWA.
    torch.testing.assert_close(w_avg[1], w_live[1])
    for e in range(2, len(w_live)):
        torch.testing.assert_close(w_avg[e], (w_live[e - 1] + w_live[e]) / 2)
    assert r_avg["epochs"][-1]["train_loss"] != r_live["epochs"][-1]["train_loss"]


def test_pdt_ema_evaluates_an_ema_of_pdt_weights():
    r_pdt, w_pdt = _trajectory("pdt")
    r_ema, w_ema = _trajectory("pdt-ema@decay=0.5")
    assert [e["batch_loss"] for e in r_ema["epochs"]] == [e["batch_loss"] for e in r_pdt["epochs"]]
    # An EMA over steps lies between epochs' weights, never on PDT's own.
    assert all(not torch.allclose(a, b) for a, b in zip(w_ema[1:], w_pdt[1:]))


@pytest.mark.parametrize("point", ["eval", "train"])
def test_pdt_on_schedule_free_snapshots_the_chosen_point(point, monkeypatch):
    """At ``eval`` PDT sees x (the weights evaluated); at ``train`` it sees y = beta x + (1 - beta) z."""
    seen = []
    step = PDT.step

    def spy(self, *args, **kwargs):
        group = self.optimizer.param_groups[0]
        z = torch.cat([self.optimizer.state[p]["z"].flatten().double() for p in self.params])
        w = torch.cat([p.detach().flatten().double() for p in self.params])
        seen.append((group["train_mode"], group["momentum"], w, z))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(PDT, "step", spy)
    evaluated = []
    # start_epoch beyond the run: snapshots only, so the weights evaluated are the optimizer's x.
    config = RunConfig("mnist1d-mlp", f"pdt-schedule-free@point={point}", **(QUICK | {"start_epoch": 99}))
    run(config, on_weights=lambda e, m: evaluated.append(_flat(m)))
    assert len(seen) == QUICK["epochs"]
    for (train_mode, beta, w, z), x in zip(seen, evaluated[1:]):
        assert train_mode == (point == "train")
        y = beta * x + (1 - beta) * z
        torch.testing.assert_close(w, x if point == "eval" else y)
        assert not torch.allclose(x, y)  # the two points differ, so the test tells them apart


def test_averaging_and_point_suffixes():
    assert parse_method("lawa").lawa == LAWA_K and parse_method("lawa@k=3").lawa == 3
    assert parse_method("pdt-lawa@k=2").pdt == {"criterion": "pdt"}
    assert parse_method("pdt-schedule-free").point == "eval"
    assert parse_method("pdt-schedule-free@point=train").point == "train"
    for bad in ["baseline@k=3", "lawa@k=0", "pdt-schedule-free@point=z", "pdt@point=eval", "lawa@decay=0.9"]:
        with pytest.raises(ValueError, match="bad value"):
            parse_method(bad)


def _lrs(name: str, lr: float, epochs: int, steps: int, eta_min: float = 0.0) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    schedule = make_schedule(name, opt, epochs, eta_min, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


def test_warmup_cosine_rises_linearly_then_anneals_to_eta_min():
    lr, total, eta_min = 0.1, 200, 0.001
    warmup = 10  # 5 % of 200 steps
    by_hand = [lr * (t + 1) / warmup for t in range(warmup)] + [
        eta_min + (lr - eta_min) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        for t in range(warmup, total)
    ]
    assert _lrs("warmup-cosine", lr, 4, 50, eta_min) == pytest.approx(by_hand)


def test_onecycle_peaks_at_the_optimizer_rate():
    lrs = _lrs("onecycle", 0.2, 2, 50)
    assert max(lrs) == pytest.approx(0.2) and lrs[0] == pytest.approx(0.2 / 25) and lrs[-1] < 1e-4
