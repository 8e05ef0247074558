"""CIFAR-10 (Krizhevsky, 2009) read from a local directory; nothing is downloaded.

Two layouts are accepted under the data root (``--data-dir`` / ``$PDT_DATA``):

* the official python pickles: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``)
  or the archive ``cifar-10-python.tar.gz`` that holds it;
* an image folder ``train/<class>/*.jpg|png`` and ``test/<class>/*``, as a directory
  ``cifar10-jpg/`` or the archive ``cifar10-jpg.tar.gz``. Decoding 60,000 images takes a while,
  so the decoded ``uint8`` tensors are cached once under the cache root (``$PDT_CACHE``).

The paper's protocol is the default (App. A.12, Table 12; NOTES: the authors' code): no
augmentation, pixels normalised with mean = std = 0.5, SGD lr 0.05, batch 256, cosine annealing to
1e-3, 60 epochs (ResNet-18 and ViT keep their paper optimizers). Deviations, all to fit a CPU
(paper-sized runs: ``--img-size 128`` for AlexNet, ``--width 64`` and ``--train-subset 50000``):

* 32-px images (the authors resized to 128 px);
* a fixed 10,240-image training subset (5,120 for ResNet-18); the validation set is a fixed
  2,000-image subset of the test split unless the whole training split is used, in which case it
  is the whole test split;
* narrow models (``--width``, see each task's description).

``--augment`` (``TaskOptions.augment``) is the practitioner's setting instead: training batches get
a random crop with 4-px zero padding and a horizontal flip.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_pdt import save_atomic

from . import DataMissing, Task, TaskOptions, cache_root, data_root

PROTOCOL = (
    "cifar10-*: the paper's protocol (App. A.12): no augmentation, mean = std = 0.5, SGD lr 0.05, batch 256, "
    "cosine to 1e-3, 60 epochs (resnet18: SGD-momentum lr 0.1, batch 128, weight decay 5e-4; vit: AdamW lr 1e-3). "
    "CPU deviations: 32 px (paper: 128), 10,240 training images (resnet18: 5,120; paper: 50,000), widths "
    "fcn 16, alexnet 16, resnet18 8, vit 64 (paper: 64). --augment: crop+flip, the practical setting."
)
"""The task family's protocol and every deviation from it, for ``pdt-bench compare --help``."""

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""Class names in label order (that of the official batches, which is also alphabetical)."""
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
"""Channel statistics of the training split (SimSiam's normalisation)."""
PAPER_MEAN = PAPER_STD = 0.5
"""The authors' normalisation of every channel."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

TRAIN_SUBSET = 10_240
"""40 x 256: no partial last batch at the default batch sizes (with BN, one step on a batch of 16 at lr 0.05
took the FCN from 43 % to 20 % training accuracy)."""
VAL_SUBSET = 2_000
TINY_TRAIN, TINY_VAL = 256, 128
SPLIT_SEED = 0

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]
"""x_train (N, 3, 32, 32) uint8, y_train (N,) int64, x_test, y_test."""


# --------------------------------------------------------------------------------------------
# Loading


def _missing(root: Path) -> DataMissing:
    return DataMissing(
        f"CIFAR-10 not found in {root}. Provide one of:\n"
        f"  {root}/cifar-10-batches-py/  (the official python batches: data_batch_1..5, test_batch)\n"
        f"  {root}/cifar-10-python.tar.gz  (the official archive of those batches)\n"
        f"  {root}/cifar10-jpg/ or {root}/cifar10-jpg.tar.gz  (image folders train/<class>/*.jpg and "
        f"test/<class>/*.jpg, classes {', '.join(CLASSES)})\n"
        "or point the harness elsewhere with --data-dir DIR or the PDT_DATA environment variable."
    )


def _batches_from_pickles(read: Callable[[str], bytes]) -> Arrays:
    def batch(name: str) -> tuple[Tensor, Tensor]:
        # The official batches are Python 2 pickles: keys are bytes once decoded with "bytes".
        d = pickle.loads(read(name), encoding="bytes")
        data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
        x = torch.as_tensor(numpy.asarray(data, dtype=numpy.uint8))
        return x.reshape(-1, 3, 32, 32), torch.as_tensor(list(labels), dtype=torch.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), x_test, y_test


def _load_pickle_dir(directory: Path) -> Arrays:
    return _batches_from_pickles(lambda name: (directory / name).read_bytes())


def _load_pickle_archive(archive: Path) -> Arrays:
    with tarfile.open(archive, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        return _batches_from_pickles(lambda name: tar.extractfile(members[name]).read())


def _decode(data: bytes, where: str) -> Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.size != (32, 32):
            raise ValueError(f"{where}: CIFAR-10 images are 32x32, got {img.size[0]}x{img.size[1]}")
        rgb = img.convert("RGB")
        return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).reshape(32, 32, 3).permute(2, 0, 1)


def _stack(items: Iterator[tuple[str, str, str, bytes]], source: Path) -> Arrays:
    """(split, class, file name, encoded image) -> arrays, sorted by (class, name) for a fixed order."""
    found: dict[str, list[tuple[int, str, Tensor]]] = {"train": [], "test": []}
    for subset, cls, name, data in items:
        where = f"{source}: {subset}/{cls}/{name}"
        if cls not in CLASSES:
            raise ValueError(f"{where}: unknown CIFAR-10 class folder {cls!r}")
        found[subset].append((CLASSES.index(cls), name, _decode(data, where)))

    def arrays(subset: str) -> tuple[Tensor, Tensor]:
        if not found[subset]:
            raise ValueError(f"{source}: no images under {subset}/<class>/")
        rows = sorted(found[subset], key=lambda r: (r[0], r[1]))
        return torch.stack([r[2] for r in rows]), torch.tensor([r[0] for r in rows], dtype=torch.int64)

    return (*arrays("train"), *arrays("test"))


def _image_entry(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(split, class, name) when a relative path is ``[prefix/]train|test/<class>/<image>``."""
    if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return parts[-3], parts[-2], parts[-1]
    return None


def _folder_items(directory: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for path in directory.rglob("*"):
        entry = _image_entry(path.relative_to(directory).parts)
        if entry and path.is_file():
            yield (*entry, path.read_bytes())


def _archive_items(archive: Path) -> Iterator[tuple[str, str, str, bytes]]:
    # Streaming mode: a .tar.gz is read once, front to back, without seeking.
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            entry = _image_entry(Path(member.name).parts)
            if entry and member.isfile():
                yield (*entry, tar.extractfile(member).read())


def _fingerprint(source: Path) -> str:
    """Changes when the source changes: path, size and mtime of the archive or of every file."""
    if source.is_file():
        files = [source]
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file())
    h = hashlib.sha1(str(source.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(source) if f != source else ''}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cached(source: Path, cache: Path, decode: Callable[[], Arrays]) -> Arrays:
    path = cache / "cifar10" / f"{source.name.split('.')[0]}-{_fingerprint(source)}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    arrays = decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic, so that concurrent runs never read a half-written cache.
    save_atomic(dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)), path)
    return arrays


