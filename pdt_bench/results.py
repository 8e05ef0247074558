"""``pdt-bench results``: one Markdown page over a whole study (the directories of several compares).

The page opens with a headline table, one row per study: epochs to the baseline's best training
loss for PDT and for every control (median over seeds, min-max beside), the final accuracies, and
one sentence of verdict. Each study's section follows with every method, the study's targets (read
from a JSON file beside the study script, never from code) checked against the measured medians,
and a link to its full report. Every verdict is judged in epochs over seeds; seconds stand beside.

A targets file maps a study directory's name to what it must show::

    {"cifar10-fcn-paper": {"reduction": 0.3, "accuracy_tolerance": 0.003,
                            "ahead_of": ["random-mask", "pdt-linear"], "budget": true}}

``reduction``: PDT's median reduction in epochs to the baseline's best training loss;
``accuracy_tolerance``: how far PDT's mean final accuracy may fall below the baseline's;
``ahead_of``: controls PDT's median must beat; ``budget``: at epoch E, PDT's training loss must be
below that of the baseline compressed to E epochs (``baseline@epochs=E``), seed by seed.

A last section sets PDT's variants (:data:`VARIANTS`, with any ``@`` suffix: ``pdt@horizon=10``)
against the paper's PDT on the seeds both ran. Their lead is in percentage points of the baseline's
epochs: :math:`(E_{PDT} - E_{variant}) / E_{baseline}`, per seed, then the median. The key
``"variants"`` of the targets file (not a study) sets what a variant must show::

    {"variants": {"lead": 0.1, "accuracy_tolerance": 0.003, "studies": 3}}

a lead of at least ``lead`` with a mean final accuracy at most ``accuracy_tolerance`` below PDT's,
on at least ``studies`` studies; ``not_counted`` names studies shown but not counted (a search
on the seeds of another study is not one more study).

The key ``"tuned"`` sets targets across the studies it lists, each run at its tuned configuration
(the reference is the baseline at its tuned lr; ``scripts/study.sh``'s v3 studies)::

    {"tuned": {"studies": ["v3-a", "v3-b"], "held_out": 0.2, "held_out_studies": 3,
               "accuracy_tolerance": 0.003, "stacked": 0.15, "stacked_studies": 2,
               "ahead_of": ["lawa", "random-mask"], "ahead_studies": 4}}

``held_out``: PDT's median reduction in epochs to the reference's best validation accuracy, with a
mean final accuracy at most ``accuracy_tolerance`` below, on ``held_out_studies`` studies;
``stacked``: PDT on schedule-free (``pdt-schedule-free...``) against schedule-free at the same lr
(``schedule-free...``, the name without ``pdt-`` and ``@point=``): its median reduction in epochs
to schedule-free's best training loss, seed by seed, at the better point run, on
``stacked_studies`` studies; ``ahead_of``: PDT reaches the reference's best validation accuracy in
fewer epochs (median) than each of these methods, on ``ahead_studies`` studies.

The key ``"budget_curves"`` sets what a method must save in budget (:mod:`pdt_bench.budget`)::

    {"budget_curves": {"studies": ["v3-a", "v3-b", "v3-c"], "tolerance": 0.003, "at": 0.8,
                       "studies_needed": 2, "drop": 0.005}}

a method other than the baseline reaches the full-budget baseline's best validation accuracy (less
``tolerance``) at a budget of at most ``at`` where the baseline at that budget does not, on
``studies_needed`` of ``studies``; and at equal budget, its final accuracy never more than ``drop``
below the baseline's.

The step-mode studies of ``pdt-bench steps`` under ``STUDY/steps/<name>/`` get a section of their
own; the targets file's ``"steps"`` key, ``{"fewer": 0.15}``, is the median share of fewer steps
to the baseline's best held-out loss that a method run on at least three seeds must reach.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from . import budget
from .metrics import by_method, summarize
from .plots import plane_words, plot_budget
from .records import STORE, load_runs, write_text
from .report import (
    HELD_OUT,
    did_not_learn,
    link,
    markdown_table,
    no_effect,
    no_effect_cell,
    percent_change,
    to_target_cell,
)

__all__ = ["add_command", "load_targets", "write_results"]

PDT = "pdt"
CONTROLS = (
    "pdt-reference",
    "random-mask",
    "pdt-linear",
    "nonselective",
    "lookahead",
    "ema",
    "schedule-free",
)
"""Columns of the headline table after PDT, when a study has them."""


ACCURACY_TOLERANCE = 0.003
"""How far PDT's final accuracy may fall below the baseline's when a study's targets do not say."""

TARGET_KEYS = {"reduction": float, "accuracy_tolerance": float, "ahead_of": list, "budget": bool}

