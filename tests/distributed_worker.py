"""One rank of the distributed tests (run by tests/test_distributed.py, two processes, gloo on CPU).

``python tests/distributed_worker.py OUT_DIR`` with ``RANK`` and ``WORLD_SIZE`` set. Each rank
runs DDP, FSDP2 (also layerwise and graded, and with the linear jump), a lost snapshot,
adaptive rollbacks with rank-local losses (DDP and FSDP2), ranks with different settings, ranks
out of step and the replica check with NaNs, saves what it saw to ``OUT_DIR/rank{r}.pt`` (rank
0 also the single-process references), and last runs an exception in rank 1's prediction pass,
which must make both processes fail (one launch for all: starting two processes costs seconds).
Every scenario that must raise raises on both ranks after the same collective, so the process
group stays usable for the next one.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from torch_pdt import PDT
from torch_pdt.distributed import DistributedPDT, RanksOutOfStepError, ReplicaMismatchError
from torch_pdt.pdt import local_shard

EPOCHS = 8
PDT_ARGS = dict(history=3, horizon=2, start_epoch=2, interval=0)
GLOBAL_BATCH = 16


def data(n_in: int, n_out: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, n_in, generator=g), torch.randn(n, n_out, generator=g)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x, y, rank: int, world: int) -> float:
    """One epoch over global batches of 16; this rank takes its contiguous part of each.

    Returns this rank's mean loss (of its own part of the data, as a training loop logs it).
    """
    part = GLOBAL_BATCH // world
    losses = []
    for i in range(0, len(x), GLOBAL_BATCH):
        lo = i + rank * part
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x[lo : lo + part]), y[lo : lo + part])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def flat(model: nn.Module) -> list[torch.Tensor]:
    return [local_shard(p.detach()).reshape(-1).clone() for p in model.parameters()]


def run(model, make_pdt, x, y, rank, world, every_epoch=None):
    """Train with PDT; per epoch: this rank's parameters before and after ``step`` and its stats."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = make_pdt(opt)
    before, after, stats = [], [], []
    for epoch in range(EPOCHS):
        train_epoch(model, opt, x, y, rank, world)
        if every_epoch is not None:
            every_epoch(pdt, epoch)
        before.append(flat(model))
        stats.append(pdt.step())
        after.append(flat(model))
    return pdt, {"before": before, "after": after, "stats": stats}


def replicated(rank: int, world: int) -> dict:
    """DDP with the replica check; the single-process reference on rank 0."""
    x, y = data(8, 3)
    ddp = nn.parallel.DistributedDataParallel(mlp(8, 16, 3))
    pdt, out = run(ddp, lambda opt: DistributedPDT(opt, **PDT_ARGS, verify=True), x, y, rank, world)
    with torch.no_grad():
        next(ddp.parameters())[0, 0] += rank  # rank 1 drifts
    try:
        pdt.step()
    except ReplicaMismatchError as e:
        out["mismatch"] = str(e)
    if rank == 0:
        _, out["single"] = run(mlp(8, 16, 3), lambda opt: PDT(opt, **PDT_ARGS), x, y, 0, 1)
    return out


