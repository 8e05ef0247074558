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
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TypedDict

import torch
from torch import Tensor, nn

from torch_pdt import PDT

from . import tasks
from .methods import METHODS as HARNESS_METHODS
from .methods import parse_method
from .tasks import cifar10

__all__ = ["CHECKPOINTS", "METHODS", "NiNoConfig", "NiNoRun", "Unavailable", "check", "main", "nino_path", "run"]

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


def run(config: NiNoConfig) -> NiNoRun:
    """Train NiNo's ``config.task`` with ``config.method`` until its target accuracy or ``max_steps``."""
    path = nino_path(config.nino)
    check(config.method, path)
    task = vision(path).VISION_TASKS[config.task]
    if task["dataset"] != "CIFAR10":
        raise ValueError(f"{config.task}: only NiNo's CIFAR-10 tasks run here (C10-16, C10-32)")
    device = torch.device(config.device)
    x, y, x_test, y_test = cifar10.load(tasks.data_root(config.data), tasks.cache_root(config.data))
    n_train = len(y) - len(y) // 12
    x, y = x[:n_train], y[:n_train]
    x_val, y_val = _normalise(x_test, task["norm"]).to(device), y_test.to(device)
    target = task["target"] if config.target is None else config.target
    lr = task["lr"] if config.lr is None else config.lr

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pdt_bench.nino", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="C10-16", help="C10-16 or C10-32 (NiNo's utils/vision.py)")
    parser.add_argument("--methods", default="adam,pdt", help=f"comma-separated from {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--period", type=int, default=1_000, help="steps between NiNo nowcasts")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--nino-path", type=Path, help="NiNo checkout ($PDT_NINO, else ../shared/third_party/nino)")
    parser.add_argument("--data-dir", type=Path, help="where CIFAR-10 is (default $PDT_DATA or ../shared/data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write one JSON record per run here")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    path = nino_path(args.nino_path)
    try:
        for method in methods:
            check(method, path)
    except (Unavailable, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    data = tasks.TaskOptions(data_dir=args.data_dir)
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in methods:
            config = NiNoConfig(args.task, method, seed, args.max_steps, args.period, eval_every=args.eval_every,
                                nino=path, data=data, device=args.device)
            result = run(config)
            print(describe(result), flush=True)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{args.task}-{method}-seed{seed}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
