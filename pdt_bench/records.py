"""What one run writes: its configuration and one row per epoch, as JSON.

A study directory ``DIR`` keeps its runs in one store, ``DIR/runs.jsonl.xz``: one line per run,
``{"name": "<method>-seed<seed>", "run": {...}}`` in compact JSON, sorted by name, compressed
with xz (LZMA). A run is addressed by its path ``DIR/runs/<name>.json``, as it was when every run
had a pretty-printed file there; such files (older studies, or a run that finished since the
last :func:`pack`) are still read, and win over the store's line of the same name. A run is
first written to its own file (by the process that ran it: workers never share a file), then
:func:`pack` folds the files into the store and removes them. ``python -m pdt_bench.records
DIR...`` converts folders of old run files the same way.

The size comes from compact JSON and xz, which compresses the committed studies 11x (28.9 MB of
indented JSON files, 434 runs, to 2.5 MB; gzip -9 gives 3.8 MB: its 32 KB window misses the
repetition across runs), and from :func:`rounded`: the clocks and PDT's diagnostic statistics
are kept to 5 and 6 significant digits, the measured values (losses, accuracies, learning rate)
exactly: that took the committed stores from 3.03 MB to 2.10 MB (572 runs).

A :class:`Run` holds times in seconds. ``train_time`` is the run's clock: training plus all PDT
work, stopped while evaluating; it is cumulative, so the row of epoch ``e`` says how long
training took to get there.

``pdt-bench landscape`` writes a :class:`Landscape` to ``DIR/landscape.json`` beside its figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import lzma
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

__all__ = [
    "STORE",
    "Epoch",
    "Landscape",
    "Run",
    "load_named_runs",
    "load_run",
    "load_runs",
    "pack",
    "rounded",
    "save_json",
    "significant",
    "stored_config",
    "write_text",
]

STORE = "runs.jsonl.xz"
"""A study directory's run store, beside its ``runs/`` folder of single run files."""
_PRESET = 6 | lzma.PRESET_EXTREME
"""xz's default level, searching harder: 3 % smaller than ``-6`` on the committed studies, 1.4x its
time (2.3 s to rewrite the largest, 95 runs, on a loaded 2-core machine); ``-9`` adds nothing:
``-6``'s 8 MB window already holds every committed store (3.8 MB of text at most)."""


class Epoch(TypedDict):
    epoch: int
    """1-based: the row after ``epoch`` epochs of training (and that epoch's PDT step)."""
    train_time: float
    """Cumulative clock at the end of this epoch (training + PDT, no evaluation); 5 significant digits."""
    pdt_time: float
    """Time of this epoch's PDT step (0 without PDT); included in ``train_time``; 5 significant digits."""
    eval_time: float
    """Time spent evaluating after this epoch (not in ``train_time``); 5 significant digits."""
    train_loss: float
    """Full-pass loss on the training set (or its fixed evaluation subset) after the PDT step."""
    batch_loss: float
    """Mean of the batch losses during the epoch: the authors' definition of training loss."""
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    pdt: dict[str, Any] | None
    """What ``PDT.step()`` returned (a :class:`torch_pdt.PDTStatistics`, plain JSON)."""


class Run(TypedDict):
    task: str
    method: str
    seed: int
    config: dict[str, Any]
    """Every setting of the run (task, optimizer, lr, batch size, schedule, PDT options...)."""
    epochs: list[Epoch]
    param_types: dict[str, str]
    """Parameter name -> kind of layer that owns it (``Linear``, ``Conv2d``, ``LSTM``...)."""
    overhead: dict[str, Any]
    """FLOPs and memory: ``model_flops_per_epoch``, ``pdt_flops_per_prediction``, ``peak_memory_bytes``..."""
    diverged: bool
    """The training loss became non-finite; later epochs are not run."""


