"""NiNo and WNN+ (Knyazev et al., ICLR 2025) against Adam and PDT, on NiNo's own vision tasks.

NiNo nowcasts parameters: every ``period`` optimizer steps, a meta-trained graph network reads the last
``ctx = 5`` parameter states (one every ``period / ctx`` steps) and predicts the parameters ``k`` steps
ahead (``k`` shrinks over training); WNN+ is its per-parameter MLP without the graph. PDT in step mode
(:doc:`step-mode`) is the like-for-like comparison: a DMD forecast from the last ``h`` states, one state
every ``K`` optimizer steps, masked element by element.

The harness reads NiNo's public MIT code and checkpoints from a local checkout (``--nino-path``, else
``$PDT_NINO``, else ``../shared/third_party/nino`` beside the checkout); nothing of it is copied here.
Every method takes the task table and the model from NiNo's ``utils/vision.py``, loaded by file path
(it imports only numpy and torch); ``nino`` and ``wnn+`` also import NiNo's optimizer wrapper
(``optim.NiNo``), whose imports need ``torch_geometric``, ``torchvision``, ``transformers`` and
``psutil`` (the ``[peers]`` extra). Without them, or without the checkout, the peer is refused with one
line (:class:`Unavailable`) before anything runs.

The protocol, NiNo's ``train_vision.py``: AdamW at the task's learning rate (C10-16 and C10-32:
3e-3), weight decay 0, batch 128, at most 10,000 steps, a nowcast every 1,000 steps; the first 11/12
of CIFAR-10's training split (NiNo holds out the rest); accuracy on the 10,000 test images, stopping
at the task's target (C10-16: 66 %, C10-32: 72.5 %); batches reshuffled each epoch with ``seed +
epoch``, the same for every method. Deviations: the images come from the harness's CIFAR-10 reader
(:func:`pdt_bench.tasks.cifar10.load`; the shared copy is JPEG and not in the official order, so the
11/12 is another subset), and accuracy is measured every ``eval_every`` steps (NiNo: every step), so
steps to target are rounded up to a multiple of it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TextIO, TypedDict

import torch
from torch import Tensor, nn

from torch_pdt import PDT

from . import metrics, records, tasks
from .methods import METHODS as HARNESS_METHODS
from .methods import parse_method
from .report import markdown_table, to_target_cell
from .tasks import cifar10

__all__ = [
    "CHECKPOINTS",
    "METHODS",
    "NiNoConfig",
    "NiNoRun",
    "Unavailable",
    "add_command",
    "check",
    "main",
    "nino_path",
    "run",
]

SUMMARY = "NiNo and WNN+ against Adam and PDT in step mode on NiNo's C10 tasks"
"""The one-line help of ``pdt-bench nino``."""
METHODS = ("adam", "nino", "wnn+", "pdt")
"""``pdt`` takes PDT options after ``@`` (``pdt@every_n_steps=100@horizon=20``)."""
CHECKPOINTS = {"nino": "nino_no_posw.pt", "wnn+": "nino_mlp.pt"}
"""NiNo's public checkpoints: NiNo without word-position encoding (serves any model) and WNN+."""
REQUIRES = ("torch_geometric", "torchvision", "transformers", "psutil")
"""What NiNo's optimizer module imports beyond torch and numpy."""
PDT_EVERY = 200
"""PDT's default period in step mode: NiNo's spacing of states (5 per 1,000-step period), so that both
see the trajectory at the same resolution; ``pdt@every_n_steps=...`` changes it."""
EVAL_BATCH = 1_000
PDT_METHOD = HARNESS_METHODS["pdt"]


class Unavailable(RuntimeError):
    """The peer cannot run here; the message is one line: what is missing and how to provide it."""


def nino_path(path: Path | str | None = None) -> Path:
    """The NiNo checkout: ``path``, else ``$PDT_NINO``, else ``../shared/third_party/nino`` beside the checkout."""
    if path is not None:
        return Path(path)
    if os.environ.get("PDT_NINO"):
        return Path(os.environ["PDT_NINO"])
    return Path(__file__).resolve().parents[2] / "shared" / "third_party" / "nino"


