"""``pdt-bench sweep``: the paper's App. A.9 grid on one task.

Every point of the grid (e.g. ``--grid horizon=3,5,7,9 --grid interval=0,1,2``) is a
``compare`` of the reference and the methods, written to ``OUT/<point>/``; reference runs that
a point does not change (a PDT setting does not change the baseline) are reused, not rerun.
The sweep table gives, per point and method, the median TTB-Loss reduction against the
reference at the same point, how many seeds never reached its best loss, the final-loss
ratio and the final accuracy.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from . import metrics, plots, report
from .compare import add_run_arguments, execute, run_configs
from .records import save_json, write_text

__all__ = ["GRID_KEYS", "add_command"]

GRID_KEYS = {
    "horizon": int,
    "interval": int,
    "start_epoch": int,
    "history": int,
    "lr": float,
    "batch_size": int,
}
"""Settings a sweep can vary, with their types."""


def _grid_axis(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    key = key.replace("-", "_")
    if not sep or key not in GRID_KEYS:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
    try:
        return key, [GRID_KEYS[key](v) for v in values.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value in {text!r}") from None


def _label(point: dict[str, Any]) -> str:
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in point.items())


def _fmt(value: float | None, spec: str) -> str:
    return "n/r" if value is None else format(value, spec)


def _sweep(args: argparse.Namespace) -> int:
    if not args.grid:
        raise ValueError("give at least one --grid KEY=V1,V2,...")
    keys = [k for k, _ in args.grid]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each --grid key once, got {keys}")
    methods = list(dict.fromkeys([args.reference, *(m for m in args.methods.split(",") if m)]))
    out = args.out or Path("results") / f"sweep-{args.task}"
    rows: list[dict[str, Any]] = []
    done: list[Path] = []
    for values in itertools.product(*(v for _, v in args.grid)):
        point = dict(zip(keys, values))
        point_dir = out / _label(point)
        runs = execute(
            run_configs(args, methods, **point),
            point_dir,
            jobs=args.jobs,
            rerun=args.rerun,
            quiet=args.quiet,
            reuse=done,
            existing=args.existing,
        )
        done.append(point_dir)
        summary = metrics.summarize(runs, reference=args.reference)
        report.write_summary(point_dir, summary)
        for method, s in summary["methods"].items():
            if method != args.reference:
                rows.append(
                    point
                    | {
                        "method": method,
                        "ttb_loss_reduction_median": s["reduction_loss"]["median"],
                        "never_reached": s["never_reached_loss"],
                        "final_loss_ratio_median": s["final_loss_ratio"]["median"],
                        "final_val_acc_mean": s["final_val_acc"]["mean"],
                    }
                )
    command = args.command_line
    save_json(out / "sweep.json", {"command": command, "rows": rows})
    table = _table(keys, rows)
    figures = []
    if len(keys) == 2:
        for method in methods[1:]:
            path = out / f"sweep-{method}.png"
            points = [r for r in rows if r["method"] == method]
            title = f"{args.task}, sweep {out.resolve().name}: {method}"
            plots.plot_sweep(path, points, keys[0], keys[1], "ttb_loss_reduction_median", title)
            figures.append(path)
    write_text(
        out / "sweep.md",
        f"# Sweep on {args.task}\n\n```\n{command}\n```\n\n{table}\n"
        + "".join(f"\n![{p.stem}]({p.name})\n" for p in figures),
    )
    print(table)
    print(f"report: {out / 'sweep.md'}")
    return 0


def _table(keys: list[str], rows: list[dict[str, Any]]) -> str:
    headers = [*keys, "method", "TTB-Loss red.", "n/r", "final/base", "acc"]
    cells = [
        [
            *(f"{r[k]:g}" for k in keys),
            r["method"],
            _fmt(r["ttb_loss_reduction_median"], ".1%"),
            str(r["never_reached"]),
            _fmt(r["final_loss_ratio_median"], ".3f"),
            _fmt(r["final_val_acc_mean"], ".3f"),
        ]
        for r in rows
    ]
    return report.markdown_table(headers, cells)


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench sweep`` sub-command."""
    p = sub.add_parser("sweep", help="the paper's App. A.9 grid (tau, Ti, T0, h; lr x batch size) on one task")
    p.add_argument(
        "--grid", type=_grid_axis, action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeat)"
    )
    p.add_argument("--methods", default="pdt", help="methods run at every point besides the reference (default pdt)")
    p.add_argument("--reference", default="baseline", help="the method TTB targets come from (default baseline)")
    p.add_argument("--out", type=Path, help="output directory (default results/sweep-<task>)")
    add_run_arguments(p)
    p.set_defaults(func=_sweep)
