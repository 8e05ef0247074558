r"""``pdt-bench landscape``: the weight trajectories of the baseline and of PDT over the loss (paper Fig. 1).

For one task and seed, the baseline and a PDT method are trained by :func:`pdt_bench.train.run`
while its ``on_weights`` hook keeps each epoch's weights as one flattened vector: :math:`w_0` (the
common start), :math:`w_1, \dots, w_E`. Both trajectories are projected onto a plane
:math:`\{o + \alpha u + \beta v\}` with orthonormal :math:`u, v \in \mathbb{R}^N`:

- ``pca`` (default): :math:`o` is the mean of all snapshots of both runs; :math:`u, v` are the top
  two right singular vectors of the centred snapshot matrix :math:`X` (one row per snapshot),
  :math:`v_k = X^\top u_k / s_k` from the SVD :math:`U S^2 U^\top` of the Gram matrix
  :math:`X X^\top` (``torch.linalg.svd`` in float64); axis :math:`k` explains
  :math:`s_k^2 / \sum_j s_j^2` of the trajectories' variance.
- ``ends``: :math:`o = w_0`; :math:`u` points to the baseline's end :math:`a`, :math:`v` to the
  part of PDT's end :math:`b` orthogonal to :math:`u` (Gram-Schmidt). The start and both ends lie
  on this plane; with PCA the snapshots lie off it in general.

A snapshot :math:`w` has the coordinates :math:`(\alpha, \beta) = ((w - o) \cdot u, (w - o) \cdot v)`.
The contour map is :math:`L(o + \alpha u + \beta v)`, the training loss on the first ``subset``
training samples, on a ``grid`` x ``grid`` lattice spanning the projected trajectories plus a
``margin`` (a fraction of their extent) on every side. Buffers (BatchNorm statistics) stay those of
the baseline's last epoch. The jumps are the epochs where PDT's prediction accepted at least one
element (:func:`pdt_bench.metrics.jump_epochs`).

Example::

    pdt-bench landscape --task mnist1d-mlp --seed 0 --out results/mnist1d-mlp-landscape
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from . import tasks
from .compare import Progress, run_configs
from .metrics import best, jump_epochs, time_to_target
from .plots import plot_landscape
from .records import Landscape, save_json
from .train import _evaluate, run

__all__ = ["Plane", "Snapshots", "add_command", "ends_plane", "loss_grid", "losses_at", "pca_plane", "project"]

PLANES = ("pca", "ends")
GRID = 21
SUBSET = 2000
"""Defaults of ``--grid`` and ``--subset``: one loss evaluation of the MNIST-1D MLP on 2,000 samples took
0.1 s on one CPU thread, so the 441 points of the map cost under a minute beside the two runs."""


@dataclass
class Plane:
    """The plane :math:`\\{o + \\alpha u + \\beta v\\}`: ``origin`` :math:`o` and ``directions`` (rows :math:`u, v`)."""

    kind: str
    origin: Tensor
    directions: Tensor
    explained: list[float] | None = None
    """PCA: the fraction of the variance along ``u`` and along ``v``."""


class Snapshots:
    """An ``on_weights`` hook of :func:`pdt_bench.train.run`: every epoch's weights as one float32 vector.

    It also keeps the model it was handed, which ends the run with the last epoch's weights.
    """

    def __init__(self) -> None:
        self.vectors: list[Tensor] = []
        self.model: nn.Module | None = None

    def __call__(self, epoch: int, model: nn.Module) -> None:
        self.vectors.append(parameters_to_vector(model.parameters()).detach().to("cpu", torch.float32, copy=True))
        self.model = model


def pca_plane(points: Tensor) -> Plane:
    """The top two principal directions of ``points`` (one per row), centred on their mean.

    Each direction's sign makes the last point minus the first point non-negative along it.

    >>> x = torch.tensor([[0.0, 0, 0], [2, 1, 0], [4, 1, 0], [6, 0, 0]])
    >>> plane = pca_plane(x)
    >>> [round(f, 3) for f in plane.explained]
    [0.952, 0.048]
    >>> project(plane, x).abs().round(decimals=3).tolist()
    [[3.0, 0.5], [1.0, 0.5], [1.0, 0.5], [3.0, 0.5]]
    """
    x = points.to(torch.float64, copy=True)
    origin = x.mean(0)
    x -= origin
    # The SVD of the small Gram matrix X X^T = U S^2 U^T rather than of X: for 122 snapshots of the
    # MNIST-1D MLP's 551,434 weights, X's own took 1.5 GB beyond the snapshots and 4x the time; this 0.6 GB.
    u, s2, _ = torch.linalg.svd(x @ x.T)
    if len(s2) < 2 or not s2[1] > 1e-12 * s2[0]:
        raise ValueError("the trajectories span fewer than two directions (too few epochs?): no plane to draw on")
    directions = (u[:, :2].T @ x) / s2[:2, None].sqrt()
    signs = torch.sign((x[-1] - x[0]) @ directions.T)
    directions *= torch.where(signs == 0, 1.0, signs)[:, None]
    return Plane("pca", origin, directions, (s2[:2] / s2.sum()).tolist())


def ends_plane(start: Tensor, end_a: Tensor, end_b: Tensor) -> Plane:
    """The plane through ``start`` and two end points: ``u`` towards ``end_a``, ``v`` towards the rest of ``end_b``.

    >>> p = ends_plane(torch.zeros(3), torch.tensor([2.0, 0, 0]), torch.tensor([1.0, 3, 0]))
    >>> p.directions.tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    origin = start.to(torch.float64)
    a, b = end_a.to(torch.float64) - origin, end_b.to(torch.float64) - origin
    u = a / a.norm() if a.norm() > 0 else a
    rest = b - (b @ u) * u
    # Relative to the steps' length: float32 snapshots of one line are not exactly collinear.
    if not a.norm() > 0 or not rest.norm() > 1e-6 * b.norm():
        raise ValueError(
            "the start and both ends are (nearly) on one line: no plane through them "
            "(PDT never jumped, or too few epochs?); use --plane pca"
        )
    return Plane("ends", origin, torch.stack([u, rest / rest.norm()]))


