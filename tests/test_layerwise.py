"""Layerwise DMD (``scope="layer"``): one operator per parameter tensor, checked against the float64
reference applied tensor by tensor, against the whole-model fit on a one-tensor model, and through
its promises (checkpoints, kernels, frozen parameters, odd dtypes)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from torch_pdt import PDT, reference

H, TAU = 4, 3


def mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 6, generator=g).to(dtype), torch.randn(64, 3, generator=g).to(dtype)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, xy) -> None:
    x, y = xy
    for i in range(0, len(x), 16):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[i : i + 16]), y[i : i + 16]).backward()
        opt.step()


def snapshots_then_step(model: nn.Module, pdt: PDT, epochs: int) -> tuple[list[list[torch.Tensor]], dict]:
    """Train ``epochs`` epochs with PDT; each tensor's end-of-epoch weights (the optimizer's, before
    PDT's step), and the last step's statistics."""
    opt = pdt.optimizer
    xy = data(next(model.parameters()).dtype)
    seen: list[list[torch.Tensor]] = [[] for _ in pdt.params]
    stats = {}
    for _ in range(epochs):
        train_epoch(model, opt, xy)
        for s, p in zip(seen, pdt.params):
            s.append(p.detach().reshape(-1).clone())
        stats = pdt.step()
    return seen, stats


@pytest.mark.parametrize("criterion", ["pdt", "authors", "accel_only", "none"])
def test_each_tensor_gets_the_reference_step_on_its_own_snapshots(criterion):
    """The first prediction, tensor by tensor, against reference.step (float64 SVD, N-sized modes)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = [p.detach().reshape(-1).clone() for p in model.parameters()]
    pdt = PDT(opt, history=H, horizon=TAU, start_epoch=H, model=model, scope="layer", criterion=criterion)
    seen, stats = snapshots_then_step(model, pdt, H + 1)
    assert stats["predicted"] and stats["gram_passes"] >= 1
    accepted = 0
    for name, before, p, first in zip(pdt.names, seen, pdt.params, start):
        # The authors' snapshots are the weights each epoch started from.
        history = [first, *before][-H - 1 : -1] if criterion == "authors" else before[-H:]
        expected = reference.step(history, before[-1].clone(), TAU, criterion=criterion)
        torch.testing.assert_close(p.detach().reshape(-1), expected.weights, rtol=0, atol=1e-12)
        assert stats["accepted_ratio_per_param"][name] * p.numel() == pytest.approx(expected.accepted)
        accepted += expected.accepted
        _, eigenvalues = reference.forecasts(torch.stack(history, 1), TAU)
        layer = stats["layers"][name]
        mine = torch.view_as_complex(torch.tensor(layer["eigenvalues"], dtype=torch.float64))
        assert layer["rank"] == eigenvalues.numel() and layer["reason"] is None

        def order(z):
            return sorted(z.tolist(), key=lambda c: (round(c.real, 6), round(c.imag, 6)))

        torch.testing.assert_close(torch.tensor(order(mine)), torch.tensor(order(eigenvalues)), rtol=0, atol=1e-9)
    assert stats["accepted"] == accepted > 0
    assert stats["rejected"]["unfitted"] == 0 and stats["eigenvalues"] == []
    assert stats["rank"] == max(layer["rank"] for layer in stats["layers"].values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_tensor_model_is_the_whole_model_fit(dtype):
    """With one parameter tensor, scope='layer' fits the same DMD: bit-identical weights and statistics."""
    results = []
    for scope in ("model", "layer"):
        torch.manual_seed(0)
        model = nn.Linear(6, 3, bias=False).to(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pdt = PDT(opt, history=H, horizon=TAU, start_epoch=H, interval=0, scope=scope)
        _, stats = snapshots_then_step(model, pdt, H + 4)
        results.append((model.weight.detach().clone(), stats))
    (w_model, s_model), (w_layer, s_layer) = results
    assert torch.equal(w_model, w_layer)
    layer = s_layer.pop("layers")["group0.param0"]
    assert s_model.pop("layers") == {}
    assert layer["rank"] == s_model["rank"] and layer["reason"] is None
    eigenvalues = s_model.pop("eigenvalues")
    assert layer["eigenvalues"] == eigenvalues
    assert s_layer.pop("eigenvalues") == [] and s_layer["rejected"]["unfitted"] == 0
    assert s_layer == s_model


def test_a_tensor_without_a_fit_is_kept_and_counted():
    """A parameter that never moves has a rank-0 fit: it is left alone, the others are predicted."""
    model = mlp()
    opt = torch.optim.SGD(
        [{"params": [model[0].weight, model[0].bias, model[2].weight]}, {"params": [model[2].bias], "lr": 0.0}],
        lr=0.05,
    )
    model[2].bias.data.zero_()
    pdt = PDT(opt, history=H, horizon=TAU, start_epoch=H, model=model, scope="layer", criterion="none")
    _, stats = snapshots_then_step(model, pdt, H + 1)
    assert stats["predicted"]
    assert "rank 0" in stats["layers"]["2.bias"]["reason"] and stats["layers"]["2.bias"]["rank"] == 0
    assert stats["rejected"]["unfitted"] == 3 and stats["accepted_ratio_per_param"]["2.bias"] == 0.0
    assert stats["accepted"] == stats["numel"] - 3  # criterion 'none' takes every other element
    assert torch.equal(model[2].bias, torch.zeros(3, dtype=torch.float64))


def test_an_empty_tensor_is_said_to_have_no_elements():
    model = mlp()
    empty = nn.Parameter(torch.zeros(0, dtype=torch.float64))
    opt = torch.optim.SGD([*model.parameters(), empty], lr=0.05)
    pdt = PDT(opt, history=H, horizon=TAU, start_epoch=H, scope="layer", criterion="none")
    _, stats = snapshots_then_step(model, pdt, H + 1)
    assert stats["predicted"] and stats["rejected"]["unfitted"] == 0
    assert [layer["reason"] for layer in stats["layers"].values()] == [None] * 4 + ["no elements"]


def test_resume_is_exact_and_checkpoints_name_the_scope(tmp_path):
    """A state_dict round trip mid-run continues bit for bit; a whole-model checkpoint is refused."""

    def train(pdt_of, epochs, state=None):
        model = mlp(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pdt = pdt_of(opt)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            pdt.load_state_dict(state["pdt"])
        xy = data(torch.float32)
        for _ in range(epochs):
            train_epoch(model, opt, xy)
            pdt.step()
        return model, opt, pdt

    def layer(opt):
        return PDT(opt, history=H, horizon=TAU, start_epoch=H, interval=0, scope="layer")

    whole, _, _ = train(layer, 10)
    model, opt, pdt = train(layer, 6)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pdt": pdt.state_dict()}, path)
    state = torch.load(path, weights_only=False)
    assert state["pdt"]["history"]["gram"].shape == (len(pdt.params), H + 1, H + 1)
    resumed, _, _ = train(layer, 4, state)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    with pytest.raises(ValueError, match="scope"):
        PDT(torch.optim.SGD(mlp(torch.float32).parameters(), lr=0.1), history=H, horizon=TAU).load_state_dict(
            state["pdt"]
        )


def test_a_checkpoint_saved_before_the_option_existed_loads():
    """Checkpoints without 'scope' and 'graded' were saved at their defaults."""
    model = mlp(torch.float32)
    pdt = PDT(torch.optim.SGD(model.parameters(), lr=0.1))
    state = pdt.state_dict()
    del state["config"]["scope"], state["config"]["graded"]
    PDT(torch.optim.SGD(model.parameters(), lr=0.1)).load_state_dict(state)
    with pytest.raises(ValueError, match="scope"):
        PDT(torch.optim.SGD(model.parameters(), lr=0.1), scope="layer").load_state_dict(state)


def test_the_compiled_kernel_takes_one_call_per_tensor_and_auto_keeps_a_small_model_eager(caplog):
    """(tests/test_kernel.py runs the compiled layerwise passes against the eager ones.)"""
    model = mlp(torch.float32)
    pdt = PDT(torch.optim.SGD(model.parameters(), lr=0.1), scope="layer", kernel="compiled")
    fused = pdt._passes.compiled
    assert fused.scope == "layer" and [list(g.members) for g in fused.groups] == [[i] for i in range(len(pdt.params))]
    with caplog.at_level(logging.INFO, logger="torch_pdt"):
        pdt = PDT(torch.optim.SGD(model.parameters(), lr=0.1), scope="layer")
    assert pdt._passes.compiled is None and "eager passes (a small model)" in caplog.text
    with pytest.raises(ValueError, match="scope"):
        PDT(torch.optim.SGD(model.parameters(), lr=0.1), scope="tensor")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_one_element_tensors_never_write_non_finite_values(dtype):
    """float16/bfloat16 weights, a one-element tensor and a frozen one: every written value finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 1), nn.Linear(1, 3)).to(dtype)
    model[1].weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    pdt = PDT(opt, history=3, horizon=20, start_epoch=3, interval=0, model=model, scope="layer", criterion="none")
    x, y = (t.to(dtype) for t in data(torch.float32))
    frozen = model[1].weight.detach().clone()
    predicted = 0
    for _ in range(8):
        for i in range(0, 64, 16):
            opt.zero_grad()
            (model(x[i : i + 16]).float() - y[i : i + 16].float()).square().mean().backward()
            opt.step()
        before = [p.detach().clone() for p in model.parameters()]
        stats = pdt.step()
        # Where the optimizer left a finite value, PDT's is finite too.
        assert all(torch.isfinite(p[torch.isfinite(b)]).all() for p, b in zip(model.parameters(), before))
        predicted += stats["predicted"]
    assert predicted and set(stats["layers"]) == {"0.weight", "0.bias", "1.bias"}
    assert torch.equal(model[1].weight, frozen)
