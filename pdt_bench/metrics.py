"""Time to the baseline's best (TTB), runtime reduction and the per-method summary of a study.

The paper's efficiency metrics (Sec. 4): **TTB-Loss**, the training time a run needs to reach the
best training loss of the baseline, and **TTB-Acc**, the time to reach the baseline's best
validation accuracy; beside them **TTB-ValLoss**, the time to the baseline's best validation loss
(held-out, like TTB-Acc, but read on the loss the optimizer minimises). Targets are taken per
seed: a run of seed ``s`` is compared with the reference run (``baseline`` unless told otherwise)
of seed ``s``. The reference's own TTB is the time of its best epoch. **Runtime reduction** is
``1 - TTB_method / TTB_reference`` per seed.

The training loss comes in two definitions: ``train_loss``, a full pass after the epoch's PDT
step (primary), and ``batch_loss``, the mean of the batch losses during the epoch (the authors').

A run that never reaches a target has no TTB (``None``): means and standard deviations are over
the runs that reached it, and the count of those that did not is reported next to them; medians
count a miss as infinitely late, so a median exists only when more than half the runs got there.
Diverged runs are left out of every statistic, as in the paper ("only successful runs are
included"), and counted separately.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .records import Epoch, Run

__all__ = [
    "TARGETS",
    "best",
    "by_method",
    "cumulative_flops",
    "describe",
    "jump_epochs",
    "run_row",
    "summarize",
    "time_to_target",
]

TARGETS = {"loss": "train_loss", "batch_loss": "batch_loss", "acc": "val_acc", "val_loss": "val_loss"}
"""TTB name -> the epoch field it is measured on."""


def _higher_is_better(key: str) -> bool:
    return key.endswith("_acc")


def _finite(epochs: list[Epoch], key: str) -> list[Epoch]:
    return [e for e in epochs if math.isfinite(e[key])]


def best(epochs: list[Epoch], key: str) -> float | None:
    """The best finite value of ``key`` (lowest loss, highest accuracy); ``None`` if there is none."""
    values = [e[key] for e in _finite(epochs, key)]
    if not values:
        return None
    return max(values) if _higher_is_better(key) else min(values)


def time_to_target(epochs: list[Epoch], key: str, target: float) -> tuple[float, int] | None:
    """``(train_time, epoch)`` of the first epoch whose ``key`` reaches ``target``, or ``None``.

    A loss reaches the target when ``<= target``, an accuracy when ``>= target`` (a key ending in
    ``_acc``). With ``target = best(epochs, key)`` this is the run's own best epoch (the first one,
    on ties). Non-finite values never reach a target.

    In an own training loop, record one dict per epoch with ``epoch``, the cumulative
    ``train_time`` and the measured values, then compare a PDT run with a plain one (TTB-Loss):

    >>> plain = [{"epoch": e, "train_time": 2.0 * e, "train_loss": 1 / e} for e in range(1, 11)]
    >>> with_pdt = [{"epoch": e, "train_time": 2.1 * e, "train_loss": 1 / e**1.5} for e in range(1, 11)]
    >>> target = best(plain, "train_loss")  # the plain run's best: 0.1, at epoch 10
    >>> time_to_target(with_pdt, "train_loss", target)  # (seconds, epoch): PDT gets there at epoch 5
    (10.5, 5)
    >>> time_to_target(plain, "train_loss", 0.01) is None  # never reached
    True
    """
    higher = _higher_is_better(key)
    for e in _finite(epochs, key):
        if (e[key] >= target) if higher else (e[key] <= target):
            return e["train_time"], e["epoch"]
    return None


def _mean_accepted_ratio(run: Run) -> float | None:
    """Mean accepted ratio over the epochs where PDT predicted; ``None`` without predictions."""
    ratios = [e["pdt"]["accepted_ratio"] for e in run["epochs"] if e["pdt"] and e["pdt"]["predicted"]]
    return statistics.fmean(ratios) if ratios else None


def jump_epochs(run: Run) -> list[int]:
    """The epochs whose PDT step moved the weights: it predicted and accepted at least one element."""
    return [e["epoch"] for e in run["epochs"] if e["pdt"] and e["pdt"]["predicted"] and e["pdt"].get("accepted", 0) > 0]


def predictions(run: Run) -> tuple[int, int, int] | None:
    """``(epochs that predicted, of those, epochs that accepted at least one element, predictions rolled
    back)``; ``None`` for a run without PDT. The one place that reads PDT's counts from the records."""
    steps = [e["pdt"] for e in run["epochs"] if e["pdt"] is not None]
    if not steps:  # PDT's statistics are recorded every epoch of a run with PDT
        return None
    rolled_back = sum(1 for s in steps if s.get("rolled_back"))  # only loss-driven pacing rules roll back
    return sum(1 for s in steps if s["predicted"]), len(jump_epochs(run)), rolled_back


