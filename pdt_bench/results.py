"""``pdt-bench results``: one Markdown page over a whole study (the directories of several compares).

For every study directory (a ``compare`` output with ``summary.json``) the page gives the
command, PDT's and each peer's median TTB-Loss reduction against the baseline (in seconds and
in epochs), the final-loss ratio and the accuracy, checks the targets in :data:`TARGETS`, and
copies each study's report, summary and plots next to the page; the toy problem's table (``toy.txt`` in
the study directory, the output of ``pdt-bench toy``) closes the page.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "add_command", "write_results"]

TARGETS: dict[str, float] = {"mnist1d-mlp-sgd": 0.5, "mnist1d-mlp-sgd-best-lr": 0.4}
"""Median TTB-Loss reduction PDT must reach, by study directory name; every other study: 20 %."""
DEFAULT_TARGET = 0.2
ACCURACY_TOLERANCE = 0.003
"""PDT's final accuracy may be at most 0.3 points below the baseline's."""
PEERS = ("lookahead", "nonselective", "random-mask")


def _pct(x: float | None) -> str:
    return "n/r" if x is None else f"{100 * x:+.0f}%"


def _row(name: str, m: dict[str, Any], base: dict[str, Any]) -> list[str]:
    acc = m["final_val_acc"]["mean"]
    gap = None if acc is None or base["final_val_acc"]["mean"] is None else acc - base["final_val_acc"]["mean"]
    ratio = m["final_loss_ratio"]["median"]
    return [
        name,
        _pct(m["reduction_loss"]["median"]),
        _pct(m["reduction_loss_epochs"]["median"]),
        f"{m['never_reached_loss']}/{m['compared']}",
        "-" if ratio is None else f"{ratio:.3f}",
        "-" if acc is None else f"{100 * acc:.2f}",
        "-" if gap is None else f"{100 * gap:+.2f}",
        f"{m['diverged']}/{m['runs']}",
    ]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _reduction(m: dict[str, Any] | None) -> float:
    value = None if m is None else m["reduction_loss_epochs"]["median"]
    return float("-inf") if value is None else value


def _check(name: str, methods: dict[str, Any]) -> tuple[str, bool | None]:
    """The study's target, stated with the measured value: (line, reached or None if no PDT run)."""
    pdt, base = methods.get("pdt"), methods["baseline"]
    if pdt is None:
        return f"{name}: no `pdt` runs", None
    want = TARGETS.get(name, DEFAULT_TARGET)
    got = pdt["reduction_loss_epochs"]["median"]
    acc_gap = pdt["final_val_acc"]["mean"] - base["final_val_acc"]["mean"]
    ok = got is not None and got >= want and acc_gap >= -ACCURACY_TOLERANCE
    measured = f"median TTB-Loss reduction {_pct(got)} in epochs ({_pct(pdt['reduction_loss']['median'])} in seconds)"
    line = (
        f"{name}: target ≥ {100 * want:.0f}% with final accuracy no more than {100 * ACCURACY_TOLERANCE:.1f} "
        f"points lower; measured {measured}, accuracy {100 * acc_gap:+.2f} points: "
        + ("**reached**" if ok else "**not reached**")
    )
    return line, ok


def write_results(study: Path, out: Path, preamble: str = "") -> Path:
    """Write ``out`` (Markdown) from every ``compare`` directory under ``study``; copy reports beside it."""
    assets = out.with_suffix("")
    rows_by_study = []
    checks = []
    peers_beaten = []
    for summary_path in sorted(study.glob("*/summary.json")):
        directory = summary_path.parent
        summary = json.loads(summary_path.read_text())
        methods = summary["methods"]
        base = methods[summary["reference"]]
        rows = [_row(n, m, base) for n, m in methods.items()]
        rows_by_study.append((directory.name, summary, rows))
        line, ok = _check(directory.name, methods)
        checks.append(line)
        if ok is not None and any(p in methods for p in PEERS):
            beaten = [p for p in PEERS if p in methods and _reduction(methods["pdt"]) > _reduction(methods[p])]
            peers_beaten.append((directory.name, beaten, [p for p in PEERS if p in methods]))
        target = assets / directory.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy(directory / "report.md", target / "report.md")
        shutil.copy(summary_path, target / "summary.json")
        if (directory / "plots").exists():
            shutil.copytree(directory / "plots", target / "plots")

    headers = ["method", "TTB-Loss red. (s)", "(epochs)", "never reached", "final-loss ratio", "final acc %", "vs base"]
    headers.append("diverged")
    parts = [preamble.strip(), "## Targets", "\n".join(f"- {c}" for c in checks)]
    if peers_beaten:
        ahead = sum(len(b) == len(all_) for _, b, all_ in peers_beaten)
        parts.append(
            f"- PDT ahead of {', '.join(PEERS)} (median TTB-Loss reduction in epochs): on {ahead} of "
            f"{len(peers_beaten)} studies; "
            + "; ".join(f"{name}: ahead of {', '.join(b) or 'none'}" for name, b, _ in peers_beaten)
        )
    for name, summary, rows in rows_by_study:
        rel = f"{assets.name}/{name}"
        parts.append(
            f"## {name}\n\n{summary['methods'][summary['reference']]['runs']} seeds; full report: "
            f"[{rel}/report.md]({rel}/report.md)\n\n{_table(headers, rows)}\n\n"
            f"![training loss]({rel}/plots/train_loss.png)"
        )
    toy = study / "toy.txt"
    if toy.exists():
        parts.append(f"## Toy problem (`pdt-bench toy`)\n\n```\n{toy.read_text().strip()}\n```")
    out.write_text("\n\n".join(p for p in parts if p) + "\n")
    return out


def _results(args: argparse.Namespace) -> int:
    preamble = args.preamble.read_text() if args.preamble else ""
    print(f"results: {write_results(args.study, args.out, preamble)}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench results`` sub-command."""
    p = sub.add_parser("results", help="one Markdown page over a study's compare directories")
    p.add_argument("study", type=Path, help="directory holding one compare output per sub-directory")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"), help="page to write (default docs/results.md)")
    p.add_argument("--preamble", type=Path, help="Markdown placed at the top (how the study was run)")
    p.set_defaults(func=_results)