VARIANTS = ("pdt", "pdt-linear", "pdt-layer", "pdt-graded", "pdt-layer-graded", "pdt-fresh-bn", "pdt-lr-horizon")
"""Methods that change PDT itself (beyond the paper, :mod:`pdt_bench.methods`); a name whose part
before any ``@`` is one of these, other than ``pdt`` alone, is a variant."""
VARIANT_KEYS = {"lead": float, "accuracy_tolerance": float, "studies": int, "not_counted": list}
STEPS_KEYS = {"fewer": float}
TUNED_KEYS = {
    "studies": list,
    "held_out": float,
    "held_out_studies": int,
    "accuracy_tolerance": float,
    "stacked": float,
    "stacked_studies": int,
    "ahead_of": list,
    "ahead_studies": int,
}
BUDGET_KEYS = {"studies": list, "tolerance": float, "at": float, "studies_needed": int, "drop": float}
SECTIONS = {"variants": VARIANT_KEYS, "steps": STEPS_KEYS, "tuned": TUNED_KEYS, "budget_curves": BUDGET_KEYS}
"""Keys of the targets file that are not studies but sections of the page, with their own keys."""


def load_targets(path: Path) -> dict[str, Any]:
    """The targets file, checked: an object of study names to objects of :data:`TARGET_KEYS`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"targets file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"targets file {path}: expected an object of study name -> targets")
    for study, targets in data.items():
        if not isinstance(targets, dict):
            raise ValueError(f"targets file {path}: {study!r} must be an object")
        known = SECTIONS.get(study, TARGET_KEYS)
        for key, value in targets.items():
            kind = known.get(key)
            if kind is None:
                raise ValueError(f"targets file {path}: {study}.{key}: unknown key; known: {', '.join(known)}")
            if kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            elif kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind) and (kind is not list or all(isinstance(v, str) for v in value))
            if not ok:
                raise ValueError(f"targets file {path}: {study}.{key} must be a {kind.__name__}, got {value!r}")
    return data


def _epochs(m: dict[str, Any], target: str = "loss") -> str:
    """Median epochs to the reference's best of TTB name ``target`` with the seeds' range and how many
    reached it: ``12 (10–14) 3/3``."""
    if (cell := no_effect_cell(m)) is not None:
        return cell
    if f"ttb_{target}_epochs" not in m:  # a summary of a harness that did not measure it, without its runs
        return "-"
    return to_target_cell(m[f"ttb_{target}_epochs"])


def _acc(m: dict[str, Any]) -> str:
    acc = m["final_val_acc"]["mean"]
    return "-" if acc is None else f"{100 * acc:.2f}"


def _budget_name(methods: dict[str, Any], reference: str) -> str | None:
    names = [n for n in methods if n.startswith(f"{reference}@epochs=")]
    return names[0] if names else None


def _budget_check(directory: Path, methods: dict[str, Any], reference: str) -> tuple[str, bool] | None:
    """PDT's training loss at epoch E against the compressed baseline's final one, per seed."""
    name = _budget_name(methods, reference)
    if name is None or PDT not in methods:
        return None
    e = int(name.split("@epochs=")[1].split("@")[0])
    runs = by_method(load_runs(directory))
    if PDT not in runs or name not in runs:
        return None
    pdt = {r["seed"]: r["epochs"] for r in runs[PDT] if not r["diverged"]}
    pairs = []
    for r in runs[name]:
        if r["seed"] in pdt and len(pdt[r["seed"]]) >= e and not r["diverged"]:
            pairs.append((pdt[r["seed"]][e - 1]["train_loss"], r["epochs"][-1]["train_loss"]))
    if not pairs:
        return None
    predicted = [s for s, epochs in pdt.items() if any(x["pdt"] and x["pdt"]["predicted"] for x in epochs[:e])]
    if not predicted:
        return f"PDT had not predicted by epoch {e}, so `{name}` tests nothing here", False
    below = sum(p < b for p, b in pairs)
    ours = statistics.median(p for p, _ in pairs)
    theirs = statistics.median(b for _, b in pairs)
    line = (
        f"at epoch {e}, PDT's training loss {ours:.4g} against {theirs:.4g} for `{name}` (the baseline with its "
        f"whole schedule in {e} epochs), medians; PDT lower on {below}/{len(pairs)} seeds"
    )
    return line, below == len(pairs)


def _checks(name: str, directory: Path, summary: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """The study's targets, each stated with the measured value and reached or not."""
    methods, reference = summary["methods"], summary["reference"]
    pdt, base = methods.get(PDT), methods[reference]
    if pdt is None:
        return [f"no `{PDT}` runs"]
    lines = []
    if pdt["compared"] == 0:
        return [f"PDT {'diverged on every seed' if pdt['diverged'] else 'has no run to compare'}: **not reached**"]
    got = pdt["reduction_loss_epochs"]
    seconds = pdt["reduction_loss"]["median"]
    acc_gap = pdt["final_val_acc"]["mean"] - base["final_val_acc"]["mean"]
    if "reduction" in targets:
        want, tolerance = targets["reduction"], targets.get("accuracy_tolerance", ACCURACY_TOLERANCE)
        ok = got["median"] is not None and got["median"] >= want and acc_gap >= -tolerance
        lines.append(
            f"PDT ≥ {100 * want:.0f}% fewer epochs to the {reference}'s best training loss (median of "
            f"{got['of']} seeds) with final accuracy at most {100 * tolerance:.1f} points lower: measured "
            f"{percent_change(got['median'])} (seeds {percent_change(got['min'])} to {percent_change(got['max'])}; "
            f"{percent_change(seconds)} in seconds), "
            f"accuracy {100 * acc_gap:+.2f} points: " + ("**reached**" if ok else "**not reached**")
        )
    for peer in targets.get("ahead_of", []):
        if peer not in methods:
            lines.append(f"PDT ahead of `{peer}`: **not run**")
            continue
        theirs = methods[peer]["reduction_loss_epochs"]["median"]
        ok = got["median"] is not None and (theirs is None or got["median"] > theirs)
        lines.append(
            f"PDT ahead of `{peer}`: {percent_change(got['median'])} against {percent_change(theirs)}: "
            + ("**reached**" if ok else "**not reached**")
        )
    if targets.get("budget"):
        checked = _budget_check(directory, methods, reference)
        if checked is None:
            lines.append("PDT below the budget-matched baseline at epoch E: **not run**")
        else:
            line, ok = checked
            lines.append(
                f"PDT below the budget-matched baseline: {line}: " + ("**reached**" if ok else "**not reached**")
            )
    return lines


