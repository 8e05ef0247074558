r"""``pdt-bench overhead``: what one PDT step costs, against the memory-traffic floor.

A PDT step at the end of an epoch copies the parameters into the snapshot history and, when
it predicts, reads the ``h`` snapshots and writes the parameters: at least
:math:`(h + 3) N` values of memory traffic. The command measures, in one run on one device:

* the copy bandwidth (``dst.copy_(src)`` on ``N`` values; bytes read plus written per second),
  hence the floor :math:`(h + 3) N \cdot \text{bytes} / \text{bandwidth}`;
* the PDT step time over ``--repeat`` predictions (median and spread) and its parts:
  snapshot copy-in fused with the Gram update (and, for comparison, a plain copy of the same
  size), the ``h x h`` algebra, the predict-mask-assemble pass; for each ``--kernel``
  (default both: the eager passes and the compiled ones of :mod:`torch_pdt.kernel`, after
  an untimed prediction that compiles them), each against the floor of its own run;
* the extra memory PDT holds (RSS on CPU, the CUDA allocator on GPU) against ``h N`` values;
* ``--scope layer`` and ``--graded`` time those options (one tensor of ``N``: the per-tensor code
  paths, one operator);
* with ``--naive``, the straightforward implementation (:mod:`torch_pdt.reference`, in float32) on the same
  snapshots; with ``--sweep``, the step time for ``N`` in 1M, 10M, 57M and 100M.

The snapshots follow a synthetic but training-like trajectory: every weight drifts with a
geometrically decaying velocity (a slow mode, 0.9 per epoch) plus independent per-epoch noise
of a third of the drift, so PDT accepts part of the elements, as in real training.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_pdt import PDT, reference

from . import memory
from .report import markdown_table

__all__ = [
    "PAPER_TABLE_8",
    "add_command",
    "copy_seconds",
    "format_comparison",
    "format_report",
    "format_sweep",
    "measure",
    "parse_count",
]

PAPER_TABLE_8 = (
    "Paper, Table 8 (AlexNet, 57M parameters, CIFAR-10, h = 5, RTX A6000): memory overhead 8422 MB "
    "(snapshots 1088, SVD workspace 1741, other 5593); core PDT time 194.0 ms per epoch "
    "(SVD 98.3, prediction 88.1, masking 7.6) plus 138.8 ms auxiliary (cloning, synchronisation)."
)

SWEEP = (1_000_000, 10_000_000, 57_000_000, 100_000_000)


def parse_count(text: str) -> int:
    """``"57M"`` -> 57000000; also ``k`` and plain integers."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    value = float(text[:-1] if scale > 1 else text)
    if value <= 0:
        raise ValueError(f"--params must be positive, got {text!r}")
    return int(value * scale)


class Trajectory:
    """Training-like weights for ``n`` parameters, advanced in place one epoch at a time."""

    def __init__(self, n: int, device: torch.device, seed: int = 0) -> None:
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.weights = 0.05 * torch.randn(n, generator=self.g, device=device)
        self.velocity = 1e-3 * torch.randn(n, generator=self.g, device=device)
        self.noise = torch.zeros(n, device=device)

    def advance(self, param: torch.Tensor) -> None:
        """One epoch: drift, decay the drift, add noise; the optimizer's result goes into ``param``."""
        self.weights += self.velocity
        self.velocity *= 0.9
        torch.randn(self.noise.shape, generator=self.g, out=self.noise)
        self.weights.add_(self.noise, alpha=0.3e-3)
        with torch.no_grad():
            param.copy_(self.weights)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, log: list[float], device: torch.device) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        log.append(time.perf_counter() - start)
        return out

    return wrapper