class Landscape(TypedDict):
    """Two weight trajectories projected on a plane, over the training loss on that plane."""

    task: str
    seed: int
    methods: list[str]
    """The reference (the baseline) first, then the PDT method."""
    plane: str
    """``pca`` (top two principal directions) or ``ends`` (through the start and both end points)."""
    explained: list[float] | None
    """PCA: the fraction of the trajectories' variance along each axis; ``None`` for ``ends``."""
    paths: dict[str, list[list[float]]]
    """Method -> plane coordinates ``[alpha, beta]`` of its weights at epochs 0 (the start), 1, 2..."""
    jumps: list[int]
    """Epochs where the PDT method's prediction was accepted (at least one element)."""
    alphas: list[float]
    betas: list[float]
    losses: list[list[float]]
    """Training loss at ``origin + alpha u + beta v``: one row per beta, one column per alpha."""
    subset: int
    """The loss is measured on the first ``subset`` training samples."""
    best_loss: float | None
    """The baseline's best weights (by its recorded training loss) scored on that subset."""
    seconds: dict[str, float]
    """Wall-clock seconds of the training runs and of the loss grid."""


def write_text(path: Path, text: str | bytes) -> None:
    """Write ``text`` (or bytes) atomically: a reader (or a crash) never sees a half-written file.
    (Tensors go through :func:`torch_pdt.save_atomic`.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # beside it: the rename stays atomic
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(path: Path, data: Any) -> None:
    """Write ``data`` as compact JSON (one line: indenting made summaries 30 % larger) with :func:`write_text`."""
    write_text(path, json.dumps(data, separators=(",", ":"), allow_nan=True) + "\n")


def _as_run(data: Any) -> Run:
    """``data`` if it is a run record (a mapping with a ``config`` mapping); else a ``TypeError``."""
    if not isinstance(data, dict):
        raise TypeError(f"it is a {type(data).__name__}, not a record")
    if not isinstance(data.get("config"), dict):
        raise TypeError(f"its config is a {type(data.get('config')).__name__}")
    return data  # type: ignore[return-value]


def _not_a_record(where: str, error: Exception) -> None:
    print(f"{where}: not a readable run record ({type(error).__name__}: {error}); counted as not run", file=sys.stderr)


def _decompress(store: Path) -> str:
    """The text of ``store``; where the stream is damaged, the text before the damage, said on stderr.

    A file of several xz streams one after another (``cat a.xz b.xz``, which ``xz -d`` reads whole)
    is read whole too: one decompressor stops at the end of the first stream and left the rest unread.
    """
    remaining, chunk = store.read_bytes(), 1 << 16
    parts: list[bytes] = []
    try:
        while True:  # one xz stream per pass; an empty file is one stream that ends early
            decompressor = lzma.LZMADecompressor()
            start = 0
            # In chunks, so that the lines before a corrupt block are kept.
            while not decompressor.eof and start < len(remaining):
                parts.append(decompressor.decompress(remaining[start : start + chunk]))
                start += chunk
            if not decompressor.eof:
                raise EOFError("the compressed stream ends early")
            remaining = (decompressor.unused_data + remaining[start:]).lstrip(b"\0")  # xz pads streams with zeros
            if not remaining:
                break
    except (lzma.LZMAError, EOFError) as e:
        lines = b"".join(parts).count(b"\n")
        print(f"{store}: damaged after line {lines} ({e}); the runs after it count as not run", file=sys.stderr)
    return b"".join(parts).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=8)
def _store_lines(store: Path, version: tuple[int, int, int]) -> dict[str, str]:
    """Run name -> its line in ``store`` (whose ``version`` is its inode, size and mtime: a rewrite
    is read again). A damaged line is named on stderr and left out, so that the study runs it again."""
    lines: dict[str, str] = {}
    for number, line in enumerate(_decompress(store).splitlines(), start=1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise TypeError("no run name")
            _as_run(entry.get("run"))
        except (ValueError, TypeError) as e:
            _not_a_record(f"{store}: line {number}", e)
            continue
        lines[entry["name"]] = line
    return lines


def _read_store(directory: Path) -> dict[str, str]:
    store = Path(directory) / STORE
    try:
        info = store.stat()
    except FileNotFoundError:
        return {}
    return _store_lines(store, (info.st_ino, info.st_size, info.st_mtime_ns))


def load_run(path: Path) -> Run:
    """The run at ``path`` = ``DIR/runs/<name>.json``: that file if it exists, else the line
    ``<name>`` of ``DIR/runs.jsonl.xz`` (a ``FileNotFoundError`` if neither holds it)."""
    path = Path(path)
    if path.exists():
        with open(path) as f:
            return json.load(f)
    line = _read_store(path.parent.parent).get(path.stem)
    if line is None:
        raise FileNotFoundError(f"no run {path.stem!r} in {path.parent} or {path.parent.parent / STORE}")
    return json.loads(line)["run"]


def stored_config(path: Path) -> dict[str, Any] | None:
    """The ``config`` of the run record at ``path`` (see :func:`load_run`); ``None`` where there is none.

    A file or a store line that is not a run record (truncated or edited by hand: the harness
    writes atomically) counts as no record, said on stderr, so that the study runs it again (or
    ``--existing`` leaves it out) instead of stopping on it.
    """
    path = Path(path)
    if not path.exists():
        line = _read_store(path.parent.parent).get(path.stem)  # damaged lines were named when read
        return None if line is None else json.loads(line)["run"]["config"]
    try:
        return _as_run(load_run(path))["config"]
    except (OSError, ValueError, TypeError) as e:  # unreadable, not JSON, not a record
        _not_a_record(str(path), e)
        return None


def _run_files(directory: Path) -> dict[str, Run]:
    """The readable single run files of ``directory/runs``, by name (the others are named on stderr)."""
    runs = {}
    for path in sorted((Path(directory) / "runs").glob("*.json")):
        try:
            runs[path.stem] = _as_run(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            _not_a_record(str(path), e)
    return runs


def load_named_runs(directory: Path) -> dict[str, Run]:
    """Every run of the study ``directory``, by name in sorted order: its store's and its ``runs/`` files'."""
    runs = {name: json.loads(line)["run"] for name, line in _read_store(directory).items()}
    runs |= _run_files(directory)
    return {name: runs[name] for name in sorted(runs)}


def load_runs(directory: Path) -> list[Run]:
    """Every run of the study ``directory``, in a stable order (by name)."""
    return list(load_named_runs(directory).values())


CLOCK_DIGITS = 5
"""Significant digits kept of a run's clocks (``train_time``, ``pdt_time``, ``eval_time``, ``overhead["pdt_time"]``)."""
DIAGNOSTIC_DIGITS = 6
"""Significant digits kept of PDT's diagnostic statistics (eigenvalues, per-parameter ratios, per-layer DMDs)."""
_CLOCKS = ("train_time", "pdt_time", "eval_time")
_DIAGNOSTICS = ("eigenvalues", "accepted_ratio_per_param", "layers")