def project(plane: Plane, points: Tensor) -> Tensor:
    """Plane coordinates :math:`((w - o) \\cdot u, (w - o) \\cdot v)` of each row ``w`` of ``points``."""
    return (points.to(torch.float64) - plane.origin) @ plane.directions.T


def losses_at(model: nn.Module, weights: Iterable[Tensor], loss: Callable[[nn.Module], float]) -> list[float]:
    """``loss(model)`` with each flattened weight vector of ``weights`` in turn; the model's own are put back."""
    params = list(model.parameters())
    kept = parameters_to_vector(params).detach().clone()
    out = []
    with torch.no_grad():
        for w in weights:
            vector_to_parameters(w.to(kept.dtype), params)
            out.append(loss(model))
        vector_to_parameters(kept, params)
    return out


def loss_grid(
    model: nn.Module, plane: Plane, alphas: np.ndarray, betas: np.ndarray, loss: Callable[[nn.Module], float]
) -> np.ndarray:
    """``loss(model)`` with the weights :math:`o + \\alpha u + \\beta v`: one row per beta, one column per alpha.

    >>> plane = Plane("hand", torch.zeros(1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    >>> weight = lambda model: model.weight.item()
    >>> loss_grid(nn.Linear(1, 1, bias=False), plane, np.array([0.0, 1.0]), np.array([0.0, 2.0]), weight)
    array([[0., 1.],
           [2., 3.]])
    """
    u, v = plane.directions
    # One point at a time: the whole lattice of an MNIST-1D MLP's weights would take 2 GB.
    weights = (plane.origin + float(a) * u + float(b) * v for b in betas for a in alphas)
    return np.array(losses_at(model, weights, loss)).reshape(len(betas), len(alphas))


def _span(values: Tensor, margin: float, points: int) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    pad = margin * (high - low) if high > low else 1.0
    return np.linspace(low - pad, high + pad, points)


def _draw(args: argparse.Namespace) -> Landscape:
    """Train, project, measure the loss grid and write ``OUT/landscape.png`` and ``OUT/landscape.json``."""
    reference, method = "baseline", args.method
    if method == reference:
        raise ValueError(f"--method: the {reference} is always drawn; name the PDT method to draw beside it")
    args.seeds = [args.seed]
    configs = run_configs(args, [reference, method])  # checks the method and PDT's options before training
    task = tasks.build(args.task, configs[0].task_options)
    start = time.perf_counter()
    runs, snapshots = [], []
    progress = None if args.quiet else Progress(len(configs))
    try:
        for config in configs:
            snapshots.append(Snapshots())
            on_epoch = None if progress is None else partial(progress.epoch, config.method)
            runs.append(run(config, on_epoch=on_epoch, on_weights=snapshots[-1]))
            if progress is not None:
                progress.finished(config.method)
    finally:
        if progress is not None:
            progress.close()
    trained = time.perf_counter() - start
    # A diverged run's last weights are not finite: its trajectory stops before them.
    paths = [torch.stack([v for v in s.vectors if torch.isfinite(v).all()]) for s in snapshots]
    if args.plane == "pca":
        plane = pca_plane(torch.cat(paths))
    else:
        plane = ends_plane(paths[0][0], paths[0][-1], paths[1][-1])
    coords = [project(plane, p) for p in paths]
    both = torch.cat(coords)
    alphas, betas = _span(both[:, 0], args.margin, args.grid), _span(both[:, 1], args.margin, args.grid)

    n = min(args.subset, len(task.y_train))
    x, y = task.x_train[:n], task.y_train[:n]
    device = torch.device(configs[0].device)

    def subset_loss(model: nn.Module) -> float:
        return _evaluate(model, task, x, y, device)[0]

    model = snapshots[0].model
    start = time.perf_counter()
    losses = loss_grid(model, plane, alphas, betas, subset_loss)
    target = best(runs[0]["epochs"], "train_loss")
    hit = time_to_target(runs[0]["epochs"], "train_loss", target) if target is not None else None
    # Scored on the grid's subset, so that the contour at this level is comparable with the map.
    best_loss = losses_at(model, [paths[0][hit[1]]], subset_loss)[0] if hit and hit[1] < len(paths[0]) else None
    gridded = time.perf_counter() - start
    result = Landscape(
        task=args.task,
        seed=args.seed,
        methods=[reference, method],
        plane=plane.kind,
        explained=plane.explained,
        paths={name: c.tolist() for name, c in zip((reference, method), coords)},
        jumps=[e for e in jump_epochs(runs[1]) if e < len(paths[1])],
        alphas=alphas.tolist(),
        betas=betas.tolist(),
        losses=losses.tolist(),
        subset=n,
        best_loss=best_loss,
        seconds={"training": trained, "grid": gridded},
    )
    save_json(args.out / "landscape.json", result | {"command": args.command_line})
    plot_landscape(args.out / "landscape.png", result)
    return result


