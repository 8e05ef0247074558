"""Crash safety: atomic checkpoint writes, and a training run killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_pdt import PDT, save_atomic

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "checkpointed_training.py"
EPOCHS = 8


def test_save_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the old checkpoint, intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def _train(directory: Path, batch_delay: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, str(SCRIPT), "--dir", str(directory), "--epochs", str(EPOCHS)]
    command += ["--batch-delay", str(batch_delay)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_mid_epoch_and_resumed_gives_bit_identical_weights(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = _train(uninterrupted)

    # Kill in the middle of epoch 4: its batches run, its checkpoint is not written yet.
    victim = _train(killed, batch_delay=0.02)
    for line in victim.stdout:
        if line.startswith("epoch 4 batch 5"):
            victim.send_signal(signal.SIGKILL)
            break
    assert victim.wait(timeout=120) == -signal.SIGKILL
    saved = torch.load(killed / "last.pt", weights_only=True)
    assert 3 <= saved["epoch"] < EPOCHS - 1 and not (killed / "final.pt").exists()

    resumed = _train(killed)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert f"resumed after epoch {saved['epoch']}" in out
    assert "rollbacks" in out and "predicted True" in out
    out, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, out

    expected = torch.load(uninterrupted / "final.pt", weights_only=True)
    got = torch.load(killed / "final.pt", weights_only=True)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_state_saved_by_the_code_before_core_v3_loads_and_continues_as_it_did():
    """``tests/data/pdt_state_63bc822.pt`` was written by main at 63bc822, in the earlier names (state key
    ``"schedule"``, option ``scheduler``), with::

        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        x, y = torch.randn(16, 3), torch.randn(16, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        pdt = PDT(opt, history=3, horizon=2, start_epoch=3, interval=0, model=model,
                  scheduler="adaptive", tolerance=0.5)
        # 5 epochs of 3 full-batch steps on the squared error, each ending in pdt.step(loss=last loss);
        # saved: pdt.state_dict(), model and optimizer state; then 2 more epochs: their statistics
        # and the model's state ("after").

    Loaded by today's code (:func:`torch_pdt.compat.upgrade`), the run continues with the same
    decisions, statistics (``"schedule"`` now ``"pacing"``) and weights.
    """
    saved = torch.load(Path(__file__).parent / "data" / "pdt_state_63bc822.pt", weights_only=True)
    assert "schedule" in saved["pdt"] and "scheduler" in saved["pdt"]["config"]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    model.load_state_dict(saved["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.load_state_dict(saved["optimizer"])
    pdt = PDT(opt, history=3, horizon=2, start_epoch=3, interval=0, model=model, pacing="adaptive", tolerance=0.5)
    pdt.load_state_dict(saved["pdt"])
    stats = []
    for _ in range(2):
        for _ in range(3):
            opt.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            opt.step()
        stats.append(pdt.step(loss=float(loss.detach())))
    expected = [{("pacing" if k == "schedule" else k): v for k, v in s.items()} for s in saved["after"]["stats"]]
    assert stats == expected and stats[-1]["accepted"] > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["after"]["model"][name]), name
