"""Tiny fake datasets in the on-disk layouts the benchmark tasks read (CIFAR-10, AG News)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from pdt_bench.tasks import cifar10


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_cifar_pickles(root: Path, per_batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The official layout: Python-2-style pickles with bytes keys, rows of 3072 bytes (R, G, B planes)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _images(per_batch, i), [(i + j) % 10 for j in range(per_batch)]
        (d / name).write_bytes(pickle.dumps({b"data": x.reshape(per_batch, -1), b"labels": y}, protocol=2))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def write_cifar_folder(directory: Path, per_class: int = 2, classes: int = 3, suffix: str = ".png") -> None:
    """The image-folder layout: ``{train,test}/<class>/NNNN.png``."""
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(cifar10.CLASSES[:classes]):
            (directory / split / name).mkdir(parents=True)
            for k, img in enumerate(_images(per_class, 100 * s + c)):
                Image.fromarray(img.transpose(1, 2, 0)).save(directory / split / name / f"{k:04d}{suffix}")


def write_agnews(path: Path, rows_per_class: int = 10) -> None:
    topics = ["world war peace", "sports game team", "business market stock", "science space tech"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        for i in range(rows_per_class):
            for c, words in enumerate(topics):
                w.writerow([c + 1, f"Title {i} {words}", f"A {words} story\\about &lt;TXN.N&gt; #{i}"])
