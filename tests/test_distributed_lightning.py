"""Lightning's FSDP2 strategy (ModelParallelStrategy) with PDTCallback on two gloo CPU ranks: save and resume.

One launch, about 20 s on a loaded 2-core machine (three fits per rank), so marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed import free_port, launch

pytest.importorskip("lightning.pytorch")
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_lightning_worker.py")


def test_lightning_fsdp2_saves_and_resumes_pdt_bit_exactly(tmp_path):
    """A distributed checkpoint after 3 epochs, resumed to 6: each rank's shards and PDT's statistics are the
    uninterrupted run's, bit for bit (PDT's state rides in the checkpoint beside the model's shards)."""
    done = launch(tmp_path, timeout=240, worker=WORKER, args=(free_port(),))
    files = [tmp_path / f"rank{r}.pt" for r in range(2)]
    missing = [r for r, f in enumerate(files) if not f.exists()]
    assert not missing, done[missing[0]].stderr[-3000:]
    ranks = [torch.load(f, weights_only=False) for f in files]
    assert [r["uninterrupted"]["weights"][0].shape[0] for r in ranks] == [17, 16]  # FSDP2 shards of 33 rows
    for r in ranks:
        assert (r["epochs"], r["saved_epoch"], r["resumed_epochs"]) == (6, 3, 6)
        assert r["uninterrupted"]["stats"]["predicted"] and r["uninterrupted"]["stats"]["accepted"] > 0
        assert r["resumed"]["stats"] == r["uninterrupted"]["stats"]
        assert all(torch.equal(a, b) for a, b in zip(r["resumed"]["weights"], r["uninterrupted"]["weights"]))
    assert ranks[0]["resumed"]["stats"] == ranks[1]["resumed"]["stats"]
