"""The results of a study as a fixed-width table, a summary JSON and a Markdown report.

Everything here reads the dictionary of :func:`pdt_bench.metrics.summarize`; nothing is measured.
Every figure is mean ± std over the successful runs of a method. Next to each TTB stands how
many runs reached the target ("3/5"); "n/r" means none did; "-" that the figure does not apply.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any

from .metrics import best, by_method, cumulative_flops, time_to_target
from .records import Run, save_json, write_text

__all__ = [
    "SAME",
    "compact_table",
    "did_not_learn",
    "format_table",
    "link",
    "markdown_table",
    "no_effect",
    "no_effect_cell",
    "percent_change",
    "verdict",
    "write_report",
    "write_summary",
]

_PERCENT = "percent"
"""A fraction shown in percent with one decimal (reductions, ratios of elements or time)."""
_EPOCHS = "epochs"
"""A number of epochs: one decimal (a mean over seeds)."""
_POINTS = "points"
"""An accuracy shown in percent with two decimals, so that 0.1-point differences show."""


def _value(x: float, kind: str) -> str:
    if kind == _PERCENT:
        return f"{100 * x:.1f}"
    if kind == _POINTS:
        return f"{100 * x:.2f}"
    return f"{x:.1f}"  # _EPOCHS


def _mean_std(mean: float, std: float) -> str:
    """Three significant digits for the mean, and the std to the same decimal place."""
    magnitude = math.floor(math.log10(abs(mean))) if mean else 0
    if -3 <= magnitude < 6:
        decimals = max(0, 2 - magnitude)
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{mean:.2e} ± {std:.1e}"


def _stat(stat: dict[str, Any], kind: str | None = None) -> str:
    """``mean ± std`` (see :func:`_mean_std` without a ``kind``); ``n/r`` when no compared run has a value,
    ``-`` when there was nothing to compare."""
    if stat["n"] == 0:
        return "n/r" if stat["of"] else "-"
    if kind is None:
        return _mean_std(stat["mean"], stat["std"])
    return f"{_value(stat['mean'], kind)} ± {_value(stat['std'], kind)}"


def _median(stat: dict[str, Any], kind: str) -> str:
    if stat["of"] == 0:
        return "-"
    return "n/r" if stat["median"] is None else _value(stat["median"], kind)


def _reached(stat: dict[str, Any]) -> str:
    return f"{stat['n']}/{stat['of']}"


def _loss_columns(m: dict[str, Any], loss: str) -> list[tuple[str, str]]:
    """(header, cell) pairs of the TTB-Loss figures; ``loss`` is a metrics.TARGETS name."""
    return [
        ("TTB-Loss s", _stat(m[f"ttb_{loss}_s"])),
        ("epochs", _stat(m[f"ttb_{loss}_epochs"], _EPOCHS)),
        ("reached", _reached(m[f"ttb_{loss}_s"])),
        ("reduction %", _stat(m[f"reduction_{loss}"], _PERCENT)),
        ("median %", _median(m[f"reduction_{loss}"], _PERCENT)),
        ("median % (epochs)", no_effect_cell(m) or _median(m[f"reduction_{loss}_epochs"], _PERCENT)),
        ("final loss ratio", _stat(m["final_loss_ratio"])),
    ]


def no_effect_cell(m: dict[str, Any]) -> str | None:
    reason = no_effect(m)
    if reason is None:
        return None
    return "no prediction" if reason.startswith("no prediction") else "none accepted"


def _other_columns(m: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("TTB-Acc s", _stat(m["ttb_acc_s"])),
        ("epochs", _stat(m["ttb_acc_epochs"], _EPOCHS)),
        ("reached", _reached(m["ttb_acc_s"])),
        ("reduction %", _stat(m["reduction_acc"], _PERCENT)),
        ("median %", _median(m["reduction_acc"], _PERCENT)),
        ("median % (epochs)", _median(m["reduction_acc_epochs"], _PERCENT)),
        ("TTB-ValLoss s", _stat(m["ttb_val_loss_s"])),
        ("epochs", _stat(m["ttb_val_loss_epochs"], _EPOCHS)),
        ("reached", _reached(m["ttb_val_loss_s"])),
        ("median % (epochs)", _median(m["reduction_val_loss_epochs"], _PERCENT)),
        ("final acc %", _stat(m["final_val_acc"], _POINTS)),
        ("best acc %", _stat(m["best_val_acc"], _POINTS)),
        ("best loss", _stat(m["best_train_loss"])),
        ("accepted %", _stat(m["accepted_ratio"], _PERCENT)),
        ("predictions", _stat(m["predictions"], _EPOCHS) if m["pdt"] else "-"),
        ("rolled back", _stat(m["rollbacks"], _EPOCHS) if m["pdt"] else "-"),
        ("PDT time %", _stat(m["pdt_time_share"], _PERCENT)),
        ("diverged", f"{m['diverged']}/{m['runs']}"),
    ]


def _rows(summary: dict[str, Any], loss: str = "loss", full: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and cells, one row per method; ``full=False`` keeps only the TTB-Loss figures."""
    rows = [
        [("method", name), *_loss_columns(m, loss), *(_other_columns(m) if full else [])]
        for name, m in summary["methods"].items()
    ]
    return [h for h, _ in rows[0]], [[c for _, c in row] for row in rows]


