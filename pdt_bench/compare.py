"""``pdt-bench compare``: every (method, seed) on one task, then the table, report and plots.

Each run is written to ``OUT/runs/<method>-seed<seed>.json`` as soon as it finishes, and folded
into ``OUT/runs.jsonl.xz`` (:mod:`pdt_bench.records`) when the runs are done; a run whose record
exists with the same configuration is not run again, so an interrupted study continues where it
stopped. With ``--jobs N`` (N >= 1) every run gets a fresh process (clean
peak-memory figures), N at a time; ``--jobs 0`` runs them in this process.
"""

from __future__ import annotations

import argparse
import difflib
import math
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, fields, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from torch_pdt import PDT, PDTConfig

from . import metrics, peers, report, tasks
from .methods import METHODS, OPTIMIZERS, SCHEDULES, literal, parse_method, with_lr
from .records import Epoch, Run, load_run, pack, rounded, save_json, stored_config
from .train import RunConfig, run

__all__ = ["Progress", "add_command", "add_run_arguments", "check_pdt", "execute", "launch", "run_configs"]


def _pdt_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, literal(value)


def _int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0 (seeds: numpy refuses a negative one, after the runs before it),
    at least one, duplicates dropped (a seed run twice is not two seeds)."""
    try:
        values = list(dict.fromkeys(int(s) for s in text.split(",") if s))
    except ValueError:
        values = []
    if not values or min(values) < 0:  # an empty list would run nothing, and fail later with less to say
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _non_negative(text: str) -> float:
    """A finite float >= 0 (a final learning rate, a weight decay): ``nan`` would train on silently."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def check_device(name: str) -> None:
    """Refuse a ``--device`` this build cannot train on, before any run: a ``ValueError`` naming it."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: {e}") from None
    if device.type == "meta":
        raise ValueError(f"--device {name}: a meta tensor holds no data to train on")
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {name}: not available in this build of torch ({torch.__version__})")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {name}: only {count()} {device.type} device(s)")


def _jobs(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 (runs in this process) or a number of processes, got {text!r}")
    return int(text)


def _float_list(low: float, high: float) -> Any:
    """Comma-separated floats in ``(low, high]``, duplicates dropped."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(s) for s in text.split(",") if s]
        except ValueError:
            values = []
        if not values or not all(low < v <= high and math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers in ({low:g}, {high:g}], got {text!r}")
        return list(dict.fromkeys(values))

    return parse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``compare`` and ``sweep``: the task, training and PDT settings."""
    p.add_argument("--task", default="mnist1d-mlp", help=f"one of {', '.join(tasks.TASKS)} (default mnist1d-mlp)")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2, 3, 4], help="comma-separated (default 0,1,2,3,4)")
    g = p.add_argument_group("training (default: the task's own)")
    g.add_argument("--epochs", type=_positive(int))
    g.add_argument("--lr", type=_positive(float))
    g.add_argument("--batch-size", type=_positive(int))
    g.add_argument("--optimizer", choices=list(OPTIMIZERS))
    g.add_argument("--schedule", choices=list(SCHEDULES))
    g.add_argument("--eta-min", type=_non_negative, help="final learning rate of the cosine schedule")
    g.add_argument("--weight-decay", type=_non_negative)
    g.add_argument("--non-iid", action="store_true", help="every batch from one class (paper App. A.8)")
    g = p.add_argument_group("PDT")
    g.add_argument("--history", type=int, default=5, help="h (default 5)")
    g.add_argument("--horizon", type=int, default=5, help="tau (default 5)")
    g.add_argument("--start-epoch", type=int, default=5, help="T0 (default 5)")
    g.add_argument("--interval", type=int, default=1, help="Ti (default 1)")
    g.add_argument(
        "--pdt", type=_pdt_option, action="append", default=[], metavar="KEY=VALUE", help="any other PDT option"
    )
    g = p.add_argument_group("data and machine")
    g.add_argument("--data-dir", type=Path, help="datasets (default $PDT_DATA, else ../shared/data)")
    g.add_argument("--cache-dir", type=Path, help="decoded-data cache (default $PDT_CACHE, else ~/.cache/torch-pdt)")
    g.add_argument("--train-subset", type=_positive(int), help="use only this many training samples")
    g.add_argument("--img-size", type=_positive(int), help="image side for image tasks")
    g.add_argument("--width", type=_positive(int), help="model width (hidden size / channels)")
    g.add_argument(
        "--augment", action="store_true", help="image tasks: crop+flip training batches (practical; the paper did not)"
    )
    g.add_argument("--tiny", action="store_true", help="tiny data and model (smoke tests)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=_positive(int), default=1, help="torch threads per run (default 1)")
    g.add_argument(
        "--jobs", type=_jobs, default=1, help="runs in parallel, each in its own process; 0: in this one (default 1)"
    )
    g.add_argument("--rerun", action="store_true", help="run again even when a result file exists")
    g.add_argument("--existing", action="store_true", help="run nothing: table and report of the finished runs only")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def run_configs(args: argparse.Namespace, methods: Sequence[str], **overrides: Any) -> list[RunConfig]:
    """One :class:`RunConfig` per (method, seed), from parsed command-line options."""
    options = tasks.TaskOptions(
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        train_subset=args.train_subset,
        img_size=args.img_size,
        width=args.width,
        augment=args.augment,
        tiny=args.tiny,
    )
    if args.augment and args.task not in tasks.AUGMENTABLE:
        raise ValueError(f"--augment: task {args.task} has no augmentation (only {', '.join(tasks.AUGMENTABLE)})")
    check_device(args.device)
    _check_pdt_keys(dict(args.pdt))  # fail before any run starts, whichever methods run
    for name in methods:
        method = parse_method(name)
        peers.check_method(method, args.optimizer, dict(args.pdt))
        if method.pdt is not None:
            _check_pdt_options(args, method)
    base = RunConfig(
        task=args.task,
        method="",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        schedule=args.schedule,
        eta_min=args.eta_min,
        weight_decay=args.weight_decay,
        non_iid=args.non_iid,
        history=args.history,
        horizon=args.horizon,
        start_epoch=args.start_epoch,
        interval=args.interval,
        pdt_options=dict(args.pdt),
        device=args.device,
        threads=args.threads,
        mask_epoch=getattr(args, "mask_epoch", None) or args.start_epoch + 1,
        task_options=options,
    )
    base = replace(base, **overrides)
    return [replace(base, method=m, seed=s) for m in methods for s in args.seeds]


_PDT_KEYS = ("history", "horizon", "start_epoch", "interval", "pdt_options")


def _check_pdt_keys(options: dict[str, Any]) -> None:
    """Refuse a ``--pdt`` key that is not an option of :class:`torch_pdt.PDTConfig`, naming the valid ones."""
    known = [f.name for f in fields(PDTConfig)]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"--pdt: {key!r} is not a PDT option{hint}; the options are {', '.join(known)}")


def _check_pdt_options(args: argparse.Namespace, method: Any) -> None:
    """Build the run's PDT on a one-weight model: a bad value (of ``--pdt``, a method suffix or a PDT flag)
    fails here, before any run."""
    kwargs = dict(history=args.history, horizon=args.horizon, start_epoch=args.start_epoch, interval=args.interval)
    check_pdt(method.name, kwargs | method.pdt | dict(args.pdt))


def check_pdt(name: str, kwargs: dict[str, Any]) -> None:
    """Build ``PDT(**kwargs)`` on a one-weight model: a bad value fails here, as a ``ValueError`` naming
    method ``name``, before any run."""
    try:
        PDT(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None


_UNSET = ("None", "False")
"""Task options at these values are left out of a run's identity, so that a new option (at its
default) does not make every finished run look different."""


def _identity(config: RunConfig) -> dict[str, Any]:
    """What makes two runs the same run (JSON-comparable): PDT settings do not change a run without PDT."""
    d = asdict(config)
    d["task_options"] = {k: str(v) for k, v in d["task_options"].items() if str(v) not in _UNSET}
    drop = ("threads", "mask_epoch") + (_PDT_KEYS if parse_method(config.method).pdt is None else ())
    return {k: v for k, v in d.items() if k not in drop}


def _code_version() -> str | None:
    """The git commit of the harness, when it runs from a checkout (results say what code made them)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


