"""One rank of the compiled-pass tests (run by tests/test_distributed_compiled.py, two processes, gloo on CPU).

``python tests/distributed_compiled_worker.py OUT_DIR`` with ``RANK`` and ``WORLD_SIZE`` set.
Each rank trains a 130-257-5 MLP (a weight of 33,410 elements, sharded 129 and 128 rows: each
shard is its own compiled call; the biases and the small weight share a staged call) under DDP
and FSDP2 with ``kernel="compiled"`` and ``"eager"``; rank 0 then replays the optimizer's
weights (gathered, for FSDP2) through one-process PDT, compiled and eager. Then the faults:
rank 1 without a compiler under ``"auto"``; a pass that fails on rank 1 only, under ``"auto"``
(DDP: the prediction pass; FSDP2: the snapshot pass) and under ``"compiled"``. Every pass is
compiled once per process and reused by every scenario (the compiled functions are cached).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from distributed_worker import EPOCHS, PDT_ARGS, data, flat, fsdp_mlp, mlp, train_epoch
from torch import nn

from torch_pdt import PDT, kernel
from torch_pdt.distributed import CompiledPassError, DistributedPDT

SIZES = (130, 257, 5)
FAIL_AT = 2  # the epoch of the first prediction (PDT_ARGS start_epoch), or of a snapshot


def train(model: nn.Module, rank: int, world: int, make, before_step=None) -> dict:
    """Train with PDT for EPOCHS; per epoch this rank's weights before and after ``step``, its statistics,
    and the kinds of collective each step issued."""
    x, y = data(SIZES[0], SIZES[2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = make(opt)
    kinds: list[str] = []
    header = pdt._header  # every collective starts with it (a vote is nothing else)
    pdt._header = lambda kind, flag=False: kinds.append(kind) or header(kind, flag)
    out = {"before": [], "after": [], "stats": [], "kinds": [], "error": None}
    for epoch in range(EPOCHS):
        train_epoch(model, opt, x, y, rank, world)
        if before_step is not None:
            before_step(pdt, epoch)
        out["before"].append(flat(model))
        start, kinds[:] = time.monotonic(), []
        try:
            out["stats"].append(pdt.step())
        except CompiledPassError as e:
            out["error"] = {"message": str(e), "epoch": epoch, "seconds": time.monotonic() - start}
            break
        out["after"].append(flat(model))
        out["kinds"].append(list(kinds))
    out["compiled"] = pdt._passes.compiled is not None
    return out


def ddp(rank: int, world: int, before_step=None, **options) -> dict:
    model = nn.parallel.DistributedDataParallel(mlp(*SIZES))
    return train(model, rank, world, lambda opt: DistributedPDT(opt, **PDT_ARGS, **options), before_step)


def fsdp(rank: int, world: int, before_step=None, **options) -> dict:
    model = fsdp_mlp(world, SIZES)
    return train(model, rank, world, lambda opt: DistributedPDT(opt, **PDT_ARGS, **options), before_step)


def replay(befores: list[list[torch.Tensor]], kernel_name: str) -> dict:
    """One-process PDT stepped through the given optimizer weights (whole, flat, per epoch)."""
    model = mlp(*SIZES)
    single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **PDT_ARGS, kernel=kernel_name)
    stats, after = [], []
    for before in befores:
        with torch.no_grad():
            for p, value in zip(model.parameters(), before):
                p.copy_(value.view_as(p))
        stats.append(single.step())
        after.append([p.detach().reshape(-1).clone() for p in model.parameters()])
    return {"stats": stats, "after": after}


def gathered(shards: list[list[torch.Tensor]], world: int) -> list[list[torch.Tensor]]:
    """Every rank's shards of every epoch (FSDP2 shards dim 0, rank 0 first), whole and flat."""
    everyone: list[list[list[torch.Tensor]] | None] = [None] * world
    dist.all_gather_object(everyone, shards)
    return [[torch.cat(parts) for parts in zip(*(r[epoch] for r in everyone))] for epoch in range(len(shards))]


def fail_on_rank1(rank: int, what: str, epoch: int):
    """A ``before_step``: rank 1's compiled ``what`` (``_enter``, ``_predict``) raises from ``epoch`` on."""

    def inject(pdt: DistributedPDT, now: int) -> None:
        if rank == 1 and now == epoch and pdt._passes.compiled is not None:
            setattr(pdt._passes.compiled.fused, what, lambda *a: (_ for _ in ()).throw(RuntimeError("injected")))

    return inject


def no_compiler_on_rank1(rank: int, world: int) -> dict:
    """``kernel="auto"`` on a model above the size threshold; rank 1 has no compiler."""
    compiles = kernel.compiles
    if rank == 1:
        kernel.compiles = lambda device: False
    try:
        model = nn.parallel.DistributedDataParallel(mlp(*SIZES))
        pdt = DistributedPDT(torch.optim.SGD(model.parameters()), **PDT_ARGS, kernel="auto")
    finally:
        kernel.compiles = compiles
    return {"compiled": pdt._passes.compiled is not None}


def main() -> None:
    out_dir = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(message)s")
    start = time.monotonic()
    result = {
        "ddp_compiled": ddp(rank, world, kernel="compiled", verify=True),
        "ddp_eager": ddp(rank, world, kernel="eager", verify=True),
        "fsdp_compiled": fsdp(rank, world, kernel="compiled"),
        "fsdp_eager": fsdp(rank, world, kernel="eager"),
    }
    result["compiled_seconds"] = time.monotonic() - start
    fsdp_before = gathered(result["fsdp_compiled"]["before"], world)
    if rank == 0:
        for name, befores in (("ddp", result["ddp_compiled"]["before"]), ("fsdp", fsdp_before)):
            result[f"{name}_single"] = {k: replay(befores, k) for k in ("compiled", "eager")}
    # kernel="auto" compiles this 33k-element model only above a lowered threshold.
    kernel.AUTO_MIN_NUMEL = 1000
    result["auto_no_compiler"] = no_compiler_on_rank1(rank, world)
    result["auto_ddp_predict_fails"] = ddp(rank, world, fail_on_rank1(rank, "_predict", FAIL_AT), verify=True)
    result["auto_fsdp_snapshot_fails"] = fsdp(rank, world, fail_on_rank1(rank, "_enter", FAIL_AT + 1))
    result["compiled_ddp_predict_fails"] = ddp(rank, world, fail_on_rank1(rank, "_predict", FAIL_AT), kernel="compiled")
    result["compiled_fsdp_snapshot_fails"] = fsdp(
        rank, world, fail_on_rank1(rank, "_enter", FAIL_AT + 1), kernel="compiled"
    )
    result["seconds"] = time.monotonic() - start
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