def _missing_modules() -> list[str]:
    missing = []
    for name in REQUIRES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def check(method: str, path: Path) -> None:
    """Refuse, with one line, a method that cannot run: unknown, no checkout, no extra, no checkpoint."""
    base = method.split("@")[0]
    if base not in METHODS or (base != "pdt" and base != method):
        raise ValueError(f"unknown NiNo-peer method {method!r}; choose from {', '.join(METHODS)} (pdt@<option>=...)")
    if base == "pdt" and replace(parse_method(method), name="pdt", pdt=None) != replace(PDT_METHOD, pdt=None):
        raise ValueError(f"{method}: only PDT options (@<option>=<value>) change PDT in the NiNo head-to-head")
    if not (path / "utils" / "vision.py").is_file():
        raise Unavailable(
            f"NiNo peer refused: no NiNo checkout at {path} (utils/vision.py missing); "
            "give --nino-path DIR or $PDT_NINO (MIT code of SamsungSAILMontreal/nino)"
        )
    if base not in CHECKPOINTS:
        return
    missing = _missing_modules()
    if missing:
        raise Unavailable(f"NiNo peer refused: {method} needs {', '.join(missing)}: pip install 'torch-pdt[peers]'")
    checkpoint = path / "checkpoints" / CHECKPOINTS[base]
    if not checkpoint.is_file():
        raise Unavailable(f"NiNo peer refused: {method} needs its checkpoint {checkpoint}, which is missing")


@functools.cache
def vision(path: Path) -> ModuleType:
    """NiNo's ``utils/vision.py`` (``Net``, ``VISION_TASKS``), loaded from its file without NiNo's packages."""
    spec = importlib.util.spec_from_file_location("_nino_vision", path / "utils" / "vision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nino_optimizer(path: Path, base: torch.optim.Optimizer, model: nn.Module, method: str, config: NiNoConfig):
    """NiNo's own wrapper around ``base``; its modules import each other as top-level ``optim``,
    ``graph`` and ``utils``, so the checkout goes first on ``sys.path``."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    wrapper = importlib.import_module("optim").NiNo
    checkpoint = path / "checkpoints" / CHECKPOINTS[method]
    return wrapper(
        base_opt=base,
        model=model,
        ckpt=str(checkpoint),
        period=config.period,
        max_train_steps=config.max_steps,
        verbose=0,
    )


@dataclass(frozen=True)
class NiNoConfig:
    """One run of the head-to-head; ``None`` takes NiNo's value for the task."""

    task: str = "C10-16"
    method: str = "adam"
    seed: int = 0
    max_steps: int = 10_000
    period: int = 1_000
    """Steps between two NiNo nowcasts."""
    batch_size: int = 128
    eval_every: int = 100
    lr: float | None = None
    target: float | None = None
    """Target validation accuracy in % (None: NiNo's for the task)."""
    nino: Path | None = None
    data: tasks.TaskOptions = field(default_factory=tasks.TaskOptions)
    device: str = "cpu"


class Point(TypedDict):
    step: int
    val_loss: float
    val_acc: float


class NiNoRun(TypedDict):
    task: str
    method: str
    seed: int
    target: float
    steps_to_target: int | None
    """The first evaluated step at or above the target (None: not reached within ``max_steps``)."""
    best_acc: float
    seconds: float
    curve: list[Point]
    config: dict


def resolved(config: NiNoConfig) -> NiNoConfig:
    """``config`` with NiNo's learning rate and target for the task where it leaves them ``None``."""
    task = vision(nino_path(config.nino)).VISION_TASKS[config.task]
    lr = task["lr"] if config.lr is None else config.lr
    return replace(config, lr=lr, target=task["target"] if config.target is None else config.target)


def _normalise(x: Tensor, norm: tuple[tuple[float, ...], tuple[float, ...]]) -> Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in norm)
    return (x.float() / 255 - mean) / std


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy in % on prepared images, in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for idx in torch.arange(len(y)).split(EVAL_BATCH):
        out = model(x[idx])
        loss += nn.functional.cross_entropy(out, y[idx], reduction="sum").item()
        correct += (out.argmax(1) == y[idx]).sum().item()
    model.train()
    return loss / len(y), 100 * correct / len(y)