@functools.cache
def load(root: Path, cache: Path) -> Arrays:
    """CIFAR-10 from ``root`` in whichever accepted layout is there (first match in the order documented
    at the top of this module); image folders are decoded once and cached under ``cache``."""
    for d in (root / "cifar-10-batches-py", root):
        if (d / "data_batch_1").is_file():
            return _load_pickle_dir(d)
    if (root / "cifar-10-python.tar.gz").is_file():
        return _load_pickle_archive(root / "cifar-10-python.tar.gz")
    for d in (root / "cifar10-jpg", root):
        if (d / "train").is_dir() and (d / "test").is_dir():
            return _cached(d, cache, lambda: _stack(_folder_items(d), d))
    archive = root / "cifar10-jpg.tar.gz"
    if archive.is_file():
        return _cached(archive, cache, lambda: _stack(_archive_items(archive), archive))
    raise _missing(root)


# --------------------------------------------------------------------------------------------
# Batch preparation


def augment(x: Tensor, pad: int = 4) -> Tensor:
    """Random crop after zero padding and random horizontal flip, per image, with the global RNG."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2)).tolist()
    # One slice per image: 3x faster on CPU than a batched gather with index tensors.
    out = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def make_prepare(img_size: int, augmented: bool = False) -> Callable[[Tensor, bool], Tensor]:
    """uint8 images -> float images of side ``img_size`` normalised as the paper (mean = std = 0.5);
    training batches are augmented only when ``augmented``."""

    def prepare(x: Tensor, train: bool) -> Tensor:
        x = x.float().div_(255)
        if train and augmented:
            x = augment(x)
        if x.shape[-1] != img_size:
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
        return (x - PAPER_MEAN) / PAPER_STD

    return prepare


# --------------------------------------------------------------------------------------------
# Models


def fcn(width: int = 64, num_classes: int = 10) -> nn.Sequential:
    """The paper's FCN: five blocks conv3x3-BN-ReLU-maxpool (3 -> w, 2w, 4w, 8w, 8w channels), a 1x1 conv
    to the classes and global average pooling. ``width=64`` is the paper's model (3,918,858 parameters)."""
    channels = [3, width, 2 * width, 4 * width, 8 * width, 8 * width]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    layers += [nn.Conv2d(channels[-1], num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class AlexNet(nn.Module):
    """torchvision's AlexNet layout (``features``, ``avgpool``, ``classifier``, same layer indices).

    ``width=64`` and ``img_size >= 64`` is torchvision's model (57,044,810 parameters with 10 classes;
    channels 64-192-384-256-256, classifier 4096-4096). ``width`` scales every channel count and the
    classifier (64 * width units). Below 64 px the 11x11 stride-4 stem would shrink the image to nothing
    before the last max-pool, so it becomes 5x5 stride 2; the adaptive pooling then brings any size to 6x6.
    Convolutions are initialised as torchvision does for VGG and ResNet (Kaiming normal, fan-out), not
    with torch's default: with the default, plain SGD at lr 0.05 left the narrow CPU model at chance for
    more than 7 epochs on 10,000 images; with this it leaves chance within 2.
    """

    def __init__(self, width: int = 64, num_classes: int = 10, img_size: int = 224) -> None:
        super().__init__()
        c1, c2, c3, c4 = width, 3 * width, 6 * width, 4 * width
        stem = nn.Conv2d(3, c1, 11, stride=4, padding=2) if img_size >= 64 else nn.Conv2d(3, c1, 5, stride=2, padding=2)
        self.features = nn.Sequential(
            stem,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        hidden = 64 * width
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c4 * 36, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 for 32-px images in torchvision's layout (``conv1``, ``bn1``, ``layer1..4``, ``fc``).

    The CIFAR variant (He et al., 2016, Sec. 4.2 style): a 3x3 stride-1 stem and no max-pool, so that a
    32-px image keeps 32x32 feature maps in ``layer1``. ``width=64`` is the usual 11.2M-parameter model;
    stages have width, 2, 4, 8 x width channels. The paper itself used ResNet-50 on ImageNet.
    """

    def __init__(self, width: int = 64, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stages.append(
                nn.Sequential(
                    *[BasicBlock(c_in if j == 0 else c_out, c_out, 2 if i and not j else 1) for j in range(n)]
                )
            )
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The pooled representation before ``fc`` (used by SimSiam as its backbone output)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block with torchvision's ViT names (``ln_1``, ``self_attention``, ``ln_2``, ``mlp``)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A small Vision Transformer in torchvision's layout (``conv_proj``, ``class_token``,
    ``pos_embedding``, ``layers``, ``ln``, ``head``): patch embedding, class token, learned positions,
    pre-norm encoder blocks, linear head on the class token, ``dim = width``. The paper used ViT-Base/Huge on
    ImageNet; the defaults here are a 1.8M-parameter model for 32-px images (4-px patches, 64 tokens)."""

    def __init__(
        self,
        width: int = 192,
        depth: int = 6,
        heads: int = 3,
        patch: int = 4,
        img_size: int = 32,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if img_size % patch:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch}")
        tokens = (img_size // patch) ** 2 + 1
        self.conv_proj = nn.Conv2d(3, width, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.layers = nn.Sequential(*[EncoderBlock(width, heads, 2 * width) for _ in range(depth)])
        self.ln = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


# --------------------------------------------------------------------------------------------
# Tasks


def _subset(n: int, count: int, seed: int) -> Tensor:
    """The first ``count`` of a fixed permutation of ``range(n)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]


def split(options: TaskOptions, train_subset: int = TRAIN_SUBSET) -> Arrays:
    """The task's training and validation samples: ``options.train_subset`` (else ``train_subset``) images
    of a fixed shuffle of the training split; the whole test split when the whole training split is used,
    else a fixed subset of it."""
    x, y, x_test, y_test = load(data_root(options), cache_root(options))
    if options.tiny:
        n_train, n_val = min(options.train_subset or TINY_TRAIN, TINY_TRAIN), TINY_VAL
    else:
        n_train = min(options.train_subset or train_subset, len(x))
        n_val = len(x_test) if n_train == len(x) else VAL_SUBSET
    train, val = _subset(len(x), n_train, SPLIT_SEED), _subset(len(x_test), n_val, SPLIT_SEED + 1)
    return x[train], y[train], x_test[val], y_test[val]


def _build(
    options: TaskOptions,
    name: str,
    model: Callable[[int, int], nn.Module],
    *,
    width: int,
    tiny_width: int,
    defaults: dict[str, Any],
    describe: str,
    train_subset: int = TRAIN_SUBSET,
) -> Task:
    x, y, x_val, y_val = split(options, train_subset)
    img_size = options.img_size or 32
    width = tiny_width if options.tiny else (options.width or width)
    val = "a fixed subset of the test split" if len(x_val) < 10_000 else "the test split"
    return Task(
        name=name,
        model=lambda: model(width, img_size),
        x_train=x,
        y_train=y,
        x_val=x_val,
        y_val=y_val,
        num_classes=10,
        prepare=make_prepare(img_size, options.augment),
        defaults=defaults,
        description=(
            f"CIFAR-10, {len(x)} train / {len(x_val)} validation images ({val}), {img_size} px, "
            f"{'crop+flip (practical)' if options.augment else 'no augmentation (paper)'}, mean = std = 0.5; "
            f"{describe} (width {width})"
        ),
    )


# Paper (AlexNet and FCN, Tables 6 and 12): SGD, batch 256, lr 0.05, cosine to 1e-3, 60 epochs.
SGD_DEFAULTS: dict[str, Any] = dict(
    epochs=60, lr=0.05, batch_size=256, optimizer="sgd", schedule="cosine", eta_min=1e-3, weight_decay=0.0
)


def build_fcn(options: TaskOptions) -> Task:
    return _build(
        options,
        "cifar10-fcn",
        lambda w, s: fcn(w),
        width=16,
        tiny_width=4,
        defaults=SGD_DEFAULTS,
        describe="FCN, 5 conv3x3-BN-ReLU-maxpool blocks + 1x1 conv + global pool (paper: width 64, 3.9M parameters)",
    )


def build_alexnet(options: TaskOptions) -> Task:
    return _build(
        options,
        "cifar10-alexnet",
        lambda w, s: AlexNet(w, img_size=s),
        width=16,
        tiny_width=2,
        defaults=SGD_DEFAULTS,
        describe="AlexNet, torchvision layout, 5x5/2 stem below 64 px (paper: width 64, 128 px, 57M parameters)",
    )


def build_resnet18(options: TaskOptions) -> Task:
    return _build(
        options,
        "cifar10-resnet18",
        lambda w, s: ResNet18(w),
        width=8,
        tiny_width=2,
        # Paper: ResNet-50 on ImageNet with SGD-momentum, lr 0.1 (App. A.10); the usual CIFAR weight decay.
        defaults=dict(SGD_DEFAULTS, lr=0.1, batch_size=128, optimizer="sgd-momentum", weight_decay=5e-4),
        describe="ResNet-18, CIFAR stem, torchvision layout (paper: ResNet-50 on ImageNet)",
        # Its 32x32 feature maps make it the slowest model per image: half the images keep an epoch short.
        train_subset=TRAIN_SUBSET // 2,
    )


def build_vit(options: TaskOptions) -> Task:
    depth, heads = (1, 2) if options.tiny else (4, 4)
    return _build(
        options,
        "cifar10-vit",
        lambda w, s: ViT(w, depth=depth, heads=heads, patch=max(1, s // 4), img_size=s),
        width=64,
        tiny_width=8,
        # Paper: ViT-Base/Huge on ImageNet with AdamW (Table 1).
        defaults=dict(SGD_DEFAULTS, lr=1e-3, batch_size=128, optimizer="adamw", eta_min=1e-5, weight_decay=0.05),
        describe=f"ViT, 4x4 patches of side img_size/4, {depth} pre-norm blocks, {heads} heads, dim = width "
        "(paper: ViT-Base/Huge on ImageNet)",
    )


TASKS = {
    "cifar10-fcn": build_fcn,
    "cifar10-alexnet": build_alexnet,
    "cifar10-resnet18": build_resnet18,
    "cifar10-vit": build_vit,
}
