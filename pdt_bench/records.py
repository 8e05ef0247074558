"""What one run writes: its configuration and one row per epoch, as JSON.

A run file ``DIR/runs/<method>-seed<seed>.json`` holds a :class:`Run`. Times are seconds.
``train_time`` is the run's clock: training plus all PDT work, stopped while evaluating; it is
cumulative, so the row of epoch ``e`` says how long training took to get there.

``pdt-bench landscape`` writes a :class:`Landscape` to ``DIR/landscape.json`` beside its figure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TypedDict

__all__ = ["Epoch", "Landscape", "Run", "load_run", "load_runs", "save_json", "stored_config", "write_text"]


class Epoch(TypedDict):
    epoch: int
    """1-based: the row after ``epoch`` epochs of training (and that epoch's PDT step)."""
    train_time: float
    """Cumulative clock at the end of this epoch (training + PDT, no evaluation)."""
    pdt_time: float
    """Time of this epoch's PDT step (0 without PDT); included in ``train_time``."""
    eval_time: float
    """Time spent evaluating after this epoch (not in ``train_time``)."""
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


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: a reader (or a crash) never sees a half-written file. (Binary
    files go through :func:`torch_pdt.save_atomic`.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # beside it: the rename stays atomic
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON with :func:`write_text`."""
    write_text(path, json.dumps(data, indent=1, allow_nan=True))


def load_run(path: Path) -> Run:
    with open(path) as f:
        return json.load(f)


def stored_config(path: Path) -> dict[str, Any] | None:
    """The ``config`` of the run record at ``path``; ``None`` where there is none.

    A file that is not a run record (truncated or edited by hand: the harness writes runs
    atomically) counts as no record, said on stderr, so that the study runs it again (or
    ``--existing`` leaves it out) instead of stopping on it.
    """
    if not path.exists():
        return None
    try:
        config = load_run(path)["config"]
        if not isinstance(config, dict):
            raise TypeError(f"its config is a {type(config).__name__}")
    except (OSError, ValueError, LookupError, TypeError) as e:  # unreadable, not JSON, not a record
        print(f"{path}: not a readable run record ({type(e).__name__}: {e}); counted as not run", file=sys.stderr)
        return None
    return config


def load_runs(directory: Path) -> list[Run]:
    """Every run under ``directory/runs``, in a stable order."""
    return [load_run(p) for p in sorted((Path(directory) / "runs").glob("*.json"))]