def _sentence(summary: dict[str, Any]) -> str:
    """One sentence of verdict for a study's headline row, judged in epochs."""
    methods, reference = summary["methods"], summary["reference"]
    pdt = methods.get(PDT)
    if pdt is None:
        return "PDT not run."
    one = " One seed only." if pdt["compared"] == 1 else ""
    if pdt["compared"] == 0:
        return "PDT diverged on every seed." if pdt["diverged"] else f"No successful {reference} run to compare with."
    if (reason := no_effect(pdt)) is not None:
        return f"No effect to report: {reason}.{one}"
    if (reason := did_not_learn(methods[reference], reference)) is not None:
        return f"No verdict: {reason}."
    held_out = _held_out_words(pdt)
    median = pdt["reduction_loss_epochs"]["median"]
    acc = 100 * (pdt["final_val_acc"]["mean"] - methods[reference]["final_val_acc"]["mean"])
    if median is None:
        return (
            f"PDT did not reach the {reference}'s best training loss on most seeds{held_out}; "
            f"accuracy {acc:+.2f} points.{one}"
        )
    controls = [c for c in CONTROLS if c in methods]

    def as_fast(c: str) -> bool:
        theirs = methods[c]["reduction_loss_epochs"]["median"]
        return theirs is not None and theirs >= median

    better = [c for c in controls if as_fast(c)]
    if abs(median) < 0.005:
        words = f"PDT needs as many epochs to the training loss as the {reference}"
    else:
        direction = "fewer" if median > 0 else "more"
        words = f"PDT needs {abs(100 * median):.0f}% {direction} epochs to the training loss"
    words += f"{held_out}; accuracy {acc:+.2f} points"
    if better:
        words += f"; as fast or faster: {', '.join(better)}."
    else:
        words += "; ahead of every control run." if controls else "; no control ran."
    return words + one


def _held_out_words(pdt: dict[str, Any]) -> str:
    """PDT's median change in epochs to the held-out targets: ``; to val acc -20%, to val loss n/r``;
    "" from a summary without them."""
    changes = [
        f"to {HELD_OUT[t]} {percent_change(pdt[key]['median'])}"
        for t in ("acc", "val_loss")
        if (key := f"reduction_{t}_epochs") in pdt
    ]
    return "; " + ", ".join(changes) if changes else ""


def _study_table(summary: dict[str, Any]) -> str:
    methods, reference = summary["methods"], summary["reference"]
    base_acc = methods[reference]["final_val_acc"]["mean"]
    rows = []
    for name, m in methods.items():
        gap = m["final_val_acc"]["mean"]
        ratio = m["final_loss_ratio"]["median"]
        accepted = m["accepted_ratio"]["mean"]
        red = m["reduction_loss_epochs"]
        rows.append(
            [
                name,
                _epochs(m),
                percent_change(red["median"]),
                percent_change(m["reduction_loss"]["median"]),
                "-" if ratio is None else f"{ratio:.3f}",
                _acc(m),
                "-" if gap is None or base_acc is None else f"{100 * (gap - base_acc):+.2f}",
                "-" if accepted is None else f"{100 * accepted:.1f}",
                f"{m['diverged']}/{m['runs']}",
            ]
        )
    headers = [
        "method",
        "epochs to target (range) reached",
        "reduction (epochs)",
        "(seconds)",
        "final-loss ratio",
        "final acc %",
        "vs base",
        "accepted %",
        "diverged",
    ]
    return markdown_table(headers, rows)


