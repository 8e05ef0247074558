"""One rank of the DeepSpeed test (run by tests/test_distributed_deepspeed.py, two processes, gloo on CPU).

``python tests/distributed_deepspeed_worker.py PORT OUT_DIR`` with ``RANK`` and ``WORLD_SIZE``;
``DS_ACCELERATOR=cpu``. The 16-33-5 MLP under ZeRO-3 (partitions of 33 and 5 elements do not
split evenly: the last rank's are padded) with SGD and momentum; per epoch, this rank's fp32
partitions before and after ``DeepSpeedPDT.step``, its statistics, and the whole parameters the
engine gathers after it. Writes ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys

import deepspeed
import torch
from distributed_worker import EPOCHS, GLOBAL_BATCH, PDT_ARGS, data, mlp
from torch import nn

from torch_pdt.distributed.deepspeed import DeepSpeedPDT


def run(rank: int, world: int, persistence_threshold: int | None, kernel: str = "auto") -> dict:
    """``persistence_threshold``: ZeRO-3's ``stage3_param_persistence_threshold`` (``None``: its default,
    under which all four small tensors stay whole on every rank; 0: every tensor partitioned);
    ``kernel``: PDT's passes (``"auto"`` runs this small model eager)."""
    model = mlp(16, 33, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
        "zero_optimization": {"stage": 3}
        | ({} if persistence_threshold is None else {"stage3_param_persistence_threshold": persistence_threshold}),
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    pdt = DeepSpeedPDT(engine, **PDT_ARGS, kernel=kernel)
    x, y = data(16, 5)
    part = GLOBAL_BATCH // world
    out = {"before": [], "after": [], "stats": [], "gathered": [], "refused": {}}
    for _ in range(EPOCHS):
        for i in range(0, len(x), GLOBAL_BATCH):
            lo = i + rank * part
            loss = nn.functional.mse_loss(engine(x[lo : lo + part]), y[lo : lo + part])
            engine.backward(loss)
            engine.step()
        out["before"].append([v.clone() for _, v in pdt._partitions])
        out["stats"].append(pdt.step())
        out["after"].append([v.clone() for _, v in pdt._partitions])
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params):
            out["gathered"].append([p.detach().reshape(-1).clone() for p in params])
    out["snapshot_bytes"] = pdt.snapshot_bytes
    out["compiled"] = pdt._passes.compiled is not None
    for option in ({"on_jump": "reset"}, {"every_n_steps": 2}, {"pacing": "adaptive"}):
        try:
            DeepSpeedPDT(engine, **PDT_ARGS, **option)
        except ValueError as e:
            out["refused"][next(iter(option))] = str(e)
    return out


def main() -> None:
    port, out_dir = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.environ |= {"LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    deepspeed.init_distributed(dist_backend="gloo")
    out = {
        "persistent": run(rank, world, None),
        "partitioned": run(rank, world, 0),
        "compiled": run(rank, world, 0, kernel="compiled"),
    }
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
