"""Benchmark tasks: data loaders on tiny fake datasets, every model in tiny mode, clear errors."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_agnews, write_cifar_folder, write_cifar_pickles
from PIL import Image

from pdt_bench import tasks
from pdt_bench.tasks import DataMissing, TaskOptions, agnews, cifar10, simsiam

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CIFAR_TASKS = sorted(cifar10.TASKS)
AGNEWS_TASKS = sorted(agnews.TASKS)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar_pickles(tmp_path / "data")
    return tmp_path / "data"


def opts(root: Path, tmp_path: Path, **kw) -> TaskOptions:
    return TaskOptions(data_dir=root, cache_dir=tmp_path / "cache", **kw)


# --------------------------------------------------------------------------------------------
# CIFAR-10 loading


def test_cifar_reads_the_official_pickles(tmp_path):
    x, y = write_cifar_pickles(tmp_path)
    x_train, y_train, x_test, y_test = cifar10.load(tmp_path, tmp_path / "cache")
    assert x_train.dtype == torch.uint8 and x_train.shape == (40, 3, 32, 32) and x_test.shape == (8, 3, 32, 32)
    assert torch.equal(x_train, torch.from_numpy(x[:40])) and torch.equal(x_test, torch.from_numpy(x[40:]))
    assert y_train.tolist() == y[:40].tolist() and y_test.dtype == torch.int64
    assert not (tmp_path / "cache").exists(), "pickles load fast: no cache"


def test_cifar_reads_the_pickle_archive(tmp_path):
    write_cifar_pickles(tmp_path / "src")
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as t:
        t.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    expected = cifar10.load(tmp_path / "src", tmp_path / "cache")
    for a, b in zip(cifar10.load(tmp_path / "data", tmp_path / "cache"), expected):
        assert torch.equal(a, b)


def test_cifar_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    write_cifar_folder(tmp_path / "data" / "cifar10-jpg")
    x_train, y_train, x_test, y_test = cifar10.load(tmp_path / "data", tmp_path / "cache")
    assert x_train.shape == (6, 3, 32, 32) and x_test.shape == (6, 3, 32, 32)
    assert y_train.tolist() == [0, 0, 1, 1, 2, 2]  # label = index of the class name in CIFAR order
    png = np.array(Image.open(tmp_path / "data" / "cifar10-jpg" / "train" / "automobile" / "0001.png"))
    assert torch.equal(x_train[3], torch.from_numpy(png).permute(2, 0, 1))
    assert len(list((tmp_path / "cache" / "cifar10").glob("*.pt"))) == 1

    cifar10.load.cache_clear()

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cifar10, "_decode", no_decoding)
    again = cifar10.load(tmp_path / "data", tmp_path / "cache")
    assert all(torch.equal(a, b) for a, b in zip(again, (x_train, y_train, x_test, y_test)))


def test_cifar_reads_the_jpeg_archive_of_the_image_folders(tmp_path):
    write_cifar_folder(tmp_path / "src" / "cifar10-jpg", classes=10, per_class=1, suffix=".jpg")
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar10-jpg.tar.gz", "w:gz") as t:
        for split in ("train", "test"):
            t.add(tmp_path / "src" / "cifar10-jpg" / split, arcname=split)
    x_train, y_train, x_test, y_test = cifar10.load(tmp_path / "data", tmp_path / "cache")
    assert x_train.shape == (10, 3, 32, 32) and y_train.tolist() == list(range(10)) and len(y_test) == 10
    from_dir = cifar10.load(tmp_path / "src", tmp_path / "cache")
    assert torch.equal(x_train, from_dir[0]), "archive and directory decode to the same images"


def test_missing_cifar_names_what_to_provide(tmp_path):
    with pytest.raises(DataMissing) as e:
        tasks.build("cifar10-fcn", opts(tmp_path, tmp_path, tiny=True))
    message = str(e.value)
    for needed in (str(tmp_path), "cifar-10-batches-py", "cifar10-jpg", "train/<class>", "--data-dir", "PDT_DATA"):
        assert needed in message


def test_an_unknown_class_folder_is_an_error(tmp_path):
    write_cifar_folder(tmp_path / "cifar10-jpg", classes=1)
    (tmp_path / "cifar10-jpg" / "train" / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "cifar10-jpg" / "train" / "unicorn" / "0.png")
    with pytest.raises(ValueError, match="unicorn"):
        cifar10.load(tmp_path, tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# CIFAR-10 tasks


def test_cifar_batches_follow_the_paper_unless_augmented(cifar_root, tmp_path):
    task = tasks.build("cifar10-fcn", opts(cifar_root, tmp_path, tiny=True))
    assert task.x_train.dtype == torch.uint8 and len(task.x_train) == 40 and len(task.x_val) == 8
    assert task.defaults["epochs"] == 60 and "no augmentation (paper)" in task.description
    x = task.x_train[:16]
    val = task.prepare(x, False)
    assert val.dtype == torch.float32 and torch.equal(val, task.prepare(x, False))
    torch.testing.assert_close(val, x.float() / 127.5 - 1.0)  # the paper's mean = std = 0.5
    assert torch.equal(task.prepare(x, True), val)  # the paper does not augment
    practical = tasks.build("cifar10-fcn", opts(cifar_root, tmp_path, tiny=True, augment=True))
    assert "crop+flip (practical)" in practical.description
    torch.manual_seed(0)
    a = practical.prepare(x, True)
    torch.manual_seed(0)
    assert torch.equal(a, practical.prepare(x, True)) and not torch.equal(a, val)
    assert torch.equal(practical.prepare(x, False), val)
    big = tasks.build("cifar10-fcn", opts(cifar_root, tmp_path, tiny=True, img_size=48)).prepare(x, True)
    assert big.shape == (16, 3, 48, 48)


def test_augment_crops_a_shifted_window_and_may_flip():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32).expand(2, 3, 32, 32)
    torch.manual_seed(1)
    out = cifar10.augment(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_cifar_subsets_and_width_follow_the_options(cifar_root, tmp_path):
    task = tasks.build("cifar10-alexnet", opts(cifar_root, tmp_path, train_subset=12, width=4))
    assert len(task.x_train) == 12 and "width 4" in task.description
    full = tasks.build("cifar10-alexnet", opts(cifar_root, tmp_path, train_subset=10**6))
    assert len(full.x_train) == 40 and len(full.x_val) == 8, "the whole training split brings the whole test split"
    assert torch.equal(task.x_train, full.x_train[:12]), "subsets are prefixes of one fixed shuffle"


@pytest.mark.parametrize(
    "name, img_size",
    # 64 px: AlexNet switches to its 11x11 stride-4 stem and the ViT to 16-px patches.
    [(name, None) for name in CIFAR_TASKS] + [("cifar10-alexnet", 64), ("cifar10-vit", 64)],
)
def test_cifar_task_trains_one_step_in_tiny_mode(name, img_size, cifar_root, tmp_path):
    task = tasks.build(name, opts(cifar_root, tmp_path, tiny=True, img_size=img_size))
    assert set(task.defaults) >= {"epochs", "lr", "batch_size", "optimizer", "schedule", "eta_min", "weight_decay"}
    torch.manual_seed(0)
    model = task.model()
    x = task.prepare(task.x_train[:4], True)
    assert x.shape == (4, 3, img_size or 32, img_size or 32)
    out = model(x)
    assert out.shape == (4, 10)
    torch.nn.functional.cross_entropy(out, task.y_train[:4]).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 60_000, "tiny means tiny"


def test_paper_sized_models_have_the_papers_parameter_counts():
    with torch.device("meta"):
        assert sum(p.numel() for p in cifar10.fcn(64).parameters()) == 3_918_858
        assert sum(p.numel() for p in cifar10.AlexNet(64, img_size=128).parameters()) == 57_044_810
        assert sum(p.numel() for p in cifar10.ResNet18(64).parameters()) == 11_173_962
        lstm = agnews.LSTMClassifier(5000, 128, 512, 4)
        assert sum(p.numel() for p in lstm.parameters()) == 8_260_612


def test_alexnet_keeps_torchvisions_layer_names():
    names = {n for n, _ in cifar10.AlexNet(2, img_size=32).named_parameters()}
    assert names == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")} | {
        f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")
    }


# --------------------------------------------------------------------------------------------
# AG News


def test_tokenize_splits_agnews_line_breaks_and_entities():
    assert agnews.tokenize("A second\\team &lt;TXN.N&gt; isn't") == ["a", "second", "team", "txn", "n", "isn't"]


@pytest.mark.parametrize("name", AGNEWS_TASKS)
def test_agnews_task_from_a_fake_csv_trains_one_step(name, tmp_path):
    write_agnews(tmp_path / agnews.FILE)
    task = tasks.build(name, opts(tmp_path, tmp_path, tiny=True))
    assert len(task.x_train) + len(task.x_val) == 40 and len(task.x_val) == round(40 * 4 / 19)
    assert task.x_train.dtype == torch.int64 and task.num_classes == 4 and set(task.y_train.tolist()) <= {0, 1, 2, 3}
    assert (task.x_train[:, -1] != agnews.PAD).all(), "left padding: the last step is a word"
    model = task.model()
    out = model(task.x_train[:5])
    assert out.shape == (5, 4)
    torch.nn.functional.cross_entropy(out, task.y_train[:5]).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_agnews_vocabulary_comes_from_the_training_rows_only():
    vocab = agnews.build_vocab([["b", "a", "b"], ["a", "c"]], max_size=4, min_count=2)
    assert vocab == {"b": 2, "a": 3}
    ids = agnews.encode([["a", "zzz"], ["b", "a", "b", "c"]], vocab, max_len=3)
    assert ids.tolist() == [[agnews.PAD, 3, agnews.UNK], [2, 3, 2]]


def test_missing_agnews_names_the_file(tmp_path):
    with pytest.raises(DataMissing) as e:
        tasks.build("agnews-lstm", opts(tmp_path, tmp_path, tiny=True))
    for needed in (str(tmp_path / agnews.FILE), "--data-dir", "PDT_DATA"):
        assert needed in str(e.value)


# --------------------------------------------------------------------------------------------
# The shared data sets, when this checkout has them


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data sets at {SHARED}")


@needs_shared
def test_agnews_from_the_shared_csv():
    task = tasks.build("agnews-lstm", TaskOptions(data_dir=SHARED))
    assert (len(task.x_train), len(task.x_val)) == (6000, 1600)
    assert task.y_train.bincount().tolist() == pytest.approx([1500] * 4, abs=100)


@needs_shared
def test_cifar_from_the_shared_archive():
    """Decodes the archive into the default cache on the first run (about 10 s), then reads the cache."""
    task = tasks.build("cifar10-fcn", TaskOptions(data_dir=SHARED))
    assert (len(task.x_train), len(task.x_val)) == (cifar10.TRAIN_SUBSET, cifar10.VAL_SUBSET)
    assert task.y_val.bincount().min() > 150


# --------------------------------------------------------------------------------------------
# SimSiam


def test_simsiam_trains_one_step_and_evaluates_by_knn(cifar_root, tmp_path):
    task = tasks.build("simsiam", opts(cifar_root, tmp_path, tiny=True))
    torch.manual_seed(0)
    model = task.model()
    views = task.prepare(task.x_train[:8], True)
    assert views.shape == (8, 2, 3, 32, 32) and not torch.equal(views[:, 0], views[:, 1])
    loss = task.loss(model, views, task.y_train[:8])
    assert loss.shape == () and -1 <= loss.item() <= 1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    state = torch.get_rng_state()
    metrics = task.evaluate(model)
    assert torch.equal(state, torch.get_rng_state()) and model.training
    assert set(metrics) == {"accuracy", "loss"} and 0 <= metrics["accuracy"] <= 1
    assert metrics == task.evaluate(model), "evaluation is deterministic"


def test_knn_votes_by_similarity():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    queries = torch.tensor([[1.0, 0.05], [0.0, 1.0]])
    assert simsiam.knn_accuracy(bank, torch.tensor([0, 0, 1]), queries, torch.tensor([0, 1]), 2) == 1.0