MAX_COLUMNS = 12
"""The widest table a report holds; wider ones are split, each part led by the method column."""


def format_table(summary: dict[str, Any], loss: str = "loss") -> str:
    """Every figure of the study, one row per method (``pdt-bench compare --wide``; report.md), in tables of
    at most :data:`MAX_COLUMNS` columns."""
    headers, rows = _rows(summary, loss)
    step = MAX_COLUMNS - 1
    parts = [
        markdown_table([headers[0], *headers[i : i + step]], [[r[0], *r[i : i + step]] for r in rows])
        for i in range(1, len(headers), step)
    ]
    return "\n\n".join(parts)


def _epochs_reached(m: dict[str, Any], name: str) -> str:
    """Median epochs to the reference's best of TTB name ``name``, the median reduction in epochs and the
    seeds that got there: ``12 +25% 3/5``."""
    if (cell := no_effect_cell(m)) is not None:
        return cell
    e = m[f"ttb_{name}_epochs"]
    median = "n/r" if e["median"] is None else f"{e['median']:g}"
    return f"{median} {percent_change(m[f'reduction_{name}_epochs']['median'])} {e['n']}/{e['of']}"


def to_target_cell(e: dict[str, Any]) -> str:
    """Statistics of times to a target (:func:`pdt_bench.metrics.describe`, a miss as ``None``): the median,
    the range over the seeds and how many got there, ``12 (10–14) 3/3``; ``n/r`` where a miss is the median or
    the maximum."""
    if e["n"] == 0:
        return f"n/r 0/{e['of']}"
    median = "n/r" if e["median"] is None else f"{e['median']:g}"
    high = "n/r" if e["max"] is None else f"{e['max']:g}"
    spread = f" ({e['min']:g}–{high})" if e["of"] > 1 else ""
    return f"{median}{spread} {e['n']}/{e['of']}"


def percent_change(fraction: float | None) -> str:
    """A reduction as a signed whole percentage (``+40%``); ``n/r`` for none (a target not reached)."""
    return "n/r" if fraction is None else f"{100 * fraction:+.0f}%"


HELD_OUT = {"loss": "train loss", "acc": "val acc", "val_loss": "val loss"}
"""The three targets every table and verdict gives, TTB name -> column header: the reference's best
training loss, best validation accuracy and best validation loss."""


