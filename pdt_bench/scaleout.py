r"""``pdt-bench scaleout``: a PDT step per rank at ``W`` ranks against one process, for DDP, FSDP2 and ZeRO-3.

Each engine runs on ``--ranks`` processes (gloo on CPU) that each hold ``N`` parameter values
(``--params``): DDP replicates a model of ``N``, FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3
shard a model of :math:`W N` over the ranks. The weights follow the training-like trajectory of
``pdt-bench overhead`` (:class:`pdt_bench.overhead.Trajectory`, its own per shard), and after
``h`` steps that fill the history (the last one predicts) every rank times ``--repeat``
predicting steps, each started at a barrier. The report gives, per engine:

* the step time (the slowest rank's median) against a one-process PDT on ``N`` values that each
  rank steps in turn with the engine's: paired measurements under the same load, whose ratio is
  what the engine's collectives and agreement add; and against one process on ``N`` values by
  itself, measured in the same run (on a machine with fewer free cores than ranks, this ratio
  also holds the ranks' competition for the cores and the memory bandwidth);
* the snapshot memory per rank, against one process holding the whole model (``N`` under DDP,
  :math:`W N` sharded: the ratio is :math:`1/W` where the snapshots shard);
* the process memory (RSS) the engine's PDT added on each rank, from before its construction to
  after the timed steps, against one process's on the whole model (the passes are compiled
  first, on a stand-in of 65,536 values: the compiler's memory is not PDT's).

Every process uses ``--threads`` torch threads (default: the cores divided by the ranks). ZeRO-3
needs DeepSpeed (``DS_ACCELERATOR=cpu`` on CPU) and is left out, with a line saying so, without
it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torch_pdt import PDT
from torch_pdt.params import local_shard

from . import memory
from .overhead import Trajectory, parse_count
from .report import markdown_table

__all__ = ["ENGINES", "add_command", "format_report", "measure_ranks"]

ENGINES = ("ddp", "fsdp2", "zero3")
COLUMNS = 64
"""Every model is one ``(rows, 64)`` weight: FSDP2 and ZeRO-3 split its rows over the ranks."""


class _Weight(nn.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, COLUMNS))


def _timed_steps(
    runs: list[tuple[PDT, Trajectory]], history: int, repeat: int, barrier: Callable[[], Any]
) -> list[dict[str, Any]]:
    """Step every PDT of ``runs`` in turn, each after its weights advanced and a barrier: ``h`` steps
    that fill the history (the last predicting), then ``repeat`` timed predicting steps.

    Taking turns pairs the measurements: each PDT is timed under the same load as the others.
    """
    flats = [[local_shard(p).view(-1) for p in pdt.params] for pdt, _ in runs]  # views: written in place
    times: list[list[float]] = [[] for _ in runs]
    stats: list[list[dict[str, Any]]] = [[] for _ in runs]
    for i in range(history + repeat):
        for j, (pdt, weights) in enumerate(runs):
            weights.advance(flats[j])
            barrier()
            start = time.perf_counter()
            stats[j].append(pdt.step())
            if i >= history:
                times[j].append(time.perf_counter() - start)
    return [
        {
            "step": times[j],
            "predicted": sum(s["predicted"] for s in stats[j][history:]),
            "passes": "compiled" if pdt._passes.compiled is not None else "eager",
            "snapshot_bytes": pdt.snapshot_bytes,
        }
        for j, (pdt, _) in enumerate(runs)
    ]


def _pdt_options(history: int, horizon: int, kernel: str) -> dict[str, Any]:
    return {"history": history, "horizon": horizon, "start_epoch": history - 1, "interval": 0, "kernel": kernel}


def _one_process(rows: int, options: dict[str, Any], seed: int) -> tuple[PDT, Trajectory]:
    """A one-process PDT on a ``(rows, 64)`` weight, and the trajectory its weights follow."""
    weight = _Weight(rows)
    pdt = PDT(torch.optim.SGD(weight.parameters(), lr=0.0), **options)
    return pdt, Trajectory(weight.weight.numel(), torch.device("cpu"), seed=seed)


def _engine(engine: str, rows: int, world: int) -> Callable[[dict[str, Any]], PDT]:
    """The engine's model of ``rows * world`` rows (DDP: ``rows``); returns what makes the PDT beside it."""
    from torch_pdt.distributed import DistributedPDT

    if engine == "alone":  # one-process PDT, no engine: the baseline
        weight = _Weight(rows)
        return lambda options: PDT(torch.optim.SGD(weight.parameters(), lr=0.0), **options)
    if engine == "ddp":
        model = nn.parallel.DistributedDataParallel(_Weight(rows))
        return lambda options: DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.0), **options)
    if engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = fully_shard(_Weight(rows * world), mesh=init_device_mesh("cpu", (world,)))
        return lambda options: DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.0), **options)
    import deepspeed

    from torch_pdt.distributed.deepspeed import DeepSpeedPDT

    model = _Weight(rows * world)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ds_engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    return lambda options: DeepSpeedPDT(ds_engine, **options)