Report = Callable[[int, int, str], None]
"""A run's progress: ``report(done, total, words)`` (epochs or steps done of the run's total, and the
figures the bar shows beside them)."""


def _epoch_words(row: Epoch) -> str:
    return f"train loss {row['train_loss']:.4g}, val acc {row['val_acc']:.4f}"


def _run_to_file(config: RunConfig, path: Path, report: Report | None = None) -> Path:
    on_epoch = None if report is None else lambda row, total: report(row["epoch"], total, _epoch_words(row))
    record = run(config, out_dir=path.parent.parent, on_epoch=on_epoch)
    record["config"]["identity"] = _identity(config)
    record["config"]["code_version"] = _code_version()
    save_json(path, rounded(record))  # as the store keeps it: the run reads the same before and after a pack
    return path


_epochs_queue: Any = None
"""In a worker process: where its run's progress is reported to the parent's progress bars (or ``None``)."""


def _worker_init(queue: Any) -> None:
    global _epochs_queue
    _epochs_queue = queue
    # Ctrl-C reaches the whole process group: the parent stops the workers itself (see launch).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(work: Callable[[Any, Path, Report | None], Path], config: Any, path: Path) -> Path:
    queue = _epochs_queue
    report = None if queue is None else lambda done, total, words: queue.put((path.stem, done, total, words))
    return work(config, path, report)


