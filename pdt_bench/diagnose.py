"""``pdt-bench diagnose``: what a PDT jump would do on a task's run, tensor by tensor and by kind.

One run (the baseline by default: the trajectory PDT would see) is watched by
:class:`torch_pdt.diagnostics.ForecastProbe` after every epoch. It writes ``OUT/diagnosis.json``
(every report, its floats to 6 significant digits as the run stores keep PDT's) and
``OUT/diagnosis.png`` (per parameter kind over the epochs: accepted share, median signal-to-noise
of the epoch increments, and the forecast's error against where the run went, beside the linear
step's), and prints one line per kind.
"""

from __future__ import annotations

import argparse
import json
import lzma
import statistics
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from torch_pdt.diagnostics import KINDS, ForecastProbe, JumpDiagnosis, by_kind, check_options

from . import tasks
from .compare import Progress, _epochs, _positive, run_configs
from .landscape import STUDY_DEFAULTS
from .methods import parse_method
from .records import DIAGNOSTIC_DIGITS, save_json, significant
from .report import markdown_table
from .train import run


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench diagnose`` sub-command."""
    p = sub.add_parser(
        "diagnose",
        help="why PDT accepts what it accepts: per tensor and kind, on one run",
        description="Train one run (the baseline by default) and, after every epoch, judge the PDT jump that "
        "could be made there without making it: share accepted, the check that rejects, the signal-to-noise "
        "of the epoch increments, and the forecast's error against the weights reached tau epochs later.",
    )
    p.add_argument("--task", default="mnist1d-mlp", help=f"one of {', '.join(tasks.TASKS)} (default mnist1d-mlp)")
    p.add_argument("--method", default="baseline", help="the run watched (default baseline)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--epochs", type=_positive(int), help="default: the task's")
    p.add_argument("--history", type=int, default=5, help="h (default 5; at least 3)")
    p.add_argument("--horizon", type=int, default=5, help="tau (default 5)")
    p.add_argument("--criterion", default="pdt", help="the criterion judged (default pdt)")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help="a snapshot every K epochs (default 1): the trajectory's unit; h and tau count snapshots",
    )
    p.add_argument("--out", type=Path, help="output directory (default results/<task>-diagnosis)")
    p.add_argument(
        "--table",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="train nothing: print the medians over the judged epochs of these diagnosis records, per kind",
    )
    p.add_argument(
        "--windows",
        type=int,
        default=1,
        metavar="N",
        help="with --table: a row per N runs of consecutive judged epochs (default 1: all of them)",
    )
    g = p.add_argument_group("data and machine")
    g.add_argument("--data-dir", type=Path, help="datasets (default $PDT_DATA, else ../shared/data)")
    g.add_argument("--cache-dir", type=Path, help="decoded-data cache (default $PDT_CACHE, else ~/.cache/torch-pdt)")
    g.add_argument("--augment", action="store_true", help="image tasks: random crop and flip")
    g.add_argument("--tiny", action="store_true", help="tiny data and model (smoke tests)")
    g.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    # A PDT method watched runs at the paper's T0 and Ti; h and tau are the probe's.
    defaults = {k: v for k, v in STUDY_DEFAULTS.items() if k != "augment"} | {"start_epoch": 5, "interval": 1}
    p.set_defaults(func=_diagnose, **defaults)


class _Watch:
    """``on_weights`` for :func:`pdt_bench.train.run`: a probe built on the first call, stepped after each epoch."""

    def __init__(self, history: int, horizon: int, criterion: str, every: int) -> None:
        self.options = dict(history=history, horizon=horizon, criterion=criterion)
        self.every = every
        self.probe: ForecastProbe | None = None

    def __call__(self, epoch: int, model: nn.Module) -> None:
        if epoch == 0:  # the initial weights: PDT's first snapshot is after epoch 1
            self.probe = ForecastProbe(model, **self.options)
            return
        assert self.probe is not None
        if epoch % self.every:
            return
        report = self.probe.step()
        if report is not None:  # the probe counts snapshots; the record and plot count epochs (0-based)
            report["epoch"] = epoch - 1


def summary_lines(reports: list[JumpDiagnosis]) -> list[str]:
    """One line per kind: element share, then the mean over the judged epochs of each figure."""
    pooled = [by_kind(r) for r in reports]
    lines = [f"{'kind':<10} {'elements':>9} {'accepted':>9} {'snr':>7} {'dmd error':>10} {'linear error':>13}"]
    for kind in KINDS:
        rows = [p[kind] for p in pooled if kind in p]
        if not rows:
            continue

        def mean(key: str, rows=rows) -> str:
            values = [r[key] for r in rows if r[key] is not None]
            return f"{sum(values) / len(values):.3g}" if values else "–"

        lines.append(
            f"{kind:<10} {int(rows[0]['numel']):>9} {mean('accepted'):>9} {mean('snr'):>7} "
            f"{mean('forecast_error'):>10} {mean('linear_error'):>13}"
        )
    footnote = (
        "accepted: share of elements the criterion accepts; snr: median |mean increment| / sd over h epochs; "
        "errors: distance to the weights reached tau epochs later over the distance travelled (< 1: closer "
        "than standing still); dmd: PDT's forecast, linear: w + tau * last step. Means over the epochs judged."
    )
    return lines + textwrap.wrap(footnote, 100)


def load_diagnosis(directory: Path) -> dict[str, Any]:
    """The record ``pdt-bench diagnose`` wrote to ``directory``: ``diagnosis.json``, or its xz copy."""
    for name, opener in (("diagnosis.json", open), ("diagnosis.json.xz", lzma.open)):
        if (directory / name).is_file():
            with opener(directory / name, "rt", encoding="utf-8") as f:
                return json.load(f)
    raise ValueError(f"{directory}: no diagnosis.json or diagnosis.json.xz")


def median_table(directories: list[Path], windows: int = 1) -> str:
    """One row per record, kind and window (``windows`` runs of consecutive judged epochs, the last
    taking the remainder): the median over its epochs of each figure of :func:`by_kind`."""
    records = [(d.name, [(r["epoch"] + 1, by_kind(r)) for r in load_diagnosis(d)["reports"]]) for d in directories]
    # Every criterion the probe judges has the same three checks; the first pooled figures name them.
    first = next((figures for _, pooled in records for _, kinds in pooled for figures in kinds.values()), {})
    checks = [k for k in first if k.startswith("rejected:")]
    rows = []
    for name, pooled in records:
        for kind in KINDS:
            judged = [(epoch, kinds[kind]) for epoch, kinds in pooled if kind in kinds]
            size = len(judged) // windows
            for w in range(windows if size else 0):
                window = judged[w * size : (w + 1) * size if w < windows - 1 else None]

                def cell(key: str, window=window) -> str:
                    values = [e[key] for _, e in window if e.get(key) is not None]
                    if not values:
                        return "–"
                    v = statistics.median(values)  # an error of hundreds reads best whole; a share to 2 decimals
                    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"

                rows.append(
                    [f"{name}, {kind}", f"{window[0][0]}–{window[-1][0]}", cell("accepted"), cell("snr")]
                    + [" / ".join(cell(k) for k in checks)]
                    + [cell(k) for k in ("accepted_forecast_error", "forecast_error", "linear_error")]
                )
    rejected = "rejected: " + " / ".join(k.split(":", 1)[1].removesuffix("_bound") for k in checks)
    headers = ["record, kind", "epochs", "accepted", "SNR", rejected, "error accepted", "all", "linear"]
    return markdown_table(headers, rows)


def _diagnose(args: argparse.Namespace) -> int:
    if args.table:
        if args.windows < 1:
            raise ValueError(f"--windows must be >= 1, got {args.windows}")
        print(median_table(args.table, args.windows))
        return 0
    args.seeds = [args.seed]
    (config,) = run_configs(args, [args.method])
    check_options(args.history, args.horizon, args.criterion)  # before any training
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    # Too few snapshots for one judgement trained for an empty diagnosis (--every past the epochs).
    epochs = parse_method(config.method).epochs or _epochs(args)
    if epochs // args.every < args.history:
        raise ValueError(
            f"{epochs} epochs with --every {args.every} give {epochs // args.every} snapshots, "
            f"fewer than --history {args.history}: no jump could be judged"
        )
    watch = _Watch(args.history, args.horizon, args.criterion, args.every)
    out = args.out or Path("results") / f"{args.task}-diagnosis"
    progress = None if args.quiet else Progress(1)
    try:
        on_epoch = None if progress is None else partial(progress.epoch, config.method)
        run(config, on_epoch=on_epoch, on_weights=watch)
    finally:
        if progress is not None:
            progress.close()
    assert watch.probe is not None
    reports = watch.probe.reports
    out.mkdir(parents=True, exist_ok=True)
    settings = {"task": args.task, "method": config.method, "seed": args.seed} | watch.options | {"every": args.every}
    # Six digits are far finer than the statistics' spread over seeds; full floats double the record.
    save_json(out / "diagnosis.json", {"settings": settings, "reports": significant(reports, DIAGNOSTIC_DIGITS)})
    from .plots import plot_diagnosis

    plot_diagnosis(out / "diagnosis.png", reports, f"{args.task} {config.method}, seed {args.seed}")
    print("\n".join(summary_lines(reports)))
    print(f"wrote {out / 'diagnosis.json'} and {out / 'diagnosis.png'}")
    return 0
