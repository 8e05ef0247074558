"""One rank of the Accelerate launcher test (run by tests/test_distributed_accelerate.py through ``accelerate launch``).

``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --main_process_port PORT
tests/distributed_accelerate_worker.py OUT_DIR``: Accelerate's launcher starts the two processes
(torchrun underneath) and sets ``RANK``/``WORLD_SIZE``; the Hugging Face ``Trainer`` of
tests/test_integrations.py (``hf_trainer``: a one-layer GPT-2, ``use_cpu=True``) then wraps the
model in DDP over gloo, and ``PDTTrainerCallback`` picks ``DistributedPDT``. Writes what the test
checks to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import torch
import torch.distributed as dist
from test_integrations import PDT_ARGS, hf_trainer

import torch_pdt

EPOCHS = 4
# The test sends SIGUSR1 to a rank that outlives its timeout: every thread's stack goes to stderr.
faulthandler.register(signal.SIGUSR1, all_threads=True)


def main() -> None:
    out_dir = sys.argv[1]
    trainer, callback = hf_trainer(os.path.join(out_dir, "trainer"), epochs=EPOCHS)
    trainer.train()
    pdt = callback.pdt
    out = {
        "pdt_type": type(pdt).__name__,
        "pdt_module": type(pdt).__module__,
        "torch_pdt_file": torch_pdt.__file__,
        "pdt_args": PDT_ARGS,
        "world_size": dist.get_world_size(),
        "rank": dist.get_rank(),
        "backend": dist.get_backend(),
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "epoch": pdt.epoch,
        "last_stats": pdt.last_stats,
        "weights": [p.detach().clone() for p in trainer.model.parameters()],
    }
    rank = dist.get_rank()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()  # a gloo rank that exits with its group alive may abort (docs/distributed.md)
    # The Trainer's threads can still abort the interpreter's teardown ("terminate called without an active
    # exception", SIGABRT, about 1 launch in 10 here) after everything is saved: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
