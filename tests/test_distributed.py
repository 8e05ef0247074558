"""DistributedPDT on two CPU processes (gloo): DDP, FSDP2 with uneven shards, agreement, and faults.

Every launch has a hard timeout, so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from torch_pdt import PDT

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)  # the model and PDT settings the ranks use
WORLD = 2


def free_port() -> str:
    """A TCP port free on this machine now, for a launch's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(
    out: Path, timeout: float, worker: Path = WORKER, args: tuple[str, ...] = (), world: int = WORLD
) -> list[subprocess.CompletedProcess]:
    """Run ``worker`` (with ``args``, then ``out``) on ``world`` processes; kill them all after ``timeout`` seconds."""
    # One thread per rank: WORLD processes with a thread per core each would oversubscribe the CPU.
    env = {**os.environ, "WORLD_SIZE": str(world), "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), *args, str(out)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks did not finish within {timeout} s (a rank hangs)")
    finally:
        for p in procs:
            p.kill()
    return done


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[list[subprocess.CompletedProcess], list[dict]]:
    """One launch for every scenario (a launch costs seconds); the ranks' exits and saved results."""
    out = tmp_path_factory.mktemp("ranks")
    runs = launch(out, timeout=150)
    missing = [r for r in range(WORLD) if not (out / f"rank{r}.pt").exists()]
    assert not missing, runs[missing[0]].stderr[-3000:]
    return runs, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def results(launched) -> list[dict]:
    return launched[1]


def predicted(stats: list[dict]) -> list[bool]:
    return [s["predicted"] for s in stats]


