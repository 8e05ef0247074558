"""The variants beyond the paper as harness methods: each trains a few epochs on tiny fake data."""

from __future__ import annotations

import json
import math

import pytest
from fake_data import write_cifar_pickles

from pdt_bench import tasks
from pdt_bench.methods import parse_method
from pdt_bench.train import RunConfig, run

QUICK = dict(epochs=3, history=2, start_epoch=1, interval=0, task_options=tasks.TaskOptions(tiny=True))


@pytest.mark.parametrize(
    "method, options",
    [
        ("pdt-layer", {"scope": "layer"}),
        ("pdt-graded", {"graded": True}),
        ("pdt-layer-graded", {"scope": "layer", "graded": True}),
    ],
)
def test_each_variant_trains_and_records_its_statistics(method, options):
    assert parse_method(method).pdt == {"criterion": "pdt"} | options
    r = run(RunConfig("mnist1d-mlp", method, **QUICK))
    assert not r["diverged"] and all(math.isfinite(e["train_loss"]) for e in r["epochs"])
    last = r["epochs"][-1]["pdt"]
    assert last["predicted"] and 0.0 <= last["accepted_ratio"] <= 1.0
    if options.get("scope") == "layer":
        assert set(last["layers"]) == set(last["accepted_ratio_per_param"]) and last["rejected"]["unfitted"] == 0
    if options.get("graded"):
        assert (
            len(last["accepted_per_horizon"]) == last["horizon"]
            and sum(last["accepted_per_horizon"]) == last["accepted"]
        )
    json.dumps(r)  # the record is JSON as it is


def test_fresh_batch_norm_changes_only_the_statistics_and_counts_their_cost(tmp_path):
    """Same weights as plain PDT (training normalises with batch statistics), other running statistics:
    the evaluated loss differs from the first accepted prediction on (the recomputation runs in PDT's timed step)."""
    write_cifar_pickles(tmp_path, per_batch=64)
    options = tasks.TaskOptions(tiny=True, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    plain, fresh = (
        run(RunConfig("cifar10-fcn", m, **(QUICK | {"task_options": options}))) for m in ("pdt", "pdt-fresh-bn")
    )
    assert [e["batch_loss"] for e in plain["epochs"]] == [e["batch_loss"] for e in fresh["epochs"]]
    jumped = [e["pdt"]["predicted"] and e["pdt"]["accepted"] > 0 for e in fresh["epochs"]]
    assert jumped == [False, True, True]
    assert fresh["epochs"][0]["train_loss"] == plain["epochs"][0]["train_loss"]
    assert all(f["train_loss"] != p["train_loss"] for f, p in zip(fresh["epochs"][1:], plain["epochs"][1:]))
