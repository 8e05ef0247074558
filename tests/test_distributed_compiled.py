"""DistributedPDT with the compiled passes on two CPU processes (gloo): DDP and FSDP2 against the eager
passes and one process, and a compiled pass that fails on one rank only.

One launch for every check (the worker compiles each pass once per process and reuses it):
about 50 s on a loaded 2-core machine with a cold inductor cache (35 s warm), most of it compiling: marked slow.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import WORLD, launch

from torch_pdt import kernel

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
if not kernel.compiles(torch.device("cpu")):
    pytest.skip("torch.compile has no C++ compiler here", allow_module_level=True)

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("distributed_compiled_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("compiled")
    runs = launch(out, timeout=540, worker=WORKER)
    missing = [r for r in range(WORLD) if not (out / f"rank{r}.pt").exists()]
    assert not missing, runs[missing[0]].stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def bound(numel: int) -> int:
    """Elements whose decisions may differ between the compiled and the eager pass (kernel.DECISION_BOUND)."""
    return math.floor(kernel.DECISION_BOUND * numel)


def moved(before: list[torch.Tensor], after: list[torch.Tensor]) -> torch.Tensor:
    """Which elements the step wrote (the accepted ones), flat over the model."""
    return torch.cat([a != b for a, b in zip(after, before)])


def gather(results: list[dict], scenario: str, key: str) -> list[list[torch.Tensor]]:
    """Whole flat parameters per epoch from the ranks' FSDP2 shards (dim 0, rank 0 first)."""
    epochs = len(results[0][scenario][key])
    return [[torch.cat(parts) for parts in zip(*(r[scenario][key][e] for r in results))] for e in range(epochs)]


def check_decisions(stats: list[dict], before, after, single: dict, numel: int) -> None:
    """The same predictions as one process replaying the same weights; the elements written differ in at
    most ``bound(numel)`` per step, and so do the accepted counts, per parameter too."""
    assert [s["predicted"] for s in stats] == [s["predicted"] for s in single["stats"]] == [False] * 2 + [True] * 6
    for epoch, (mine, theirs) in enumerate(zip(stats, single["stats"])):
        differ = moved(before[epoch], after[epoch]) ^ moved(before[epoch], single["after"][epoch])
        assert int(differ.sum()) <= bound(numel), epoch
        assert abs(mine.get("accepted", 0) - theirs.get("accepted", 0)) <= bound(numel)
        for name, ratio in mine["accepted_ratio_per_param"].items():
            assert abs(ratio - theirs["accepted_ratio_per_param"][name]) <= max(bound(numel), 0.5) / numel
        for a, b in zip(after[epoch], single["after"][epoch]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ddp_compiled_decides_as_the_eager_passes_and_one_process(results):
    ranks = [r["ddp_compiled"] for r in results]
    assert all(r["compiled"] and r["error"] is None for r in ranks)  # compiled to the end, verify=True held
    assert ranks[0]["stats"] == ranks[1]["stats"]
    numel = ranks[0]["stats"][0]["numel"]
    for single in results[0]["ddp_single"].values():
        check_decisions(ranks[0]["stats"], ranks[0]["before"], ranks[0]["after"], single, numel)
    # The eager DistributedPDT trains its own trajectory: the same decisions, the weights within rounding.
    eager = results[0]["ddp_eager"]
    assert not eager["compiled"]
    for mine, theirs in zip(ranks[0]["stats"], eager["stats"]):
        assert abs(mine.get("accepted", 0) - theirs.get("accepted", 0)) <= bound(numel)
    for a, b in zip(ranks[0]["after"][-1], eager["after"][-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A replicated step: the step gather and one vote per compiled pass (snapshot, then prediction).
    assert ranks[0]["kinds"][-1] == ["step", "kernel", "kernel", "verify"]


def test_fsdp2_compiled_decides_as_the_eager_passes_and_one_process(results):
    """Local shards through the compiled passes, the Gram summed over the ranks, and the per-parameter
    counts reduced as the eager pass's: the statistics of the whole model."""
    ranks = [r["fsdp_compiled"] for r in results]
    assert all(r["compiled"] and r["error"] is None for r in ranks)
    assert ranks[0]["stats"] == ranks[1]["stats"]
    numel = ranks[0]["stats"][0]["numel"]
    before, after = gather(results, "fsdp_compiled", "before"), gather(results, "fsdp_compiled", "after")
    for single in results[0]["fsdp_single"].values():
        check_decisions(ranks[0]["stats"], before, after, single, numel)
    eager = [r["fsdp_eager"] for r in results]
    assert eager[0]["stats"] == eager[1]["stats"] and not eager[0]["compiled"]
    for mine, theirs in zip(ranks[0]["stats"], eager[0]["stats"]):
        assert abs(mine.get("accepted", 0) - theirs.get("accepted", 0)) <= bound(numel)
    assert ranks[0]["kinds"][-1] == ["step", "kernel", "gram", "kernel", "counts"]


def test_one_rank_without_a_compiler_puts_every_rank_on_the_eager_passes(results):
    assert [r["auto_no_compiler"]["compiled"] for r in results] == [False, False]


def test_auto_a_pass_that_fails_on_one_rank_makes_every_rank_go_eager_together(results):
    """kernel='auto': rank 1's prediction pass fails at the first prediction (DDP), its snapshot pass a step
    later (FSDP2); every rank runs eager from there, and decides as the run that never failed."""
    scenarios = (("auto_ddp_predict_fails", "ddp_compiled"), ("auto_fsdp_snapshot_fails", "fsdp_compiled"))
    for scenario, compiled in scenarios:
        ranks = [r[scenario] for r in results]
        assert all(not r["compiled"] and r["error"] is None for r in ranks)  # DDP: verify=True held every step
        assert ranks[0]["stats"] == ranks[1]["stats"]
        reference = results[0][compiled]["stats"]
        numel = reference[0]["numel"]
        for mine, theirs in zip(ranks[0]["stats"], reference):
            assert mine["predicted"] == theirs["predicted"]
            assert abs(mine.get("accepted", 0) - theirs.get("accepted", 0)) <= bound(numel)


def test_compiled_a_pass_that_fails_on_one_rank_raises_on_every_rank_at_once(results):
    for scenario, what, epoch in (
        ("compiled_ddp_predict_fails", "prediction pass", 2),
        ("compiled_fsdp_snapshot_fails", "snapshot pass", 3),
    ):
        for rank, r in enumerate(results):
            error = r[scenario]["error"]
            mine = "RuntimeError: injected" if rank == 1 else "see its error"
            assert error["message"] == f"PDT's compiled {what} failed on rank(s) [1] ({mine})"
            assert error["epoch"] == epoch and error["seconds"] < 5  # at once, not at the group's timeout
