"""SimSiam self-supervised pre-training (Chen & He, 2021) on CIFAR-10, evaluated by a kNN classifier.

The data are those of the CIFAR-10 tasks (same loader, subsets and validation images); labels are
used only by the kNN evaluation. Each training batch becomes two augmented views
(``prepare(x, True)`` returns them stacked as ``(batch, 2, 3, H, W)``) and the task's ``loss`` is
SimSiam's symmetric negative cosine similarity with a stop-gradient. ``evaluate`` classifies the
validation images by a cosine-similarity-weighted kNN (k = 20, temperature 0.1, as in the SimSiam
and InstDisc monitors) over the backbone features of the (un-augmented) training images.

Differences from the paper (Table 3: ResNet-18 backbone, 200 epochs, SGD-momentum lr 0.03,
batch 256, cosine), to fit a CPU: a ResNet-18 of width 8 (``--width``; 64 is the usual one), a
5,120-image training subset, 128-dimensional projector and 32-dimensional predictor bottleneck
(the paper: 2048 and 512), 30 epochs, and augmentations computed on whole batches: random
resized crop (scale 0.2-1), flip, brightness/contrast/saturation jitter (0.4, p = 0.8; no hue
jitter) and grayscale (p = 0.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import Task, TaskOptions
from .cifar10 import MEAN, STD, TRAIN_SUBSET, ResNet18, split

PROTOCOL = (
    "simsiam: the paper's Table 3 (ResNet-18, SGD-momentum lr 0.03, batch 256, cosine). CPU deviations: width 8, "
    "5,120 images, 30 epochs (paper: 200), projector 128 and predictor 32 (paper: 2048 and 512)."
)
"""The task's protocol and every deviation from it, for ``pdt-bench compare --help``."""

KNN_K = 20
KNN_TEMPERATURE = 0.1


def _grayscale(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def simsiam_augment(x: Tensor, out_size: int) -> Tensor:
    """One SimSiam view of each image in ``x`` (floats in [0, 1]), drawn with the global RNG."""
    n = len(x)
    # Random resized crop: area fraction in [0.2, 1], aspect ratio in [3/4, 4/3] (log-uniform), as one
    # affine grid per image; the flip is a negative horizontal scale.
    area = torch.empty(n).uniform_(0.2, 1.0)
    ratio = torch.exp(torch.empty(n).uniform_(-0.2877, 0.2877))
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n) * 2 - 1) * (1 - sx)
    cy = (torch.rand(n) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, cx, sy, cy
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Colour jitter with probability 0.8: brightness, contrast, saturation factors in [0.6, 1.4].
    jitter = (torch.rand(n) < 0.8).view(n, 1, 1, 1)
    b, c, s = (torch.empty(3, n, 1, 1, 1).uniform_(0.6, 1.4)).unbind(0)
    y = (x * b).clamp(0, 1)
    y = ((y - y.mean(dim=(1, 2, 3), keepdim=True)) * c + y.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    y = ((y - _grayscale(y)) * s + _grayscale(y)).clamp(0, 1)
    x = torch.where(jitter, y, x)
    gray = (torch.rand(n) < 0.2).view(n, 1, 1, 1)
    return torch.where(gray, _grayscale(x), x)


def make_prepare(img_size: int):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def prepare(x: Tensor, train: bool) -> Tensor:
        x = x.float().div_(255)
        if train:
            return torch.stack([(simsiam_augment(x, img_size) - mean) / std for _ in range(2)], dim=1)
        if x.shape[-1] != img_size:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
        return (x - mean) / std

    return prepare


class SimSiam(nn.Module):
    """Backbone, projector (2 layers, BN, as the SimSiam paper's CIFAR variant) and bottleneck predictor.

    ``forward(x)`` returns the backbone features (what the kNN evaluation uses); ``views(x1, x2)`` the
    projections and predictions of two views.
    """

    def __init__(self, width: int = 8, proj_dim: int = 128, pred_dim: int = 32) -> None:
        super().__init__()
        self.backbone = ResNet18(width)
        del self.backbone.fc  # only the pooled features are used
        feat = 8 * width
        self.projector = nn.Sequential(
            nn.Linear(feat, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim),
            nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, proj_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.features(x)

    def views(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z1, z2 = self.projector(self(x1)), self.projector(self(x2))
        return z1, z2, self.predictor(z1), self.predictor(z2)


def simsiam_loss(model: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    """Symmetric negative cosine similarity with stop-gradient on the projections (minimum -1)."""
    z1, z2, p1, p2 = model.views(x[:, 0], x[:, 1])
    return -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2


@torch.no_grad()
def _features(model: nn.Module, x: Tensor, prepare, batch: int = 512) -> Tensor:
    return torch.cat([F.normalize(model(prepare(x[i : i + batch], False)), dim=1) for i in range(0, len(x), batch)])


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, num_classes: int) -> float:
    """Weighted kNN on L2-normalised features: each of the k nearest votes exp(similarity / T)."""
    sim = queries @ bank.T
    top, idx = sim.topk(min(KNN_K, len(bank)), dim=1)
    votes = torch.zeros(len(queries), num_classes).scatter_add_(1, bank_labels[idx], (top / KNN_TEMPERATURE).exp())
    return (votes.argmax(1) == labels).float().mean().item()


def build(options: TaskOptions) -> Task:
    x, y, x_val, y_val = split(options, TRAIN_SUBSET // 2)
    img_size = options.img_size or 32
    width = 2 if options.tiny else (options.width or 8)
    proj_dim, pred_dim = (16, 4) if options.tiny else (128, 32)
    prepare = make_prepare(img_size)

    def evaluate(model: nn.Module) -> dict[str, float]:
        """kNN accuracy and the SimSiam loss on validation views drawn from a fixed seed."""
        was_training = model.training
        model.eval()
        acc = knn_accuracy(_features(model, x, prepare), y, _features(model, x_val, prepare), y_val, 10)
        with torch.random.fork_rng(), torch.no_grad():
            # A fixed seed, outside the training RNG stream, so that evaluation does not change training.
            torch.manual_seed(0)
            loss = simsiam_loss(model, prepare(x_val, True)).item()
        model.train(was_training)
        return {"accuracy": acc, "loss": loss}

    return Task(
        name="simsiam",
        model=lambda: SimSiam(width, proj_dim, pred_dim),
        x_train=x,
        y_train=y,
        x_val=x_val,
        y_val=y_val,
        num_classes=10,
        prepare=prepare,
        loss=simsiam_loss,
        evaluate=evaluate,
        # Paper (Table 3): SGD-momentum 0.9, lr 0.03, batch 256, cosine; the SimSiam paper's weight decay.
        defaults=dict(
            epochs=30,
            lr=0.03,
            batch_size=256,
            optimizer="sgd-momentum",
            schedule="cosine",
            eta_min=0.0,
            weight_decay=5e-4,
        ),
        description=(
            f"SimSiam on CIFAR-10, {len(x)} train / {len(x_val)} validation images, {img_size} px; ResNet-18 "
            f"(width {width}) backbone, projector {proj_dim}, predictor {pred_dim}; kNN (k={KNN_K}) accuracy "
            "(paper: width 64, 2048/512, 200 epochs)"
        ),
    )


TASKS = {"simsiam": build}