def _headline(studies: list[tuple[str, Path, dict[str, Any]]]) -> str:
    present = [c for c in CONTROLS if any(c in s["methods"] for _, _, s in studies)]
    headers = [
        "study",
        "seeds",
        "reference",
        PDT,
        *present,
        "budget-matched",
        "PDT to val acc",
        "PDT to val loss",
        "acc ref. / PDT",
        "verdict",
    ]
    rows = []
    for name, _, summary in studies:
        methods, reference = summary["methods"], summary["reference"]
        base = methods[reference]
        budget = _budget_name(methods, reference)
        pdt = methods.get(PDT)
        rows.append(
            [
                name,
                str(base["runs"]),
                _epochs(base) if reference == "baseline" else f"{reference}: {_epochs(base)}",
                _epochs(pdt) if pdt else "-",
                *(_epochs(methods[c]) if c in methods else "-" for c in present),
                f"{budget.split('@')[1]}: {_epochs(methods[budget])}" if budget else "-",
                *(_epochs(pdt, t) if pdt else "-" for t in ("acc", "val_loss")),
                f"{_acc(base)} / {_acc(pdt) if pdt else '-'}",
                _sentence(summary),
            ]
        )
    return markdown_table(headers, rows)


def _landscape(directory: Path, rel: str) -> str:
    """The study's ``pdt-bench landscape`` picture (in ``STUDY/landscape/``), with what it shows; "" if none."""
    path = directory / "landscape" / "landscape.json"
    if not path.exists():
        return ""
    drawn = json.loads(path.read_text())
    reference, method = drawn["methods"]
    plane = plane_words(drawn)[0]  # the figure's own subtitle: one description of the plane
    return (
        f"\n\n{link('landscape', f'{rel}/landscape/landscape.png', image=True)}\n\n"
        f"Seed {drawn['seed']}'s weights of {reference} and {method}, epoch by epoch ({plane}), over the "
        f"training loss on that plane ({drawn['subset']} training samples; stars: epochs whose prediction was "
        f"accepted). Drawn by `pdt-bench landscape --task {drawn['task']} --seed {drawn['seed']} --plane "
        f"{drawn['plane']} --out {directory.as_posix()}/landscape`."
    )


def _lead(pdt: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any] | None:
    """A variant against PDT on the seeds both ran without diverging: the median lead (module
    docstring; ``-inf`` for a seed where only PDT reached the target), the mean accuracy difference
    and the variant's mean accepted ratio and PDT time share; ``None`` if they share no seed."""
    ours = {s["seed"]: s for s in pdt["per_seed"] if s["compared"]}
    pairs = [(ours[s["seed"]], s) for s in variant["per_seed"] if s["compared"] and s["seed"] in ours]
    if not pairs:
        return None
    leads = []
    for p, v in pairs:
        if p["reduction_loss_epochs"] is None and v["reduction_loss_epochs"] is None:
            continue
        if v["reduction_loss_epochs"] is None:
            leads.append(-math.inf)
        elif p["reduction_loss_epochs"] is None:
            leads.append(math.inf)
        else:
            # Rounded: a difference of two float ratios lands a few ulps either side of the exact lead (3/30).
            leads.append(round(v["reduction_loss_epochs"] - p["reduction_loss_epochs"], 12))

    def mean(key: str, of: int) -> float | None:
        values = [pair[of][key] for pair in pairs if pair[of][key] is not None]
        return statistics.fmean(values) if values else None

    acc_v, acc_p = mean("final_val_acc", 1), mean("final_val_acc", 0)
    return {
        "seeds": len(pairs),
        "lead": statistics.median(leads) if leads else None,
        "accuracy": None if acc_v is None or acc_p is None else acc_v - acc_p,
        "accepted": mean("accepted_ratio", 1),
        "time": mean("pdt_time_share", 1),
    }


