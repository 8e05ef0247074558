"""The plots of a study, as PNG files: training curves, PDT's acceptance, rejection reasons, masks.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``: no
global state, no GUI backend, nothing left open (PNG output goes through Agg).

Curves are mean ± std over the successful runs of a method (diverged runs are left out, as in
the paper, and counted in the legend). Losses are averaged in log space, so a loss band is the
geometric mean multiplied and divided by the geometric standard deviation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .budget import Point
from .metrics import best, by_method, cumulative_flops
from .records import Landscape, Run

__all__ = [
    "COLORS",
    "DPI",
    "compact_png",
    "loss_against_flops",
    "plot_budget",
    "plane_words",
    "plot_landscape",
    "plot_steps",
    "plot_sweep",
    "write_plots",
]

REASONS = ("consistency", "lower_bound", "upper_bound", "nonfinite")
"""The checks counted in ``epochs[i].pdt["rejected"]``."""

_TIME_POINTS = 200
_MASK_ROWS, _MASK_COLS = 32, 512
"""A mask is block-averaged to at most this many pixels per layer band: big layers stay legible."""


DPI = 80
"""Pixels per inch of every figure: 80 keeps 8-point text legible on a screen; 110 made 1.9x the pixels."""
COLORS = 64
"""Palette size of every PNG (an octree palette: the few pixels of each line colour keep their own
entry, where median cut merged tab10's colours; no dithering, whose noise defeats PNG's compression).
64 rather than 256: a fifth smaller files (the committed study's 69 plots: 1.54 MB at 256, 1.23 MB at 64);
only the antialiased edges lose shades."""


def compact_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` to ``path`` as an optimised PNG of at most :data:`COLORS` colours; return ``path``."""
    palette = image.convert("RGB").quantize(COLORS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette.save(path, "PNG", optimize=True)
    return path


def _save(fig: Figure, path: Path, title: str | None = None) -> Path:
    """Write ``fig`` as a palette PNG; ``title`` (the task and the study, see :func:`write_plots`) heads it."""
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return compact_png(Image.open(buffer), path)


def _colors(methods: list[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over the first axis (the runs), as in the summary; std 0 for one run."""
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), std


def _band(ax: Axes, x: np.ndarray, values: np.ndarray, color: str, label: str, log: bool = False) -> None:
    """Mean line and ± std band of ``values`` (runs x points) against ``x``."""
    mean, std = _mean_std(np.log10(values) if log else values)
    lo, mid, hi = (10 ** (mean - std), 10**mean, 10 ** (mean + std)) if log else (mean - std, mean, mean + std)
    ax.plot(x, mid, color=color, label=label)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)


def _positive(runs: list[Run], key: str) -> bool:
    """Whether no drawn ``key`` is zero or below, so that a log scale can show it (SimSiam's loss is a
    negative cosine similarity). Diverged runs are not drawn, and a NaN is no sign: neither turns a
    positive loss linear."""
    drawn = [e[key] for r in runs if not r["diverged"] for e in r["epochs"] if e[key] is not None]
    return not any(v <= 0 for v in drawn)


def _by_epoch(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers and values (runs x epochs) over the epochs every run has."""
    n = min(len(r["epochs"]) for r in runs)
    x = np.array([e["epoch"] for e in runs[0]["epochs"][:n]])
    return x, np.array([[e[key] for e in r["epochs"][:n]] for r in runs])


def _by_time(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Values interpolated on a common time grid, over the span every run covers (runs differ in speed)."""
    start = max(r["epochs"][0]["train_time"] for r in runs)
    stop = min(r["epochs"][-1]["train_time"] for r in runs)
    grid = np.linspace(start, stop, _TIME_POINTS)
    curves = [np.interp(grid, [e["train_time"] for e in r["epochs"]], [e[key] for e in r["epochs"]]) for r in runs]
    return grid, np.array(curves)


def _successful(runs: list[Run]) -> dict[str, tuple[list[Run], int]]:
    """Method -> (its runs that did not diverge, how many diverged); methods with no success are left out."""
    out = {}
    for method, group in by_method(runs).items():
        ok = [r for r in group if not r["diverged"]]
        if ok:
            out[method] = (ok, len(group) - len(ok))
    return out


def _curve_plot(path: Path, runs: list[Run], key: str, ylabel: str, log: bool, title: str, reference: str) -> Path:
    """``key`` against training time (left) and against epoch (right), one colour per method; a dotted
    line marks the ``reference`` method's best value (the mean over its seeds' bests: the TTB targets)."""
    groups = _successful(runs)
    log = log and _positive(runs, key)
    colors = _colors(list(by_method(runs)))
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_time, ax_epoch = fig.subplots(1, 2, sharey=True)
    for method, (ok, diverged) in groups.items():
        label = method + (f" ({diverged} diverged, not shown)" if diverged else "")
        _band(ax_time, *_by_time(ok, key), colors[method], label, log)
        _band(ax_epoch, *_by_epoch(ok, key), colors[method], label, log)
    ax_time.set_xlabel("training time (s, no evaluation)")
    ax_epoch.set_xlabel("epoch")
    ax_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_time.set_ylabel(ylabel)
    if reference in groups:
        bests = [best(r["epochs"], key) for r in groups[reference][0]]
        target = float(np.mean([b for b in bests if b is not None]))
        for ax in (ax_time, ax_epoch):
            ax.axhline(target, color=colors[reference], linestyle=":", linewidth=1)
        ax_epoch.plot([], [], color=colors[reference], linestyle=":", label=f"{reference}'s best: {target:.4g}")
    for ax in (ax_time, ax_epoch):
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax_epoch.legend(fontsize=8)
    return _save(fig, path, title)


def _predicting(run: Run) -> list[tuple[int, dict[str, Any]]]:
    """(epoch, PDT statistics) of the epochs where PDT predicted."""
    return [(e["epoch"], e["pdt"]) for e in run["epochs"] if e["pdt"] and e["pdt"]["predicted"]]


def _param_names(runs: list[Run]) -> list[str]:
    """The parameters PDT handles, in model order (``param_types`` also lists any it does not)."""
    first = next(stats for run in runs for _, stats in _predicting(run))
    return list(first["accepted_ratio_per_param"])


def _pdt_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Successful runs of the methods that made at least one prediction."""
    return {m: ok for m, (ok, _) in _successful(runs).items() if any(_predicting(r) for r in ok)}


def _per_epoch(runs: list[Run], value: Callable[[dict[str, Any]], float]) -> tuple[np.ndarray, ...]:
    """Epochs with a prediction in any run, and mean and std over the runs that predicted there.

    ``value(stats)`` reads one number from an epoch's PDT statistics. Runs need not predict at
    the same epochs (``switch-by-val-loss`` decides per run).
    """
    per: dict[int, list[float]] = {}
    for run in runs:
        for epoch, stats in _predicting(run):
            per.setdefault(epoch, []).append(value(stats))
    epochs = sorted(per)
    stats = [_mean_std(np.array(per[e])) for e in epochs]
    return np.array(epochs), np.array([m for m, _ in stats]), np.array([s for _, s in stats])


def _epoch_band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str, label: str) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(x, mean, marker=".", color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _accepted_plot(path: Path, groups: dict[str, list[Run]], colors: dict[str, str], title: str) -> Path:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for method, ok in groups.items():
        _epoch_band(ax, *_per_epoch(ok, lambda s: s["accepted_ratio"]), colors[method], method)
    ax.set_xlabel("epoch (predicting epochs only)")
    ax.set_ylabel("accepted ratio (fraction of elements)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def _grid(groups: dict[str, Any], height: float, width: float = 8) -> tuple[Figure, list[Axes]]:
    """One row of axes per method."""
    fig = Figure(figsize=(width, height * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _per_layer_plot(path: Path, groups: dict[str, list[Run]], title: str) -> Path:
    """Paper Fig. 11(a): accepted ratio of every parameter (rows) at every predicting epoch (columns)."""
    names = _param_names(next(iter(groups.values())))
    fig, axes = _grid(groups, height=1.0 + 0.18 * len(names))
    for ax, (method, ok) in zip(axes, groups.items()):
        columns = [_per_epoch(ok, lambda s, n=n: s["accepted_ratio_per_param"][n]) for n in names]
        image = ax.imshow(
            np.array([mean for _, mean, _ in columns]), aspect="auto", vmin=0, vmax=1, interpolation="nearest"
        )
        # One column per predicting epoch: with an interval between predictions they are not consecutive.
        epochs = columns[0][0]
        ticks = range(0, len(epochs), max(1, len(epochs) // 15))
        ax.set_xticks(ticks, [str(epochs[i]) for i in ticks])
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(f"{method}: accepted ratio per parameter (mean over seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        fig.colorbar(image, ax=ax)
    return _save(fig, path, title)


def _per_type_plot(path: Path, groups: dict[str, list[Run]], title: str) -> Path:
    """Paper Fig. 11(b): accepted ratio per layer type, beside the overall ratio.

    A type's ratio is the unweighted mean over its parameters (the run records hold ratios per
    parameter, not sizes); the overall ratio is over all elements.
    """
    fig, axes = _grid(groups, height=3.5)
    for ax, (method, ok) in zip(axes, groups.items()):
        types: dict[str, list[str]] = {}
        for name in _param_names(ok):
            types.setdefault(ok[0]["param_types"].get(name, "unlabelled"), []).append(name)
        for i, (kind, names) in enumerate(types.items()):

            def mean_of_type(s: dict[str, Any], names: list[str] = names) -> float:
                return float(np.mean([s["accepted_ratio_per_param"][n] for n in names]))

            _epoch_band(ax, *_per_epoch(ok, mean_of_type), f"C{i % 10}", kind)
        x, mean, _ = _per_epoch(ok, lambda s: s["accepted_ratio"])
        ax.plot(x, mean, "k--", label="all elements")
        ax.set_title(f"{method}: accepted ratio per layer type", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def _rejection_plots(path: Path, groups: dict[str, list[Run]], title: str) -> list[Path]:
    """The rejection-reason plot of the methods whose criterion rejects anything (not ``random-mask``)."""
    checked = {
        m: ok for m, ok in groups.items() if any(sum(s["rejected"].values()) for r in ok for _, s in _predicting(r))
    }
    return [_rejection_plot(path, checked, title)] if checked else []


def _rejection_plot(path: Path, groups: dict[str, list[Run]], title: str) -> Path:
    """Paper Fig. 16: the fraction of elements each check rejects, per epoch, and the accepted fraction.

    Drawn as separate lines rather than stacked: one element can fail several checks, so the
    fractions overlap and their sum can exceed 1 (as in the paper's figure).
    """
    fig, axes = _grid(groups, height=3.5)
    for ax, (method, ok) in zip(axes, groups.items()):
        for i, reason in enumerate(REASONS):
            x, mean, std = _per_epoch(ok, lambda s, r=reason: s["rejected"][r] / s["numel"])
            if mean.any():
                _epoch_band(ax, x, mean, std, f"C{i}", f"rejected: {reason}")
        _epoch_band(ax, *_per_epoch(ok, lambda s: s["accepted_ratio"]), "k", "accepted")
        ax.set_title(f"{method}: why predictions were rejected (fraction of elements)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def _mask_files(out_dir: Path, runs: list[Run], epoch: int | None) -> dict[str, tuple[int, dict[str, Any]]]:
    """Method -> (seed, saved masks) of its lowest seed with a mask file (of ``epoch``, if given)."""
    found = {}
    for method, group in by_method(runs).items():
        for run in group:
            path = out_dir / "masks" / f"{method}-seed{run['seed']}.pt"
            if not path.exists():
                continue
            saved = torch.load(path, weights_only=True)
            if epoch is None or saved["epoch"] == epoch:
                found[method] = (run["seed"], saved)
                break
    return found


def _mask_plot(path: Path, method: str, seed: int, saved: dict[str, Any], title: str) -> Path:
    """Paper Fig. 12: one horizontal band per layer, coloured where the prediction was accepted.

    A layer larger than :data:`_MASK_ROWS` x :data:`_MASK_COLS` is shown in blocks, each cell the
    fraction of its block's elements that took the prediction. The colour scale is a square root,
    so that a block with a few accepted elements stands out from one with none (a linear mean
    hid ~10 % acceptance as "none").
    """
    masks = saved["masks"]
    fig = Figure(figsize=(10, 1.0 + 0.5 * len(masks)), layout="constrained")
    axes = fig.subplots(len(masks), 1, squeeze=False)[:, 0]
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)
    blocked = False
    for ax, (name, mask) in zip(axes, masks.items()):
        size = (min(mask.shape[0], _MASK_ROWS), min(mask.shape[1], _MASK_COLS))
        blocked |= size != tuple(mask.shape)
        blocks = torch.nn.functional.adaptive_avg_pool2d(mask.float()[None], size)[0]
        image = ax.imshow(blocks.numpy(), aspect="auto", cmap="Reds", norm=norm, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        share = mask.float().mean().item()
        ax.set_ylabel(f"{name}\n{100 * share:.1f} %", rotation=0, ha="right", va="center", fontsize=7)
    fig.colorbar(image, ax=list(axes), label="accepted fraction (square-root scale)", ticks=[0, 0.05, 0.2, 0.5, 1])
    share = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    cell = "a cell: the fraction of its block of weights" if blocked else "a cell: one weight"
    axes[0].set_title(
        f"{method}, seed {seed}, epoch {saved['epoch']}: weights that took the prediction ({100 * share:.1f} %; "
        f"white: the optimizer's); {cell}",
        fontsize=9,
    )
    return _save(fig, path, title)


def write_plots(
    out_dir: Path, runs: list[Run], mask_epoch: int | None = None, reference: str = "baseline"
) -> list[Path]:
    """Write the study's PNGs under ``out_dir/plots``; return their paths.

    Every figure is titled with the task and the study (``out_dir``'s name). Training loss (log
    scale) and validation accuracy against time and epoch, with the ``reference`` method's best
    marked; for methods that
    predicted: accepted ratio per epoch, per parameter and per layer type, and rejection reasons;
    a mask heatmap per method from ``out_dir/masks/<method>-seed<seed>.pt`` where the runner
    saved one (the lowest seed; only masks of ``mask_epoch`` when given).
    """
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    title = f"{runs[0]['task']}, study {Path(out_dir).resolve().name}"
    paths = [
        _curve_plot(plots / "train_loss.png", runs, "train_loss", "training loss (full pass)", True, title, reference),
        _curve_plot(plots / "val_acc.png", runs, "val_acc", "validation accuracy", False, title, reference),
        *loss_against_flops(plots / "train_loss_flops.png", runs, reference, title),
    ]
    groups = _pdt_groups(runs)
    if groups:
        paths += [
            _accepted_plot(plots / "accepted_ratio.png", groups, _colors(list(by_method(runs))), title),
            _per_layer_plot(plots / "accepted_ratio_per_layer.png", groups, title),
            _per_type_plot(plots / "accepted_ratio_per_layer_type.png", groups, title),
            *_rejection_plots(plots / "rejection_reasons.png", groups, title),
        ]
    for method, (seed, saved) in _mask_files(out_dir, runs, mask_epoch).items():
        paths.append(_mask_plot(plots / f"mask-{method}.png", method, seed, saved, title))
    return paths


def plot_sweep(
    out_path: Path, grid_rows: list[dict[str, Any]], x: str, y: str, value: str, title: str | None = None
) -> Path:
    """Heatmap of ``value`` over the grid of ``x`` and ``y`` (paper App. A.9), each cell annotated.

    Cells without a row, or whose value is ``None`` or not finite (a target never reached, a
    diverged run), stay blank and read "n/r".
    """
    xs = sorted({r[x] for r in grid_rows})
    ys = sorted({r[y] for r in grid_rows})
    table = np.full((len(ys), len(xs)), np.nan)
    for r in grid_rows:
        v = r[value]
        if v is not None and math.isfinite(v):
            table[ys.index(r[y]), xs.index(r[x])] = v
    fig = Figure(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(table, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(ys)):
        for j in range(len(xs)):
            v = table[i, j]
            # Light text on the dark (low) end of viridis, dark text elsewhere.
            color = "white" if not np.isnan(v) and image.norm(v) < 0.5 else "black"
            ax.text(j, i, "n/r" if np.isnan(v) else f"{v:.3g}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(value)
    fig.colorbar(image, ax=ax)
    return _save(fig, Path(out_path), title)


def plot_budget(path: Path, curves: dict[str, list[Point]], target: float, title: str | None = None) -> Path:
    """Best validation accuracy within each budget against the budget, a line per method
    (:func:`pdt_bench.budget.curves`); ``target`` (the reference's full-budget best less the
    tolerance, mean over seeds) dotted."""
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, (method, points) in enumerate(curves.items()):
        ax.plot(
            [p.fraction for p in points], [100 * p.best_acc for p in points], "o-", color=f"C{i % 10}", label=method
        )
    ax.axhline(100 * target, color="grey", linestyle=":", label="target")
    ax.set_xlabel("budget: fraction of the full schedule's epochs")
    ax.set_ylabel("best validation accuracy within it (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path), title)


def _by_flops(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """Training losses interpolated on a common grid of cumulative FLOPs, over the span every run covers."""
    flops = [cumulative_flops(r) for r in runs]
    grid = np.linspace(max(f[0] for f in flops), min(f[-1] for f in flops), _TIME_POINTS)
    losses = [np.interp(grid, f, [e["train_loss"] for e in r["epochs"]]) for f, r in zip(flops, runs)]
    return grid, np.array(losses)


def loss_against_flops(
    path: Path, runs: list[Run], reference: str = "baseline", title: str | None = None
) -> list[Path]:
    """Paper Fig. 9(b): training loss against cumulative FLOPs (:func:`~pdt_bench.metrics.cumulative_flops`).

    One colour per method, geometric mean ± geometric std over its successful seeds; a dashed line
    at the ``reference``'s best loss (geometric mean of its seeds' best). Runs recorded without FLOP
    counts are left out; with none, nothing is drawn (``[]``).
    """
    counted = [r for r in runs if "model_flops_per_epoch" in r["overhead"]]
    if not counted:
        return []
    groups = _successful(counted)
    log = _positive(counted, "train_loss")
    names = list(by_method(runs))
    colors = _colors(names)
    fig = Figure(figsize=(6.8, 4.3), layout="constrained")
    ax = fig.subplots()
    for method, (ok, diverged) in groups.items():
        label = method + (f" ({diverged} diverged, not shown)" if diverged else "")
        _band(ax, *_by_flops(ok), colors[method], label, log)
        line = ax.lines[-1]
        # The colours repeat after ten methods: the next ten are dashed.
        line.set_linestyle(("-", "--", ":")[names.index(method) // 10 % 3])
        if method in (reference, "pdt"):  # the comparison of the figure, on top of a dozen controls
            line.set(linewidth=2.5, zorder=3)
    if reference in groups:
        bests = np.array([best(r["epochs"], "train_loss") for r in groups[reference][0]])
        level = 10 ** np.mean(np.log10(bests)) if log else np.mean(bests)
        ax.axhline(level, color="k", linestyle="--", linewidth=0.8, label=f"{reference}'s best loss ({level:.3g})")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("cumulative FLOPs (model forward + backward, plus PDT's predictions)")
    ax.set_ylabel("training loss (full pass)")
    ax.set_title(f"Training loss against compute ({'geometric ' if log else ''}mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return [_save(fig, Path(path), title)]


def plot_steps(
    path: Path, records: list[dict[str, Any]], reference: str = "baseline", title: str | None = None
) -> Path:
    """``pdt-bench steps``: held-out loss against optimizer steps, one colour per method, mean ± std over
    its runs that did not diverge (over the evaluations every one of them reached); a dotted line at
    the ``reference``'s best held-out loss (the mean over its seeds' bests: the targets)."""
    methods = by_method(records)
    groups = {m: [r for r in g if not r["diverged"]] for m, g in methods.items()}
    colors = _colors(list(groups))
    fig = Figure(figsize=(7, 4.3), layout="constrained")
    ax = fig.subplots()
    for method, ok in groups.items():
        if not ok:
            continue
        n = min(len(r["curve"]) for r in ok)
        steps = np.array([step for step, _ in ok[0]["curve"][:n]])
        diverged = len(methods[method]) - len(ok)
        label = method + (f" ({diverged} diverged, not shown)" if diverged else "")
        _band(ax, steps, np.array([[loss for _, loss in r["curve"][:n]] for r in ok]), colors[method], label)
    if groups.get(reference):
        level = float(np.mean([min(loss for _, loss in r["curve"]) for r in groups[reference]]))
        label = f"{reference}'s best: {level:.4g}"
        ax.axhline(level, color=colors[reference], linestyle=":", linewidth=1, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out loss (nats per byte)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path), title)


def plane_words(landscape: Landscape) -> tuple[str, str, str]:
    """The figure's subtitle and axis labels, which say what the plane is."""
    if landscape["plane"] == "pca":
        pc1, pc2 = (100 * f for f in landscape["explained"])
        return (
            "plane: top two principal directions of both trajectories, centred on their mean",
            f"PC1 ({pc1:.1f} % of the variance)",
            f"PC2 ({pc2:.1f} % of the variance)",
        )
    reference, method = landscape["methods"]
    return (
        f"plane through the common start and the ends of {reference} and {method}",
        f"towards {reference}'s end",
        f"towards {method}'s end (part orthogonal to the x axis)",
    )


def plot_landscape(path: Path, landscape: Landscape) -> Path:
    """Paper Fig. 1: both weight trajectories over a contour map of the training loss on their plane.

    Dots mark each epoch's weights, stars the epochs where PDT's prediction was accepted; the dashed
    white contour is the loss of the baseline's best weights. With the PCA plane the weights lie off
    the plane, so a dot's own loss can differ from the contour under it.
    """
    alphas, betas = np.array(landscape["alphas"]), np.array(landscape["betas"])
    losses = np.ma.masked_invalid(np.array(landscape["losses"], dtype=float))
    low, high = float(losses.min()), float(losses.max())
    fig = Figure(figsize=(7, 5.6), layout="constrained")
    ax = fig.subplots()
    log = low > 0  # a self-supervised loss can be negative
    levels = (np.geomspace if log else np.linspace)(low, high, 25) if high > low else None
    image = ax.contourf(alphas, betas, losses, levels=levels, norm=LogNorm(low, high) if log else None, cmap="viridis")
    fig.colorbar(image, ax=ax, label=f"training loss on {landscape['subset']} training samples", format="%.3g")
    handles = []
    level = landscape["best_loss"]
    reference, method = landscape["methods"]
    if level is not None and low < level < high:
        ax.contour(alphas, betas, losses, levels=[level], colors="white", linestyles="--", linewidths=1)
        handles.append(Line2D([], [], color="white", linestyle="--", label=f"{reference}'s best loss ({level:.3g})"))
    for i, name in enumerate(landscape["methods"]):
        xy = np.array(landscape["paths"][name])
        color = ("white", "tab:red")[i]  # both visible over every shade of viridis
        (line,) = ax.plot(xy[:, 0], xy[:, 1], marker=".", markersize=4, linewidth=1, color=color, label=name)
        ax.plot(*xy[-1], marker="o", markersize=8, color=line.get_color(), markeredgecolor="white")
        handles.append(line)
    jumps = landscape["jumps"]
    jumped = np.array(landscape["paths"][method])[jumps].reshape(-1, 2)
    label = f"{method}'s accepted predictions ({len(jumps)})"
    handles.append(ax.scatter(*jumped.T, marker="*", s=110, color="gold", edgecolors="black", zorder=3, label=label))
    start = landscape["paths"][reference][0]
    handles.append(ax.scatter(*start, marker="s", s=40, color="black", edgecolors="white", zorder=3, label="start"))
    handles.append(Line2D([], [], marker="o", color="gray", linestyle="", markeredgecolor="white", label="end"))
    subtitle, xlabel, ylabel = plane_words(landscape)
    ax.set_title(f"{landscape['task']}, seed {landscape['seed']}: {reference} and {method}\n{subtitle}", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # A dark legend: the baseline's line and the best-loss contour are white.
    ax.legend(handles=handles, fontsize=7, loc="best", facecolor="0.3", labelcolor="white", framealpha=0.85)
    return _save(fig, Path(path))


def plot_diagnosis(path: Path, reports: list[dict[str, Any]], title: str) -> Path:
    """Per parameter kind over the epochs judged: accepted share, increment SNR, forecast errors
    (``pdt-bench diagnose``)."""
    from torch_pdt.diagnostics import KINDS, by_kind

    pooled = [(r["epoch"] + 1, by_kind(r)) for r in reports]  # 1-based epochs, as the curves
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    colors = dict(zip(KINDS, ("C0", "C1", "C2", "C3", "C7")))
    for kind in KINDS:
        points = [(e, p[kind]) for e, p in pooled if kind in p]
        if not points:
            continue
        x = [e for e, _ in points]
        axes[0].plot(x, [p["accepted"] for _, p in points], color=colors[kind], label=kind)
        axes[1].plot(x, [p["snr"] for _, p in points], color=colors[kind], label=kind)
        settled = [(e, p) for e, p in points if p["forecast_error"] is not None]
        axes[2].plot(
            [e for e, _ in settled], [p["forecast_error"] for _, p in settled], color=colors[kind], label=f"{kind}, DMD"
        )
        axes[2].plot(
            [e for e, _ in settled],
            [p["linear_error"] for _, p in settled],
            color=colors[kind],
            linestyle="--",
            label=f"{kind}, linear",
        )
    axes[0].set_ylabel("share accepted")
    axes[1].set_ylabel("median |mean| / sd of increments")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("error / distance travelled")
    axes[2].set_yscale("log")
    axes[2].axhline(1.0, color="0.6", linewidth=0.8)
    for ax in axes:
        ax.set_xlabel("epoch of the (unmade) jump")
        ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the title
    return _save(fig, path, title)
