"""The probe's figures against hand-worked cases, float64 numpy, and PDT's own decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from torch_pdt import PDT
from torch_pdt.diagnostics import ForecastProbe, by_kind, increment_snr, parameter_kinds


def test_increment_snr_hand_worked_and_against_numpy():
    S = torch.tensor([[0.0, 1, 2, 3], [0, 1, 3, 4], [5, 5, 5, 5], [0, 1, 0, 1]], dtype=torch.float64)
    snr = increment_snr(S)
    # [1, 2, 1]: mean 4/3, sample sd sqrt(1/3); [1, -1, 1]: mean 1/3, sd sqrt(4/3).
    assert snr[0] == math.inf and snr[2] == 0
    assert snr[1].item() == pytest.approx((4 / 3) / math.sqrt(1 / 3), rel=1e-14)
    assert snr[3].item() == pytest.approx((1 / 3) / math.sqrt(4 / 3), rel=1e-14)
    R = np.random.default_rng(0).normal(size=(50, 6))
    d = np.diff(R, axis=1)
    np.testing.assert_allclose(
        increment_snr(torch.from_numpy(R)).numpy(), abs(d.mean(1)) / d.std(1, ddof=1), rtol=1e-13
    )
    with pytest.raises(ValueError, match="h >= 3"):
        increment_snr(S[:, :2])


def test_parameter_kinds():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Embedding(4, 3), nn.Linear(3, 2), nn.LayerNorm(2), Scale()
    )
    assert parameter_kinds(model) == {
        "0.weight": "conv",
        "0.bias": "conv",
        "1.weight": "norm",
        "1.bias": "norm",
        "2.weight": "embedding",
        "3.weight": "linear",
        "3.bias": "linear",
        "4.weight": "norm",
        "4.bias": "norm",
        "5.gain": "other",
    }


def decaying(model: nn.Module, factor: float = 0.9) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)


def test_a_clean_mode_is_accepted_whole_and_forecast_exactly():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    probe = ForecastProbe(model, history=4, horizon=3)
    reports = []
    for _ in range(9):
        decaying(model)
        reports.append(probe.step())
    assert reports[:3] == [None, None, None]
    first = reports[3]
    assert first["epoch"] == 3 and first["horizon"] == 3
    for t in first["tensors"]:
        assert t["accepted"] == 1.0 and t["rejected"] == {"consistency": 0.0, "lower_bound": 0.0, "upper_bound": 0.0}
        # Increments c, 0.9c, 0.81c: mean 0.9033c over a sample sd of 0.0950c.
        d = np.array([1, 0.9, 0.81])
        assert t["snr"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-9)
        # Settled three epochs later: the DMD continues the mode, the linear step overshoots.
        assert t["forecast_error"] < 1e-9 and t["accepted_forecast_error"] < 1e-9
        assert t["linear_error"] > 0.05
    assert reports[-1]["tensors"][0]["forecast_error"] is None  # not reached yet
    assert set(by_kind(first)) == {"linear"} and by_kind(first)["linear"]["numel"] == 15.0
    settled = by_kind(first)["linear"]
    assert settled["rejected:consistency"] == 0.0 and settled["accepted_forecast_error"] < 1e-9


def test_noise_is_rejected_and_named():
    torch.manual_seed(0)
    model = nn.Linear(50, 20).double()
    probe = ForecastProbe(model, history=5, horizon=5)
    for _ in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))  # a random walk: no direction to continue
        report = probe.step()
    weight = report["tensors"][0]
    assert weight["snr"] < 1.0 and weight["accepted"] < 0.2
    assert max(weight["rejected"], key=weight["rejected"].get) == "consistency"
    # Pooled by kind, each check's share is weighted by the tensors' elements (1000 and 20).
    bias = report["tensors"][1]
    expected = (1000 * weight["rejected"]["consistency"] + 20 * bias["rejected"]["consistency"]) / 1020
    assert by_kind(report)["linear"]["rejected:consistency"] == pytest.approx(expected, rel=1e-12)


def test_the_probe_agrees_with_pdt_where_pdt_first_predicts():
    """Judged on the same snapshots, the probe's accepted count is PDT's (two numerical routes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    pdt = PDT(opt, history=5, horizon=5, start_epoch=4, interval=1, kernel="eager")
    probe = ForecastProbe(model, history=5, horizon=5)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 6, generator=g, dtype=torch.float64), torch.randn(256, 3, generator=g, dtype=torch.float64)
    for _ in range(5):
        for i in range(0, 256, 32):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
        report = probe.step()
        stats = pdt.step()
    assert stats["predicted"] and report is not None
    probed = sum(round(t["accepted"] * t["numel"]) for t in report["tensors"])
    assert 0 < stats["accepted"] < pdt.numel
    assert abs(probed - stats["accepted"]) <= max(2, pdt.numel // 1000)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(history=2), "history"),
        (dict(horizon=0), "horizon"),
        (dict(criterion="random"), "criterion"),
        (dict(history=True), "history"),
    ],
)
def test_bad_options_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ForecastProbe(nn.Linear(2, 2), **kwargs)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        ForecastProbe(frozen)


