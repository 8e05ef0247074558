"""The Hugging Face ``Trainer`` with ``PDTTrainerCallback`` on two CPU processes started by Accelerate's launcher.

``accelerate launch --multi_gpu --num_processes 2 --num_machines 1`` on a machine without GPUs:
Accelerate starts both ranks itself (through torchrun) and the ``Trainer`` (``use_cpu=True``) runs
DDP over gloo (Accelerate's ``MULTI_CPU``). ``--cpu --num_processes 2`` is not a multi-process
launch: without an ``mpirun`` hostfile Accelerate's simple launcher starts one process.

One launch, 10 to 25 s on a shared 2-core machine (two processes of 4 epochs each), so marked slow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distributed import free_port

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
psutil = pytest.importorskip("psutil")  # an Accelerate requirement
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_accelerate_worker.py")
WORLD = 2


def accelerate_launch(out: Path, timeout: float) -> subprocess.CompletedProcess:
    """``accelerate launch`` the worker on ``WORLD`` CPU processes; after ``timeout`` s kill the launcher and ranks."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),  # the ranks import this checkout's torch_pdt and tests/
        "OMP_NUM_THREADS": "1",  # one thread per rank: two ranks on a 2-core machine
        "HF_HOME": str(out / "hf"),  # no user's default Accelerate config (it would override the flags)
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(WORLD), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
        str(WORKER), str(out),
    ]  # fmt: skip
    # The launcher's own process group; torchrun starts each rank in a session of its own (not in that group).
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ranks = psutil.Process(proc.pid).children(recursive=True)
        for rank in ranks:  # the worker dumps every thread's stack on SIGUSR1: where it hangs
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.send_signal(signal.SIGUSR1)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        for rank in ranks:  # else they hang on, orphaned, holding the pipes communicate() reads
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"accelerate launch did not finish within {timeout} s (a rank hangs):\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_accelerate_launch_runs_distributed_pdt_in_the_hf_trainer(tmp_path):
    """Two gloo ranks for 4 epochs (10 to 25 s): the callback picks DistributedPDT, PDT predicts and accepts
    weights in the last epoch, and both ranks end with the same statistics and bit-identical weights."""
    done = accelerate_launch(tmp_path, timeout=240)
    files = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    assert done.returncode == 0 and all(f.exists() for f in files), done.stderr[-3000:]
    ranks = [torch.load(f, weights_only=False) for f in files]
    for r, result in enumerate(ranks):
        assert result["torch_pdt_file"] == str(Path(__file__).parents[1] / "torch_pdt" / "__init__.py")
        assert (result["pdt_type"], result["world_size"], result["rank"], result["backend"]) == (
            "DistributedPDT",
            WORLD,
            r,
            "gloo",
        )
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["wrapped"] == "DistributedDataParallel"
        assert result["epoch"] == 4
        assert result["last_stats"]["predicted"] and result["last_stats"]["accepted"] > 0
    assert ranks[0]["last_stats"] == ranks[1]["last_stats"]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]))
    # The Trainer's end-of-epoch checkpoints hold PDT's state beside them (written once, by rank 0).
    assert (tmp_path / "trainer" / "checkpoint-8" / "pdt.pt").exists()