def copy_seconds(src: torch.Tensor, dst: torch.Tensor, repeat: int) -> list[float]:
    """Times of ``dst.copy_(src)`` (after one warm-up copy)."""
    device = src.device
    dst.copy_(src)
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(
    n: int,
    history: int = 5,
    horizon: int = 5,
    device: str = "cpu",
    storage: str = "same",
    repeat: int = 5,
    chunk_size: int | None = None,
    with_naive: bool = False,
    kernel: str = "eager",
    scope: str = "model",
    graded: bool = False,
) -> dict[str, Any]:
    """Time ``repeat`` PDT prediction steps on ``n`` float32 parameters; see the module docstring.

    Returns times in seconds (lists, one entry per repetition) and memory in bytes.
    """
    dev = torch.device(device)
    trajectory = Trajectory(n, dev)
    param = nn.Parameter(torch.zeros(n, device=dev))
    # Measured on buffers that exist anyway, so that no transient allocation raises the
    # process's peak memory before PDT's is measured.
    copies = copy_seconds(trajectory.weights, param.data, repeat)
    opt = torch.optim.SGD([param], lr=0.0)
    gc.collect()
    memory.reset_peak(dev)
    before = memory.current(dev)
    kwargs = {"chunk_size": chunk_size} if chunk_size else {}
    pdt = PDT(
        opt,
        history=history,
        horizon=horizon,
        start_epoch=history - 1,
        interval=0,
        storage=storage,
        kernel=kernel,
        scope=scope,
        graded=graded,
        **kwargs,
    )
    log: dict[str, list[float]] = {"push": [], "pass": [], "step": []}
    pdt._history.push = _timed(pdt._history.push, log["push"], dev)
    pdt._pass = _timed(pdt._pass, log["pass"], dev)
    step = _timed(pdt.step, log["step"], dev)
    # h steps: the history fills and the last one predicts once (compiling, for "compiled").
    for _ in range(history):
        trajectory.advance(param)
        step()
    for key in log:
        log[key].clear()
    stats = []
    for _ in range(repeat):
        trajectory.advance(param)
        stats.append(step())
    result: dict[str, Any] = {
        "n": n,
        "history": history,
        "horizon": horizon,
        "device": str(dev),
        "storage": storage,
        "scope": scope,
        "graded": graded,
        "kernel": "compiled" if pdt._history.fused is not None else "eager",
        "threads": torch.get_num_threads(),
        "copy": copies,
        "step": log["step"],
        "copy_in_gram": log["push"],
        "pass": log["pass"],
        "algebra": [s - p - q for s, p, q in zip(log["step"], log["push"], log["pass"])],
        "accepted_ratio": [s["accepted_ratio"] for s in stats],
        "gram_passes": [s.get("gram_passes", 0) for s in stats],
        "snapshot_bytes": pdt.snapshot_bytes,
    }
    result["memory"] = memory.peak(dev) - before
    result["memory_kind"] = f"{memory.kind(dev)} peak delta"
    if dev.type != "cuda":
        result["memory_held"] = memory.current(dev) - before
    if with_naive:
        snapshots = [s.to(dev, torch.float32) for s in pdt.state_dict()["history"]["snapshots"][0]]
        del pdt
        gc.collect()
        weights = snapshots[-1].clone()
        naive_times = []
        memory.reset_peak(dev)
        before = memory.current(dev)
        for _ in range(repeat):
            weights.copy_(snapshots[-1])
            _sync(dev)
            start = time.perf_counter()
            reference.step(snapshots, weights, horizon, dtype=torch.float32)
            _sync(dev)
            naive_times.append(time.perf_counter() - start)
        result["naive"] = naive_times
        result["naive_memory"] = memory.peak(dev) - before
    return result


def _ms(times: list[float]) -> str:
    """Median and spread (min-max) in milliseconds."""
    return f"{1e3 * statistics.median(times):9.1f} ms  [{1e3 * min(times):.1f} - {1e3 * max(times):.1f}]"


ASSUMED_CACHE = 32 * 2**20
"""Last-level cache assumed when the machine does not say (sysfs, CUDA): 32 MiB, a server CPU's L3
slice or a large GPU's L2 (an H100 has 50 MB)."""