def test_a_still_model_is_judged_still():
    probe = ForecastProbe(nn.Linear(2, 2), history=3, horizon=1)
    reports = [probe.step() for _ in range(5)]
    assert reports[:2] == [None, None]
    for t in reports[-1]["tensors"]:
        assert t["snr"] == 0 and t["accepted"] == 0 and t["forecast_error"] is None  # nothing travelled


def test_weights_pdt_refuses_are_refused():
    """Complex weights lost their imaginary part (a warning); meta and empty ones failed obscurely."""
    model = nn.Linear(3, 2)
    model.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="weight is torch.complex64"):
        ForecastProbe(model)
    with pytest.raises(ValueError, match="layout"):
        ForecastProbe(nn.Linear(3, 2, device="meta"))
    with pytest.raises(ValueError, match="no elements"):
        ForecastProbe(nn.Linear(0, 0))


def test_a_replaced_or_reshaped_parameter_is_refused_before_anything_changes():
    model = nn.Linear(3, 2)
    probe = ForecastProbe(model, history=3, horizon=2)
    for _ in range(3):
        decaying(model)
        probe.step()
    weight = model.weight.data
    model.weight.data = torch.ones(4, 3)  # was a RuntimeError from torch.stack, after the epoch was counted
    with pytest.raises(ValueError, match=r"weight changed shape from \(2, 3\) to \(4, 3\)"):
        probe.step()
    model.weight.data = weight
    decaying(model)
    assert probe.step()["epoch"] == 3  # nothing had changed
    model.bias = nn.Parameter(torch.zeros(2))  # the probe watched the old tensor: a still bias
    with pytest.raises(ValueError, match="bias was replaced or removed"):
        probe.step()
    del model.bias
    with pytest.raises(ValueError, match="bias was replaced or removed"):
        probe.step()


def test_nan_or_inf_weights_are_no_jump_and_no_nan_figure():
    """PDT skips a history holding NaN or Inf; the probe raised from torch.linalg.eig."""
    model = nn.Linear(3, 2).double()
    probe = ForecastProbe(model, history=3, horizon=2)
    reports = []
    for epoch in range(8):
        decaying(model)
        if epoch == 3:
            with torch.no_grad():
                model.weight[0, 0] = math.nan
        reports.append(probe.step())
    assert [r is not None for r in reports] == [False, False, True, False, False, False, False, False]
    weight, bias = reports[2]["tensors"]
    assert weight["forecast_error"] is None  # reached NaN: no distance to report
    assert bias["forecast_error"] < 1e-9
    # A growing mode forecast far ahead overflows (Inf - Inf in the modes' sum: NaN): infinitely far.
    model = nn.Linear(3, 2).double()
    probe = ForecastProbe(model, history=3, horizon=40)
    for epoch in range(43):
        decaying(model, 1e10 if epoch < 4 else 1.0)
        probe.step()
    for t in probe.reports[0]["tensors"]:
        assert t["forecast_error"] == math.inf and t["accepted"] == 0 and math.isfinite(t["linear_error"])


def test_a_tensor_without_elements_weighs_nothing_by_kind():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(0, 2, bias=False)).double()
    probe = ForecastProbe(model, history=3, horizon=1)
    for _ in range(3):
        decaying(model)
        report = probe.step()
    empty = report["tensors"][-1]
    assert empty["numel"] == 0 and math.isnan(empty["snr"])  # the median of nothing
    pooled = by_kind(report)["linear"]
    assert pooled["numel"] == 8.0 and pooled["snr"] == pytest.approx(report["tensors"][0]["snr"])


def test_the_snr_of_an_even_count_is_the_mean_of_the_two_middle_values():
    """``Tensor.median`` gives the lower of the two: a 2-element bias reported its smaller snr."""
    model = nn.Linear(1, 2, bias=False).double()
    probe = ForecastProbe(model, history=4, horizon=1)
    for column in ([0.0, 0], [1, 1], [3, 0], [4, 1]):  # increments [1, 2, 1] and [1, -1, 1]
        with torch.no_grad():
            model.weight.copy_(torch.tensor(column)[:, None])
        report = probe.step()
    high, low = (4 / 3) / math.sqrt(1 / 3), (1 / 3) / math.sqrt(4 / 3)
    assert report["tensors"][0]["snr"] == pytest.approx((high + low) / 2, rel=1e-14)
    assert report["tensors"][0]["snr"] == pytest.approx(float(np.median([high, low])), rel=1e-14)


def test_a_model_that_is_not_a_module_is_refused():
    """``model.parameters()`` passed for the model raised an AttributeError on ``named_modules``."""
    model = nn.Linear(2, 2)
    for wrong in (model.parameters(), list(model.parameters()), None):
        with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
            ForecastProbe(wrong)
