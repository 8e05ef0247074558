"""Budget curves: what a shorter schedule costs each method.

Under an annealed schedule every run peaks near the schedule's end, so "epochs to the baseline's
best within one run" says little: what a practitioner saves is *budget*, a shorter schedule that
reaches the same quality. ``M@epochs=E`` is method ``M`` with its whole learning-rate schedule
compressed into E epochs (:mod:`pdt_bench.methods`); ``M`` itself is the full budget.

A method *reaches* at a budget when, on most of its seeds, its best validation accuracy within that
budget is at least the full-budget reference's best of the same seed, less a tolerance; its
*smallest budget* is the smallest one where it reaches. Beside it, at every budget, its mean final
accuracy against the reference compressed to the same budget: the price of the method where both
stop at the same epoch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .records import Run
from .report import markdown_table

__all__ = ["Point", "curves", "smallest_budget", "table"]


@dataclass(frozen=True)
class Point:
    """One method at one budget, over its seeds."""

    epochs: int
    fraction: float
    """``epochs`` over the full budget's."""
    seeds: int
    reached: int
    """Seeds whose best validation accuracy within the budget is the reference's best (same seed) less
    the tolerance, or more."""
    best_acc: float
    """Mean over seeds of the best validation accuracy within the budget (a diverged run counts its
    epochs before it diverged); NaN where a seed has none (a mean of the others would read as all)."""
    final_gap: float | None
    """Mean over the seeds both ran of the final validation accuracy less the reference's at the same
    budget; ``None`` where the reference did not run that budget."""

    @property
    def reaches(self) -> bool:
        return 2 * self.reached > self.seeds


def _split(name: str, full: int) -> tuple[str, int]:
    """``"pdt-lawa@epochs=24"`` -> ``("pdt-lawa", 24)``; a name without ``@epochs=`` is the full budget."""
    parts = name.split("@")
    epochs = [p for p in parts if p.startswith("epochs=")]
    if len(epochs) != 1 or not epochs[0][len("epochs=") :].isdigit():  # none, or not a count: a method of its own
        return name, full
    return "@".join(p for p in parts if p != epochs[0]), int(epochs[0][len("epochs=") :])


def _accs(run: Run) -> list[float]:
    return [e["val_acc"] for e in run["epochs"] if e.get("val_acc") is not None and math.isfinite(e["val_acc"])]


def _full(run: Run) -> int:
    """The task's epochs, as the run's config says; a record without them (or not a count): its length."""
    epochs = run["config"].get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else len(run["epochs"])


def curves(runs: list[Run], reference: str = "baseline", tolerance: float = 0.003) -> dict[str, list[Point]]:
    """Method -> its points by budget, for the methods run at a compressed budget (the reference first);
    ``{}`` when the reference has no full-budget run or nothing ran compressed."""
    full = max((_full(r) for r in runs if r["method"] == reference), default=None)
    if full is None:
        return {}
    grouped: dict[str, dict[int, dict[int, Run]]] = {}
    for run in runs:
        family, epochs = _split(run["method"], full)
        grouped.setdefault(family, {}).setdefault(epochs, {})[run["seed"]] = run
    target = {seed: max(_accs(r), default=math.nan) - tolerance for seed, r in grouped[reference][full].items()}
    compressed = [f for f, budgets in grouped.items() if any(e < full for e in budgets)]
    if reference not in compressed or compressed == [reference]:  # a budget-matched baseline alone: no curve
        return {}
    out = {}
    for family in [reference, *sorted(f for f in compressed if f != reference)]:
        points = []
        for epochs, by_seed in sorted(grouped[family].items()):
            seeds = [s for s in by_seed if s in target]
            if not seeds:
                continue
            accs = {s: _accs(by_seed[s]) for s in seeds}
            base = {s: _accs(r) for s, r in grouped[reference].get(epochs, {}).items()}
            gaps = [accs[s][-1] - base[s][-1] for s in seeds if accs[s] and base.get(s)]
            best = [max(accs[s]) for s in seeds if accs[s]]
            points.append(
                Point(
                    epochs=epochs,
                    fraction=epochs / full,
                    seeds=len(seeds),
                    reached=sum(bool(accs[s]) and max(accs[s]) >= target[s] for s in seeds),
                    best_acc=statistics.fmean(best) if best and len(best) == len(seeds) else math.nan,
                    final_gap=statistics.fmean(gaps) if gaps else None,
                )
            )
        out[family] = points
    return out


def smallest_budget(points: list[Point]) -> Point | None:
    """The smallest budget at which the method reaches, ``None`` if it reaches at none."""
    return next((p for p in points if p.reaches), None)


def table(found: dict[str, list[Point]]) -> str:
    """A Markdown table: a row per method, a column per budget (fraction of the full budget)."""
    fractions = sorted({round(p.fraction, 2) for points in found.values() for p in points})
    rows = []
    for method, points in found.items():
        at = {round(p.fraction, 2): p for p in points}
        cells = []
        for f in fractions:
            p = at.get(f)
            if p is None:
                cells.append("-")
                continue
            gap = "" if p.final_gap is None or method == next(iter(found)) else f", {100 * p.final_gap:+.2f}"
            cells.append(f"{100 * p.best_acc:.2f} {p.reached}/{p.seeds}{gap}")
        smallest = smallest_budget(points)
        rows.append(
            [f"`{method}`", *cells, "none" if smallest is None else f"{smallest.fraction:.2f} ({smallest.epochs})"]
        )
    return markdown_table(["method", *(f"{f:g}" for f in fractions), "smallest budget"], rows)