def fsdp_mlp(world: int, sizes: tuple[int, int, int] = (16, 33, 5)) -> nn.Module:
    """The 16-33-5 MLP (or ``sizes``) under FSDP2 over ``world`` CPU ranks: 33 and 5 rows give uneven shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    model = mlp(*sizes)
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def sharded(rank: int, world: int) -> dict:
    """FSDP2 with uneven shards (33 and 5 rows over 2 ranks); then the reduced Gram of the last h snapshots."""
    model = fsdp_mlp(world)
    x, y = data(16, 5)
    pdt, out = run(model, lambda opt: DistributedPDT(opt, **PDT_ARGS), x, y, rank, world)
    # The Gram matrix of the newest h snapshots, summed over the ranks as in a prediction.
    out["gram"] = pdt._reduce_gram(pdt._history.gram())
    out["snapshot_bytes"] = pdt.snapshot_bytes
    if rank == 0:
        out["single_snapshot_bytes"] = PDT(torch.optim.SGD(mlp(16, 33, 5).parameters()), **PDT_ARGS).snapshot_bytes
    return out


def sharded_layerwise(rank: int, world: int) -> dict:
    """FSDP2 with scope='layer' and graded horizons; the Gram all_reduces of each step counted."""
    model = fsdp_mlp(world)
    x, y = data(16, 5)
    calls: list[str] = []

    def make(opt):
        pdt = DistributedPDT(opt, **PDT_ARGS, scope="layer", graded=True)
        reduce = pdt._all_reduce
        pdt._all_reduce = lambda kind, payload: calls.append(kind) or reduce(kind, payload)
        return pdt

    counted = []
    pdt, out = run(model, make, x, y, rank, world, every_epoch=lambda pdt, epoch: counted.append(len(calls)))
    counted.append(len(calls))
    out["gram_reduces"] = [calls[a:b].count("gram") for a, b in zip(counted, counted[1:])]  # per step
    return out


def sharded_linear(rank: int, world: int) -> dict:
    """FSDP2 with uneven shards and ``jump="linear"``."""
    model = fsdp_mlp(world)
    x, y = data(16, 5)
    _, out = run(model, lambda opt: DistributedPDT(opt, **PDT_ARGS, jump="linear"), x, y, rank, world)
    return out


def lost_snapshot(rank: int, world: int) -> dict:
    """Hand-sharded parameters; rank 1 fails to take the snapshot of epoch 3."""
    x, y = data(8, 3)
    model = mlp(8, 16, 3)

    def fail_once(pdt, epoch):
        if rank == 1 and epoch == 3:
            pdt._flat_params = lambda: (_ for _ in ()).throw(RuntimeError("injected snapshot failure"))
        else:
            pdt.__dict__.pop("_flat_params", None)

    # Both ranks train the same replicated model, but PDT treats each rank's half of the
    # parameter list as its shard: the code path of FSDP2 with plain tensors.
    def make(opt):
        params = list(model.parameters())
        return DistributedPDT(torch.optim.SGD(params[rank::world], lr=0.1), **PDT_ARGS, sharded=True)

    _, out = run(model, make, x, y, 0, 1, every_epoch=fail_once)
    return {"stats": out["stats"]}


SPIKE = 3
"""Rank 1's loss triples at this epoch, the first that judges a prediction (made at epoch 2)."""