def compact_table(summary: dict[str, Any]) -> str:
    """The study in a terminal (100 columns for method names up to ~16 characters): per method and per
    target of :data:`HELD_OUT`, the median epochs to the reference's best, the median reduction in
    epochs and the seeds that reached it; the final accuracy and its difference from the reference's,
    and the accepted share (means over seeds)."""
    methods, reference = summary["methods"], summary["methods"][summary["reference"]]
    base_acc = reference["final_val_acc"]["mean"]
    rows = []
    for name, m in methods.items():
        acc = m["final_val_acc"]["mean"]
        delta = "" if acc is None or base_acc is None else f" ({100 * (acc - base_acc):+.2f})"
        accepted = m["accepted_ratio"]["mean"]
        rows.append(
            [
                name,
                *(_epochs_reached(m, target) for target in HELD_OUT),
                "-" if acc is None else f"{100 * acc:.2f}{delta}",
                "-" if accepted is None else f"{100 * accepted:.1f}",
            ]
        )
    ref = summary["reference"]
    headers = ["method", *HELD_OUT.values(), "final acc %", "accepted %"]
    legend = (
        f"train loss, val acc, val loss: epochs to the {ref}'s best training loss, best validation accuracy "
        f"and best validation loss (median over seeds), the median reduction in epochs, then the seeds that "
        f"got there (n/r: not reached). final acc %: mean final validation accuracy (difference from the "
        f"{ref}'s, points). accepted %: mean share of elements PDT's predictions accepted (PDT's time: "
        f"report.md). Verdicts against the {ref}, in epochs over seeds:"
    )
    lines = textwrap.wrap(legend, 100)
    for name, m in methods.items():
        if m is not reference:
            line = verdict(name, m, reference, summary["reference"], brief=True)
            lines += textwrap.wrap(line, 100, subsequent_indent="  ")
    return markdown_table(headers, rows) + "\n\n" + "\n".join(lines)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``out_dir/summary.json`` atomically; return its path."""
    path = Path(out_dir) / "summary.json"
    save_json(path, summary)
    return path


def link(text: str, target: str, image: bool = False) -> str:
    """A Markdown link (an image with ``image``) whose target may hold spaces: ``[text](<a b/c.md>)``."""
    return f"{'!' if image else ''}[{text}](<{target}>)"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, padded so that it also reads aligned as plain text: the first column
    left-aligned, the others right-aligned (numbers)."""
    widths = [max(3, *(len(r[i]) for r in [headers, *rows])) for i in range(len(headers))]
    rule = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    return "\n".join(line(cells) for cells in [headers, rule, *rows])


def _sooner_or_later(fraction: float) -> str:
    """A reduction in words; below the 0.1 % shown, it is no difference."""
    if abs(fraction) < 0.0005:
        return "at the same time"
    return f"{100 * abs(fraction):.1f} % {'sooner' if fraction > 0 else 'later'}"


def _epochs_words(m: dict[str, Any], name: str, what: str, reference: str) -> str:
    """How a method reached a target, in epochs over seeds (median and min-max), seconds beside."""
    epochs, reduction = m[f"ttb_{name}_epochs"], m[f"reduction_{name}_epochs"]
    if epochs["n"] == 0:
        return f"never reached the {reference}'s {what} (0/{epochs['of']} runs)"
    words = f"reached the {reference}'s {what} on {epochs['n']}/{epochs['of']} runs"
    if reduction["median"] is None:
        return words + ", too few for a median"
    spread = ""
    if reduction["of"] > 1:
        low, high = (_signed_percent(reduction[k]) if reduction[k] is not None else "never" for k in ("min", "max"))
        spread = f" (seeds: {low} to {high})"
    seconds = m[f"reduction_{name}"]["median"]
    clock = f"; in seconds {_sooner_or_later(seconds)}" if seconds is not None else ""
    return words + f", median {_sooner_or_later(reduction['median'])} in epochs{spread}{clock}"


def _signed_percent(fraction: float) -> str:
    return f"{100 * fraction:+.0f} %"


SAME = {"time": 0.01, "loss": 0.01, "accuracy": 0.001}
"""Changes within these margins read as "about the same": 1 % of the epochs to a target, 1 % of
the final train loss, 0.1 accuracy point."""


