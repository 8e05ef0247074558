"""Step mode (``every_n_steps``), and PDT under torch.compile and AMP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_pdt import PDT

PDT_ARGS = dict(history=3, horizon=2, start_epoch=2, interval=0)


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def train(model, opt, data, forward=None) -> None:
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy((forward or model)(x), y).backward()
        opt.step()


def test_invalid_every_n_steps_names_the_argument():
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="every_n_steps"):
            PDT(make()[1], every_n_steps=bad)


def test_every_n_steps_is_an_explicit_step_every_k_optimizer_steps():
    data = batches(40)
    model, opt = make()
    pdt = PDT(opt, **PDT_ARGS, every_n_steps=4)
    train(model, opt, data)
    assert (pdt.epoch, pdt.optimizer_steps) == (10, 40)

    explicit_model, explicit_opt = make()
    explicit = PDT(explicit_opt, **PDT_ARGS)
    for i in range(0, 40, 4):
        train(explicit_model, explicit_opt, data[i : i + 4])
        explicit.step()
    assert pdt.last_stats == explicit.last_stats and pdt.last_stats["predicted"]
    for a, b in zip(model.parameters(), explicit_model.parameters()):
        assert torch.equal(a, b)


def test_step_mode_resumes_mid_period():
    data = batches(30)
    model, opt = make()
    pdt = PDT(opt, **PDT_ARGS, every_n_steps=4)  # kept: a dropped PDT stops stepping
    train(model, opt, data)
    assert pdt.optimizer_steps == 30

    first_model, first_opt = make()
    first = PDT(first_opt, **PDT_ARGS, every_n_steps=4)
    train(first_model, first_opt, data[:13])  # stops one step into a period
    saved = {"model": first_model.state_dict(), "opt": first_opt.state_dict(), "pdt": first.state_dict()}
    resumed_model, resumed_opt = make(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    resumed = PDT(resumed_opt, **PDT_ARGS, every_n_steps=4)
    resumed.load_state_dict(saved["pdt"])
    train(resumed_model, resumed_opt, data[13:])
    assert resumed.optimizer_steps == 30 and resumed.epoch == 7
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_compiled_model_and_amp_see_the_predicted_weights_in_place():
    """Parameters are written in place: a compiled graph keeps reading them, with autocast and GradScaler."""
    model, opt = make()
    compiled = torch.compile(model, backend="aot_eager")  # no C++ toolchain needed for the test
    scaler = torch.amp.GradScaler("cpu")
    pdt = PDT(opt, **PDT_ARGS)
    storage = [p.data_ptr() for p in model.parameters()]
    x = torch.randn(4, 8)
    for epoch, data in enumerate(batches(5 * 4)[i : i + 4] for i in range(0, 20, 4)):
        for xb, yb in data:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(compiled(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        stats = pdt.step()
        assert stats["predicted"] == (epoch >= 2)
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert stats["accepted"] > 0
    assert [p.data_ptr() for p in model.parameters()] == storage
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_close_stops_step_mode():
    """After close() the optimizer no longer steps PDT (a new PDT can take over the optimizer)."""
    model, opt = make()
    pdt = PDT(opt, **PDT_ARGS, every_n_steps=2)
    train(model, opt, batches(4))
    assert (pdt.optimizer_steps, pdt.epoch) == (4, 2)
    pdt.close()
    train(model, opt, batches(4))
    assert (pdt.optimizer_steps, pdt.epoch) == (4, 2)
