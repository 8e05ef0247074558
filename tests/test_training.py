"""A short real training run: an MLP on MNIST-1D (generated locally by the `mnist1d` package)."""

import math

import pytest
import torch
from torch import nn

from torch_pdt import PDT

mnist1d_data = pytest.importorskip("mnist1d.data", reason="the mnist1d package (test extra) is not installed")


@pytest.fixture(scope="module")
def mnist1d():
    args = mnist1d_data.get_dataset_args()
    args.num_samples = 4000
    d = mnist1d_data.make_dataset(args)  # generated locally; never the download path
    return torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"])


def test_pdt_predicts_accepts_and_keeps_the_loss_finite(mnist1d):
    x, y = mnist1d
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pdt = PDT(opt, history=5, horizon=5, start_epoch=5, interval=1, model=model)
    g = torch.Generator().manual_seed(0)
    predictions, losses = [], []
    for _ in range(10):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        stats = pdt.step()
        if stats["predicted"]:
            predictions.append(stats)
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(x), y).item())
    assert [s["epoch"] for s in predictions] == [5, 7, 9]
    # Selective, not all-or-nothing: most predictions accept a real share, none accepts all.
    assert sum(s["accepted_ratio"] > 0.05 for s in predictions) >= 2
    assert all(s["accepted_ratio"] < 0.95 for s in predictions)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
