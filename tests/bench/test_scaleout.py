"""`pdt-bench scaleout`: the report's arithmetic, and the command end to end on a tiny N (eager passes)."""

import pytest
from tables import table_rows

from pdt_bench import cli
from pdt_bench import scaleout as bench


def test_the_report_sets_the_slowest_rank_against_one_process_and_the_memory_against_the_whole_model():
    def ranks(steps: list[list[float]], paired: list[list[float]], snapshot_bytes: int) -> list[dict]:
        return [
            {"step": s, "paired": p, "passes": "compiled", "snapshot_bytes": snapshot_bytes, "memory_held": 2**20}
            for s, p in zip(steps, paired)
        ]

    local = {"step": [0.010, 0.012, 0.011], "snapshot_bytes": 2**21, "memory_held": 2**21}
    whole = {"step": [0.02], "snapshot_bytes": 2**22, "memory_held": 2**22}
    rows = [
        {"engine": "ddp", "ranks": ranks([[0.011], [0.0132]], [[0.015], [0.0165]], 2**21)},
        {"engine": "fsdp2", "ranks": ranks([[0.022], [0.011]], [[0.011], [0.011]], 2**21)},
    ]
    header, *body = table_rows(bench.format_report(rows, local, whole))
    assert header[:7] == [
        "engine", "ranks x passes", "step ms", "1-process PDT in turn ms", "ratio", "1 process alone ms", "ratio"
    ]  # fmt: skip
    ddp, fsdp2 = body
    # The slowest rank's median against the slowest paired one (16.5 ms) and one process alone (11 ms).
    assert ddp[1:7] == ["2 x compiled", "13.2", "16.5", "0.80", "11.0", "1.20"]
    assert fsdp2[2:5] == ["22.0", "11.0", "2.00"]
    # Snapshots: DDP against one process on the same (whole) model, FSDP2 against one on twice its shard.
    assert (ddp[9], fsdp2[9]) == ("1.000", "0.500")


@pytest.mark.slow
def test_the_command_runs_ddp_and_fsdp2_on_two_ranks(capsys):
    """Six processes of 20k values, eager: about 35 s on a loaded 2-core machine (starting them)."""
    args = ["scaleout", "--params", "20k", "--repeat", "2", "--history", "3", "--horizon", "2", "--kernel", "eager"]
    assert cli.main([*args, "--engine", "ddp", "--engine", "fsdp2"]) == 0
    out = capsys.readouterr().out
    _, *body = table_rows(out[out.index("| engine") :])
    assert [row[:2] for row in body] == [["ddp", "2 x eager"], ["fsdp2", "2 x eager"]]
    # FSDP2: half the snapshots of one process on the whole model (each row padded alike: 0.501 at 20k).
    assert [float(row[9]) for row in body] == [1.0, pytest.approx(0.5, abs=0.002)]