def _points(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    if math.isinf(fraction):
        return "n/r" if fraction < 0 else "PDT n/r"
    return f"{100 * fraction:+.0f} pp"


def _variants(studies: list[tuple[str, Path, dict[str, Any]]], want: dict[str, Any]) -> str:
    """The section on PDT's variants: one row per (variant, study), then each variant's count of studies
    where it meets ``want`` (the targets file's ``"variants"``), or "" when no study ran a variant."""
    lead, tolerance, needed = want.get("lead"), want.get("accuracy_tolerance", ACCURACY_TOLERANCE), want.get("studies")
    shown_only = set(want.get("not_counted", []))
    rows, met = [], {}
    for name, _, summary in studies:
        methods = summary["methods"]
        if PDT not in methods:
            continue
        for variant in [m for m in methods if m != PDT and m.split("@")[0] in VARIANTS]:
            paired = _lead(methods[PDT], methods[variant])
            if paired is None:
                continue
            ok = (
                lead is not None
                and paired["lead"] is not None
                and paired["lead"] >= lead
                and paired["accuracy"] is not None
                and paired["accuracy"] >= -tolerance
            )
            met.setdefault(variant, [])
            if ok and name not in shown_only:
                met[variant].append(name)
            rows.append(
                [
                    variant,
                    name,
                    str(paired["seeds"]),
                    _epochs(methods[variant]),
                    _epochs(methods[PDT]),
                    _points(paired["lead"]),
                    "-" if paired["accuracy"] is None else f"{100 * paired['accuracy']:+.2f}",
                    "-" if paired["accepted"] is None else f"{100 * paired['accepted']:.1f}",
                    "-" if paired["time"] is None else f"{100 * paired['time']:.1f}",
                ]
            )
    if not rows:
        return ""
    rows.sort(key=lambda r: (r[0], r[1]))
    headers = ["variant", "study", "seeds", "epochs", "PDT's epochs", "lead", "acc vs PDT", "accepted %", "PDT time %"]
    text = (
        "## Beyond the paper: PDT's variants against PDT\n\n"
        "On the seeds both ran: epochs to the baseline's best training loss (median (min–max) reached, over the "
        "variant's seeds), its lead over PDT in percentage points of the baseline's epochs (median over seeds; "
        "n/r: the variant did not reach the target), final accuracy against PDT's in points (mean), and the "
        "variant's accepted share and share of the time in its own steps (means).\n\n" + markdown_table(headers, rows)
    )
    if lead is not None:
        lines = []
        for variant, names in sorted(met.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            verdict = "**reached**" if needed is not None and len(names) >= needed else "**not reached**"
            where = f": {', '.join(names)}" if names else ""
            ran = sum(r[0] == variant and r[1] not in shown_only for r in rows)
            if not ran:  # run only where it is not counted (the search): its rows say it all
                continue
            lines.append(f"- `{variant}`: {len(names)} of {ran} studies{where}; {verdict}")
        text += (
            f"\n\nTarget: a lead of at least {100 * lead:.0f} pp with accuracy at most {100 * tolerance:.1f} points "
            f"below PDT's, on at least {needed} studies"
            + (f" ({', '.join(sorted(shown_only))} shown, not counted)" if shown_only else "")
            + ".\n\n"
            + "\n".join(lines)
        )
    return text


def _stacked(directory: Path, methods: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PDT on schedule-free against schedule-free at the same lr: stacked method -> its summary with
    schedule-free as the reference (TTB to schedule-free's best training loss, seed by seed)."""
    pairs = {}
    for name in methods:
        if name.split("@")[0] != "pdt-schedule-free":
            continue
        plain = "@".join(p for p in name.removeprefix("pdt-").split("@") if not p.startswith("point="))
        if plain in methods:
            pairs[name] = plain
    if not pairs:
        return {}
    runs = load_runs(directory)
    out = {}
    for stacked, plain in pairs.items():
        chosen = [r for r in runs if r["method"] in (stacked, plain)]
        out[stacked] = summarize(chosen, reference=plain)["methods"][stacked] | {"reference": plain}
    return out


def _point(stacked: str) -> str:
    """The schedule-free sequence a ``pdt-schedule-free`` method moves (``eval`` unless ``@point=`` says)."""
    return next((p.split("=")[1] for p in stacked.split("@") if p.startswith("point=")), "eval")


def _faster(ours: float | None, theirs: float | None) -> bool:
    """A median reduction ahead of another (a miss, ``None``, is behind every reach)."""
    return ours is not None and (theirs is None or ours > theirs)


def _tuned(studies: list[tuple[str, Path, dict[str, Any]]], want: dict[str, Any]) -> tuple[str, list[str]]:
    """The section on the studies at their tuned configuration (the targets file's ``"tuned"``): a row
    per study, then each target with its measured count; ("", []) when none of them ran."""
    listed = want.get("studies", [])
    ran = [(n, d, s) for n, d, s in studies if n in listed and PDT in s["methods"]]
    if not ran:
        return "", []
    tolerance = want.get("accuracy_tolerance", ACCURACY_TOLERANCE)
    peers = want.get("ahead_of", [])
    rows, met = [], {"held_out": [], "stacked": [], "ahead": []}
    for name, directory, summary in ran:
        methods, reference = summary["methods"], summary["reference"]
        pdt, base = methods[PDT], methods[reference]
        reduction = pdt["reduction_acc_epochs"]["median"]
        gap = pdt["final_val_acc"]["mean"] - base["final_val_acc"]["mean"]
        if "held_out" in want and reduction is not None and reduction >= want["held_out"] and gap >= -tolerance:
            met["held_out"].append(name)
        stacked = _stacked(directory, methods)
        gains = {n: m["reduction_loss_epochs"]["median"] for n, m in stacked.items()}
        cells = [f"{_epochs(m, 'loss')}, {percent_change(gains[n])}" for n, m in stacked.items()]
        best = max(gains, key=lambda n: -math.inf if gains[n] is None else gains[n], default=None)
        best_reduction = None if best is None else gains[best]
        if "stacked" in want and best_reduction is not None and best_reduction >= want["stacked"]:
            met["stacked"].append(f"{name} (`{best}`)")
        ahead = []
        for peer in peers:
            theirs = methods[peer]["reduction_acc_epochs"]["median"] if peer in methods else None
            ahead.append(peer in methods and _faster(reduction, theirs))
        if peers and all(ahead):
            met["ahead"].append(name)
        rows.append(
            [
                name,
                str(pdt["compared"]),
                _epochs(base, "acc"),
                f"{_epochs(pdt, 'acc')}, {percent_change(reduction)}",
                f"{100 * gap:+.2f}",
                *(
                    f"{_epochs(methods[p], 'acc')}, {percent_change(methods[p]['reduction_acc_epochs']['median'])}"
                    if p in methods
                    else "not run"
                    for p in peers
                ),
                "; ".join(f"{n}: {_epochs(methods[n], 'acc')}" for n in methods if n.split("@")[0] == "schedule-free")
                or "not run",
                "; ".join(f"{_point(n)}: {c}" for n, c in zip(stacked, cells)) or "not run",
            ]
        )
    headers = ["study", "seeds", "tuned baseline", "PDT", "PDT acc", *peers, "schedule-free", "PDT on schedule-free"]
    lines = []
    total = len(ran)
    if "held_out" in want:
        lines.append(
            _count_line(
                f"PDT ≥ {100 * want['held_out']:.0f}% fewer epochs to the tuned baseline's best val acc, "
                f"final accuracy at most {100 * tolerance:.1f} points lower",
                met["held_out"],
                total,
                want.get("held_out_studies"),
            )
        )
    if "stacked" in want:
        lines.append(
            _count_line(
                f"PDT on schedule-free ≥ {100 * want['stacked']:.0f}% fewer epochs to schedule-free's best "
                "training loss",
                met["stacked"],
                total,
                want.get("stacked_studies"),
            )
        )
    if peers:
        lines.append(
            _count_line(
                f"PDT ahead of {' and '.join(f'`{p}`' for p in peers)} in epochs to the tuned baseline's best val acc",
                met["ahead"],
                total,
                want.get("ahead_studies"),
            )
        )
    text = (
        "## At the tuned configuration: PDT against what practitioners run\n\n"
        "Each study's reference is the baseline at its tuned learning rate (chosen by final validation accuracy). "
        "Epochs to the tuned baseline's best validation accuracy: median (min–max) over seeds, how many reached "
        "it, and the median reduction; 'PDT acc': PDT's mean final accuracy against the tuned baseline's, in "
        "points. 'schedule-free' (at its tuned lr): its epochs to the tuned baseline's best validation accuracy. "
        "'PDT on schedule-free': each point PDT moves (`@point=`), in epochs to schedule-free's own best "
        "training loss at the same lr, seed by seed.\n\n" + markdown_table(headers, rows)
    )
    if missing := [n for n in listed if n not in {name for name, _, _ in ran}]:
        lines.append(f"Not run yet (counted as missing): {', '.join(missing)}")
    if lines:
        text += "\n\n" + "\n".join(f"- {line}" for line in lines)
    return text, lines


def _budget_curves(studies: list[tuple[str, Path, dict[str, Any]]], want: dict[str, Any], out: Path) -> str:
    """The section on budget curves (the targets file's ``"budget_curves"``): a table and a plot per study
    that ran a compressed budget of the baseline, then the targets; "" when none did."""
    tolerance = want.get("tolerance", ACCURACY_TOLERANCE)
    listed = want.get("studies")
    parts, saved, below, ran = [], {}, {}, []
    for name, directory, summary in studies:
        found = budget.curves(load_runs(directory), summary["reference"], tolerance)
        if not found:
            continue
        reference, *methods = found
        full = next(p for p in found[reference] if p.fraction == 1)  # a longer run of it is no reference
        target = full.best_acc - tolerance
        image = plot_budget(directory / "plots" / "budget.png", found, target, name)
        rel = Path(os.path.relpath(image, out.parent)).as_posix()
        parts.append(f"### {name}\n\n{budget.table(found)}\n\n" + link("budget curves", rel, image=True))
        if listed is not None and name not in listed:
            continue
        ran.append(name)
        # Where the baseline reaches at a smaller budget too (seeds are noisy), nothing is saved.
        baseline = budget.smallest_budget(found[reference])
        for method in methods:
            smallest = budget.smallest_budget(found[method])
            saves = smallest is not None and smallest.fraction <= want.get("at", 1)
            if saves and (baseline is None or baseline.fraction > smallest.fraction):
                saved.setdefault(method, []).append(f"{name} ({smallest.fraction:.2f})")
            else:
                saved.setdefault(method, [])
            gaps = [p.final_gap for p in found[method] if p.final_gap is not None]
            if gaps and min(gaps) < -want.get("drop", math.inf):
                below.setdefault(method, []).append(f"{name} ({100 * min(gaps):+.2f})")
    if not parts:
        return ""
    lines = []
    if "at" in want:
        for method, met in sorted(saved.items()):
            words = (
                f"`{method}` reaches the full-budget baseline's best val acc (−{100 * tolerance:.1f} points) "
                f"at ≤ {want['at']:g} of the budget, a smaller budget than the baseline's smallest"
            )
            lines.append(_count_line(words, met, len(ran), want.get("studies_needed")))
    if missing := [n for n in listed or [] if n not in ran]:
        lines.append(f"Not run yet (counted as missing): {', '.join(missing)}")
    for method, where in sorted(below.items()):
        drop = f"{100 * want['drop']:.1f}"
        lines.append(f"`{method}` ends more than {drop} points below the baseline at equal budget: {', '.join(where)}")
    return (
        "## Budget curves: the schedule compressed\n\n"
        "Each method with its whole schedule compressed to a fraction of the full budget's epochs (`@epochs=E`). "
        "A cell: the mean best validation accuracy within that budget (%), how many seeds reached the "
        f"full-budget baseline's best (same seed, less {100 * tolerance:.1f} points), and the mean final accuracy "
        "against the baseline at the same budget (points). 'smallest budget': where most seeds reach.\n\n"
        + "\n\n".join(parts)
        + ("\n\n" + "\n".join(f"- {line}" for line in lines) if lines else "")
    )


def _count_line(words: str, met: list[str], total: int, needed: int | None) -> str:
    """A target over studies: how many met it, which, and reached or not with the count it needed."""
    where = f" ({', '.join(met)})" if met else ""
    if needed is None:
        return f"{words}: {len(met)} of {total} studies{where}"
    verdict = "**reached**" if len(met) >= needed else f"**not reached**: {len(met)} instead of {needed}"
    return f"{words}, on ≥ {needed} studies: {len(met)} of {total}{where}; {verdict}"


def _step_mode(study: Path, out: Path, want: dict[str, Any]) -> str:
    """The section on the ``pdt-bench steps`` studies under ``study/steps/``: each one's table, plot and
    link, and the best method on three seeds or more against ``want["fewer"]``; "" when there are none."""
    from . import steps  # the step-mode study's own table; imported only when there is one

    parts = []
    for path in sorted((study / "steps").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        rel = Path(os.path.relpath(path.parent, out.parent)).as_posix()
        on_three = [n for n, m in summary["methods"].items() if n != summary["reference"] and m["compared"] >= 3]
        seeded = {n: summary["methods"][n]["fewer_steps"]["median"] for n in on_three}
        seeded = {n: fewer for n, fewer in seeded.items() if fewer is not None}
        lines = ""
        if on_three and "fewer" in want:
            target = f"- At least {100 * want['fewer']:.0f}% fewer steps (median, three seeds or more): "
            if seeded:
                best = max(seeded, key=seeded.get)
                ok = seeded[best] >= want["fewer"]
                verdict = "**reached**" if ok else "**not reached**"
                target += f"best `{best}`, {percent_change(seeded[best])}: {verdict}"
            else:  # a median that is a miss: most seeds never reached the baseline's best
                target += f"none of {', '.join(f'`{n}`' for n in on_three)} reached it on most seeds: **not reached**"
            lines = target + "\n\n"
        parts.append(
            f"### {path.parent.name}\n\nSeeds {', '.join(map(str, summary['seeds']))} (each method on the seeds it "
            f"ran); full report: {link(f'{rel}/report.md', f'{rel}/report.md')}\n\n{lines}{steps.table(summary)}\n\n"
            + link("held-out loss", f"{rel}/plots/heldout_loss.png", image=True)
        )
    if not parts:
        return ""
    return (
        "## Step mode: PDT every K optimizer steps on a small language model (`pdt-bench steps`)\n\n"
        "Steps to the baseline's best held-out loss of the same seed: median (min-max) over seeds.\n\n"
        + "\n\n".join(parts)
    )


def write_results(study: Path, out: Path, targets: dict[str, Any] | None = None, notes: Path | None = None) -> Path:
    """Write ``out`` (Markdown) over every ``compare`` directory under ``study``; links point at them and at
    ``notes``, the hand-written account of how the study was run (linked, not copied: one source)."""
    targets = targets or {}
    studies = []
    # A study is a directory with a summary or a run store: the tree keeps the stores, and a summary
    # is derived data (written by `compare`, left out of git to keep docs/results small).
    found = {p.parent for p in study.glob("*/summary.json")} | {p.parent for p in study.glob(f"*/{STORE}")}
    for directory in sorted(found):
        summary_path = directory / "summary.json"
        summary = {"methods": {}, "reference": "baseline", "seeds": []}  # compare's default reference
        if summary_path.exists():
            try:
                summary = json.loads(summary_path.read_text())
            except ValueError as e:
                raise ValueError(f"{summary_path}: not a compare summary ({e})") from None
            if not isinstance(summary, dict) or not {"methods", "reference", "seeds"} <= set(summary):
                raise ValueError(f"{summary_path}: not a compare summary (no methods, reference or seeds)")
        # Summarised again from the runs where they are: a summary written before a figure existed shows it.
        if runs := load_runs(directory):
            summary = summarize(runs, reference=summary["reference"])
        elif not summary_path.exists():
            continue
        studies.append((directory.name, directory, summary))
    unknown = sorted(set(targets) - {name for name, _, _ in studies} - set(SECTIONS))
    if unknown and studies:
        print(f"targets for studies not under {study}: {', '.join(unknown)}", file=sys.stderr)
    if not studies:
        raise ValueError(
            f"no study under {study}: expected one `pdt-bench compare` output per sub-directory "
            f"({study}/<name>/summary.json)"
            + (f"; {study} itself is a single compare output" if (study / "summary.json").exists() else "")
        )
    head = f"# Results of the study under `{study.as_posix()}`\n\n"
    head += "Every table and target line below is computed from the runs by `pdt-bench results`."
    if notes is not None:
        target = Path(os.path.relpath(notes, out.parent)).as_posix()
        head += f" What the numbers say, how the study ran and what it does not cover yet: {link(notes.name, target)}."
    parts = [
        head,
        "## Headline\n\nEpochs to the reference's (the baseline's) best training loss: median over seeds "
        "(min–max), then how many seeds reached it; 'n/r': not reached; 'no prediction': PDT never predicted. "
        "'PDT to val acc', 'PDT to val loss': PDT's epochs to the reference's best validation accuracy and best "
        "validation loss, read the same way. "
        "'budget-matched': the baseline with its whole learning-rate schedule compressed to E epochs "
        "(`scripts/study.sh` sets E to PDT's median).\n\n" + _headline(studies),
    ]
    for name, directory, summary in studies:
        rel = Path(os.path.relpath(directory, out.parent)).as_posix()
        checks = _checks(name, directory, summary, targets.get(name, {}))
        seeds = ", ".join(str(s) for s in summary["seeds"])
        parts.append(
            f"## {name}\n\nSeeds {seeds}; full report with settings and plots: "
            f"{link(f'{rel}/report.md', f'{rel}/report.md')}\n\n"
            + "\n".join(f"- {c}" for c in checks)
            + f"\n\n{_study_table(summary)}\n\n{link('training loss', f'{rel}/plots/train_loss.png', image=True)}"
            + (
                "\n" + link("loss against FLOPs", f"{rel}/plots/train_loss_flops.png", image=True)
                if (directory / "plots" / "train_loss_flops.png").exists()
                else ""
            )
            + _landscape(directory, rel)
        )
    tuned, tuned_lines = _tuned(studies, targets.get("tuned", {}))
    if tuned:
        parts.insert(2, tuned)
        for line in tuned_lines:  # a terminal's 100 columns
            print(textwrap.fill(line.replace("**", ""), 100, subsequent_indent="  "))
    if curves := _budget_curves(studies, targets.get("budget_curves", {}), out):
        parts.insert(3 if tuned else 2, curves)
    if variants := _variants(studies, targets.get("variants", {})):
        parts.append(variants)
    if step_mode := _step_mode(study, out, targets.get("steps", {})):
        parts.append(step_mode)
    toy = study / "toy.txt"
    if toy.exists():
        parts.append(f"## Toy problem (`pdt-bench toy`)\n\n```\n{toy.read_text().strip()}\n```")
    write_text(out, "\n\n".join(parts) + "\n")
    return out


DEFAULT_PAGE = "README.md"
"""The page's name inside the study directory when no ``--out`` is given (shown when browsing it)."""


def _tracked(path: Path) -> bool:
    """Whether git tracks ``path`` (``False`` outside a checkout or without git)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent, capture_output=True, text=True
        )
    except OSError:
        return False
    return out.returncode == 0


def _results(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:
        out = args.study / DEFAULT_PAGE
        if out.exists() and _tracked(out):
            raise ValueError(f"{out} is tracked by git: pass --out {out} to replace it")
    if args.notes is not None and not args.notes.is_file():
        raise ValueError(f"--notes {args.notes}: no such file")
    targets = load_targets(args.targets) if args.targets else {}
    print(f"results: {write_results(args.study, out, targets, args.notes)}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench results`` sub-command."""
    p = sub.add_parser("results", help="one Markdown page over a study's compare directories")
    p.add_argument("study", type=Path, help="directory holding one compare output per sub-directory")
    p.add_argument(
        "--out", type=Path, help=f"page to write (default STUDY/{DEFAULT_PAGE}, never replaced while git tracks it)"
    )
    p.add_argument("--targets", type=Path, help="JSON: study name -> targets (see pdt_bench.results)")
    p.add_argument("--notes", type=Path, help="Markdown on how the study was run, linked from the page's head")
    p.set_defaults(func=_results)