def _same_run(path: Path, config: RunConfig) -> bool:
    recorded = stored_config(path)
    if recorded is None:
        return False
    stored = dict(recorded.get("identity") or {})
    options = stored.get("task_options", {})
    stored["task_options"] = {k: v for k, v in options.items() if v not in _UNSET}
    return stored == _identity(config)


def execute(
    configs: Sequence[Any],
    out_dir: Path,
    jobs: int = 1,
    rerun: bool = False,
    quiet: bool = False,
    reuse: Sequence[Path] = (),
    existing: bool = False,
    work: Callable[[Any, Path, Report | None], Path] = _run_to_file,
    finished: Callable[[Path, Any], bool] = _same_run,
    unit: str = "epoch",
) -> list[Any]:
    """Run every config not yet on disk under ``out_dir/runs``; return all their records.

    A run already done under one of the ``reuse`` directories' ``runs/`` is copied, not rerun.
    With ``existing``, nothing runs: the records are those of the finished runs only.
    Another study's runs (``pdt-bench steps``) come with their own ``work(config, path, report)``,
    which writes the record of one config (a module-level function: it goes to a worker process),
    ``finished(path, config)``, whether that record is on disk already, and the ``unit`` of its progress.
    """
    paths = [out_dir / "runs" / f"{c.method}-seed{c.seed}.json" for c in configs]
    todo, kept = [], 0
    for config, path in zip(configs, paths):
        if rerun:
            todo.append((config, path))
            continue
        if finished(path, config):
            kept += 1
            continue
        source = next((d / "runs" / path.name for d in reuse if finished(d / "runs" / path.name, config)), None)
        if source is not None:
            save_json(path, load_run(source))
            kept += 1
        else:
            todo.append((config, path))
    if kept and not existing:
        words = f"{kept} of {len(configs)} runs already finished under {out_dir}/runs: reused (--rerun runs them again)"
        print(words, file=sys.stderr)
    if existing:
        missing = {path for _, path in todo}
        if missing:
            names = ", ".join(sorted(p.stem for p in missing))
            print(f"--existing: not run yet, left out: {names}", file=sys.stderr)
        return [load_run(p) for p in paths if p not in missing]
    if todo:
        progress = None if quiet else Progress(len(todo), unit)
        try:
            launch(todo, jobs, progress, work)
        finally:
            if progress is not None:
                progress.close()
    pack(out_dir)
    return [load_run(p) for p in paths]