def _landscape(args: argparse.Namespace) -> int:
    for name, low in (("grid", 2), ("subset", 1), ("epochs", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ValueError(f"--{name} must be at least {low}, got {value}")
    if not (args.margin >= 0 and math.isfinite(args.margin)):
        raise ValueError(f"--margin must be a finite number >= 0, got {args.margin}")
    args.out = args.out or Path("results") / f"{args.task}-landscape"
    result = _draw(args)
    seconds = result["seconds"]
    print(
        f"landscape: {args.out / 'landscape.png'} ({result['plane']} plane, {args.grid}x{args.grid} grid on "
        f"{result['subset']} samples; {result['methods'][1]} jumped at {len(result['jumps'])} epochs; "
        f"training {seconds['training']:.0f} s, grid {seconds['grid']:.0f} s)"
    )
    return 0


STUDY_DEFAULTS = dict(
    lr=None,
    batch_size=None,
    optimizer=None,
    schedule=None,
    eta_min=None,
    weight_decay=None,
    non_iid=False,
    pdt=[],
    train_subset=None,
    img_size=None,
    width=None,
    augment=False,
    device="cpu",
)
"""The training settings ``compare`` exposes, at the task's defaults, for a study that runs one task's
runs without them (landscape, diagnose): its runs match a study's."""


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench landscape`` sub-command."""
    p = sub.add_parser(
        "landscape",
        help="one seed's weight trajectories (baseline and PDT) over the training loss on a plane",
        description="Train the baseline and a PDT method on one task and seed, keep every epoch's weights, and "
        "draw both trajectories over a contour map of the training loss on a plane (paper Fig. 1).",
    )
    p.add_argument("--task", default="mnist1d-mlp", help=f"one of {', '.join(tasks.TASKS)} (default mnist1d-mlp)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--epochs", type=int, help="default: the task's")
    p.add_argument("--method", default="pdt", help="the PDT method drawn beside the baseline (default pdt)")
    p.add_argument(
        "--plane",
        choices=PLANES,
        default="pca",
        help="pca: top two principal directions (default); ends: through the common start and both end points",
    )
    p.add_argument("--grid", type=int, default=GRID, help=f"loss evaluations per axis (default {GRID})")
    p.add_argument("--subset", type=int, default=SUBSET, help=f"training samples per loss point (default {SUBSET})")
    p.add_argument(
        "--margin",
        type=float,
        default=0.2,
        help="space around the trajectories, a fraction of their extent (default 0.2)",
    )
    p.add_argument("--out", type=Path, help="output directory (default results/<task>-landscape)")
    g = p.add_argument_group("PDT")
    g.add_argument("--history", type=int, default=5, help="h (default 5)")
    g.add_argument("--horizon", type=int, default=5, help="tau (default 5)")
    g.add_argument("--start-epoch", type=int, default=5, help="T0 (default 5)")
    g.add_argument("--interval", type=int, default=1, help="Ti (default 1)")
    g = p.add_argument_group("data and machine")
    g.add_argument("--data-dir", type=Path, help="datasets (default $PDT_DATA, else ../shared/data)")
    g.add_argument("--cache-dir", type=Path, help="decoded-data cache (default $PDT_CACHE, else ~/.cache/torch-pdt)")
    g.add_argument("--tiny", action="store_true", help="tiny data and model (smoke tests)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_landscape, **STUDY_DEFAULTS)