def _rank_main(rank: int, world: int, port: int, engine: str, job: dict[str, Any], out: str) -> None:
    """One rank (started by :func:`measure_ranks`): its step times and memory into ``out/rank{rank}.json``."""
    torch.set_num_threads(job["threads"])
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if engine == "zero3":  # DeepSpeed's own set-up of the process group
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        options = _pdt_options(job["history"], job["horizon"], job["kernel"])
        rows = -(-job["n"] // COLUMNS)
        # Replicas follow one trajectory; a sharded rank's shard (rows x 64 values) its own.
        seed = rank if engine in ("fsdp2", "zero3") else 0
        # Compile the passes on a stand-in of 65,536 values first (their graphs serve every size): the
        # memory measured below is PDT's, not the compiler's.
        _timed_steps([_one_process(1024, options, seed)], job["history"], 0, barrier=lambda: None)
        # Beside an engine's, a one-process PDT on this rank's size, stepped in turn with it.
        paired = [] if engine == "alone" else [_one_process(rows, options, seed)]
        _timed_steps(paired, job["history"], 0, barrier=lambda: None)
        make_pdt = _engine(engine, rows, world)
        weights = Trajectory(rows * COLUMNS, torch.device("cpu"), seed=seed)
        gc.collect()
        before = memory.current(torch.device("cpu"))
        pdt = make_pdt(options)
        mine, *others = _timed_steps([(pdt, weights), *paired], job["history"], job["repeat"], dist.barrier)
        result = mine | {"n": rows * COLUMNS, "memory_held": memory.current(torch.device("cpu")) - before}
        result |= {"paired": others[0]["step"]} if others else {}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_ranks(engine: str, world: int, job: dict[str, Any]) -> list[dict[str, Any]]:
    """``engine`` on ``world`` processes (``job``: n, history, horizon, kernel, repeat, threads); each rank's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        files = [Path(out, f"rank{r}.json") for r in range(world)]
        try:
            mp.start_processes(
                _rank_main, args=(world, _free_port(), engine, job, out), nprocs=world, start_method="spawn"
            )
        except mp.ProcessExitedException:
            # gloo can abort a rank as the group is torn down, after every rank wrote its result
            # (seen once in five runs of the test: "terminate called without an active exception").
            # The measurement is complete then; an abort before that is an error.
            if not all(f.exists() for f in files):
                raise
        return [json.loads(f.read_text()) for f in files]


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _slowest(ranks: list[dict[str, Any]]) -> float:
    """The slowest rank's median step time: a collective step takes as long as its slowest rank."""
    return max(statistics.median(r["step"]) for r in ranks)


def format_report(rows: list[dict[str, Any]], local: dict[str, Any], whole: dict[str, Any]) -> str:
    """One line per engine: its ranks' step against the one-process PDT stepped in turn on each rank
    and against one process alone (time), and against one process on the whole model (memory)."""
    alone = statistics.median(local["step"])
    table = []
    for r in rows:
        ranks = r["ranks"]
        step = _slowest(ranks)
        paired = _slowest([{"step": x["paired"]} for x in ranks])
        base = local if r["engine"] == "ddp" else whole  # the one process holding the whole model
        snapshots = max(x["snapshot_bytes"] for x in ranks)
        table.append(
            [
                r["engine"],
                f"{len(ranks)} x {ranks[0]['passes']}",
                _ms(step),
                _ms(paired),
                f"{step / paired:.2f}",
                _ms(alone),
                f"{step / alone:.2f}",
                _mb(snapshots),
                _mb(base["snapshot_bytes"]),
                f"{snapshots / base['snapshot_bytes']:.3f}",
                _mb(max(x["memory_held"] for x in ranks)),
                _mb(base["memory_held"]),
            ]
        )
    headers = [
        "engine",
        "ranks x passes",
        "step ms",
        "1-process PDT in turn ms",
        "ratio",
        "1 process alone ms",
        "ratio",
        "snapshots MB/rank",
        "1 process MB",
        "ratio",
        "RSS MB/rank",
        "1 process RSS MB",
    ]
    return markdown_table(headers, table)


def _scaleout(args: argparse.Namespace) -> int:
    engines = list(dict.fromkeys(args.engine or ENGINES))
    if "zero3" in engines and importlib.util.find_spec("deepspeed") is None:
        print("zero3 left out: DeepSpeed is not installed (pip install 'torch-pdt[deepspeed]')")
        engines.remove("zero3")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # inherited by the ranks
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    n = parse_count(args.params)
    job = {
        "n": n,
        "history": args.history,
        "horizon": args.horizon,
        "kernel": args.kernel,
        "repeat": args.repeat,
        "threads": threads,
    }
    # One process on the local size, and one on the whole model: each in a process of its own, as
    # the ranks are (a fresh RSS, the same threads).
    local = measure_ranks("alone", 1, job)[0]
    sharded = any(e != "ddp" for e in engines)
    whole = measure_ranks("alone", 1, job | {"n": args.ranks * n, "repeat": 1})[0] if sharded else local
    rows = [{"engine": e, "ranks": measure_ranks(e, args.ranks, job)} for e in engines]
    print(
        f"PDT step per rank at W = {args.ranks} ranks (gloo, CPU, {threads} thread(s) per process): "
        f"N = {local['n']:,} values per rank, h = {args.history}, tau = {args.horizon}, kernel={args.kernel!r}, "
        f"median of {args.repeat} predicting steps (of the slowest rank)"
    )
    print(format_report(rows, local, whole))
    print(
        "In turn: a one-process PDT on N in each rank's process, stepped between the engine's steps (the same "
        "load; the ratio is what the engine adds). Alone: one process on N, by itself. Memory against one "
        f"process on the whole model ({whole['n']:,} values sharded, N under DDP)."
    )
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench scaleout`` sub-command."""
    p = sub.add_parser("scaleout", help="a PDT step per rank at W ranks against one process (DDP, FSDP2, ZeRO-3)")
    p.add_argument("--params", default="4M", help="parameter values per rank N, e.g. 4M, 500k (default 4M)")
    p.add_argument("--ranks", type=int, default=2, help="processes, gloo on CPU (default 2)")
    p.add_argument(
        "--engine", action="append", choices=ENGINES, help="engine, repeatable (default: all; zero3 if installed)"
    )
    p.add_argument("--kernel", choices=["compiled", "eager", "auto"], default="compiled", help="PDT's passes")
    p.add_argument("--history", type=int, default=5, help="h, snapshots fitted (default 5)")
    p.add_argument("--horizon", type=int, default=5, help="tau, epochs predicted ahead (default 5)")
    p.add_argument("--repeat", type=int, default=5, help="timed prediction steps (default 5)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / ranks)")
    p.set_defaults(func=_scaleout)