def _side(gain: float | None, margin: float) -> str:
    if gain is not None and gain > margin:
        return "helped"
    if gain is not None and gain >= -margin:
        return "same"
    return "worse"


LEARNED = 0.9
"""A reference whose median final training loss has not fallen by more than ``1 - LEARNED`` of its median
first-epoch loss's magnitude did not learn: there is nothing to be ahead of. (By the magnitude, so that a
loss that is negative, as SimSiam's cosine similarity, is judged the same way.)"""


def did_not_learn(reference: dict[str, Any], name: str) -> str | None:
    """Why reference method ``name`` gives nothing to judge against, or ``None``: its median final training
    loss has not fallen enough (:data:`LEARNED`) (a run stuck at chance, as the ``--tiny``
    task is). The records hold no class count, so chance accuracy itself is not judged."""
    if "first_train_loss" not in reference:  # an old summary.json, read without its runs: nothing to tell
        return None
    first, final = reference["first_train_loss"]["median"], reference["final_train_loss"]["median"]
    if first is None or final is None or not math.isfinite(first) or final < first - (1 - LEARNED) * abs(first):
        return None
    return f"the {name} did not learn (final training loss {final:.4g}, its first epoch's {first:.4g})"


def no_effect(m: dict[str, Any]) -> str | None:
    """Why a PDT method cannot have had an effect, or ``None``: no prediction ran on any seed (every
    epoch was warm-up before T0, or the history lacked the h snapshots a fit needs), or no prediction
    accepted an element."""
    if not m.get("pdt"):
        return None
    if (m["predictions"]["max"] or 0) == 0:
        return "no prediction ran (every epoch was before T0 or short of the h snapshots a fit needs)"
    if (m["accepting_predictions"]["max"] or 0) == 0:
        return "its predictions accepted no element"
    return None


_ASPECTS = {
    "epochs to the best train loss": "epochs to train loss",
    "epochs to the best validation accuracy": "epochs to val acc",
    "epochs to the best validation loss": "epochs to val loss",
    "final train loss": "final loss",
    "final accuracy": "final acc",
    "stability": "stability",
}
"""What a verdict judges, in the report's words and in the terminal's (``brief``)."""


