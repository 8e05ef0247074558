"""Checkpoint every epoch, resume exactly: a training loop with PDT that survives being killed.

    python examples/checkpointed_training.py --dir runs/demo --epochs 12
    # kill it at any moment (even with SIGKILL), run the same command again: it continues from
    # the last finished epoch and ends with the same weights, bit for bit, as an unkilled run.

Each checkpoint holds the model, the optimizer, the LR scheduler, PDT (snapshots, adaptive
pacing rule, counters), the global torch RNG (dropout) and the data-order generator, and is
written with :func:`torch_pdt.save_atomic`, so a kill while saving leaves the previous one
intact. Synthetic data keeps the example self-contained; swap in your own loader and model.
Run on CPU with one thread for bit-identical results (parallel reductions may reorder sums).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from torch_pdt import PDT, save_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="checkpoint directory (created)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds to sleep per batch (for kill tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.dir.mkdir(parents=True, exist_ok=True)
    last = args.dir / "last.pt"

    data = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=data)
    y = (x[:, :5].sum(1) > 0).long() + (x[:, 5:10].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    pdt = PDT(opt, history=3, horizon=3, start_epoch=2, interval=0, pacing="adaptive", on_jump="rescale")
    order = torch.Generator().manual_seed(1)
    first = 0
    if last.exists():
        state = torch.load(last, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        pdt.load_state_dict(state["pdt"])
        torch.set_rng_state(state["torch_rng"])
        order.set_state(state["order_rng"])
        first = state["epoch"] + 1
        print(f"resumed after epoch {state['epoch']}", flush=True)

    for epoch in range(first, args.epochs):
        losses = []
        for b, idx in enumerate(torch.randperm(len(x), generator=order).split(32)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            print(f"epoch {epoch} batch {b}", flush=True)
            time.sleep(args.batch_delay)
        sched.step()
        stats = pdt.step(loss=torch.stack(losses).mean())
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "pdt": pdt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "order_rng": order.get_state(),
        }
        save_atomic(state, last)
        print(f"epoch {epoch} done: predicted {stats['predicted']}, rollbacks {stats['rollbacks']}", flush=True)
    save_atomic(model.state_dict(), args.dir / "final.pt")


if __name__ == "__main__":
    main()