def last_level_cache(device: torch.device) -> tuple[int, str]:
    """Bytes of the last-level cache serving ``device`` and where the figure comes from."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return (size, "CUDA L2") if size else (ASSUMED_CACHE, "assumed")
    levels = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = (index / "level").read_text(), (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        levels.append((int(level), int(size.rstrip("KMG")) * scale))
    if not levels:
        return ASSUMED_CACHE, "assumed"
    level, size = max(levels)
    return size, f"L{level}, sysfs"


def _cache_words(r: dict[str, Any]) -> str | None:
    """When the copy that sets the floor fits in the last-level cache, the floor is the cache's, not memory's."""
    size, source = last_level_cache(torch.device(r["device"]))
    moved = 2 * 4 * r["n"]
    if moved > size:
        return None
    return (
        f"  (a cache floor: the copy of 2 N 4 B = {moved / 2**20:.1f} MB fits in the {size / 2**20:.0f} MB "
        f"last-level cache ({source}); memory bandwidth sets the floor only for larger N)"
    )


def floor_seconds(r: dict[str, Any]) -> float:
    """(h + 3) N float32 values at the measured copy bandwidth: a copy moves 2 N of them."""
    return (r["history"] + 3) / 2 * statistics.median(r["copy"])


def format_report(r: dict[str, Any]) -> str:
    n, h = r["n"], r["history"]
    vector = 4 * n
    bandwidth = 2 * vector / statistics.median(r["copy"])
    floor = floor_seconds(r)
    step = statistics.median(r["step"])
    lines = [
        f"PDT step, {r['kernel']} passes, N = {n:,} float32 parameters, h = {h}, tau = {r['horizon']}, "
        f"scope {r['scope']}{', graded' if r['graded'] else ''}, "
        f"device {r['device']}, storage {r['storage']}, {r['threads']} thread(s), {len(r['step'])} repetitions "
        "(median [min - max])",
        f"  step                      {_ms(r['step'])}",
        f"    copy-in + Gram update   {_ms(r['copy_in_gram'])}",
        f"      (plain copy of N)     {_ms(r['copy'])}",
        f"    h x h algebra           {_ms(r['algebra'])}   Gram passes: {sorted(set(r['gram_passes']))}",
        f"    predict+mask+assemble   {_ms(r['pass'])}",
        f"  copy bandwidth            {bandwidth / 1e9:9.2f} GB/s (bytes read + written)",
        f"  floor (h+3) N 4 B / bw    {1e3 * floor:9.1f} ms",
        *filter(None, [_cache_words(r)]),
        f"  step / floor              {step / floor:9.2f}",
        f"  extra memory              {r['memory'] / 2**20:9.0f} MB ({r['memory_kind']}); snapshots h N 4 B = "
        f"{h * vector / 2**20:.0f} MB; budget h N 4 B + N 4 B + 64 MB = {((h + 1) * vector) / 2**20 + 64:.0f} MB",
        f"  accepted ratio            {statistics.median(r['accepted_ratio']):9.3f}",
    ]
    if "memory_held" in r:
        lines.insert(-1, f"  memory held after steps   {r['memory_held'] / 2**20:9.0f} MB (RSS delta)")
    if "naive" in r:
        naive_step = statistics.median(r["naive"])
        lines += [
            f"  naive step (SVD, N x r complex modes, pinv) {_ms(r['naive'])}",
            f"    naive / PDT step        {naive_step / step:9.1f}x; naive extra memory "
            f"{r['naive_memory'] / 2**20:.0f} MB beyond its own snapshots",
        ]
    lines.append("  " + PAPER_TABLE_8)
    return "\n".join(lines)


def format_comparison(results: list[dict[str, Any]]) -> str:
    """One row per kernel: the step, its parts and the floor, all medians in ms."""
    rows = []
    for r in results:
        parts = [statistics.median(r[k]) for k in ("step", "copy_in_gram", "algebra", "pass")]
        floor = floor_seconds(r)
        rows.append([r["kernel"], *(f"{1e3 * t:.1f}" for t in [*parts, floor]), f"{parts[0] / floor:.2f}"])
    return markdown_table(["kernel", "step", "copy-in+Gram", "algebra", "pass", "floor", "step/floor"], rows)


def format_sweep(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        step = statistics.median(r["step"])
        floor = floor_seconds(r)
        rows.append(
            [
                f"{r['n']:,}",
                r["kernel"],
                f"{1e3 * step:.1f}",
                f"{1e3 * floor:.1f}" + (" (cache)" if _cache_words(r) else ""),
                f"{step / floor:.2f}",
                f"{1e9 * step / r['n']:.2f}",
                f"{r['memory'] / 2**20:.0f}",
            ]
        )
    table = markdown_table(["N", "kernel", "step ms", "floor ms", "ratio", "ns / param", "extra MB"], rows)
    return table + "\n(cache): a cache floor, the copy of 2 N 4 B fits in the last-level cache."


def _overhead(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(
        history=args.history,
        horizon=args.horizon,
        device=args.device,
        storage=args.storage,
        repeat=args.repeat,
        chunk_size=args.chunk_size,
        scope=args.scope,
        graded=args.graded,
    )
    kernels = ("eager", "compiled") if args.kernel == "both" else (args.kernel,)
    if args.sweep:
        results = []
        for n in SWEEP:
            for kernel in kernels:
                results.append(measure(n, kernel=kernel, **common))
                gc.collect()
        print(f"PDT step time against N (h = {args.history}, tau = {args.horizon}, device {args.device})")
        print(format_sweep(results))
        return 0
    results = []
    for i, kernel in enumerate(kernels):
        results.append(measure(parse_count(args.params), with_naive=args.naive and i == 0, kernel=kernel, **common))
        print(format_report(results[-1]))
        gc.collect()
    if len(results) > 1:
        print(format_comparison(results))
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench overhead`` sub-command."""
    p = sub.add_parser("overhead", help="time one PDT step against the memory-traffic floor")
    p.add_argument("--params", default="57M", help="number of parameters N, e.g. 57M, 500k (default 57M)")
    p.add_argument("--history", type=int, default=5, help="h, snapshots fitted (default 5)")
    p.add_argument("--horizon", type=int, default=5, help="tau, epochs predicted ahead (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--storage", choices=["same", "cpu", "bf16"], default="same", help="snapshot storage")
    p.add_argument("--repeat", type=int, default=5, help="timed prediction steps (default 5)")
    p.add_argument("--chunk-size", type=int, help="elements per chunk (default: PDT's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--kernel",
        choices=["both", "eager", "compiled", "auto"],
        default="both",
        help="PDT's passes to time (default both: eager, then compiled)",
    )
    p.add_argument("--scope", choices=["model", "layer"], default="model", help="PDT's scope (default model)")
    p.add_argument("--graded", action="store_true", help="PDT's graded horizon")
    p.add_argument("--naive", action="store_true", help="also time the straightforward implementation")
    p.add_argument("--sweep", action="store_true", help="time N = 1M, 10M, 57M, 100M instead")
    p.set_defaults(func=_overhead)
