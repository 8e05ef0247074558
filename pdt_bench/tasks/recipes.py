"""Modern recipes: tasks trained the way a practitioner trains them today, beside the paper's protocols.

The paper's tasks train with plain SGD or Adam, epoch-wise cosine annealing and no augmentation. These
two use the recipes of current practice, on the same local data (:mod:`~pdt_bench.tasks.agnews`,
:mod:`~pdt_bench.tasks.cifar10`), sized for a CPU:

* ``agnews-transformer``: a pre-norm transformer encoder over word tokens, mean-pooled, linear head;
  AdamW (lr 5e-4, weight decay 0.05), batch 64, linear warm-up over 5 % of the steps then a per-step
  cosine to 1e-5 (``warmup-cosine``), dropout 0.1, 30 epochs. 2 blocks of width 64, 4 heads, 48 tokens,
  6,000 training texts.
* ``cifar10-resnet-recipe``: a ResNet-10 (torchvision-style basic blocks with BatchNorm, one per stage,
  CIFAR stem) of width 16; SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, one-cycle
  learning rate peaking at 0.1 (``onecycle``, per step), label smoothing 0.1, random crop (4-px padding)
  and horizontal flip always on, 30 epochs, 10,240 training images.

Training minimises the smoothed loss; the losses the harness reports (training and validation) are the
plain cross-entropy, so they compare across recipes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from . import Task, TaskOptions, agnews, cifar10

PROTOCOL = (
    "agnews-transformer, cifar10-resnet-recipe: modern recipes, not the paper's. agnews-transformer: pre-norm "
    "transformer encoder (2 x 64, 4 heads, 48 tokens, mean pool), AdamW lr 5e-4, weight decay 0.05, batch 64, "
    "5 % linear warm-up then per-step cosine to 1e-5, 30 epochs, 6,000 texts. cifar10-resnet-recipe: ResNet-10 "
    "width 16 with BatchNorm, SGD-Nesterov lr 0.1 one-cycle (per step), weight decay 5e-4, batch 128, label "
    "smoothing 0.1, crop+flip, 30 epochs, 10,240 images."
)
"""The tasks' protocols, for ``pdt-bench compare --help``."""

TRANSFORMER_DEFAULTS = dict(
    epochs=30, lr=5e-4, batch_size=64, optimizer="adamw", schedule="warmup-cosine", eta_min=1e-5, weight_decay=0.05
)
RESNET_DEFAULTS = dict(
    epochs=30, lr=0.1, batch_size=128, optimizer="sgd-nesterov", schedule="onecycle", eta_min=0.0, weight_decay=5e-4
)
LABEL_SMOOTHING = 0.1


class TransformerClassifier(nn.Module):
    """Token and learned position embeddings, pre-norm encoder blocks, a final LayerNorm, the mean over
    the text's real tokens and a linear classifier.

    Texts are padded on the left (:func:`~pdt_bench.tasks.agnews.encode`); padding is masked out of the
    attention and of the mean.
    """

    def __init__(self, vocab_size: int, dim: int, heads: int, layers: int, max_len: int, num_classes: int = 4) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=agnews.PAD)
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        block = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor needs post-norm blocks; without it every mode runs the same kernels.
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pad = x == agnews.PAD
        # An empty text would leave its queries nothing to attend to (NaN): its last slot stays a key.
        pad[:, -1] = False
        h = self.encoder(self.embedding(x) + self.pos_embedding[:, : x.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.fc((self.ln(h) * keep).sum(1) / keep.sum(1))


def build_transformer(options: TaskOptions) -> Task:
    max_len = 48
    x_train, y_train, x_val, y_val, vocab_size = agnews.split(options, max_len)
    dim, heads, layers = (8, 2, 1) if options.tiny else (options.width or 64, 4, 2)
    return Task(
        name="agnews-transformer",
        model=lambda: TransformerClassifier(vocab_size, dim, heads, layers, max_len),
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        num_classes=4,
        defaults=TRANSFORMER_DEFAULTS,
        description=(
            f"AG News (official test split, seeded split), {len(y_train)} train / {len(y_val)} validation texts, "
            f"{vocab_size} words, {max_len} tokens; transformer encoder {layers}x{dim}, {heads} heads, mean pool; "
            "AdamW, warm-up + cosine per step (a modern recipe, not the paper's)"
        ),
    )


def build_resnet(options: TaskOptions) -> Task:
    task = cifar10._build(
        replace(options, augment=True),
        "cifar10-resnet-recipe",
        lambda w, s: cifar10.ResNet18(w, blocks=(1, 1, 1, 1)),
        width=16,
        tiny_width=2,
        defaults=RESNET_DEFAULTS,
        describe="ResNet-10 (one basic block per stage), BatchNorm, SGD-Nesterov, one-cycle per step, "
        f"label smoothing {LABEL_SMOOTHING} (a modern recipe, not the paper's)",
    )
    return replace(task, label_smoothing=LABEL_SMOOTHING)


TASKS = {"agnews-transformer": build_transformer, "cifar10-resnet-recipe": build_resnet}
