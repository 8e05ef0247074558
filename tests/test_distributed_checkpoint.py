"""DistributedPDT through torch.distributed.checkpoint: bit-exact on the same world size, resharded 2 -> 1 and 1 -> 2.

Three launches (one process, two gloo ranks under FSDP2, one process) share one directory of
checkpoints; about 15 s on a loaded 2-core machine, so marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import launch

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("distributed_checkpoint_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_checkpoint_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """Every mode's results, by mode, one dict per rank."""
    out = tmp_path_factory.mktemp("dcp")
    results = {}
    for mode, world in (("single-save", 1), ("sharded", 2), ("single-resume", 1)):
        done = launch(out, timeout=150, worker=WORKER, args=(mode,), world=world)
        files = [out / f"{mode}-rank{r}.pt" for r in range(world)]
        missing = [r for r, f in enumerate(files) if not f.exists()]
        assert not missing, done[missing[0]].stderr[-3000:]
        results[mode] = [torch.load(f, weights_only=False) for f in files]
    return results


def decisions(stats: list[dict]) -> list[tuple[bool, int]]:
    return [(s["predicted"], s["accepted"]) for s in stats]


def gathered(ranks: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Whole flat tensors from the ranks' flat local shards (FSDP2 shards dim 0: rank 0's rows first)."""
    return [torch.cat(parts, dim=-1) for parts in zip(*ranks)]


def test_resume_on_the_same_world_size_is_bit_exact(runs):
    """1 -> 1 and 2 -> 2: the same weights and statistics as the uninterrupted run, bit for bit."""
    start = worker.SAVE_AT + 1
    for mode in ("single-save", "sharded"):
        for r in runs[mode]:
            run, resumed = r["run"], r["resumed"]
            assert resumed["loaded"]["epoch"] == start
            # The Gram matrix replayed from the snapshots is the one the run had built step by step.
            assert torch.equal(resumed["loaded"]["local_gram"], run["saved_gram"])
            assert resumed["stats"] == run["stats"][start:]
            for a, b in zip(resumed["after"], run["after"][start:]):
                assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sum(s["predicted"] for s in runs["sharded"][0]["run"]["stats"]) == 6


@pytest.mark.parametrize(
    "saved, loaded, key", [("sharded", "single-resume", "from_two"), ("single-save", "sharded", "from_one")]
)
def test_resume_on_another_world_size_reshards_the_snapshots(runs, saved, loaded, key):
    """2 -> 1 and 1 -> 2: each rank holds the rows of its new shard, exactly; the Gram of the whole model
    agrees to float64 rounding; the rest of the run takes the same decisions as the uninterrupted one."""
    start = worker.SAVE_AT + 1
    before = [r["resumed"]["loaded"] for r in runs[saved]]  # the saving run's state, as its own world loaded it
    after = [r[key]["loaded"] for r in runs[loaded]]
    rows_before, rows_after = (gathered([s["snapshots"] for s in states]) for states in (before, after))
    assert all(torch.equal(a, b) for a, b in zip(rows_before, rows_after))
    reference = before[0]["gram"]
    for state in after:
        assert (state["gram"] - reference).abs().max() <= 1e-14 * reference.abs().max()
        assert state["epoch"] == start
    uninterrupted = runs[saved][0]["run"]["stats"][start:]
    for r in runs[loaded]:
        assert decisions(r[key]["stats"]) == decisions(uninterrupted)
    # Training on the other world size sums the gradients in another order: float32 rounding only.
    for epoch in range(worker.EPOCHS - start):
        mine = gathered([r[key]["after"][epoch] for r in runs[loaded]])
        theirs = gathered([r["run"]["after"][start + epoch] for r in runs[saved]])
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_per_rank_files_without_the_ranks_entry_still_load_and_hand_sharded_pdt_is_refused(tmp_path):
    """A state saved before the ``ranks`` entry existed (or by PDT) loads into DistributedPDT; DCPState needs a
    global layout, which hand-sharded parameters lack."""
    import torch.distributed.checkpoint as dcp

    from torch_pdt import PDT
    from torch_pdt.distributed import DistributedPDT
    from torch_pdt.distributed.dcp import DCPState

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = worker.mlp(16, 33, 5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pdt = DistributedPDT(opt, **worker.PDT_ARGS)
        x, y = worker.data(16, 5)
        for _ in range(4):
            worker.train_epoch(model, opt, x, y, 0, 1)
            pdt.step()
        state = pdt.state_dict()
        assert state.pop("ranks")["world_size"] == 1
        torch.save(state, tmp_path / "old.pt")
        resumed = DistributedPDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS)
        resumed.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
        assert resumed.epoch == 4 and torch.equal(resumed._history.gram(), pdt._history.gram())
        # DCP beside a plain PDT of the same run: the same snapshots and Gram, bit for bit.
        dcp.save({"pdt": DCPState(pdt)}, checkpoint_id=tmp_path / "dcp")
        single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS)
        dcp.load({"pdt": DCPState(single)}, checkpoint_id=tmp_path / "dcp")
        assert torch.equal(single._history.grams(), pdt._history.grams())
        with pytest.raises(ValueError, match="hand-sharded PDT"):
            DCPState(DistributedPDT(torch.optim.SGD(model.parameters()), **worker.PDT_ARGS, sharded=True))
        other = PDT(torch.optim.SGD(list(model.parameters())[:2], lr=0.1), **worker.PDT_ARGS)
        with pytest.raises(ValueError, match="other parameters"):
            dcp.load({"pdt": DCPState(other)}, checkpoint_id=tmp_path / "dcp")
        assert other.epoch == 0
    finally:
        dist.destroy_process_group()