class Progress:
    """On stderr: a bar of finished runs, and a bar of epochs (or another ``unit``) for each run in progress."""

    def __init__(self, runs: int, unit: str = "epoch") -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.unit = unit
        self.runs = tqdm(total=runs, desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)
        self.epochs: dict[str, Any] = {}
        self.done: set[str] = set()

    def epoch(self, name: str, row: Epoch, total: int) -> None:
        self.advance(name, row["epoch"], total, _epoch_words(row))

    def advance(self, name: str, done: int, total: int, words: str) -> None:
        """Run ``name`` is at ``done`` of ``total`` (epochs or steps), with ``words`` beside the bar."""
        if name in self.done:  # a worker's last message can arrive after its result
            return
        bar = self.epochs.get(name)
        if bar is None:
            # Every report drawn (mininterval 0): reports come seconds apart, and a skipped draw would show none.
            bar = self._tqdm(
                total=total, desc=name, unit=self.unit, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0
            )
            self.epochs[name] = bar
        bar.set_postfix_str(words, refresh=False)
        bar.update(done - bar.n)

    def finished(self, name: str) -> None:
        self.done.add(name)
        bar = self.epochs.pop(name, None)
        if bar is not None:
            bar.close()
        self.runs.set_postfix_str(name)
        self.runs.update()

    def close(self) -> None:
        for bar in self.epochs.values():
            bar.close()
        self.runs.close()