def cumulative_flops(run: Run) -> list[float]:
    r"""Floating-point operations spent by the end of each epoch (paper App. A.3).

    :math:`F_e = e \, F_\text{model} + P_e \, F_\text{PDT}`: the model's FLOPs per epoch (forward and
    backward of every batch, counted by ``FlopCounterMode``) times the epochs, plus PDT's analytic
    FLOPs per prediction times :math:`P_e`, the predictions up to epoch :math:`e`. Evaluation is not
    counted, nor the extra work of other methods (an EMA, Lookahead).

    >>> rows = [{"epoch": e, "pdt": {"predicted": e >= 2}} for e in (1, 2, 3)]
    >>> overhead = {"model_flops_per_epoch": 100, "pdt_flops_per_prediction": 7}
    >>> cumulative_flops({"epochs": rows, "overhead": overhead})
    [100, 207, 314]
    """
    o = run["overhead"]
    flops, predicted = [], 0
    for e in run["epochs"]:
        predicted += bool(e["pdt"] and e["pdt"]["predicted"])
        flops.append(o["model_flops_per_epoch"] * e["epoch"] + o["pdt_flops_per_prediction"] * predicted)
    return flops


def run_row(run: Run, reference: Run | None) -> dict[str, Any]:
    """One run's numbers; the TTB fields compare it with ``reference``, the reference run of its seed.

    Without a (successful) reference run, the comparative fields are ``None``.
    """
    epochs = run["epochs"]
    last = epochs[-1]
    row: dict[str, Any] = {
        "seed": run["seed"],
        "diverged": run["diverged"],
        "final_val_acc": last["val_acc"],
        "best_val_acc": best(epochs, "val_acc"),
        "final_train_loss": last["train_loss"],
        "best_train_loss": best(epochs, "train_loss"),
        "first_train_loss": epochs[0]["train_loss"],
        "accepted_ratio": _mean_accepted_ratio(run),
        "pdt_time_share": sum(e["pdt_time"] for e in epochs) / last["train_time"],
        "train_time_s": last["train_time"],
        "eval_time_s": sum(e["eval_time"] for e in epochs),
        "compared": reference is not None,
        "final_loss_ratio": None,
        "final_loss_gain": None,
        "predictions": None,
        "accepting_predictions": None,
        "rollbacks": None,
    }
    counted = predictions(run)
    if counted is not None:
        row["predictions"], row["accepting_predictions"], row["rollbacks"] = counted
    for name, key in TARGETS.items():
        row[f"ttb_{name}_s"] = row[f"ttb_{name}_epochs"] = row[f"reduction_{name}"] = None
        row[f"reduction_{name}_epochs"] = None
        target = best(reference["epochs"], key) if reference is not None else None
        if target is None:
            continue
        hit = time_to_target(epochs, key, target)
        if hit is None:
            continue
        reference_time, reference_epochs = time_to_target(reference["epochs"], key, target)
        row[f"ttb_{name}_s"], row[f"ttb_{name}_epochs"] = hit
        row[f"reduction_{name}"] = 1.0 - hit[0] / reference_time
        # In epochs: immune to a machine whose speed changes during a study (shared CPUs).
        row[f"reduction_{name}_epochs"] = 1.0 - hit[1] / reference_epochs
    end = reference["epochs"][-1]["train_loss"] if reference is not None else 0.0
    if end != 0:  # a reference that ends at zero loss gives nothing to divide by
        row["final_loss_ratio"] = last["train_loss"] / end
        # The fall below the reference's final loss by its magnitude: above 0 is a lower loss whatever the
        # sign (SimSiam's loss is negative, and may cross zero on some seeds and not on others).
        row["final_loss_gain"] = (end - last["train_loss"]) / abs(end)
    return row


