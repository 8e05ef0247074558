"""The harness's single run: every task and method trains a few epochs; runs are reproducible."""

import math

import pytest
import torch
from fake_data import write_agnews, write_cifar_pickles

from pdt_bench import methods, tasks
from pdt_bench.train import RunConfig, _batches, run

TINY = tasks.TaskOptions(tiny=True)
# h = 2, T0 = 1, Ti = 0: PDT predicts after epochs 2 and 3 of a 3-epoch run.
QUICK = dict(epochs=3, history=2, start_epoch=1, interval=0, task_options=TINY)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """Every dataset a task reads, tiny and fake, so that no task depends on ../shared."""
    root = tmp_path_factory.mktemp("data")
    write_cifar_pickles(root, per_batch=64)
    write_agnews(root / "ag_news_test.csv", rows_per_class=40)
    return tasks.TaskOptions(tiny=True, data_dir=root, cache_dir=root / "cache")


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_method_runs_on_a_tiny_task(method):
    r = run(RunConfig("mnist1d-mlp", method, **QUICK))
    assert [e["epoch"] for e in r["epochs"]] == [1, 2, 3]
    assert all(math.isfinite(e["train_loss"]) and 0 <= e["val_acc"] <= 1 for e in r["epochs"])
    times = [e["train_time"] for e in r["epochs"]]
    assert times == sorted(times) and times[0] > 0
    predicted = [bool(e["pdt"] and e["pdt"]["predicted"]) for e in r["epochs"]]
    if methods.METHODS[method].pdt is None:
        assert not any(predicted) and r["overhead"]["snapshot_bytes"] == 0
    elif methods.METHODS[method].switch_by_val_loss:
        assert not predicted[0]  # no validation trend yet
    else:
        assert predicted == [False, True, True]
        assert r["overhead"]["predictions"] == 2


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_every_task_trains_with_pdt(task, fake_data):
    r = run(RunConfig(task, "pdt", **(QUICK | {"task_options": fake_data})))
    assert not r["diverged"] and len(r["epochs"]) == 3
    assert r["epochs"][-1]["pdt"]["predicted"]
    assert r["overhead"]["model_flops_per_epoch"] > 0 and r["overhead"]["pdt_flops_per_prediction"] > 0
    assert set(r["param_types"]) == set(r["epochs"][-1]["pdt"]["accepted_ratio_per_param"])


def test_same_seed_same_numbers_other_seed_other_numbers():
    def curve(seed):
        r = run(RunConfig("mnist1d-mlp", "pdt", seed=seed, **QUICK))
        return [(e["train_loss"], e["val_acc"], e["pdt"]["accepted_ratio"]) for e in r["epochs"]]

    assert curve(0) == curve(0)
    assert curve(0) != curve(1)


def test_random_mask_is_seeded_by_the_run_seed():
    a = run(RunConfig("mnist1d-mlp", "random-mask", seed=3, **QUICK))
    b = run(RunConfig("mnist1d-mlp", "random-mask", seed=3, **QUICK))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]


def test_learning_rate_suffixes():
    assert methods.parse_method("baseline@lrx2").learning_rate(0.05) == pytest.approx(0.1)
    assert methods.parse_method("pdt@lr×4").learning_rate(0.05) == pytest.approx(0.2)
    assert methods.parse_method("pdt@lr=0.3").learning_rate(0.05) == 0.3
    r = run(RunConfig("mnist1d-mlp", "baseline@lrx2", lr=0.02, **QUICK))
    assert r["config"]["lr"] == pytest.approx(0.04)
    for bad in ("magic", "pdt@lr", "pdt@lrx", "pdt@momentum=2", "pdt@lr=fast"):
        with pytest.raises(ValueError):
            methods.parse_method(bad)


def test_non_iid_batches_hold_one_class_each_and_partial_batches_are_dropped():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1])  # class sizes 4, 3, 2
    batches = _batches(y, 2, True, 3, torch.Generator().manual_seed(0))
    assert all(len(set(y[b].tolist())) == 1 and len(b) == 2 for b in batches)
    # Class 0 gives two full batches, classes 1 and 2 one each; the odd element of class 1 is dropped.
    assert sorted(y[b[0]].item() for b in batches) == [0, 0, 1, 2]
    assert len(set(torch.cat(batches).tolist())) == 8
    iid = _batches(y, 2, False, 3, torch.Generator().manual_seed(0))
    assert [len(b) for b in iid] == [2, 2, 2, 2] and len(set(torch.cat(iid).tolist())) == 8
    assert [len(b) for b in _batches(y, 16, False, 3, torch.Generator())] == [9]  # smaller than one batch


def test_switch_by_val_loss_predicts_only_after_a_fall():
    r = run(RunConfig("mnist1d-mlp", "switch-by-val-loss", **(QUICK | {"epochs": 6})))
    rows = r["epochs"]
    for i, e in enumerate(rows):
        falling = i >= 2 and rows[i - 1]["val_loss"] < rows[i - 2]["val_loss"]
        if not falling:
            assert not e["pdt"]["predicted"]
            assert e["pdt"]["reason"] == "disabled by the caller"


def test_mask_file_marks_the_changed_elements(tmp_path):
    r = run(RunConfig("mnist1d-mlp", "pdt", mask_epoch=2, **QUICK), out_dir=tmp_path)
    saved = torch.load(tmp_path / "masks" / "pdt-seed0.pt")
    assert saved["epoch"] == 2
    accepted = sum(int(m.sum()) for m in saved["masks"].values())
    ratios = r["epochs"][1]["pdt"]["accepted_ratio_per_param"]
    assert set(saved["masks"]) <= set(ratios)
    for name, mask in saved["masks"].items():
        # An accepted prediction equal to the optimizer's value changes nothing, hence <=.
        assert int(mask.sum()) <= round(ratios[name] * mask.numel())
    assert accepted > 0


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown task"):
        run(RunConfig("imagenet", "pdt"))
    with pytest.raises(ValueError, match="unknown optimizer"):
        run(RunConfig("mnist1d-mlp", "baseline", optimizer="sgdd", **QUICK))
    with pytest.raises(ValueError, match="unknown schedule"):
        run(RunConfig("mnist1d-mlp", "baseline", schedule="step", **QUICK))
