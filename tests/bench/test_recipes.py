"""The modern-recipe tasks on tiny fake data: they train, follow their recipe, and name missing data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_data import write_agnews, write_cifar_pickles

from pdt_bench import tasks
from pdt_bench.tasks import DataMissing, TaskOptions, agnews, recipes
from pdt_bench.train import RunConfig, _loss, run


def _agnews_options(tmp_path: Path) -> TaskOptions:
    write_agnews(tmp_path / agnews.FILE)
    return TaskOptions(data_dir=tmp_path, tiny=True)


def _cifar_options(tmp_path: Path) -> TaskOptions:
    write_cifar_pickles(tmp_path / "data")
    return TaskOptions(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", tiny=True)


def test_recipe_tasks_are_registered_with_their_protocol():
    assert set(recipes.TASKS) <= set(tasks.TASKS)
    assert recipes.PROTOCOL in tasks.protocols()
    assert "cifar10-resnet-recipe" not in tasks.AUGMENTABLE  # it always augments: --augment would be a no-op


def test_transformer_masks_padding_and_survives_an_empty_text():
    torch.manual_seed(0)
    model = recipes.TransformerClassifier(vocab_size=20, dim=8, heads=2, layers=1, max_len=6).eval()
    text = torch.tensor([[0, 0, 0, 5, 6, 7]])
    # Padding is masked: more padding in front of the same words changes nothing but the positions,
    # so with the positions zeroed the logits are those of the text alone.
    model.pos_embedding.data.zero_()
    short = recipes.TransformerClassifier(vocab_size=20, dim=8, heads=2, layers=1, max_len=3).eval()
    short.load_state_dict({k: v[:, :3] if k == "pos_embedding" else v for k, v in model.state_dict().items()})
    torch.testing.assert_close(model(text), short(text[:, 3:]))
    assert torch.isfinite(model(torch.zeros(2, 6, dtype=torch.int64))).all()


def test_agnews_transformer_trains_on_a_fake_csv(tmp_path):
    r = run(RunConfig("agnews-transformer", "baseline", epochs=2, task_options=_agnews_options(tmp_path)))
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    assert r["config"]["optimizer"] == "adamw" and r["config"]["schedule"] == "warmup-cosine"
    assert r["epochs"][-1]["lr"] == pytest.approx(recipes.TRANSFORMER_DEFAULTS["eta_min"])  # annealed per step
    assert "transformer encoder" in r["config"]["task_description"]


def test_resnet_recipe_augments_smooths_labels_and_cycles_the_rate(tmp_path):
    task = tasks.build("cifar10-resnet-recipe", _cifar_options(tmp_path))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in task.model().modules())
    x = task.x_train[:8]
    torch.manual_seed(0)
    assert not torch.equal(task.prepare(x, True), task.prepare(x, True))  # crop + flip on training batches
    assert torch.equal(task.prepare(x, False), task.prepare(x, False))
    torch.manual_seed(0)
    model, inputs, y = task.model(), task.prepare(x, False), task.y_train[:8]
    smoothed = torch.nn.functional.cross_entropy(model(inputs), y, label_smoothing=recipes.LABEL_SMOOTHING)
    torch.testing.assert_close(_loss(task, model, inputs, y), smoothed)
    options = _cifar_options(tmp_path / "again")
    config = RunConfig("cifar10-resnet-recipe", "pdt", epochs=3, batch_size=8, history=2, start_epoch=1)
    r = run(replace(config, task_options=options))
    lrs = [e["lr"] for e in r["epochs"]]
    assert r["config"]["optimizer"] == "sgd-nesterov"
    # 5 steps an epoch, 15 in all, peak 0.1 at step 4: stepped per step, the rate is near its peak after
    # epoch 1 (per epoch it would still be 0.022) and well down the cycle after epoch 2.
    assert lrs[0] > 0.09 and lrs[1] < 0.04 and lrs[2] < 0.01
    assert "crop+flip" in r["config"]["task_description"]


@pytest.mark.parametrize("name", sorted(recipes.TASKS))
def test_recipe_tasks_name_missing_data(name, tmp_path):
    with pytest.raises(DataMissing, match="--data-dir"):
        tasks.build(name, TaskOptions(data_dir=tmp_path, cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("method", ["pdt-schedule-free@point=train", "pdt-lawa@k=2"])
def test_stacked_methods_run_on_the_batch_norm_recipe(method, tmp_path):
    config = RunConfig("cifar10-resnet-recipe", method, epochs=3, batch_size=8, history=2, start_epoch=1)
    r = run(replace(config, task_options=_cifar_options(tmp_path)))
    assert len(r["epochs"]) == 3 and all(e["train_loss"] == e["train_loss"] for e in r["epochs"])  # no NaN
    assert sum(e["pdt"]["predicted"] for e in r["epochs"]) >= 1