def describe(values: list[float | None], missing: float = math.inf) -> dict[str, Any]:
    """Mean, sample standard deviation, median, minimum and maximum of ``values``; ``None`` entries are misses.

    Mean and std are over the present values (std is 0 for a single one). The median ranks
    misses as ``missing`` (``inf`` for a time, ``-inf`` for a reduction) and is ``None`` when it
    falls on a miss; so are ``min`` and ``max`` (the spread across seeds, misses included).
    ``n`` counts the present values, ``of`` all of them.
    """
    present = [v for v in values if v is not None]
    ranked = [missing if v is None else v for v in values]

    def finite(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else (0.0 if present else None),
        "median": finite(statistics.median(ranked)) if values else None,
        "min": finite(min(ranked)) if values else None,
        "max": finite(max(ranked)) if values else None,
        "n": len(present),
        "of": len(values),
    }


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by method, in order of first appearance, each group sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run["method"], []).append(run)
    return {m: sorted(g, key=lambda r: r["seed"]) for m, g in groups.items()}


def _method_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if not r["diverged"]]
    compared = [r for r in ok if r["compared"]]
    summary: dict[str, Any] = {"runs": len(rows), "diverged": len(rows) - len(ok), "compared": len(compared)}
    for name in TARGETS:
        summary[f"ttb_{name}_s"] = describe([r[f"ttb_{name}_s"] for r in compared])
        summary[f"ttb_{name}_epochs"] = describe([r[f"ttb_{name}_epochs"] for r in compared])
        for reduction in (f"reduction_{name}", f"reduction_{name}_epochs"):
            summary[reduction] = describe([r[reduction] for r in compared], missing=-math.inf)
        summary[f"never_reached_{name}"] = sum(r[f"ttb_{name}_s"] is None for r in compared)
    summary["final_loss_ratio"] = describe([r["final_loss_ratio"] for r in compared])
    summary["final_loss_gain"] = describe([r["final_loss_gain"] for r in compared])
    for key in (
        "final_val_acc",
        "best_val_acc",
        "first_train_loss",
        "final_train_loss",
        "best_train_loss",
        "pdt_time_share",
    ):
        summary[key] = describe([r[key] for r in ok])
    summary["train_time_s"] = describe([r["train_time_s"] for r in ok])
    summary["eval_time_s"] = describe([r["eval_time_s"] for r in ok])
    # Methods without PDT have no accepted ratio at all: keep n = 0 rather than a row of misses.
    summary["accepted_ratio"] = describe([r["accepted_ratio"] for r in ok if r["accepted_ratio"] is not None])
    with_pdt = [r for r in ok if r["predictions"] is not None]
    summary["pdt"] = bool(with_pdt)
    summary["predictions"] = describe([r["predictions"] for r in with_pdt])
    summary["accepting_predictions"] = describe([r["accepting_predictions"] for r in with_pdt])
    summary["rollbacks"] = describe([r["rollbacks"] for r in with_pdt])
    summary["per_seed"] = rows
    return summary


def summarize(runs: list[Run], reference: str = "baseline") -> dict[str, Any]:
    """Per-method statistics of a study against the ``reference`` method, seed by seed.

    Returns ``{"task", "reference", "seeds", "methods": {method: {...}}}``; each method's entry
    holds ``runs``, ``diverged``, ``compared`` (successful runs whose seed has a successful
    reference run), for each TTB name in :data:`TARGETS` (``loss``, ``batch_loss``, ``acc``,
    ``val_loss``) ``ttb_<name>_s``, ``ttb_<name>_epochs``, ``reduction_<name>`` and
    ``reduction_<name>_epochs`` (in time and in epochs; statistics from :func:`describe`) and
    ``never_reached_<name>`` (a count), then statistics of ``final_loss_ratio``,
    ``final_loss_gain`` (the fall below the reference's final loss by its magnitude; both ``None``
    for a seed whose reference ends at zero), ``final_val_acc``, ``best_val_acc``,
    ``first_train_loss``, ``final_train_loss``, ``best_train_loss``, ``pdt_time_share``,
    ``train_time_s``, ``eval_time_s``, ``accepted_ratio``; for methods with PDT (``pdt``)
    ``predictions``, ``accepting_predictions`` and ``rollbacks`` (counts per run); and
    ``per_seed``: the rows of :func:`run_row`.
    """
    groups = by_method(runs)
    if reference not in groups:
        raise ValueError(f"no runs of the reference method {reference!r} (methods: {', '.join(groups)})")
    references = {r["seed"]: r for r in groups[reference] if not r["diverged"]}
    methods = {m: _method_summary([run_row(r, references.get(r["seed"])) for r in g]) for m, g in groups.items()}
    return {
        "task": runs[0]["task"],
        "reference": reference,
        "seeds": sorted({r["seed"] for r in runs}),
        "methods": methods,
    }