def verdict(name: str, m: dict[str, Any], reference: dict[str, Any], reference_name: str, brief: bool = False) -> str:
    """One plain-words line: where method ``name`` did and did not help relative to the reference.

    Nothing is judged against a reference that did not learn (:func:`did_not_learn`). The targets are
    judged in epochs over seeds: the median reduction in epochs to the reference's best train loss,
    best validation accuracy and best validation loss (a run that missed counts as infinitely late; no
    median counts as worse), with the spread across seeds and the reduction in seconds beside,
    never deciding. Then the final train loss by its mean fall below the reference's, seed by seed and
    by the reference's magnitude (``final_loss_gain``: a negative loss is judged by its sign), and the
    final accuracy by the difference of means. Changes within :data:`SAME` are "about the same"; a
    diverged run counts against stability. A PDT method whose predictions never ran or never
    accepted anything is said to have had no effect, whatever its numbers; one seed is said too.
    ``brief``: the judgement only, in short words and without Markdown (the terminal's line).
    """
    title = name if brief else f"**{name}**"
    if m["compared"] == 0:
        if m["runs"] and m["diverged"] == m["runs"]:
            return f"{title}: diverged on {m['diverged']}/{m['runs']} runs."
        return f"{title}: not compared (no successful {reference_name} run of the same seed)."
    caveat = (" (one seed)" if brief else " (one seed: no spread, read with care)") if m["compared"] == 1 else ""
    nothing = no_effect(m)
    if nothing is not None:
        return f"{title}: no effect to report: {nothing}{caveat}."
    if (reason := did_not_learn(reference, reference_name)) is not None:
        return f"{title}: no verdict: {reason}."
    ratio, loss_gain = m["final_loss_ratio"]["mean"], m["final_loss_gain"]["mean"]
    acc_delta = m["final_val_acc"]["mean"] - reference["final_val_acc"]["mean"]
    sides = {
        "epochs to the best train loss": _side(m["reduction_loss_epochs"]["median"], SAME["time"]),
        "epochs to the best validation accuracy": _side(m["reduction_acc_epochs"]["median"], SAME["time"]),
        "epochs to the best validation loss": _side(m["reduction_val_loss_epochs"]["median"], SAME["time"]),
        "final train loss": _side(loss_gain, SAME["loss"]),
        "final accuracy": _side(acc_delta, SAME["accuracy"]),
    }
    if loss_gain is None:  # the reference ended at zero loss: no ratio to judge
        del sides["final train loss"]
    if m["diverged"]:
        sides["stability"] = "worse"

    def listed(side: str) -> str:
        return ", ".join(_ASPECTS[a] if brief else a for a, s in sides.items() if s == side) or "nothing"

    if brief:  # the groups that have something, so that the line fits a terminal
        groups = [f"{side} {listed(side)}" for side in ("helped", "same", "worse") if side in sides.values()]
        return f"{title}{caveat}: {'; '.join(groups)}."
    facts = [
        _epochs_words(m, "loss", "best train loss", reference_name),
        _epochs_words(m, "acc", "best validation accuracy", reference_name),
        _epochs_words(m, "val_loss", "best validation loss", reference_name),
        (
            f"final train loss {ratio:.3g}× the {reference_name}'s"
            if ratio is not None
            else f"final train loss not compared (the {reference_name}'s is 0)"
        ),
        f"final accuracy {100 * acc_delta:+.2f} points",
    ]
    if m["diverged"]:
        facts.append(f"diverged on {m['diverged']}/{m['runs']} runs")
    return (
        f"{title}{caveat} helped with: {listed('helped')}; about the same: {listed('same')}; "
        f"did not help with: {listed('worse')}. It {'; '.join(facts)}."
    )


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text.replace("|", "\\|")


def _settings(runs: list[Run]) -> str:
    """Settings shared by every run as a key-value list, then what each method sets differently."""
    configs = [r["config"] for r in runs]
    # identity repeats the settings for run reuse; the code version is listed on its own below.
    keys = sorted({k for c in configs for k in c} - {"seed", "method", "identity", "code_version"})
    shared = [k for k in keys if all(c.get(k) == configs[0].get(k) for c in configs)]
    lines = ["\n".join(f"- `{k}`: {_cell(configs[0].get(k))}" for k in shared)]
    own = [k for k in keys if k not in shared]
    if own:
        for method, group in by_method(runs).items():
            values = ", ".join(f"{k} = {_cell(group[0]['config'].get(k))}" for k in own)
            lines.append(f"- {method}: {values}")
    versions = sorted({str(c.get("code_version")) for c in configs})
    lines.append(f"Code version (git describe) of the runs: {', '.join(versions)}.")
    return "\n\n".join(lines)


def _best_at_end(runs: list[Run], reference: str) -> str:
    """How many successful reference runs had their best training loss at their last epoch, as "k/n"."""
    ok = [r["epochs"] for r in runs if r["method"] == reference and not r["diverged"]]
    at_end = [e for e in ok if time_to_target(e, "train_loss", best(e, "train_loss"))[1] == e[-1]["epoch"]]
    return f"{len(at_end)}/{len(ok)}"


def _flops_to_target(run: Run, target: float | None) -> float | None:
    """Model FLOPs of the epochs up to the loss target plus PDT's FLOPs of the predictions among them."""
    reached = time_to_target(run["epochs"], "train_loss", target) if target is not None else None
    return cumulative_flops(run)[reached[1] - 1] if reached is not None else None


