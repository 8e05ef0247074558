"""MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package: nothing is downloaded.

12,000 samples of 40 points, 10 classes: 9,600 for training and 2,400 for validation, the
package's own split. Two models: the paper-style MLP 40-512-512-512-10 and a small 1-D CNN.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from torch_pdt import save_atomic

from . import Task, TaskOptions, cache_root

PROTOCOL = (
    "mnist1d-mlp/cnn: not in the paper; the paper's CIFAR-10 SGD settings: lr 0.05, batch 128, cosine to 1e-3, "
    "60 epochs, on 9,600 generated training samples."
)
"""The tasks' protocol, for ``pdt-bench compare --help``."""

NUM_SAMPLES = 12_000


@functools.cache
def _data(num_samples: int, cache: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The dataset, generated once per machine and then read from ``cache`` (generation takes seconds)."""
    path = cache / f"mnist1d-{num_samples}.pt"
    if path.exists():
        return torch.load(path)
    from mnist1d.data import get_dataset_args, make_dataset  # the bench extra; pdt-bench says so when missing

    args = get_dataset_args()
    args.num_samples = num_samples
    d = make_dataset(args)
    data = (
        torch.tensor(d["x"], dtype=torch.float32),
        torch.tensor(d["y"], dtype=torch.int64),
        torch.tensor(d["x_test"], dtype=torch.float32),
        torch.tensor(d["y_test"], dtype=torch.int64),
    )
    cache.mkdir(parents=True, exist_ok=True)
    save_atomic(data, path)  # concurrent runs never read a half-written file
    return data


def mlp(width: int = 512) -> nn.Module:
    return nn.Sequential(
        nn.Linear(40, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


class CNN1d(nn.Module):
    """Three 1-D convolutions (stride 2) and a linear classifier, as in the MNIST-1D paper."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels * 5, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


def _build(options: TaskOptions, name: str, model, width: int, description: str) -> Task:
    x, y, x_val, y_val = _data(600 if options.tiny else NUM_SAMPLES, cache_root(options))
    if options.train_subset is not None:
        x, y = x[: options.train_subset], y[: options.train_subset]
    width = 16 if options.tiny else (options.width or width)
    return Task(
        name=name,
        model=lambda: model(width),
        x_train=x,
        y_train=y,
        x_val=x_val,
        y_val=y_val,
        num_classes=10,
        defaults=dict(epochs=60, lr=0.05, batch_size=128, optimizer="sgd", schedule="cosine", eta_min=1e-3),
        description=f"MNIST-1D, {len(x)} train / {len(x_val)} validation samples; {description} (width {width})",
    )


def build_mlp(options: TaskOptions) -> Task:
    return _build(options, "mnist1d-mlp", mlp, 512, "MLP 40-512-512-512-10, ReLU")


def build_cnn(options: TaskOptions) -> Task:
    return _build(options, "mnist1d-cnn", CNN1d, 32, "1-D CNN, 3 conv layers (stride 2) + linear")


TASKS = {"mnist1d-mlp": build_mlp, "mnist1d-cnn": build_cnn}
