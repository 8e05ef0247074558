r"""The paper's toy problem (Sec. 3, App. A.1): PDT on a six-variable function.

.. math::
    f(x, y, z, u, v, w) = x^2 + y^2 + \sin z + u^2 - \cos v + w^2 + xy + y \sin z + uw,

minimised by gradient descent (lr 0.01) from ``[2, 2, 1, 0.5, -0.5, 1.5]``; every GD step
counts as one "epoch" for PDT. The paper reports 53 steps for GD to reach the threshold,
about 25 when x, y, z take a 3x learning rate, and 27 with PDT (h = 5, tau = 5, T0 = 5, Ti = 1).
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_pdt import PDT, PDTMisuseWarning

from .report import markdown_table

__all__ = ["METHODS", "ToyResult", "compare", "format_table", "loss", "run"]

START = (2.0, 2.0, 1.0, 0.5, -0.5, 1.5)
LR = 0.01
THRESHOLD = -0.1

METHODS: dict[str, dict[str, Any] | None] = {
    "gd": None,
    "gd-3x-xyz": None,
    "pdt": {"criterion": "pdt"},
    "pdt-reference": {"criterion": "reference"},
    "accel-only": {"criterion": "accel_only"},
    "consistency-only": {"criterion": "consistency_only"},
    "nonselective": {"criterion": "none"},
    "random-mask": {"criterion": "random"},
}
"""Method name -> PDT keyword arguments (``None``: no PDT)."""


def loss(p: torch.Tensor) -> torch.Tensor:
    x, y, z, u, v, w = p
    return x**2 + y**2 + torch.sin(z) + u**2 - torch.cos(v) + w**2 + x * y + y * torch.sin(z) + u * w


@dataclass
class ToyResult:
    method: str
    steps_to_threshold: int | None
    final_loss: float
    diverged: bool
    predictions: int = 0
    mean_accepted_ratio: float = 0.0
    losses: list[float] = field(default_factory=list, repr=False)


def _gd_step(p: torch.Tensor, lr: torch.Tensor) -> None:
    p.grad = None
    loss(p).backward()
    with torch.no_grad():
        p -= lr * p.grad


def run(method: str, steps: int = 100, **pdt_kwargs: Any) -> ToyResult:
    """Run ``method`` (a key of :data:`METHODS`) for ``steps`` GD steps.

    ``pdt_kwargs`` override the PDT settings (defaults: h = 5, tau = 5, T0 = 5, Ti = 1).
    A run stops early, as diverged, once the loss is no longer finite.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    p = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=LR)
    pdt = None
    if METHODS[method] is not None:
        kwargs = dict(history=5, horizon=5, start_epoch=5, interval=1) | METHODS[method] | pdt_kwargs
        pdt = PDT(opt, **kwargs)
    losses: list[float] = []
    ratios: list[float] = []
    reached = None
    for step in range(1, steps + 1):
        if method == "gd-3x-xyz":
            # x, y, z move first at 3x the rate; u, v, w then step from the updated point.
            _gd_step(p, torch.tensor([3 * LR] * 3 + [0.0] * 3, dtype=p.dtype))
            _gd_step(p, torch.tensor([0.0] * 3 + [LR] * 3, dtype=p.dtype))
        else:
            opt.zero_grad()
            loss(p).backward()
            opt.step()
        if pdt is not None:
            with warnings.catch_warnings():
                # Full-batch gradient descent: one optimizer step per PDT step is the toy's design.
                warnings.filterwarnings("ignore", ".*followed every optimizer step", PDTMisuseWarning)
                stats = pdt.step()
            if stats["predicted"]:
                ratios.append(stats["accepted_ratio"])
        value = loss(p.detach()).item()
        losses.append(value)
        if reached is None and value < THRESHOLD:
            reached = step
        if not math.isfinite(value):
            break
    return ToyResult(
        method=method,
        steps_to_threshold=reached,
        final_loss=losses[-1],
        diverged=not math.isfinite(losses[-1]) or losses[-1] > losses[0],
        predictions=len(ratios),
        mean_accepted_ratio=sum(ratios) / len(ratios) if ratios else 0.0,
        losses=losses,
    )


def compare(methods: list[str] | None = None, steps: int = 100, **pdt_kwargs: Any) -> list[ToyResult]:
    return [run(m, steps, **pdt_kwargs) for m in (methods or list(METHODS))]


def format_table(results: list[ToyResult]) -> str:
    """Steps to reach f < -0.1, final loss, stability, predictions, accepted ratio; one row per method.

    A run is unstable when its loss ends non-finite or above where it started.
    """
    base = next((r.steps_to_threshold for r in results if r.method == "gd"), None)
    rows = []
    for r in results:
        reached = r.steps_to_threshold
        rows.append(
            [
                r.method,
                "never" if reached is None else str(reached),
                f"{1 - reached / base:+.0%}" if base and reached is not None and r.method != "gd" else "",
                f"{r.final_loss:.4f}" if math.isfinite(r.final_loss) else "inf/nan",
                "no" if r.diverged else "yes",
                str(r.predictions),
                f"{r.mean_accepted_ratio:.2f}" if r.predictions else "",
            ]
        )
    headers = ["method", "steps to f<-0.1", "saved", "final f", "stable", "predictions", "accepted"]
    return markdown_table(headers, rows)


def _toy(args: argparse.Namespace) -> int:
    overrides = dict(
        history=args.history,
        horizon=args.horizon,
        start_epoch=args.start_epoch,
        interval=args.interval,
    )
    if args.history_after_jump is not None:  # only when given: the authors' criterion ignores it
        overrides["history_after_jump"] = args.history_after_jump
    results = compare(args.methods.split(",") if args.methods else None, steps=args.steps, **overrides)
    print(
        f"Toy problem (paper Sec. 3): GD lr {LR}, threshold f < {THRESHOLD}, {args.steps} steps; "
        f"PDT h={args.history} tau={args.horizon} T0={args.start_epoch} Ti={args.interval}"
    )
    print(format_table(results))
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench toy`` sub-command."""
    p = sub.add_parser("toy", help="the paper's toy problem: every method side by side")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--steps", type=int, default=100, help="gradient-descent steps per run (default 100)")
    p.add_argument("--history", type=int, default=5, help="h, snapshots fitted (default 5)")
    p.add_argument("--horizon", type=int, default=5, help="tau, steps predicted ahead (default 5)")
    p.add_argument("--start-epoch", type=int, default=5, help="T0, first step to predict after (default 5)")
    p.add_argument("--interval", type=int, default=1, help="Ti, plain steps between predictions (default 1)")
    p.add_argument(
        "--history-after-jump",
        choices=["optimizer", "assembled"],
        help="what the history keeps after a prediction (default optimizer)",
    )
    p.set_defaults(func=_toy)