def run(config: NiNoConfig, log: TextIO | None = None) -> NiNoRun:
    """Train NiNo's ``config.task`` with ``config.method`` until its target accuracy or ``max_steps``;
    one line per evaluation to ``log`` if given."""
    path = nino_path(config.nino)
    check(config.method, path)
    task = vision(path).VISION_TASKS[config.task]
    if task["dataset"] != "CIFAR10":
        raise ValueError(f"{config.task}: only NiNo's CIFAR-10 tasks run here (C10-16, C10-32)")
    config = resolved(config)
    device = torch.device(config.device)
    x, y, x_test, y_test = cifar10.load(tasks.data_root(config.data), tasks.cache_root(config.data))
    n_train = len(y) - len(y) // 12
    x, y = x[:n_train], y[:n_train]
    x_val, y_val = _normalise(x_test, task["norm"]).to(device), y_test.to(device)
    target, lr = config.target, config.lr

    torch.manual_seed(config.seed)
    model = vision(path).Net(**task["net_args"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    method = config.method.split("@")[0]
    nowcaster = _nino_optimizer(path, opt, model, method, config) if method in CHECKPOINTS else None
    pdt = None
    if method == "pdt":
        options = {"every_n_steps": PDT_EVERY} | parse_method(config.method).pdt
        pdt = PDT(opt, **options, seed=config.seed, model=model)

    curve: list[Point] = []
    reached, step, epoch, clock, done = None, 0, 0, 0.0, False
    while not done:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed + epoch))
        epoch += 1
        for idx in order.split(config.batch_size):
            start = time.perf_counter()
            xb, yb = _normalise(x[idx], task["norm"]).to(device), y[idx].to(device)
            if nowcaster is not None and not nowcaster.need_grads:
                nowcaster.step()  # the nowcast: NiNo needs no gradients for it
            else:
                nn.functional.cross_entropy(model(xb), yb).backward()
                (nowcaster or opt).step()
            (nowcaster or opt).zero_grad()
            clock += time.perf_counter() - start
            step += 1
            if step % config.eval_every == 0 or step == config.max_steps:
                val_loss, val_acc = _evaluate(model, x_val, y_val)
                curve.append(Point(step=step, val_loss=val_loss, val_acc=val_acc))
                if log is not None:
                    print(
                        f"{config.method} seed {config.seed} step {step}: val loss {val_loss:.4f} "
                        f"acc {val_acc:.2f} % ({clock:.0f} s)",
                        file=log,
                        flush=True,
                    )
                reached = step if val_acc >= target else None
                done = reached is not None or not math.isfinite(val_loss) or step >= config.max_steps
            if done:
                break
    if pdt is not None:
        pdt.close()
    return NiNoRun(
        task=config.task,
        method=config.method,
        seed=config.seed,
        target=target,
        steps_to_target=reached,
        best_acc=max((p["val_acc"] for p in curve), default=math.nan),
        seconds=clock,
        curve=curve,
        config={k: str(v) for k, v in asdict(config).items()} | {"lr": lr, "train_images": n_train},
    )


def describe(result: NiNoRun) -> str:
    """One line: steps to target, or the best accuracy reached instead."""
    head = f"{result['task']} {result['method']} seed {result['seed']}: "
    if result["steps_to_target"] is not None:
        return head + f"{result['steps_to_target']} steps to {result['target']:g} % ({result['seconds']:.0f} s)"
    steps = result["curve"][-1]["step"] if result["curve"] else 0
    return head + f"not reached: best {result['best_acc']:.1f} % instead of {result['target']:g} % in {steps} steps"


def _first_step(curve: list[Point], accuracy: float) -> int | None:
    return next((p["step"] for p in curve if p["val_acc"] >= accuracy), None)


def table(results: list[NiNoRun], reference: str = "adam") -> str:
    """A Markdown table of the head-to-head: per method, steps to the task's target and to the
    ``reference``'s best accuracy of the same seed (median and range over seeds, as the other tables),
    best and final accuracy (means)."""
    best = {r["seed"]: r["best_acc"] for r in results if r["method"] == reference}
    rows = []
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        paired = [r for r in runs if r["seed"] in best]
        to_best = [_first_step(r["curve"], best[r["seed"]]) for r in paired]
        rows.append(
            [
                f"`{method}`",
                str(len(runs)),
                to_target_cell(metrics.describe([r["steps_to_target"] for r in runs])),
                to_target_cell(metrics.describe(to_best)) if paired else "-",
                f"{statistics.fmean(r['best_acc'] for r in runs):.2f}",
                f"{statistics.fmean(r['curve'][-1]['val_acc'] for r in runs if r['curve']):.2f}",
            ]
        )
    target = f"{results[0]['target']:g} %" if results else "target"
    headers = ["method", "seeds", f"steps to {target}", f"steps to {reference}'s best", "best acc %", "final acc %"]
    return markdown_table(headers, rows)


