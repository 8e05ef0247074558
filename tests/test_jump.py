"""Optimizer state after a jump: on_jump="keep" | "reset" | "rescale" for common optimizers."""

from __future__ import annotations

import logging

import pytest
import torch
from test_pdt import make_data, make_model, train_epoch, weights

from torch_pdt import PDT, dmd

OPTIMIZERS = {
    "sgd-momentum": (lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), ["momentum_buffer"], []),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2), ["exp_avg"], ["exp_avg_sq"]),
    "adamw-amsgrad": (
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
        ["exp_avg"],
        ["exp_avg_sq", "max_exp_avg_sq"],
    ),
    "rmsprop": (
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
        ["momentum_buffer"],
        ["square_avg", "grad_avg"],
    ),
}


def jump_once(opt_name: str, on_jump: str, criterion: str = "pdt"):
    """Train to the first prediction; return the state before and after it, and the stats."""
    model = make_model()
    factory, velocity_keys, scale_keys = OPTIMIZERS[opt_name]
    opt = factory(model.parameters())
    pdt = PDT(opt, history=4, horizon=3, start_epoch=3, interval=0, criterion=criterion, on_jump=on_jump)
    data = make_data()
    trajectory = []
    for _ in range(4):
        train_epoch(model, opt, data)
        trajectory.append(weights(model).double())
        before = {
            k: torch.cat([opt.state[p][k].reshape(-1) for p in model.parameters()]).clone()
            for k in opt.state[next(iter(model.parameters()))]
            if k != "step"
        }
        stats = pdt.step()
    after = {k: torch.cat([opt.state[p][k].reshape(-1) for p in model.parameters()]) for k in before}
    accepted = weights(model).double() != trajectory[-1]
    return before, after, stats, accepted, velocity_keys, scale_keys, torch.stack(trajectory, 1)


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("on_jump", ["keep", "reset", "rescale"])
def test_velocities_of_accepted_elements_only(opt_name, on_jump):
    before, after, stats, accepted, velocity_keys, scale_keys, _ = jump_once(opt_name, on_jump)
    assert stats["predicted"] and 0 < stats["accepted"] < stats["numel"]
    assert stats.get("optimizer_state_untouched", []) == []
    for key in scale_keys:  # gradient scales are always kept
        assert torch.equal(after[key], before[key])
    for key in velocity_keys:
        old, new = before[key], after[key]
        assert torch.equal(new[~accepted], old[~accepted])
        if on_jump == "keep":
            assert torch.equal(new, old)
        elif on_jump == "reset":
            assert not new[accepted].any()
        else:  # shrunk towards zero, never amplified or reversed
            assert (new[accepted].abs() <= old[accepted].abs()).all()
            assert (new[accepted] * old[accepted] >= 0).all()
            assert (new[accepted] != old[accepted]).any()


def test_rescale_factor_is_the_forecasts_slow_down():
    """r = clip((w(i+tau) - w(i+tau-1)) / (w_opt(i) - w_opt(i-1)), 0, 1), from the standalone DMD."""
    before, after, _, accepted, _, _, S = jump_once("sgd-momentum", "rescale", criterion="none")
    assert accepted.float().mean() > 0.9
    last_step = torch.diff(dmd.fit(S).forecast(S, [2, 3]), dim=1)[:, 0]
    r = (last_step / (S[:, -1] - S[:, -2])).nan_to_num(0.0, 0.0, 0.0).clamp(0, 1)
    expected = (before["momentum_buffer"].double() * r).float()
    torch.testing.assert_close(after["momentum_buffer"][accepted], expected[accepted], rtol=1e-4, atol=1e-6)


def test_sgd_without_momentum_has_nothing_to_change():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, criterion="none", on_jump="reset")
    for _ in range(3):
        train_epoch(model, opt, make_data())
        stats = pdt.step()
    assert stats["predicted"] and stats["optimizer_state_untouched"] == []


class Unknown(torch.optim.SGD):
    """An optimizer with a per-element state PDT does not know."""

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].setdefault("trace", torch.zeros_like(p)).add_(p.grad)
        return super().step(closure)


def test_unknown_state_is_left_alone_reported_and_logged_once(caplog):
    model = make_model()
    opt = Unknown(model.parameters(), lr=0.2, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, criterion="none", on_jump="reset")
    with caplog.at_level(logging.WARNING, logger="torch_pdt"):
        for _ in range(5):
            train_epoch(model, opt, make_data())
            traces = [opt.state[p]["trace"].clone() for p in model.parameters()]
            stats = pdt.step()
    assert stats["predicted"] and stats["optimizer_state_untouched"] == ["trace"]
    assert all(torch.equal(t, opt.state[p]["trace"]) for t, p in zip(traces, model.parameters()))
    assert not any(opt.state[p]["momentum_buffer"].any() for p in model.parameters())  # criterion "none"
    assert caplog.text.count("unknown optimizer state ['trace']") == 1


def test_channels_last_state_is_updated_in_memory_order():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=2, start_epoch=2, interval=0, criterion="none", on_jump="reset")
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    for _ in range(3):
        for _ in range(3):
            opt.zero_grad()
            conv(x).square().mean().backward()
            opt.step()
        stats = pdt.step()
    assert stats["accepted"] == stats["numel"]
    assert not opt.state[conv.weight]["momentum_buffer"].any()


def test_rescale_clips_a_ratio_that_overflows_to_one_as_a_large_finite_one():
    """r = clip(predicted / optimizer step, 0, 1): a same-sign ratio beyond float32's range (a
    denormal optimizer step) is clipped to 1 like a large finite one, not zeroed."""
    from torch_pdt.jump import velocity_ratio

    delta = torch.tensor([1e-45, 1e-45, 1e-45, -1e-45, 0.0, 0.0], dtype=torch.float32)
    last = torch.tensor([1e-7, 1e-6, -1e-6, -1e-6, 0.0, 1.0], dtype=torch.float32)
    assert velocity_ratio(last, delta).tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
