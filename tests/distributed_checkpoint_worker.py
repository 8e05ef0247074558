"""One process of the DCP tests (run by tests/test_distributed_checkpoint.py): save and resume across world sizes.

``python tests/distributed_checkpoint_worker.py MODE OUT_DIR`` with ``RANK`` and ``WORLD_SIZE``:

* ``single-save`` (one process, no process group): the 16-33-5 MLP and PDT for ``EPOCHS`` epochs,
  a DCP checkpoint of model, optimizer and PDT after the step of epoch ``SAVE_AT`` in ``one/``;
  then a fresh process-local copy resumes from it and finishes the run.
* ``sharded`` (two ranks, FSDP2): the same run on two ranks, saved in ``two/``; a fresh copy
  resumes from ``two/`` (2 -> 2) and another from ``one/`` (1 -> 2).
* ``single-resume`` (one process): resumes from ``two/`` (2 -> 1).

Each writes ``OUT_DIR/MODE-rank{r}.pt``: per run, the weights (local shards, flat) and statistics
of every epoch, and right after each load the snapshots and the Gram matrix PDT holds.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from distributed_worker import PDT_ARGS, data, flat, fsdp_mlp, mlp, train_epoch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from torch_pdt import PDT
from torch_pdt.distributed import DistributedPDT
from torch_pdt.distributed.dcp import DCPState

EPOCHS = 8
SAVE_AT = 4


def build(world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, PDT]:
    model = fsdp_mlp(world) if world > 1 else mlp(16, 33, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = DistributedPDT(opt, **PDT_ARGS) if world > 1 else PDT(opt, **PDT_ARGS)
    return model, opt, pdt


def checkpoint(model, opt, pdt) -> dict:
    model_state, optim_state = get_state_dict(model, opt)
    return {"model": model_state, "optim": optim_state, "pdt": DCPState(pdt)}


def train(model, opt, pdt, rank: int, world: int, epochs: range, save: str | None = None) -> dict:
    x, y = data(16, 5)
    out = {"after": [], "stats": []}
    for epoch in epochs:
        train_epoch(model, opt, x, y, rank, world)
        out["stats"].append(pdt.step())
        out["after"].append(flat(model))
        if epoch == SAVE_AT and save is not None:
            dcp.save(checkpoint(model, opt, pdt), checkpoint_id=save, no_dist=world == 1)
            out["saved_gram"] = pdt._history.grams()
    return out


def resume(path: str, rank: int, world: int) -> dict:
    """A fresh model, optimizer and PDT loaded from ``path``, trained to the end of the run."""
    model, opt, pdt = build(world)
    state = checkpoint(model, opt, pdt)
    dcp.load(state, checkpoint_id=path, no_dist=world == 1)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    storage, slots = pdt._history.layout()
    rows = pdt._history.rows()
    loaded = {
        "snapshots": [storage[b][rows, o : o + n].clone() for b, o, n in slots],
        "local_gram": pdt._history.grams(),
        "gram": pdt._reduce_gram(pdt._history.gram()),
        "epoch": pdt.epoch,
    }
    return {"loaded": loaded, **train(model, opt, pdt, rank, world, range(SAVE_AT + 1, EPOCHS))}


def main() -> None:
    mode, out_dir = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    one, two = os.path.join(out_dir, "one"), os.path.join(out_dir, "two")
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world, timeout=timedelta(seconds=30)
        )
    result = {}
    if mode == "single-save":
        result["run"] = train(*build(1), 0, 1, range(EPOCHS), save=one)
        result["resumed"] = resume(one, 0, 1)
    elif mode == "sharded":
        result["run"] = train(*build(world), rank, world, range(EPOCHS), save=two)
        result["resumed"] = resume(two, rank, world)
        result["from_one"] = resume(one, rank, world)
    elif mode == "single-resume":
        result["from_two"] = resume(two, 0, 1)
    torch.save(result, os.path.join(out_dir, f"{mode}-rank{rank}.pt"))


if __name__ == "__main__":
    main()
