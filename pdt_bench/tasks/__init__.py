"""Benchmark tasks: a dataset held in memory, a model factory, and the task's defaults.

A task module defines a ``build(options: TaskOptions) -> Task`` function and registers it in
:data:`TASKS` below. Data is loaded (or generated) once per process and cached; the harness
does batching, shuffling, augmentation calls and evaluation, so a task only describes *what*
to train on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = ["TASKS", "DataMissing", "Task", "TaskOptions", "build", "cache_root", "data_root"]


class DataMissing(FileNotFoundError):
    """A dataset is not where the task looks for it; the message says what to provide."""


@dataclass(frozen=True)
class TaskOptions:
    """What a user can change about a task from the command line."""

    data_dir: Path | None = None
    """Where to find datasets (default: $PDT_DATA, else ../shared/data next to the checkout)."""
    cache_dir: Path | None = None
    """Where decoded datasets are cached (default: $PDT_CACHE, else ~/.cache/torch-pdt)."""
    train_subset: int | None = None
    """Use only the first n training samples (after the task's fixed shuffle)."""
    img_size: int | None = None
    """Image side for image tasks (None: the task's default)."""
    width: int | None = None
    """Width knob of the model (hidden size, channels; None: the task's CPU default)."""
    augment: bool = False
    """Image tasks: augment training batches (crop + flip), the practitioner's setting; the paper did not."""
    tiny: bool = False
    """A few hundred samples and the smallest model: for tests."""


@dataclass
class Task:
    """One benchmark task.

    ``x_train``/``y_train`` and ``x_val``/``y_val`` are whole tensors in memory (integer
    images stay ``uint8``, text is padded token ids). ``prepare(x, train)`` turns a batch of
    stored inputs into model inputs (normalisation; augmentation when ``train`` is true, using
    the global torch RNG so that a seed fixes it). ``model()`` builds a fresh model with the
    global RNG (the harness seeds it first). ``num_classes`` is used for non-iid batching.
    """

    name: str
    model: Callable[[], nn.Module]
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    num_classes: int
    prepare: Callable[[Tensor, bool], Tensor] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    """Training defaults: epochs, lr, batch_size, optimizer, schedule, eta_min, weight_decay."""
    description: str = ""
    """One line for the report: data sizes, model, and what differs from the paper."""
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    """``loss(model, prepare(x, train), y)``: the training objective of one batch (None: cross-entropy of
    ``model(x)`` against ``y``). Self-supervised tasks ignore ``y``."""
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    """``evaluate(model) -> {"accuracy": ..., "loss": ...}`` on the validation data, replacing the
    harness's classification metrics (None: accuracy and cross-entropy on ``x_val``/``y_val``). It sets
    eval mode itself, restores the model's mode and leaves the global RNG untouched."""
    label_smoothing: float = 0.0
    """Label smoothing of the training cross-entropy (``torch.nn.functional.cross_entropy``); the losses
    the harness evaluates (training and validation) are the plain cross-entropy, comparable across recipes."""


def data_root(options: TaskOptions) -> Path:
    """The dataset directory: ``--data-dir``, else ``$PDT_DATA``, else ``../shared/data``."""
    if options.data_dir is not None:
        return Path(options.data_dir)
    if os.environ.get("PDT_DATA"):
        return Path(os.environ["PDT_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def cache_root(options: TaskOptions) -> Path:
    """Where decoded data is cached, outside the git checkout."""
    if options.cache_dir is not None:
        return Path(options.cache_dir)
    return Path(os.environ.get("PDT_CACHE", Path.home() / ".cache" / "torch-pdt"))


def _registry() -> dict[str, Callable[[TaskOptions], Task]]:
    from . import agnews, cifar10, mnist1d, recipes, simsiam

    tasks: dict[str, Callable[[TaskOptions], Task]] = dict(mnist1d.TASKS)
    tasks.update(cifar10.TASKS)
    tasks.update(agnews.TASKS)
    tasks.update(simsiam.TASKS)
    tasks.update(recipes.TASKS)
    return tasks


TASKS: dict[str, Callable[[TaskOptions], Task]] = _registry()
"""Task name -> builder."""


AUGMENTABLE = tuple(name for name in TASKS if name.startswith("cifar10-") and not name.endswith("-recipe"))
"""Tasks with a practical augmentation behind ``TaskOptions.augment`` (a recipe task always augments)."""


def protocols() -> list[str]:
    """Each task family's protocol and its deviations from the paper, one paragraph each."""
    from . import agnews, cifar10, mnist1d, recipes, simsiam

    return [m.PROTOCOL for m in (mnist1d, cifar10, agnews, simsiam, recipes)]


def build(name: str, options: TaskOptions | None = None) -> Task:
    """Build the task called ``name``; ``ValueError`` names the known tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](options or TaskOptions())