def significant(value: Any, digits: int) -> Any:
    """Every float in ``value`` (a number, or lists and dicts of them) to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")  # the shortest text of that float has <= digits digits
    if isinstance(value, dict):
        return {k: significant(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [significant(v, digits) for v in value]
    return value


def rounded(run: Run) -> Run:
    """``run`` with its clocks to :data:`CLOCK_DIGITS` and PDT's diagnostics to :data:`DIAGNOSTIC_DIGITS`
    significant digits; every other value as it was. The same run again (``rounded(rounded(r)) == rounded(r)``).

    Which fields: at full precision (17 digits each) they made 30 % of the committed stores' bytes.
    The clocks are timer noise past a few digits; the harness quotes sums and ratios of them to 3
    digits (the time columns, PDT's time share, the TTB seconds and reductions), which 5 digits move
    by 5e-5 of their value at most: a quoted figure that sat on a rounding boundary moves by one in
    its last digit (the committed studies' reports, rendered again: 10 figures, all seconds or time
    reductions; with 6 digits, 2 figures for 35 KB more). The eigenvalues, the per-parameter accepted
    ratios and the per-layer DMDs are read by plots alone. Kept exact, because a verdict compares
    them with ``<=`` or a table quotes them, and rounding could make a tie: the losses and
    accuracies, ``lr``, PDT's ``accepted_ratio`` (a quoted mean) and the pacing rule's losses (its
    verdict compares them; they repeat ``batch_loss``, so xz stores them almost free). A record
    without ``epochs`` (``pdt-bench steps``) is returned as it is.

    >>> row = {"train_time": 12.345678901, "pdt_time": 0.0, "eval_time": 0.31724755100003676,
    ...        "train_loss": 2.098807792663574, "pdt": {"eigenvalues": [[0.9991232124751082, 0.0]]}}
    >>> r = rounded({"epochs": [row], "overhead": {"pdt_time": 0.941947251005331}})
    >>> r["epochs"][0]  # doctest: +NORMALIZE_WHITESPACE
    {'train_time': 12.346, 'pdt_time': 0.0, 'eval_time': 0.31725, 'train_loss': 2.098807792663574,
     'pdt': {'eigenvalues': [[0.999123, 0.0]]}}
    >>> r["overhead"], rounded(r) == r
    ({'pdt_time': 0.94195}, True)
    """
    if "epochs" not in run:
        return run
    epochs = []
    for row in run["epochs"]:
        row = row | {k: significant(row[k], CLOCK_DIGITS) for k in _CLOCKS if k in row}
        stats = row.get("pdt")
        if stats:
            row["pdt"] = stats | {k: significant(stats[k], DIAGNOSTIC_DIGITS) for k in _DIAGNOSTICS if k in stats}
        epochs.append(row)
    run = run | {"epochs": epochs}  # type: ignore[assignment]
    if isinstance(run.get("overhead"), dict) and "pdt_time" in run["overhead"]:
        run["overhead"] = run["overhead"] | {"pdt_time": significant(run["overhead"]["pdt_time"], CLOCK_DIGITS)}
    return run


def _line(name: str, run: Run) -> str:
    return json.dumps({"name": name, "run": rounded(run)}, separators=(",", ":"), allow_nan=True)


def pack(directory: Path, repack: bool = False) -> Path | None:
    """Fold the run files of ``directory/runs`` into ``directory/runs.jsonl.xz``; return the store.

    A file replaces the store's line of the same name; the files are removed once the store is
    written (atomically), and ``runs/`` too if nothing else is left in it. Every line is written
    :func:`rounded`, the store's own lines too, so an older store takes the rounding the next time
    it is packed (``repack``: even with no run file to fold). The same runs give the same bytes
    (sorted lines, compact JSON, no time stamp in xz), and an unchanged store is not written again.
    A damaged store line is not carried over: its run counts as not run. With nothing to write (no
    readable run file, and with ``repack`` no stored run either), nothing is written (``None``). Two
    processes packing one directory at once (two studies sharing an ``--out``) take turns on a lock
    file, ``directory/.runs.lock``: each reads the store the other wrote, so neither drops the other's runs.
    """
    directory = Path(directory)
    if not (directory / "runs").is_dir() and not (repack and (directory / STORE).is_file()):
        return None
    with _locked(directory / ".runs.lock"):
        files = _run_files(directory)
        stored = _read_store(directory) if files or repack else {}
        runs = {name: json.loads(line)["run"] for name, line in stored.items()} | files
        if not runs:
            return None
        data = lzma.compress("".join(_line(name, runs[name]) + "\n" for name in sorted(runs)).encode(), preset=_PRESET)
        store = directory / STORE
        if not store.exists() or store.read_bytes() != data:
            write_text(store, data)
        for name in files:
            (directory / "runs" / f"{name}.json").unlink()
        if (directory / "runs").is_dir() and not any((directory / "runs").iterdir()):
            (directory / "runs").rmdir()
        return store


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be; POSIX ``flock``, Windows ``msvcrt.locking``)."""
    with open(path, "a+b") as f:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises OSError
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pdt_bench.records [--repack] DIR...``: pack every study (a folder with ``runs/``) in each ``DIR``."""
    parser = argparse.ArgumentParser(prog="python -m pdt_bench.records", description=main.__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="study directories, or folders holding them")
    parser.add_argument("--repack", action="store_true", help=f"also rewrite each {STORE} (applies the rounding)")
    args = parser.parse_args(argv)
    for root in args.dirs:
        studies = {p.parent for p in [root / "runs", *root.rglob("runs")] if p.is_dir()}
        if args.repack:
            studies |= {p.parent for p in [root / STORE, *root.rglob(STORE)] if p.is_file()}
        for study in sorted(studies):
            count = len(list((study / "runs").glob("*.json")))
            before = (study / STORE).stat().st_size if (study / STORE).exists() else 0
            store = pack(study, repack=args.repack)
            if store is not None:
                print(f"{study}: {count} run files -> {STORE} ({before:,} -> {store.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