def momenta(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    params = [p for group in opt.param_groups for p in group["params"]]
    return [local_shard(opt.state[p]["momentum_buffer"]).reshape(-1).clone() for p in params]


def adaptive(model: nn.Module, rank: int, world: int, x, y, **pdt_args) -> dict:
    """``pacing="adaptive"`` with each rank's own loss (rank 1's spikes at ``SPIKE``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pdt = DistributedPDT(opt, **PDT_ARGS, pacing="adaptive", **pdt_args)
    out = {"before": [], "after": [], "stats": [], "losses": [], "momenta": []}
    for epoch in range(EPOCHS):
        loss = train_epoch(model, opt, x, y, rank, world) * (3 if rank == 1 and epoch == SPIKE else 1)
        out["losses"].append(loss)
        out["before"].append(flat(model))
        out["stats"].append(pdt.step(loss=loss))
        out["after"].append(flat(model))
        out["momenta"].append(momenta(opt))
    return out


def ddp_adaptive(rank: int, world: int) -> dict:
    """DDP, rank-local losses, rollback, ``on_jump="rescale"`` and the replica check."""
    x, y = data(8, 3)
    model = nn.parallel.DistributedDataParallel(mlp(8, 16, 3))
    return adaptive(model, rank, world, x, y, on_jump="rescale", verify=True)


def fsdp_adaptive(rank: int, world: int) -> dict:
    """FSDP2 (uneven shards), rank-local losses, rollback, ``on_jump="reset"``."""
    model = fsdp_mlp(world)
    x, y = data(16, 5)
    return adaptive(model, rank, world, x, y, on_jump="reset")


def error(make) -> str | None:
    """The message of the exception ``make()`` raises, prefixed by its type, or None."""
    try:
        make()
    except (ValueError, RanksOutOfStepError, ReplicaMismatchError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def hand_sharded(model: nn.Module, rank: int, world: int, **pdt_args) -> DistributedPDT:
    """PDT that treats this rank's half of the parameter list as its shard (FSDP2's code path, plain tensors)."""
    params = list(model.parameters())
    return DistributedPDT(torch.optim.SGD(params[rank::world], lr=0.1), **(PDT_ARGS | pdt_args), sharded=True)


def mismatched_settings(rank: int, world: int) -> dict:
    """Ranks constructing PDT with different settings: each must raise, naming the setting."""
    model = mlp(8, 16, 3)
    params = list(model.parameters())
    return {
        "horizon": error(lambda: DistributedPDT(torch.optim.SGD(params), **PDT_ARGS | {"horizon": 2 + rank})),
        # Sharded, different histories: the Gram all_reduces would differ in size (gloo aborts).
        "history": error(lambda: hand_sharded(model, rank, world, history=3 + rank)),
        "verify": error(lambda: DistributedPDT(torch.optim.SGD(params), **PDT_ARGS, verify=rank == 0)),
        "layout": error(lambda: DistributedPDT(torch.optim.SGD(params[rank:]), **PDT_ARGS)),
        # An invalid argument on one rank: the other must not wait for its settings.
        "invalid": error(lambda: DistributedPDT(torch.optim.SGD(params), **PDT_ARGS | {"horizon": 1 - rank})),
    }


def out_of_step(rank: int, world: int) -> dict:
    """A rank skips, repeats, or raises inside and goes on with step(): every rank must raise at once."""
    import time

    x, y = data(8, 3)

    def train(make_pdt, call) -> dict:
        model = mlp(8, 16, 3)
        pdt = make_pdt(model)
        for epoch in range(EPOCHS):
            train_epoch(model, pdt.optimizer, x, y, 0, 1)
            start = time.monotonic()
            message = error(lambda: call(pdt, epoch))
            if message is not None:
                return {"message": message, "epoch": epoch, "seconds": time.monotonic() - start}
        return {"message": None}

    def skip(pdt, epoch):
        if not (rank == 1 and epoch == 3):
            pdt.step()

    def repeat(pdt, epoch):
        pdt.step()
        if rank == 0 and epoch == 3:
            pdt.step()

    def raise_once(pdt, epoch):
        if rank == 1 and epoch == 3:
            pdt._pass = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected"))
            try:
                pdt.step()
            except RuntimeError as e:
                assert str(e) == "injected", e
            del pdt._pass
        else:
            pdt.step()

    def sharded_pdt(model):  # each rank trains and predicts its half of the parameters
        return hand_sharded(model, rank, world)

    def replicated_pdt(model):
        return DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.1), **PDT_ARGS)

    return {
        "sharded_skip": train(sharded_pdt, skip),
        "ddp_repeat": train(replicated_pdt, repeat),
        "sharded_raise_and_go_on": train(sharded_pdt, raise_once),
    }


def verify_nans(rank: int, world: int) -> dict:
    """verify=True with NaNs: equal NaNs on both ranks are equal; a NaN on one rank only is not."""
    model = mlp(8, 16, 3)
    pdt = DistributedPDT(torch.optim.SGD(model.parameters()), **PDT_ARGS, verify=True)
    weight = next(model.parameters())
    with torch.no_grad():
        weight[0, 0] = float("nan")
        weight[1, 1] = float("nan") if rank == 0 else -float("nan")  # NaNs of other bit patterns
    same = error(pdt.step)
    with torch.no_grad():
        weight[2, 2] = float("nan") if rank == 0 else 1.0
    return {"same": same, "differ": error(pdt.step)}


def resume_apart(rank: int, world: int, tmp: str) -> dict:
    """Ranks that resume different checkpoints of the same epoch: every rank raises at its first step."""
    x, y = data(8, 3)

    def trained(seed: int, make) -> tuple[nn.Module, DistributedPDT]:
        model = mlp(8, 16, 3)
        torch.manual_seed(seed)
        with torch.no_grad():  # another run: other initial weights
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        pdt = make(model)
        for _ in range(4):
            train_epoch(model, pdt.optimizer, x, y, 0, 1)
            pdt.step()
        return model, pdt

    def replicated_pdt(model):
        return DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.1), **PDT_ARGS)

    def first_step(make, state) -> str | None:
        model, pdt = trained(0, make)
        if state is not None:
            pdt.load_state_dict(state)
        train_epoch(model, pdt.optimizer, x, y, 0, 1)
        return error(pdt.step)

    run_a, run_b = trained(1, replicated_pdt)[1].state_dict(), trained(2, replicated_pdt)[1].state_dict()
    sharded_a = trained(1, lambda model: hand_sharded(model, rank, world))[1].state_dict()
    torch.save(sharded_a, f"{tmp}/sharded_a_rank{rank}.pt")
    dist.barrier()
    other_rank = torch.load(f"{tmp}/sharded_a_rank{1 - rank}.pt", weights_only=False)
    out = {
        "same": first_step(replicated_pdt, run_a),
        "ddp_other_run": first_step(replicated_pdt, run_a if rank == 0 else run_b),
        "ddp_only_one": first_step(replicated_pdt, run_a if rank == 1 else None),
        "sharded_own": first_step(lambda model: hand_sharded(model, rank, world), sharded_a),
    }
    # Rank 1 loads rank 0's file: refused there at once; rank 0 (its own file) learns at its first step.
    model, pdt = trained(0, lambda model: hand_sharded(model, rank, world))
    out["sharded_other_rank_load"] = error(lambda: pdt.load_state_dict(sharded_a if rank == 0 else other_rank))
    train_epoch(model, pdt.optimizer, x, y, 0, 1)
    out["sharded_other_rank_step"] = error(pdt.step)
    return out


def two_instances(rank: int, world: int) -> dict:
    """Two sharded PDT instances (Gram messages of different sizes), stepped in another order on rank 1."""
    model = mlp(8, 16, 3)
    a = hand_sharded(model, rank, world)
    b = hand_sharded(model, rank, world, history=4)
    first, second = (a, b) if rank == 0 else (b, a)
    return {"first": error(first.step), "second": error(second.step)}


def rates_apart(rank: int, world: int) -> dict:
    """horizon_by="lr": equal rates step on; rank 1 at another rate (or one bit off) makes every rank refuse,
    unchanged."""
    model = mlp(8, 16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pdt = DistributedPDT(opt, **PDT_ARGS, horizon_by="lr")
    equal = error(pdt.step)
    opt.param_groups[0]["lr"] = 0.1 if rank == 0 else 0.05
    before = pdt.state_dict()
    apart = error(pdt.step)
    opt.param_groups[0]["lr"] = 0.1 if rank == 0 else math.nextafter(0.1, 1.0)  # apart by one bit
    ulp = error(pdt.step)
    return {"equal": equal, "apart": apart, "ulp": ulp, "unchanged": str(pdt.state_dict()) == str(before)}


def uneven_inputs(rank: int, world: int) -> dict:
    """DDP under Join: rank 1 has one batch fewer in epoch 2 (or none at all: ``empty_epoch``); with and
    without the PDT in Join. Each run records its misuse warnings."""
    import warnings

    from torch.distributed.algorithms.join import Join

    from torch_pdt.misuse import PDTMisuseWarning

    x, y = data(8, 3)

    def train(with_pdt: bool, missing: int = 1) -> dict:
        model = nn.parallel.DistributedDataParallel(mlp(8, 16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        pdt = DistributedPDT(opt, **PDT_ARGS, verify=True)
        stats = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PDTMisuseWarning)
            for epoch in range(6):
                part = GLOBAL_BATCH // world
                batches = range(0, len(x) - (missing * GLOBAL_BATCH if rank == 1 and epoch == 2 else 0), GLOBAL_BATCH)
                with Join([model, pdt] if with_pdt else [model]):
                    for i in batches:
                        opt.zero_grad()
                        lo = i + rank * part
                        nn.functional.mse_loss(model(x[lo : lo + part]), y[lo : lo + part]).backward()
                        opt.step()
                message = error(pdt.step)
                if message is not None:
                    return {"message": message, "epoch": epoch}
                stats.append(pdt.last_stats["predicted"])
        misuse = [str(w.message) for w in caught if issubclass(w.category, PDTMisuseWarning)]
        return {"message": None, "predicted": stats, "after": flat(model), "misuse": misuse}

    model = nn.parallel.DistributedDataParallel(mlp(8, 16, 3))
    step_mode = DistributedPDT(torch.optim.SGD(model.parameters()), **PDT_ARGS, every_n_steps=2)
    return {
        "joined": train(True),
        "not_joined": train(False),
        "empty_epoch": train(True, missing=len(x) // GLOBAL_BATCH),
        "step_mode": error(lambda: Join([model, step_mode])),
    }


def raise_in_pass(rank: int, world: int) -> None:
    x, y = data(8, 3)
    model = mlp(8, 16, 3)
    params = list(model.parameters())

    def make(opt):
        pdt = DistributedPDT(torch.optim.SGD(params[rank::world], lr=0.1), **PDT_ARGS, sharded=True)
        if rank == 1:
            pdt._pass = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected failure in the prediction pass"))
        return pdt

    run(model, make, x, y, 0, 1)


def main() -> None:
    out_dir = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out_dir}/store",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),  # a rank left waiting fails after this instead of hanging
    )
    result = {
        "ddp": replicated(rank, world),
        "fsdp": sharded(rank, world),
        "fsdp_layer": sharded_layerwise(rank, world),
        "fsdp_linear": sharded_linear(rank, world),
        "lost": lost_snapshot(rank, world),
        "ddp_adaptive": ddp_adaptive(rank, world),
        "fsdp_adaptive": fsdp_adaptive(rank, world),
        "settings": mismatched_settings(rank, world),
        "out_of_step": out_of_step(rank, world),
        "verify_nans": verify_nans(rank, world),
        "resume_apart": resume_apart(rank, world, out_dir),
        "two_instances": two_instances(rank, world),
        "uneven": uneven_inputs(rank, world),
        "rates_apart": rates_apart(rank, world),
    }
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    raise_in_pass(rank, world)


if __name__ == "__main__":
    main()