SAME_RUN = ("task", "method", "seed", "max_steps", "period", "batch_size", "eval_every", "lr", "target")
"""The options a stored run must share with the asked one to stand for it (paths and device may differ)."""


def _stored(path: Path, config: NiNoConfig) -> NiNoRun | None:
    """The finished run in ``path``, if there is one; a ValueError where it ran with other options."""
    if not path.is_file():
        return None
    try:
        stored: NiNoRun = json.loads(path.read_text())
        saved = stored["config"]
        if not isinstance(saved, dict):
            raise TypeError(f"its config is a {type(saved).__name__}")
    except (OSError, ValueError, TypeError, KeyError) as e:  # truncated, edited by hand, not a record
        raise ValueError(f"{path} is not a readable run record ({type(e).__name__}: {e}): --rerun to replace it") from e
    asked = asdict(resolved(config))
    differ = [k for k in SAME_RUN if str(saved.get(k)) != str(asked[k])]
    if differ:
        raise ValueError(f"{path} ran with other {', '.join(differ)}: give another --out, or --rerun to replace it")
    return stored


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``pdt-bench nino`` (and ``python -m pdt_bench.nino``)."""
    p.add_argument("--task", default="C10-16", help="C10-16 or C10-32 (NiNo's utils/vision.py)")
    p.add_argument("--methods", default="adam,pdt", help=f"comma-separated from {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0")
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--period", type=int, default=1_000, help="steps between NiNo nowcasts")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--nino-path", type=Path, help="NiNo checkout ($PDT_NINO, else ../shared/third_party/nino)")
    p.add_argument("--data-dir", type=Path, help="where CIFAR-10 is (default $PDT_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="write one JSON record per run here; a finished run is not run again")
    p.add_argument("--rerun", action="store_true", help="run again even when the run's record exists in --out")
    p.add_argument("--verbose", action="store_true", help="one line per evaluation on stderr")


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench nino`` sub-command."""
    p = sub.add_parser("nino", help=SUMMARY, description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=_nino)


def _nino(args: argparse.Namespace) -> int:
    methods = args.methods.split(",")
    path = nino_path(args.nino_path)
    try:
        for method in methods:
            check(method, path)
    except (Unavailable, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    data = tasks.TaskOptions(data_dir=args.data_dir)
    plan: list[tuple[NiNoConfig, Path | None, NiNoRun | None]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in methods:
            config = NiNoConfig(
                args.task,
                method,
                seed,
                args.max_steps,
                args.period,
                eval_every=args.eval_every,
                nino=path,
                data=data,
                device=args.device,
            )
            record = None if args.out is None else args.out / f"{args.task}-{method}-seed{seed}.json"
            try:  # every stored run is checked before the first one runs
                stored = None if record is None or args.rerun else _stored(record, config)
            except ValueError as e:
                print(e, file=sys.stderr)
                return 2
            plan.append((config, record, stored))
    done: list[NiNoRun] = []
    for config, record, result in plan:
        if result is not None:
            print(describe(result) + " (stored)", flush=True)
            done.append(result)
            continue
        result = run(config, log=sys.stderr if args.verbose else None)
        print(describe(result), flush=True)
        if record is not None:
            records.save_json(record, result)
        done.append(result)
    if args.out is not None:  # every seed run so far into --out, not only this call's
        done = []
        for stored_path in sorted(args.out.glob(f"{args.task}-*-seed*.json")):
            try:
                done.append(json.loads(stored_path.read_text()))
            except (OSError, ValueError) as e:  # another seed's damaged record: said, left out of the table
                print(f"{stored_path}: not a readable run record ({e}); left out of the table", file=sys.stderr)
    text = table(done)
    print(text)
    if args.out is not None:
        records.write_text(args.out / "report.md", f"# NiNo head-to-head, {args.task}\n\n{text}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdt_bench.nino", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return _nino(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
