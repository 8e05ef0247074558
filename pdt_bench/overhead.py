r"""``pdt-bench overhead``: what one PDT step costs, against the memory-traffic floor.

A PDT step at the end of an epoch copies the parameters into the snapshot history and, when
it predicts, reads the ``h`` snapshots and writes the parameters: at least
:math:`(h + 3) N` values of memory traffic. The command measures, in one run on one device:

* the copy bandwidth (``dst.copy_(src)`` on ``N`` values; bytes read plus written per second),
  hence the floor :math:`(h + 3) N \cdot \text{bytes} / \text{bandwidth}`;
* the PDT step time over ``--repeat`` predictions (median and spread) and its parts:
  snapshot copy-in fused with the Gram update (and, for comparison, a plain copy of the same
  size), PDT's checks of the optimizer and the parameters' layouts, the ``h x h`` algebra,
  the predict-mask-assemble pass; for each ``--kernel``
  (default both: the eager passes and the compiled ones of :mod:`torch_pdt.kernel`, after
  a first prediction that compiles them, timed apart), each against the floor of its own run;
* the extra memory PDT holds (RSS on CPU, the CUDA allocator on GPU) against ``h N`` values;
* ``--scope layer``, ``--graded``, ``--criterion`` and ``--on-jump`` time those options (one
  tensor of ``N``: the per-tensor code paths, one operator; ``--on-jump`` gives SGD momentum
  buffers to scale);
* with ``--naive``, the straightforward implementation (:mod:`torch_pdt.reference`, in float32) on the same
  snapshots; with ``--sweep``, the step time for ``N`` in 1M, 10M, 57M and 100M.

The snapshots follow a synthetic but training-like trajectory: every weight drifts with a
geometrically decaying velocity (a slow mode, 0.9 per epoch) plus, with ``--trajectory noisy``
(the default), independent per-epoch noise of a third of the drift, so PDT accepts part of the
elements, as in real training. ``--trajectory smooth`` drops the noise: a history of rank two
but for float32 rounding, as late in training at a small learning rate, whose first Cholesky-QR
pass is not accurate enough, so every prediction takes the second Gram pass.

``--tensors T`` splits the ``N`` parameters into ``T`` tensors (the per-tensor costs: a model of
many small biases and norms) and times one tensor of ``N`` in the same run, for the ratio. The
report says which passes ran (eager or compiled, and how many Gram passes) and the step against
the floor of its own run.
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
from .compare import _positive, check_device
from .report import markdown_table

__all__ = [
    "PAPER_TABLE_8",
    "add_command",
    "copy_seconds",
    "format_comparison",
    "format_report",
    "format_sweep",
    "format_tensor_ratios",
    "measure",
    "parse_count",
    "passes_run",
    "split_sizes",
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


TRAJECTORIES = ("noisy", "smooth")
"""``--trajectory``: the drift with per-epoch noise of a third of it, or the drift alone."""

NOISE = {"noisy": 0.3e-3, "smooth": 0.0}
"""Per-epoch noise of each trajectory (the drift starts at 1e-3 per epoch)."""


class Trajectory:
    """Training-like weights for ``n`` parameters, advanced in place one epoch at a time."""

    def __init__(self, n: int, device: torch.device, seed: int = 0, kind: str = "noisy") -> None:
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.weights = 0.05 * torch.randn(n, generator=self.g, device=device)
        self.velocity = 1e-3 * torch.randn(n, generator=self.g, device=device)
        self.noise = torch.zeros(n, device=device)
        self.scale = NOISE[kind]

    def advance(self, params: list[torch.Tensor]) -> None:
        """One epoch: drift, decay the drift, add noise; the optimizer's result goes into ``params``
        (the weights split in order)."""
        self.weights += self.velocity
        self.velocity *= 0.9
        if self.scale:
            torch.randn(self.noise.shape, generator=self.g, out=self.noise)
            self.weights.add_(self.noise, alpha=self.scale)
        with torch.no_grad():
            torch._foreach_copy_(params, list(self.weights.split([p.numel() for p in params])))


def split_sizes(n: int, tensors: int) -> list[int]:
    """``n`` elements as ``tensors`` sizes differing by at most one."""
    if not 1 <= tensors <= n:
        raise ValueError(f"--tensors must be in [1, N = {n}], got {tensors}")
    base, extra = divmod(n, tensors)
    return [base + 1] * extra + [base] * (tensors - extra)


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


def _parameters(device: torch.device, sizes: list[int], on_jump: str) -> tuple[list[nn.Parameter], torch.optim.SGD]:
    """Zero parameters of ``sizes`` and an SGD that never moves them; where ``on_jump`` acts on the
    optimizer's state, with momentum buffers for it to act on."""
    params = [nn.Parameter(torch.zeros(size, device=device)) for size in sizes]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9 if on_jump != "keep" else 0.0)
    for p in params if on_jump != "keep" else ():
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    return params, opt


