"""PDT in a plain PyTorch loop: an MLP on MNIST-1D, baseline SGD against PDT variants.

    python examples/mnist1d_mlp.py --seeds 0 --epochs 60

MNIST-1D is generated locally by the `mnist1d` package (12,000 samples: 9,600 train, 2,400
test). The MLP is 40-512-512-512-10 with ReLU, SGD lr 0.05, batch 128, cosine annealing to
1e-3. Printed per run: the epoch at which the full-pass training loss first reaches the
baseline's best (lower is better), the final loss and the final test accuracy.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from torch_pdt import PDT

VARIANTS = {
    "baseline": None,
    "pdt": {},
    "pdt-assembled": {"history_after_jump": "assembled"},
    "pdt-reference": {"criterion": "reference"},
    "nonselective": {"criterion": "none"},
}


def load_mnist1d() -> tuple[torch.Tensor, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 12_000
    d = make_dataset(args)  # generated locally, never downloaded
    return (
        torch.tensor(d["x"], dtype=torch.float32),
        torch.tensor(d["y"]),
        torch.tensor(d["x_test"], dtype=torch.float32),
        torch.tensor(d["y_test"]),
    )


def train(data, seed: int, epochs: int, pdt_kwargs: dict | None) -> tuple[list[float], float]:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(40, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=1e-3)
    pdt = PDT(opt, **pdt_kwargs) if pdt_kwargs is not None else None
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        if pdt is not None:
            pdt.step()
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(x), y).item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return losses, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    args = parser.parse_args()
    names = list(dict.fromkeys(["baseline", *args.variants.split(",")]))
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    data = load_mnist1d()
    print(f"{'seed':>4}  {'variant':<15}{'epochs to base best':>20}{'final loss':>12}{'test acc':>10}")
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = {v: train(data, seed, args.epochs, VARIANTS[v]) for v in names}
        target = min(runs["baseline"][0])
        for name, (losses, accuracy) in runs.items():
            reached = next((i + 1 for i, loss in enumerate(losses) if loss <= target), None)
            print(f"{seed:>4}  {name:<15}{reached or 'never':>20}{losses[-1]:>12.4f}{accuracy:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