def test_ddp_ranks_agree_and_match_a_single_process(results):
    ranks = [r["ddp"] for r in results]
    single = ranks[0]["single"]
    assert predicted(ranks[0]["stats"]) == predicted(single["stats"]) == [False, False] + [True] * 6
    for rank in ranks[1:]:
        assert all(torch.equal(a, b) for a, b in zip(rank["after"][-1], ranks[0]["after"][-1]))
        assert [s.get("accepted") for s in rank["stats"]] == [s.get("accepted") for s in ranks[0]["stats"]]
    # verify=True: a drifted replica raises on every rank, naming the parameter.
    assert all(r["mismatch"] == "PDT ranks disagree after epoch 8 on ['group0.param0']" for r in ranks)
    # Same global batch: only the order of float32 reductions differs from one process.
    for a, b in zip(ranks[0]["after"][-1], single["after"][-1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def gather(results: list[dict], key: str, epoch: int, scenario: str = "fsdp") -> list[torch.Tensor]:
    """Whole parameters (flat) from the ranks' shards: FSDP2 shards dim 0, rank 0 first."""
    return [torch.cat(parts) for parts in zip(*(r[scenario][key][epoch] for r in results))]


@pytest.fixture(scope="module")
def replay(results) -> tuple[PDT, list[dict], list[list[torch.Tensor]]]:
    """One-process PDT stepped through the gathered optimizer weights of the FSDP2 run.

    Returns it with its statistics and the weights after each of its steps.
    """
    model = worker.mlp(16, 33, 5)
    single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS)
    stats, after = [], []
    for epoch in range(worker.EPOCHS):
        with torch.no_grad():
            for p, value in zip(model.parameters(), gather(results, "before", epoch)):
                p.copy_(value.view_as(p))
        stats.append(single.step())
        after.append([p.detach().reshape(-1).clone() for p in model.parameters()])
    return single, stats, after


def test_fsdp2_gram_is_the_single_process_gram(results, replay):
    single = replay[0]
    reference = single._history.gram()
    for r in results:
        rel = (r["fsdp"]["gram"] - reference).abs().max() / reference.abs().max()
        assert rel < 1e-10


def test_fsdp2_prediction_is_the_single_process_prediction(results, replay):
    """Replaying the gathered optimizer weights through one-process PDT gives the gathered predictions."""
    stats = [r["fsdp"]["stats"] for r in results]
    assert stats[0] == stats[1]
    assert sum(predicted(stats[0])) == 6 and all(0 < s["accepted"] for s in stats[0][2:])
    single, single_stats, single_after = replay
    for epoch in range(worker.EPOCHS):
        assert single_stats[epoch]["predicted"] == stats[0][epoch]["predicted"]
        assert abs(single_stats[epoch].get("accepted", 0) - stats[0][epoch].get("accepted", 0)) <= 1e-3 * single.numel
        for a, b in zip(single_after[epoch], gather(results, "after", epoch)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_layerwise_graded_is_the_single_process_prediction(results):
    """scope='layer', graded=True under FSDP2: every layer's Gram block in one all_reduce per Gram pass, and
    the same predictions as one process replaying the gathered optimizer weights."""
    stats = [r["fsdp_layer"]["stats"] for r in results]
    assert stats[0] == stats[1] and sum(predicted(stats[0])) == 6
    for s, reduces in zip(stats[0], results[0]["fsdp_layer"]["gram_reduces"]):
        assert reduces == (s["gram_passes"] if s["predicted"] else 0)
    model = worker.mlp(16, 33, 5)
    single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS, scope="layer", graded=True)
    for epoch in range(worker.EPOCHS):
        with torch.no_grad():
            for p, value in zip(model.parameters(), gather(results, "before", epoch, "fsdp_layer")):
                p.copy_(value.view_as(p))
        mine, theirs = single.step(), stats[0][epoch]
        assert mine["predicted"] == theirs["predicted"]
        if mine["predicted"]:
            assert (
                set(mine["layers"])
                == set(theirs["layers"])
                == {"group0.param0", "group0.param1", "group0.param2", "group0.param3"}
            )
            for name, layer in mine["layers"].items():
                assert layer["rank"] == theirs["layers"][name]["rank"]
                torch.testing.assert_close(layer["eigenvalues"], theirs["layers"][name]["eigenvalues"])
            assert abs(mine["accepted"] - theirs["accepted"]) <= 1e-3 * single.numel
            diff = [abs(a - b) for a, b in zip(mine["accepted_per_horizon"], theirs["accepted_per_horizon"])]
            assert sum(diff) <= 2e-3 * single.numel
        after = [p.detach().reshape(-1) for p in model.parameters()]
        for a, b in zip(after, gather(results, "after", epoch, "fsdp_layer")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_linear_jump_is_the_single_process_prediction(results):
    """jump='linear' under FSDP2: each shard jumps to w + tau * delta where one process replaying the gathered
    optimizer weights does, and the statistics agree."""
    stats = [r["fsdp_linear"]["stats"] for r in results]
    assert stats[0] == stats[1] and sum(predicted(stats[0])) == 6
    assert all(0 < s["accepted"] for s in stats[0][2:])
    model = worker.mlp(16, 33, 5)
    single = PDT(torch.optim.SGD(model.parameters(), lr=0.1), **worker.PDT_ARGS, jump="linear")
    for epoch in range(worker.EPOCHS):
        with torch.no_grad():
            for p, value in zip(model.parameters(), gather(results, "before", epoch, "fsdp_linear")):
                p.copy_(value.view_as(p))
        mine, theirs = single.step(), stats[0][epoch]
        assert mine["predicted"] == theirs["predicted"]
        assert abs(mine.get("accepted", 0) - theirs.get("accepted", 0)) <= 1e-3 * single.numel
        after = [p.detach().reshape(-1) for p in model.parameters()]
        for a, b in zip(after, gather(results, "after", epoch, "fsdp_linear")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_snapshot_memory_is_split(results):
    total = results[0]["fsdp"]["single_snapshot_bytes"]
    per_rank = [r["fsdp"]["snapshot_bytes"] for r in results]
    assert sum(per_rank) == total
    assert max(per_rank) <= 0.55 * total


def test_lost_snapshot_makes_all_ranks_skip_together(results):
    stats = [r["lost"]["stats"] for r in results]
    # Rank 1 loses the snapshot of epoch 3: the windows holding it (epochs 3, 4, 5) are skipped.
    expected = [False, False, True, False, False, False, True, True]
    for s in stats:
        assert predicted(s) == expected
        assert all("rank(s) [1]" in s[e]["reason"] for e in (3, 4, 5))
    assert [s["accepted"] for s in stats[0] if s["predicted"]] == [s["accepted"] for s in stats[1] if s["predicted"]]
    # Each rank holds half of the parameter tensors; the statistics count the whole model.
    assert stats[0] == stats[1]
    total = sum(p.numel() for p in worker.mlp(8, 16, 3).parameters())
    for s in stats[0]:
        if s["predicted"]:
            assert s["numel"] == total and s["accepted_ratio"] == s["accepted"] / total
            assert min(s["rejected"].values()) >= 0


def test_statistics_of_every_epoch_and_rank_have_the_same_keys_and_are_plain_json(results):
    """Warm-up, predictions, a lost snapshot (a failed decomposition) and rollbacks, DDP and FSDP2."""
    from test_statistics import check_epochs

    scenarios = ("ddp", "fsdp", "lost", "ddp_adaptive", "fsdp_adaptive")
    for r in results:
        for scenario in scenarios:
            stats = r[scenario]["stats"]
            check_epochs(stats, list(stats[0]["accepted_ratio_per_param"]))
    reasons = {str(s["reason"]).split(":")[0] for r in results for k in scenarios for s in r[k]["stats"]}
    assert {"warm-up", "None", "decomposition failed", "rolled back"} <= reasons


def test_exception_in_one_rank_fails_the_other_within_the_timeout(launched):
    """The last scenario: rank 1 raises in its prediction pass; rank 0 fails in the all_reduce (no hang)."""
    runs, _ = launched
    assert "injected failure in the prediction pass" in runs[1].stderr
    assert runs[1].returncode != 0
    assert runs[0].returncode != 0, "rank 0 should fail in the statistics all_reduce, not finish"


def test_ddp_adaptive_rollback_with_rank_local_losses_keeps_replicas_bit_identical(results):
    ranks = [r["ddp_adaptive"] for r in results]
    losses = [r["losses"] for r in ranks]
    spike = worker.SPIKE
    # Alone, rank 0 would keep the prediction of epoch 2 (its loss rose by less than the 5 %
    # tolerance) and rank 1 would roll it back: without the mean, the replicas would part.
    rise = [loss[spike] / loss[spike - 1] - 1 for loss in losses]
    assert rise[0] <= 0.05 < rise[1]
    for r in ranks:
        decisions = [s["pacing"] for s in r["stats"]]
        # The pacing rule saw the mean of the ranks' losses, on both ranks alike.
        assert [d["loss"] for d in decisions] == [(a + b) / 2 for a, b in zip(*losses)]
        assert [s["rolled_back"] for s in r["stats"]] == [e == spike for e in range(worker.EPOCHS)]
        assert r["stats"][spike]["pacing"]["verdict"] == "bad"
        assert any(s["predicted"] for s in r["stats"][spike + 1 :])  # and predicted again, backed off
        # The rollback restored the optimizer's weights of the prediction's epoch, exactly, and
        # zeroed the velocities.
        assert all(torch.equal(a, b) for a, b in zip(r["after"][spike], r["before"][spike - 1]))
        assert all(not m.any() for m in r["momenta"][spike])
    assert ranks[0]["stats"] == ranks[1]["stats"]
    for key in ("after", "momenta"):  # on_jump="rescale" changed the velocities alike
        for epoch in range(worker.EPOCHS):
            assert all(torch.equal(a, b) for a, b in zip(ranks[0][key][epoch], ranks[1][key][epoch])), (key, epoch)


def test_fsdp2_adaptive_rollback_and_on_jump_reset_agree_across_shards(results):
    ranks = [r["fsdp_adaptive"] for r in results]
    spike = worker.SPIKE
    assert ranks[0]["stats"] == ranks[1]["stats"]
    stats = ranks[0]["stats"]
    assert [s["rolled_back"] for s in stats] == [e == spike for e in range(worker.EPOCHS)]
    # The rollback: whole model back to the optimizer's weights of epoch 2, velocities zero.
    restored = gather(results, "after", spike, "fsdp_adaptive")
    assert all(torch.equal(a, b) for a, b in zip(restored, gather(results, "before", spike - 1, "fsdp_adaptive")))
    assert all(not m.any() for r in ranks for m in r["momenta"][spike])
    # on_jump="reset" at the prediction of epoch 2: the velocities of exactly the accepted
    # elements (counted over both shards) are zero.
    accepted = stats[spike - 1]["accepted"]
    assert 0 < accepted < stats[spike - 1]["numel"]
    zeros = sum(int((m == 0).sum()) for r in ranks for m in r["momenta"][spike - 1])
    moved = sum(int((a != b).sum()) for r in ranks for a, b in zip(r["after"][spike - 1], r["before"][spike - 1]))
    assert zeros == accepted and moved <= accepted
    for r in ranks:
        for a, b, m in zip(r["after"][spike - 1], r["before"][spike - 1], r["momenta"][spike - 1]):
            assert not m[a != b].any()


def test_different_settings_raise_on_every_rank_naming_them(results):
    for rank, r in enumerate(results):
        s = r["settings"]
        assert s["horizon"] == (
            f"ValueError: DistributedPDT settings differ across ranks: horizon (ranks [0] vs [1]; rank {rank} has "
            f"{2 + rank})"
        )
        for setting in ("history", "verify"):
            prefix = f"ValueError: DistributedPDT settings differ across ranks: {setting} (ranks [0] vs [1]"
            assert s[setting].startswith(prefix)
        assert "parameters (ranks [0] vs [1]" in s["layout"]
    assert results[0]["settings"]["invalid"] == (
        "ValueError: DistributedPDT could not be constructed on rank(s) [1] (see their error)"
    )
    assert results[1]["settings"]["invalid"] == "ValueError: horizon must be an int >= 1, got 0"


def test_a_rank_out_of_step_makes_every_rank_raise_at_once(results):
    for r in results:
        s = r["out_of_step"]
        # Rank 1 skips step() at epoch 3: its next step() meets rank 0's of epoch 3.
        since = "optimizer steps since their previous step(). Every rank must call step() once per epoch"
        assert s["sharded_skip"]["message"] == (
            "RanksOutOfStepError: PDT ranks are out of step: all at step 3, but rank 0 after 4, rank 1 after 8 "
            f"{since} "
            "(a rank skipped or repeated step()); with uneven inputs, pass the PDT to "
            "torch.distributed.algorithms.Join beside the model"
        )
        assert s["ddp_repeat"]["message"].startswith(
            f"RanksOutOfStepError: PDT ranks are out of step: all at step 4, but rank 0 after 0, rank 1 after 4 {since}"
        )
        # Rank 1 raises between the Gram and the counts all_reduce and goes on: its next step()
        # meets rank 0's counts (the headers have one length, so no gloo abort).
        assert s["sharded_raise_and_go_on"]["message"].startswith(
            "RanksOutOfStepError: PDT ranks are out of step: rank 0 at step 3 (counts), rank 1 at step 3 (step). "
        )
        for case in s.values():
            assert case["seconds"] < 5  # at once, not at the process group's 30 s timeout
    assert [r["out_of_step"]["sharded_skip"]["epoch"] for r in results] == [3, 4]


def test_ranks_that_resume_different_states_raise_on_every_rank_at_the_first_step(results):
    """Issue 23: another run's checkpoint of the same epoch, a resume on one rank only, another rank's file."""
    origins = "ValueError: PDT ranks hold states of different origins: ranks [0] vs [1] (rank {} holds {}"
    for rank, r in enumerate(results):
        s = r["resume_apart"]
        assert s["same"] is None and s["sharded_own"] is None  # the same checkpoint (sharded: each its own file)
        assert s["ddp_other_run"].startswith(origins.format(rank, "a state resumed at step 4 of run "))
        assert s["ddp_only_one"].startswith(origins.format(rank, "a fresh start" if rank == 0 else "a state resumed"))
        # Rank 1 loads rank 0's file of a sharded run: refused on rank 1 at once, nothing loaded; rank 0
        # (which loaded its own) learns at its first step, as rank 1 does.
        assert s["sharded_other_rank_step"].startswith(origins.format(rank, "a state" if rank == 0 else "a fresh"))
    assert results[0]["resume_apart"]["sharded_other_rank_load"] is None
    assert results[1]["resume_apart"]["sharded_other_rank_load"] == (
        "ValueError: PDT rank 1 of 2: this is rank 0's state of a sharded run on 2 ranks; each rank must load its "
        "own file (or use torch_pdt.distributed.dcp to load on another world size)"
    )


def test_two_instances_stepped_in_another_order_raise_on_every_rank(results):
    """Issue 24 item 5: their Gram messages differ in size; the fixed-length header catches them first."""
    for rank, r in enumerate(results):
        for case in ("first", "second"):
            message = r["two_instances"][case]
            assert message.startswith("RanksOutOfStepError: PDT ranks are out of step: rank 0 at step 0 (step")
            assert f"rank {1 - rank} at step 0 (step) of another PDT instance" in message


def test_ranks_at_different_learning_rates_refuse_together_under_horizon_by_lr(results):
    for r in results:
        case = r["rates_apart"]
        assert case["equal"] is None and case["unchanged"]
        assert case["apart"] == (
            'ValueError: PDT ranks disagree on the learning rate horizon_by="lr" records: rank 0 at 0.1, rank 1 '
            "at 0.05; no rank stepped. Every rank's optimizer and scheduler must be at the same rate"
        )
        # Rates one bit apart are named as they differ, not both as 0.1.
        assert "rank 0 at 0.1, rank 1 at 0.10000000000000002; no rank stepped" in case["ulp"]


def test_join_with_uneven_inputs_is_handled_when_pdt_joins_and_named_when_it_does_not(results):
    """Issue 24 item 5: rank 1 has one batch fewer in epoch 2 (DDP, verify=True every epoch)."""
    for r in results:
        joined = r["uneven"]["joined"]
        assert joined["message"] is None and joined["predicted"] == [False, False] + [True] * 4
        not_joined = r["uneven"]["not_joined"]
        assert not_joined["epoch"] == 2
        assert not_joined["message"].startswith(
            "RanksOutOfStepError: PDT ranks are out of step: all at step 2, but rank 0 after 4, rank 1 after 3"
        )
        assert not_joined["message"].endswith("pass the PDT to torch.distributed.algorithms.Join beside the model")
        assert r["uneven"]["step_mode"].startswith("ValueError: DistributedPDT with every_n_steps steps inside")
    # Join's own final sync and PDT's identical predictions: the replicas end bit-identical.
    ends = [r["uneven"]["joined"]["after"] for r in results]
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def test_join_with_an_empty_epoch_on_one_rank_runs_on(results):
    """Self-attack (second pass): rank 1 has no batch at all in epoch 2; Join handles it as it does one fewer."""
    for r in results:
        assert r["uneven"]["empty_epoch"]["message"] is None
        assert r["uneven"]["joined"]["misuse"] == []
    ends = [r["uneven"]["empty_epoch"]["after"] for r in results]
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def test_join_with_an_empty_epoch_on_one_rank_warns_of_no_misuse(results):
    assert [r["uneven"]["empty_epoch"]["misuse"] for r in results] == [[], []]


def test_verify_treats_equal_nans_as_equal(results):
    for r in results:
        assert r["verify_nans"]["same"] is None
        expected = "ReplicaMismatchError: PDT ranks disagree after epoch 1 on ['group0.param0']"
        assert r["verify_nans"]["differ"] == expected


def test_distributed_pdt_auto_chooses_the_passes_as_pdt_does():
    """kernel='auto' uses PDT's size thresholds; the compiled passes it chooses vote on every call
    (tests/test_distributed_compiled.py runs them on two ranks)."""
    from torch_pdt.distributed import DistributedPDT

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        large = torch.nn.Linear(2000, 600)  # 1.2M elements: large enough for 'auto' to compile
        compiled = DistributedPDT(torch.optim.SGD(large.parameters(), lr=0.1))._passes.compiled
        assert type(compiled).__name__ == "_AgreedPasses"
        small = torch.nn.Linear(20, 6)
        assert DistributedPDT(torch.optim.SGD(small.parameters(), lr=0.1))._passes.compiled is None
    finally:
        dist.destroy_process_group()


def test_a_closed_or_dropped_distributed_pdt_stops_counting_and_stepping():
    from torch_pdt.distributed import DistributedPDT

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        p = torch.nn.Parameter(torch.zeros(4))
        opt = torch.optim.SGD([p], lr=0.1)
        pdt = DistributedPDT(opt, history=3, every_n_steps=2)
        pdt.close()
        p.grad = torch.ones(4)
        opt.step()
        assert (pdt.optimizer_steps, pdt._watch.optimizer_steps) == (0, 0)
        dropped = weakref.ref(DistributedPDT(opt, history=3, every_n_steps=2))
        gc.collect()
        assert dropped() is None  # no hook keeps it alive
        opt.step()  # and nothing steps it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("options", [{"criterion": "random"}, {"on_jump": "rescale"}])
def test_compiled_distributed_pdt_runs_the_options_whose_passes_take_hooks(options):
    """The random criterion's draws and on_jump's velocity hook reach the compiled pass through the
    ranks' agreed wrapper (under kernel='compiled' a pass that cannot take them raises)."""
    from torch_pdt.distributed import DistributedPDT

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(20, 6)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pdt = DistributedPDT(opt, history=3, horizon=2, start_epoch=2, kernel="compiled", **options)
        x, y = torch.randn(64, 20), torch.randn(64, 6)
        predicted = []
        for _ in range(4):
            for _ in range(3):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
            predicted.append(pdt.step()["predicted"])
        assert any(predicted) and pdt._passes.compiled is not None
    finally:
        dist.destroy_process_group()