def _start_compiler(device: torch.device, sizes: list[int], trajectory: str, options: dict[str, Any]) -> float | None:
    """Run PDT once on the measured layout (``sizes``) and ``trajectory`` up to its first prediction, so
    that its passes (the second Gram pass too, where the trajectory takes it) are compiled before the
    memory is read: the memory measured next is PDT's, without the compiler's modules and kernels
    (about 100 MB on CPU, paid once per process and layout, whatever N). Returns the seconds of that
    first prediction, the compile time; ``None`` where the passes ran eager (``kernel="auto"`` chooses
    as for the measured run: the same layout)."""
    weights = Trajectory(sum(sizes), device, kind=trajectory)
    params, opt = _parameters(device, sizes, options["on_jump"])
    pdt = PDT(opt, **options)
    for _ in range(options["history"]):
        weights.advance(params)
        start = time.perf_counter()
        pdt.step()
    seconds = time.perf_counter() - start
    compiled = pdt._passes.compiled is not None
    pdt.close()
    return seconds if compiled else None


def _compiler_words(r: dict[str, Any]) -> str:
    return ", compiled before" if r.get("compile") is not None else ""


def _compile_words(r: dict[str, Any]) -> str | None:
    if r.get("compile") is None:
        return None
    return f"  compile                   {r['compile']:9.2f} s (a first prediction on the same layout, before)"


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
    criterion: str = "pdt",
    on_jump: str = "keep",
    trajectory: str = "noisy",
    tensors: int = 1,
) -> dict[str, Any]:
    """Time ``repeat`` PDT prediction steps on ``n`` float32 parameters in ``tensors`` tensors
    along a ``trajectory`` (:data:`TRAJECTORIES`); see the module docstring.

    Returns times in seconds (lists, one entry per repetition) and memory in bytes.
    """
    dev = torch.device(device)
    weights = Trajectory(n, dev, kind=trajectory)
    sizes = split_sizes(n, tensors)
    # Measured on buffers that exist anyway, so that no transient allocation raises the
    # process's peak memory before PDT's is measured.
    copies = copy_seconds(weights.weights, weights.noise, repeat)
    kwargs = {"chunk_size": chunk_size} if chunk_size else {}
    options = dict(history=history, horizon=horizon, start_epoch=history - 1, interval=0, storage=storage)
    options |= dict(kernel=kernel, scope=scope, graded=graded, criterion=criterion, on_jump=on_jump, **kwargs)
    compile_seconds = _start_compiler(dev, sizes, trajectory, options) if kernel != "eager" else None
    params, opt = _parameters(dev, sizes, on_jump)
    gc.collect()
    memory.reset_peak(dev)
    before = memory.current(dev)
    pdt = PDT(opt, **options)
    log: dict[str, list[float]] = {"push": [], "pass": [], "step": [], "second": [], "checks": []}
    pdt._validate = _timed(pdt._validate, log["checks"], dev)
    pdt._history.push = _timed(pdt._history.push, log["push"], dev)
    pdt._pass = _timed(pdt._pass, log["pass"], dev)
    pdt._passes.gram = _timed(pdt._passes.gram, log["second"], dev)
    step = _timed(pdt.step, log["step"], dev)
    # h steps: the history fills and the last one predicts once (for "eager", the first call of each op).
    for _ in range(history):
        weights.advance(params)
        step()
    first = log["step"][-1]
    for key in log:
        log[key].clear()
    stats = []
    for _ in range(repeat):
        weights.advance(params)
        stats.append(step())
    # The second Gram pass runs at most once per step: its time, or 0 where it did not run.
    second = iter(log["second"])
    seconds = [next(second) if s.get("gram_passes", 0) > 1 else 0.0 for s in stats]
    result: dict[str, Any] = {
        "n": n,
        "history": history,
        "horizon": horizon,
        "device": str(dev),
        "storage": storage,
        "scope": scope,
        "graded": graded,
        "criterion": criterion,
        "on_jump": on_jump,
        "trajectory": trajectory,
        "tensors": tensors,
        "kernel": "compiled" if pdt._passes.compiled is not None else "eager",
        "threads": torch.get_num_threads(),
        "copy": copies,
        "step": log["step"],
        "first_prediction": first,
        "compile": compile_seconds,
        "copy_in_gram": log["push"],
        "second_gram": seconds,
        "pass": log["pass"],
        "checks": log["checks"],
        "algebra": [
            s - p - g - q - c for s, p, g, q, c in zip(log["step"], log["push"], seconds, log["pass"], log["checks"])
        ],
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


def passes_run(r: dict[str, Any]) -> str:
    """Which passes the timed steps ran, and how: copy-in, the second Gram pass (in how many steps), predict."""
    second = sum(p > 1 for p in r["gram_passes"])
    return (
        f"copy-in+Gram {r['kernel']}, second Gram pass {r['kernel'] if second else 'not needed'} "
        f"({second} of {len(r['gram_passes'])} steps), predict+mask+assemble {r['kernel']}"
    )


def _second_read_words(r: dict[str, Any], step: float, floor: float) -> str | None:
    """Where the second Gram pass ran, the floor of a step that reads the snapshots twice: (2h + 3) N values."""
    if not any(p > 1 for p in r["gram_passes"]):
        return None
    h = r["history"]
    twice = floor * (2 * h + 3) / (h + 3)
    return f"  step / (2h+3) N 4 B floor  {step / twice:9.2f}   (the second Gram pass reads the h snapshots again)"


def format_report(r: dict[str, Any]) -> str:
    n, h = r["n"], r["history"]
    vector = 4 * n
    bandwidth = 2 * vector / statistics.median(r["copy"])
    floor = floor_seconds(r)
    step = statistics.median(r["step"])
    lines = [
        f"PDT step, {r['kernel']} passes, N = {n:,} float32 parameters in {r['tensors']:,} tensor(s), h = {h}, "
        f"tau = {r['horizon']}, scope {r['scope']}{', graded' if r['graded'] else ''}, "
        f"criterion {r['criterion']}, on_jump {r['on_jump']}, "
        f"{r['trajectory']} trajectory, device {r['device']}, storage {r['storage']}, {r['threads']} thread(s), "
        f"{len(r['step'])} repetitions (median [min - max])",
        f"  passes run                {passes_run(r)}",
        *filter(None, [_compile_words(r)]),
        f"  first prediction          {r['first_prediction']:9.2f} s",
        f"  step                      {_ms(r['step'])}",
        f"    copy-in + Gram update   {_ms(r['copy_in_gram'])}",
        f"      (plain copy of N)     {_ms(r['copy'])}",
        f"    second Gram pass        {_ms(r['second_gram'])}",
        f"    checks                  {_ms(r['checks'])}",
        f"    h x h algebra           {_ms(r['algebra'])}",
        f"    predict+mask+assemble   {_ms(r['pass'])}",
        f"  copy bandwidth            {bandwidth / 1e9:9.2f} GB/s (bytes read + written)",
        f"  floor (h+3) N 4 B / bw    {1e3 * floor:9.1f} ms",
        *filter(None, [_cache_words(r)]),
        f"  step / floor              {step / floor:9.2f}",
        *filter(None, [_second_read_words(r, step, floor)]),
        f"  extra memory              {r['memory'] / 2**20:9.0f} MB ({r['memory_kind']}{_compiler_words(r)}); "
        "snapshots h N 4 B = "
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
    """One row per run (kernel, tensors): the step, its parts and the floor, all medians in ms."""
    rows = []
    for r in results:
        parts = [statistics.median(r[k]) for k in ("step", "copy_in_gram", "second_gram", "checks", "algebra", "pass")]
        floor = floor_seconds(r)
        rows.append(
            [r["kernel"], str(r["tensors"]), *(f"{1e3 * t:.1f}" for t in [*parts, floor]), f"{parts[0] / floor:.2f}"]
        )
    header = [
        "kernel",
        "tensors",
        "step",
        "copy-in+Gram",
        "2nd Gram",
        "checks",
        "algebra",
        "pass",
        "floor",
        "step/floor",
    ]
    return markdown_table(header, rows)


def format_tensor_ratios(results: list[dict[str, Any]]) -> str:
    """Per kernel, the step with many tensors against the step with one tensor of the same size: each
    run with many tensors against the one-tensor run measured just before it (``pdt-bench overhead``'s
    order). ``kernel="auto"`` may choose eager passes for one tensor and compiled ones for many: said."""
    lines = []
    for i, many in enumerate(results):
        if many["tensors"] == 1:
            continue
        one = results[i - 1]
        ratio = statistics.median(many["step"]) / statistics.median(one["step"])
        other = f" ({one['kernel']})" if one["kernel"] != many["kernel"] else ""
        lines.append(
            f"{many['kernel']}: the step with {many['tensors']:,} tensors is {ratio:.2f}x the step with one{other}"
        )
    return "\n".join(lines)


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
    # Every option before the first measurement: a bad one was found after minutes of timing.
    check_device(args.device)
    n = None if args.sweep else parse_count(args.params)
    if n is not None and args.tensors > n:
        raise ValueError(f"--tensors must be in [1, N = {n}], got {args.tensors}")
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
        criterion=args.criterion,
        on_jump=args.on_jump,
        trajectory=args.trajectory,
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
    layouts = (1, args.tensors) if args.tensors > 1 else (1,)
    for i, kernel in enumerate(kernels):
        for tensors in layouts:
            naive = args.naive and i == 0 and tensors == 1
            results.append(measure(n, with_naive=naive, kernel=kernel, tensors=tensors, **common))
            print(format_report(results[-1]))
            gc.collect()
    if len(results) > 1:
        print(format_comparison(results))
    if args.tensors > 1:
        print(format_tensor_ratios(results))
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench overhead`` sub-command."""
    p = sub.add_parser("overhead", help="time one PDT step against the memory-traffic floor")
    p.add_argument("--params", default="57M", help="number of parameters N, e.g. 57M, 500k (default 57M)")
    p.add_argument("--history", type=int, default=5, help="h, snapshots fitted (default 5)")
    p.add_argument("--horizon", type=int, default=5, help="tau, epochs predicted ahead (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--storage", choices=["same", "cpu", "bf16"], default="same", help="snapshot storage")
    p.add_argument("--repeat", type=_positive(int), default=5, help="timed prediction steps (default 5)")
    p.add_argument("--chunk-size", type=_positive(int), help="elements per chunk (default: PDT's)")
    p.add_argument("--threads", type=_positive(int), help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--kernel",
        choices=["both", "eager", "compiled", "auto"],
        default="both",
        help="PDT's passes to time (default both: eager, then compiled)",
    )
    p.add_argument("--scope", choices=["model", "layer"], default="model", help="PDT's scope (default model)")
    p.add_argument("--graded", action="store_true", help="PDT's graded horizon")
    p.add_argument("--criterion", default="pdt", help="PDT's criterion (default pdt)")
    p.add_argument("--on-jump", default="keep", help="PDT's on_jump (default keep)")
    p.add_argument(
        "--trajectory",
        choices=TRAJECTORIES,
        default="noisy",
        help="the weights' history: drift and noise, or a smooth drift that takes the second Gram pass (default noisy)",
    )
    p.add_argument(
        "--tensors",
        type=_positive(int),
        default=1,
        help="split N into this many tensors, and time one tensor beside (default 1)",
    )
    p.add_argument("--naive", action="store_true", help="also time the straightforward implementation")
    p.add_argument("--sweep", action="store_true", help="time N = 1M, 10M, 57M, 100M instead")
    p.set_defaults(func=_overhead)