def _overheads(runs: list[Run], reference: str) -> str:
    """FLOPs and memory per method (paper App. A.3, A.10), means over seeds."""
    targets = {r["seed"]: best(r["epochs"], "train_loss") for r in runs if r["method"] == reference}
    rows = []
    for method, group in by_method(runs).items():
        o = [r["overhead"] for r in group]
        to_target = [_flops_to_target(r, targets.get(r["seed"])) for r in group]
        reached = [f for f in to_target if f is not None]
        share = [x["pdt_flops_per_prediction"] / x["model_flops_per_epoch"] for x in o]
        rows.append(
            [
                method,
                f"{sum(x['model_flops_per_epoch'] for x in o) / len(o):.3g}",
                f"{sum(x['pdt_flops_per_prediction'] for x in o) / len(o):.3g}",
                f"{100 * sum(share) / len(share):.2f}",
                f"{sum(reached) / len(reached):.3g} ({len(reached)}/{len(group)})" if reached else "n/r",
                f"{sum(x['peak_memory_bytes'] for x in o) / len(o) / 2**20:.0f}",
                f"{sum(x['snapshot_bytes'] for x in o) / len(o) / 2**20:.1f}",
            ]
        )
    kind = runs[0]["overhead"]["peak_memory_kind"]
    return f"Peak memory is the {kind} of the run's own process.\n\n" + markdown_table(
        [
            "method",
            "model FLOPs/epoch",
            "PDT FLOPs/prediction",
            "PDT/epoch %",
            f"FLOPs to {reference}'s best loss",
            "peak memory MiB",
            "snapshots MiB",
        ],
        rows,
    )


def write_report(out_dir: Path, runs: list[Run], summary: dict[str, Any], command: str, plots: list[Path]) -> Path:
    """Write ``out_dir/report.md``: settings, command, tables, final-loss ratios, verdicts and plots."""
    out_dir = Path(out_dir)
    ref_name = summary["reference"]
    methods = summary["methods"]
    reference = methods[ref_name]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    verdicts = [f"- {verdict(n, m, reference, ref_name)}" for n, m in methods.items() if n != ref_name]
    ratios = [f"- {n}: {_stat(m['final_loss_ratio'])}" for n, m in methods.items() if n != ref_name]
    timing = markdown_table(
        ["method", "train time s", "eval time s", "PDT time %"],
        [
            [n, _stat(m["train_time_s"]), _stat(m["eval_time_s"]), _stat(m["pdt_time_share"], _PERCENT)]
            for n, m in methods.items()
        ],
    )
    images = [link(p.stem, Path(os.path.relpath(p, out_dir)).as_posix(), image=True) for p in plots]
    text = f"""# {summary["task"]}: {", ".join(methods)}

Seeds {seeds}; reference method `{ref_name}`. Mean ± std over the successful runs of each method.

Task: {runs[0]["config"].get("task_description", summary["task"])}

## Command

```
{command}
```

## Settings

{_settings(runs)}

## Results

TTB-Loss: training time until the full-pass training loss (measured after each epoch's PDT step)
first reaches the best training loss of the `{ref_name}` run of the same seed; TTB-Acc and
TTB-ValLoss: the same for its best validation accuracy and best validation loss. Reduction =
1 − TTB / TTB of the `{ref_name}` (per seed; the median counts runs that never reached the target
as infinitely late). The clock counts
training and all PDT work and stops during evaluation. "reached" says how many runs got there;
"n/r": none did.

{format_table(summary)}

### Final-loss ratio

Final train loss of a method over the final train loss of the `{ref_name}` on the same seed.
The `{ref_name}` reached its best loss at its last epoch on {_best_at_end(runs, ref_name)} seeds
(as under cosine annealing): there TTB magnifies small end-of-run gaps, so read each TTB figure
together with this ratio.

{chr(10).join(ratios)}

### TTB-Loss with the authors' loss definition

The mean of the batch losses during an epoch instead of a full pass after it.

{markdown_table(*_rows(summary, "batch_loss", full=False))}

## Where it helped

{chr(10).join(verdicts)}

## Time

{timing}

## Overheads: FLOPs and memory

{_overheads(runs, ref_name)}

## Plots

{chr(10).join(images)}
"""
    path = out_dir / "report.md"
    write_text(path, text)
    return path
