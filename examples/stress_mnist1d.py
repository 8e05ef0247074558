"""Stress PDT's schedulers and optimizer-state policies on MNIST-1D, in a plain training loop.

    python examples/stress_mnist1d.py --setting sgd-lr0.1 --seeds 0,1,2 --epochs 30
    python examples/stress_mnist1d.py --setting sgd-momentum --variants fixed,fixed-reset,fixed-rescale

MNIST-1D is generated locally by the `mnist1d` package (9,600 train / 2,400 test samples);
the model is the 40-512-512-512-10 ReLU MLP. Settings:

- ``sgd-lr0.1``: plain SGD, lr 0.1, batch 256, no LR schedule, tau 5 (paper Table 5's hard case);
- ``tau9``: SGD lr 0.05, batch 128, cosine to 1e-3, tau 9 (App. A.9: tau >= 9 explodes);
- ``momentum-lr0.1``: SGD momentum 0.9, lr 0.1, batch 256, no LR schedule, tau 5;
- ``sgd-momentum``: SGD momentum 0.9, lr 0.02, batch 128, cosine, tau 5;
- ``adam``: Adam lr 1e-3, batch 128, cosine, tau 5.

Each variant's ``PDT.step`` gets the epoch's mean training loss. Printed per run (one JSON
line per run with ``--json``): TTB-Loss as the first epoch whose full-pass training loss
reaches the baseline's best (and the wall seconds to it, PDT included), final training loss,
final test accuracy, predictions made and rolled back, and whether any weight went non-finite.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

from pdt_bench import tasks
from pdt_bench.tasks import mnist1d
from torch_pdt import PDT

SETTINGS = {
    "sgd-lr0.1": dict(optimizer="sgd", lr=0.1, momentum=0.0, batch=256, cosine=False, horizon=5),
    "tau9": dict(optimizer="sgd", lr=0.05, momentum=0.0, batch=128, cosine=True, horizon=9),
    "momentum-lr0.1": dict(optimizer="sgd", lr=0.1, momentum=0.9, batch=256, cosine=False, horizon=5),
    "sgd-momentum": dict(optimizer="sgd", lr=0.02, momentum=0.9, batch=128, cosine=True, horizon=5),
    "adam": dict(optimizer="adam", lr=1e-3, momentum=0.0, batch=128, cosine=True, horizon=5),
}

VARIANTS: dict[str, dict | None] = {"baseline": None}
for _scheduler in ("fixed", "reference", "adaptive"):
    for _policy in ("keep", "reset", "rescale"):
        _name = _scheduler if _policy == "keep" else f"{_scheduler}-{_policy}"
        VARIANTS[_name] = {"scheduler": _scheduler, "on_jump": _policy}


def load_mnist1d() -> tuple[torch.Tensor, ...]:
    task = tasks.build("mnist1d-mlp")  # the harness's copy: generated locally, cached
    return task.x_train, task.y_train, task.x_val, task.y_val


def train(data, setting: dict, seed: int, epochs: int, pdt_kwargs: dict | None) -> dict:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = mnist1d.mlp()
    if setting["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=setting["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=setting["lr"], momentum=setting["momentum"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, epochs, eta_min=setting["lr"] / 50
    )  # 1e-3 at lr 0.05, as the paper
    pdt = None
    if pdt_kwargs is not None:
        pdt = PDT(opt, history=5, horizon=setting["horizon"], start_epoch=5, interval=1, **pdt_kwargs)
    order = torch.Generator().manual_seed(seed)
    losses, seconds, elapsed = [], [], 0.0
    predictions = 0
    for _ in range(epochs):
        start = time.perf_counter()
        batch_losses = []
        for idx in torch.randperm(len(x), generator=order).split(setting["batch"]):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            batch_losses.append(loss.detach())
        if setting["cosine"]:
            sched.step()
        if pdt is not None:
            predictions += pdt.step(loss=torch.stack(batch_losses).mean())["predicted"]
        elapsed += time.perf_counter() - start
        seconds.append(elapsed)
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(x), y).item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return dict(
        losses=losses,
        seconds=seconds,
        accuracy=accuracy,
        predictions=predictions,
        rollbacks=pdt.schedule.rollbacks if pdt else 0,
        finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=SETTINGS, default="sgd-lr0.1")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--variants", default="fixed,reference,adaptive", help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--horizon", type=int, help="override the setting's tau")
    parser.add_argument("--criterion", default="pdt", help="PDT's masking criterion for every variant")
    parser.add_argument("--json", action="store_true", help="one JSON line per run instead of a table")
    args = parser.parse_args()
    names = list(dict.fromkeys(["baseline", *args.variants.split(",")]))
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    setting = SETTINGS[args.setting] | ({"horizon": args.horizon} if args.horizon else {})
    torch.set_num_threads(1)  # comparable wall times on a shared machine
    data = load_mnist1d()
    if not args.json:
        print(
            f"{'seed':>4}  {'variant':<18}{'TTB-Loss ep':>12}{'TTB s':>8}{'final loss':>12}{'test acc':>10}"
            f"{'pred':>6}{'rolled':>8}"
        )
    for seed in (int(s) for s in args.seeds.split(",")):
        base = None
        for name in names:
            kwargs = None if VARIANTS[name] is None else VARIANTS[name] | {"criterion": args.criterion}
            run = train(data, setting, seed, args.epochs, kwargs)
            base = base or run
            target = min(v for v in base["losses"] if math.isfinite(v))
            reached = next((i for i, v in enumerate(run["losses"]) if v <= target), None)
            row = {
                "setting": args.setting,
                "horizon": setting["horizon"],
                "criterion": args.criterion,
                "seed": seed,
                "variant": name,
                "epochs": args.epochs,
                "ttb_epoch": None if reached is None else reached + 1,
                "ttb_seconds": None if reached is None else round(run["seconds"][reached], 2),
            } | {k: run[k] for k in ("accuracy", "predictions", "rollbacks", "finite")}
            row["final_loss"] = run["losses"][-1]
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                ttb = "never" if reached is None else f"{row['ttb_epoch']}"
                secs = "-" if reached is None else f"{row['ttb_seconds']:.1f}"
                print(
                    f"{seed:>4}  {name:<18}{ttb:>12}{secs:>8}{row['final_loss']:>12.4f}{row['accuracy']:>10.4f}"
                    f"{row['predictions']:>6}{row['rollbacks']:>8}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