def launch(
    todo: list[tuple[Any, Path]],
    jobs: int,
    progress: Progress | None,
    work: Callable[[Any, Path, Report | None], Path] = _run_to_file,
) -> None:
    """``work(config, path, report)`` for every ``(config, path)`` of ``todo``: here (``jobs=0``) or in
    ``jobs`` worker processes."""
    if jobs == 0:
        for config, path in todo:
            work(config, path, None if progress is None else partial(progress.advance, path.stem))
            if progress is not None:
                progress.finished(path.stem)
        return
    ctx = get_context("spawn")
    queue = ctx.Queue() if progress is not None else None
    # A fresh process per run: peak memory is the run's own, and nothing leaks between runs.
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, max_tasks_per_child=1, initializer=_worker_init, initargs=(queue,))
    try:
        pending = {pool.submit(_run_in_worker, work, config, path) for config, path in todo}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while progress is not None and not queue.empty():
                progress.advance(*queue.get())
            for future in done:
                path = future.result()
                if progress is not None:
                    progress.finished(path.stem)
    except KeyboardInterrupt:
        # Stop now: no queued run starts, the runs in flight end (their files are not written, so
        # the same command runs them again); the executor has no public way to end its workers.
        workers = list(pool._processes.values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        raise
    except BaseException:
        pool.shutdown()  # a run failed: the others finish, and are kept, before the error is said
        raise
    pool.shutdown()


def _tensorboard(out_dir: Path, runs: list[Run]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None

    for r in runs:
        with SummaryWriter(out_dir / "tensorboard" / f"{r['method']}-seed{r['seed']}") as w:
            for e in r["epochs"]:
                for key in ("train_loss", "batch_loss", "val_loss", "val_acc", "lr", "pdt_time"):
                    w.add_scalar(key, e[key], e["epoch"])
                if e["pdt"] and e["pdt"]["predicted"]:
                    w.add_scalar("accepted_ratio", e["pdt"]["accepted_ratio"], e["epoch"])


def _epochs(args: argparse.Namespace) -> int:
    """The run length: ``--epochs``, else the task's default (read off a tiny build of the task)."""
    if args.epochs is not None:
        return args.epochs
    options = tasks.TaskOptions(data_dir=args.data_dir, cache_dir=args.cache_dir, tiny=True)
    return tasks.build(args.task, options).defaults.get("epochs", RunConfig.DEFAULT_EPOCHS)


def budget_methods(reference: str, fractions: Sequence[float], epochs: int) -> list[str]:
    """``reference@epochs=E`` for each fraction of ``epochs`` (rounded, at least 1): the reference with
    its whole learning-rate schedule compressed into E epochs."""
    budgets = dict.fromkeys(max(1, round(f * epochs)) for f in fractions)
    return [f"{reference}@epochs={e}" for e in budgets if e != epochs]


def _compare(args: argparse.Namespace) -> int:
    # Imported here, before any run (a missing matplotlib is said first), and not at the top: every
    # worker process imports this module, and matplotlib would add a second to its start.
    from . import plots

    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    if args.reference not in methods:
        methods.insert(0, args.reference)
    if args.existing and args.rerun:
        raise ValueError("--existing runs nothing and --rerun runs everything again: choose one")
    if args.lr_sweep:
        methods += [m for m in (with_lr(args.reference, lr) for lr in args.lr_sweep) if m not in methods]
    if args.mask_epoch is not None and args.mask_epoch > _epochs(args):
        # No run reaches that epoch: the heatmap would be left out silently, after every run.
        raise ValueError(f"--mask-epoch {args.mask_epoch} is past the last epoch ({_epochs(args)})")
    if args.budget_sweep:
        methods += [m for m in budget_methods(args.reference, args.budget_sweep, _epochs(args)) if m not in methods]
    out = args.out or Path("results") / args.task
    configs = run_configs(args, methods)
    runs = execute(configs, out, jobs=args.jobs, rerun=args.rerun, quiet=args.quiet, existing=args.existing)
    if not runs:
        raise ValueError(f"no finished runs of these settings under {out}/runs")
    summary = metrics.summarize(runs, reference=args.reference)
    table = report.format_table(summary) if args.wide else report.compact_table(summary)
    command = args.command_line
    report.write_summary(out, summary)
    figures = plots.write_plots(out, runs, mask_epoch=configs[0].mask_epoch, reference=args.reference)
    path = report.write_report(out, runs, summary, command, figures)
    if args.tensorboard:
        _tensorboard(out, runs)
    print(table)
    print(f"report: {path}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``pdt-bench compare`` sub-command."""
    p = sub.add_parser(
        "compare",
        help="methods x seeds on one task: table, report.md, plots",
        description="Every (method, seed) on one task; the table, report.md and plots.",
        epilog="Tasks follow the paper's protocols by default; deviations forced by a CPU:\n\n"
        + "\n\n".join(textwrap.fill(text, 96) for text in tasks.protocols()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--methods",
        default="baseline,pdt",
        help=f"comma-separated method names, each with @ suffixes (default baseline,pdt): {', '.join(METHODS)}",
    )
    p.add_argument("--reference", default="baseline", help="the method TTB targets come from (default baseline)")
    p.add_argument("--lr-sweep", type=_float_list(0.0, float("inf")), help="also run the reference at these lrs")
    p.add_argument(
        "--budget-sweep",
        type=_float_list(0.0, 1.0),
        metavar="FRACTIONS",
        help="also run the reference with its whole LR schedule compressed to these fractions of the epochs",
    )
    p.add_argument("--out", type=Path, help="output directory (default results/<task>)")
    p.add_argument(
        "--mask-epoch", type=_positive(int), help="epoch whose PDT mask is saved for the heatmap (default T0+1)"
    )
    p.add_argument("--wide", action="store_true", help="print every figure of report.md's table, not the compact one")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs under OUT/tensorboard")
    add_run_arguments(p)
    p.set_defaults(func=_compare)
