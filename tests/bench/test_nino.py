"""The NiNo peer: one-line refusals (no extra, no checkout, no checkpoint), a study that continues where
it stopped, Adam and PDT on NiNo's C10-16 task from its own ``utils/vision.py`` on fake CIFAR-10, and
NiNo's and WNN+'s nowcasts where its imports are installed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from fake_data import write_cifar_pickles

from pdt_bench import nino, tasks

SHARED_NINO = Path(__file__).resolve().parents[3] / "shared" / "third_party" / "nino"
needs_nino = pytest.mark.skipif(not (SHARED_NINO / "utils" / "vision.py").is_file(), reason="no NiNo checkout")
FAKE_VISION = """
import torch.nn as nn

VISION_TASKS = {"C10-16": {"net_args": {"hid": 4}, "dataset": "CIFAR10", "norm": ((0.5,) * 3, (0.25,) * 3),
                           "lr": 0.003, "target": 66.0}}


class Net(nn.Sequential):
    def __init__(self, hid):
        super().__init__(nn.Conv2d(3, hid, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(hid, 10))
"""
"""A stand-in for NiNo's ``utils/vision.py``: its task table and model, small, with no NiNo checkout."""


def _checkout(tmp_path: Path) -> Path:
    """A stand-in checkout with the files :func:`nino.check` looks for (their content is never read)."""
    (tmp_path / "utils").mkdir(parents=True)
    (tmp_path / "utils" / "vision.py").write_text("")
    (tmp_path / "checkpoints").mkdir()
    for name in nino.CHECKPOINTS.values():
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("method", ["nino", "wnn+"])
def test_without_the_peers_extra_nino_is_refused_in_one_line(method, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # import torch_geometric now fails, as uninstalled
    with pytest.raises(nino.Unavailable) as refused:
        nino.check(method, _checkout(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and "torch_geometric" in message and "torch-pdt[peers]" in message
    nino.check("adam", tmp_path)  # Adam and PDT need the checkout only
    nino.check("pdt@every_n_steps=50", tmp_path)


def test_without_a_checkout_or_a_checkpoint_the_peer_is_refused_in_one_line(tmp_path):
    with pytest.raises(nino.Unavailable, match="no NiNo checkout at .* --nino-path") as refused:
        nino.check("adam", tmp_path / "nowhere")
    assert "\n" not in str(refused.value)
    checkout = _checkout(tmp_path)
    (checkout / "checkpoints" / nino.CHECKPOINTS["wnn+"]).unlink()
    if not nino._missing_modules():  # with the extra, the missing checkpoint is what is named
        with pytest.raises(nino.Unavailable, match="nino_mlp.pt"):
            nino.check("wnn+", checkout)
    for bad in ["sgd", "nino@k=3", "pdt@lr=0.1", "pdt@nope=1"]:
        with pytest.raises(ValueError):
            nino.check(bad, checkout)


def test_the_command_refuses_before_running_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    out = tmp_path / "out"
    assert nino.main(["--methods", "adam,nino", "--nino-path", str(_checkout(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("NiNo peer refused: nino needs") and not out.exists()


@pytest.fixture
def fake_cifar(tmp_path: Path) -> tasks.TaskOptions:
    write_cifar_pickles(tmp_path / "data", per_batch=24)  # 120 training images, 24 test images
    return tasks.TaskOptions(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


@needs_nino
def test_c10_16_is_ninos_three_layer_convnet():
    task = nino.vision(SHARED_NINO).VISION_TASKS["C10-16"]
    model = nino.vision(SHARED_NINO).Net(**task["net_args"])
    # conv 3->16 (3x3) + conv 16->32 + conv 32->32 + linear 32->10, with biases, counted by hand.
    assert sum(p.numel() for p in model.parameters()) == (27 * 16 + 16) + (144 * 32 + 32) + (288 * 32 + 32) + 330
    assert (task["lr"], task["target"]) == (0.003, 66.0)


@needs_nino
def test_adam_and_pdt_train_on_the_same_batches_and_stop_at_the_target(fake_cifar):
    common = dict(task="C10-16", max_steps=12, batch_size=16, eval_every=3, nino=SHARED_NINO, data=fake_cifar)
    adam = nino.run(nino.NiNoConfig(method="adam", target=101.0, **common))
    assert [p["step"] for p in adam["curve"]] == [3, 6, 9, 12] and adam["steps_to_target"] is None
    assert adam["config"]["train_images"] == 120 - 10  # NiNo's 11/12 of the training split
    assert "not reached" in nino.describe(adam)
    # PDT that never predicts (its first prediction after the run) leaves Adam's trajectory as it was.
    idle = nino.run(nino.NiNoConfig(method="pdt@every_n_steps=2@start_epoch=99", target=101.0, **common))
    assert idle["curve"] == adam["curve"]
    predicting = nino.run(nino.NiNoConfig(method="pdt@every_n_steps=2@history=2@start_epoch=2", target=101.0, **common))
    assert predicting["curve"] != adam["curve"]
    # A target the first evaluation meets stops the run there.
    reached = nino.run(nino.NiNoConfig(method="adam", target=0.0, **common))
    assert reached["steps_to_target"] == 3 and len(reached["curve"]) == 1


def _study(tmp_path: Path, monkeypatch, max_steps: int) -> tuple[Path, list[str]]:
    """A stand-in NiNo checkout and CIFAR-10 under ``tmp_path``; the study's --out and its command."""
    checkout = _checkout(tmp_path / "nino")
    (checkout / "utils" / "vision.py").write_text(FAKE_VISION)
    write_cifar_pickles(tmp_path / "data", per_batch=24)
    monkeypatch.setenv("PDT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    return out, [
        "--methods",
        "adam",
        "--max-steps",
        str(max_steps),
        "--eval-every",
        "2",
        "--nino-path",
        str(checkout),
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
    ]


def test_the_command_continues_a_study_and_refuses_a_record_of_other_options(tmp_path, monkeypatch, capsys):
    out, command = _study(tmp_path, monkeypatch, max_steps=4)
    assert nino.main(command) == 0
    record = out / "C10-16-adam-seed0.json"
    first = record.read_text()
    assert [p["step"] for p in nino.records.load_run(record)["curve"]] == [2, 4]
    capsys.readouterr()
    assert nino.main(command) == 0  # the finished run is read back, not run again
    printed = capsys.readouterr().out
    assert "in 4 steps (stored)\n| method |" in printed and record.read_text() == first
    assert (out / "report.md").read_text().count("| `adam` |") == 1  # the table over --out, in its report
    assert nino.main([*command, "--max-steps", "6"]) == 2  # refused before anything runs
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ran with other max_steps" in err and "--rerun" in err
    assert record.read_text() == first
    assert nino.main([*command, "--max-steps", "6", "--rerun"]) == 0
    assert nino.records.load_run(record)["curve"][-1]["step"] == 6


def test_a_damaged_record_in_out_is_refused_in_one_line_or_left_out_of_the_table(tmp_path, monkeypatch, capsys):
    out, command = _study(tmp_path, monkeypatch, max_steps=2)
    out.mkdir()
    record = out / "C10-16-adam-seed0.json"
    # Truncated (was a message naming no file), a list or no config (were tracebacks).
    for damaged in ('{"config": {"task"', "[1, 2]", '{"curve": []}'):
        record.write_text(damaged)
        assert nino.main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(record) in err and "not a readable run record" in err and "--rerun" in err
        assert record.read_text() == damaged
    other = out / "C10-16-adam-seed1.json"  # another seed's record, damaged: the table was a traceback
    other.write_text('{"config"')
    assert nino.main([*command, "--rerun"]) == 0
    assert str(other) in capsys.readouterr().err and (out / "report.md").read_text().count("| `adam` |") == 1


def test_pdt_bench_nino_is_the_same_command(tmp_path, monkeypatch, capsys):
    from pdt_bench import cli

    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    assert cli.main(["nino", "--methods", "wnn+", "--nino-path", str(_checkout(tmp_path))]) == 2
    assert capsys.readouterr().err.startswith("NiNo peer refused: wnn+ needs")


@needs_nino
@pytest.mark.skipif(bool(nino._missing_modules()), reason="NiNo's imports (the [peers] extra) are not installed")
def test_nino_and_wnn_nowcast_from_their_checkpoints(fake_cifar):
    # A state every step (period 5 / ctx 5), so the first nowcast replaces step 5's update.
    common = dict(
        task="C10-16",
        max_steps=10,
        period=5,
        batch_size=16,
        eval_every=5,
        target=101.0,
        nino=SHARED_NINO,
        data=fake_cifar,
    )
    adam = nino.run(nino.NiNoConfig(method="adam", **common))
    for method in ("nino", "wnn+"):
        nowcast = nino.run(nino.NiNoConfig(method=method, **common))
        assert [p["step"] for p in nowcast["curve"]] == [5, 10]
        assert nowcast["curve"][0] != adam["curve"][0]
        assert all(math.isfinite(p["val_loss"]) for p in nowcast["curve"])


def test_table_counts_steps_to_the_target_and_to_adams_best_of_the_same_seed():
    from pdt_bench.nino import table

    def result(method, seed, accs, reached=None):
        curve = [{"step": 100 * (i + 1), "val_loss": 1.0, "val_acc": a} for i, a in enumerate(accs)]
        return {
            "task": "C10-16",
            "method": method,
            "seed": seed,
            "target": 66.0,
            "steps_to_target": reached,
            "best_acc": max(accs),
            "seconds": 1.0,
            "curve": curve,
            "config": {},
        }

    results = [
        result("adam", 0, [50, 60, 62, 61]),  # best 62 at step 300
        result("adam", 1, [50, 64, 63, 63]),  # best 64 at step 200
        result("nino", 0, [55, 62, 66], reached=300),  # 62 at step 200, the target at 300
        result("nino", 1, [55, 63, 63, 62]),  # never 64: a miss on seed 1
    ]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in table(results).splitlines()]
    assert cells[0] == ["method", "seeds", "steps to 66 %", "steps to adam's best", "best acc %", "final acc %"]
    assert cells[2] == ["`adam`", "2", "n/r 0/2", "250 (200–300) 2/2", "63.00", "62.00"]
    # the seed that got there shows in the range, as in every table of the harness
    assert cells[3] == ["`nino`", "2", "n/r (300–n/r) 1/2", "n/r (200–n/r) 1/2", "64.50", "64.00"]
