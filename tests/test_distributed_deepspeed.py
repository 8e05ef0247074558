"""DeepSpeedPDT on two gloo CPU ranks under ZeRO-3, against one process replaying the gathered fp32 weights.

Skips without DeepSpeed (``pip install 'torch-pdt[deepspeed]'``; not part of ``[test]``); the
refusal without it is tested always. One launch, about 25 s on a loaded 2-core machine (a minute with
a cold inductor cache, for the compiled run): slow.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from test_distributed import free_port, launch

from torch_pdt import PDT


def test_without_deepspeed_the_adapter_is_refused_in_one_line(monkeypatch):
    from torch_pdt.distributed.deepspeed import DeepSpeedPDT

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    monkeypatch.setitem(sys.modules, "deepspeed.utils", None)
    with pytest.raises(ImportError, match=r"^DeepSpeedPDT needs DeepSpeed: pip install 'torch-pdt\[deepspeed\]'$"):
        DeepSpeedPDT(object())


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed")
    from pathlib import Path

    out = tmp_path_factory.mktemp("zero3")
    worker = Path(__file__).with_name("distributed_deepspeed_worker.py")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    done = launch(out, timeout=240, worker=worker, args=(free_port(),))
    files = [out / f"rank{r}.pt" for r in range(2)]
    missing = [r for r, f in enumerate(files) if not f.exists()]
    assert not missing, done[missing[0]].stderr[-3000:]
    return [torch.load(f, weights_only=False) for f in files]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["persistent", "partitioned", "compiled"])
def test_zero3_predictions_are_the_single_process_predictions(ranks, layout):
    """Each rank snapshots its unpadded fp32 partitions (half the snapshot memory); one process replaying the
    gathered weights takes the same decisions and writes the same weights, and the engine computes with them.
    "compiled": every tensor partitioned, the compiled passes against the one process's eager ones."""
    import distributed_worker as worker

    runs = [r[layout] for r in ranks]
    assert runs[0]["stats"] == runs[1]["stats"]
    assert all(r["compiled"] == (layout == "compiled") for r in runs)
    model = worker.mlp(16, 33, 5)
    single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS)
    assert sum(r["snapshot_bytes"] for r in runs) == single.snapshot_bytes
    assert max(r["snapshot_bytes"] for r in runs) <= 0.51 * single.snapshot_bytes

    def whole(key: str, epoch: int) -> list[torch.Tensor]:
        return [torch.cat(parts) for parts in zip(*(r[key][epoch] for r in runs))]

    for epoch in range(worker.EPOCHS):
        with torch.no_grad():
            for p, value in zip(model.parameters(), whole("before", epoch)):
                p.copy_(value.view_as(p))
        mine, theirs = single.step(), runs[0]["stats"][epoch]
        assert (mine["predicted"], mine["accepted"]) == (theirs["predicted"], theirs["accepted"])
        after = whole("after", epoch)
        for a, b in zip(model.parameters(), after):
            torch.testing.assert_close(a.detach().reshape(-1), b, rtol=1e-6, atol=1e-7)
        # What the engine gathers for its next forward pass is what PDT wrote.
        assert all(torch.equal(a, b) for a, b in zip(after, runs[0]["gathered"][epoch]))
    assert sum(s["predicted"] for s in runs[0]["stats"]) == 6


@pytest.mark.slow
def test_zero3_refuses_what_it_cannot_do(ranks):
    refused = ranks[0]["persistent"]["refused"]
    assert refused["on_jump"] == "DeepSpeedPDT supports on_jump='keep' only (see torch_pdt.distributed.deepspeed)"
    assert refused["every_n_steps"].startswith("DeepSpeedPDT supports every_n_steps=None only")
    assert refused["pacing"].startswith("DeepSpeedPDT: pacing='adaptive'")
