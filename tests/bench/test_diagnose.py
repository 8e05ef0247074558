"""``pdt-bench diagnose`` on the tiny MNIST-1D task: it trains, reports every kind, and refuses bad options first."""

from __future__ import annotations

import json
import lzma
import statistics

import pytest

from pdt_bench.cli import main


def test_diagnose_writes_reports_a_plot_and_a_line_per_kind(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["diagnose", "--tiny", "--epochs", "9", "--history", "3", "--horizon", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "diagnosis.json").read_text())
    reports = data["reports"]
    # Snapshots after epochs 1..9; with h = 3 the probe judges from the third on.
    assert [r["epoch"] for r in reports] == list(range(2, 9))
    assert data["settings"] == {
        "task": "mnist1d-mlp",
        "method": "baseline",
        "seed": 0,
        "history": 3,
        "horizon": 2,
        "criterion": "pdt",
        "every": 1,
    }
    assert all(t["forecast_error"] is not None for r in reports[:-2] for t in r["tensors"])
    # Kept to 6 significant digits, as the run stores keep PDT's diagnostics.
    snrs = [t["snr"] for r in reports for t in r["tensors"] if t["snr"] is not None]
    assert snrs and all(float(f"{v:.6g}") == v for v in snrs)
    assert any(float(f"{v:.5g}") != v for v in snrs)  # rounded, not truncated further
    assert (out / "diagnosis.png").stat().st_size > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:3] == ["kind", "elements", "accepted"] and printed[1].startswith("linear")
    assert all(len(line) <= 100 for line in printed[:-1])  # the last names the files


def test_every_k_epochs_makes_the_snapshot_unit_k_epochs(tmp_path):
    out = tmp_path / "d"
    args = ["diagnose", "--tiny", "--epochs", "12", "--history", "3", "--horizon", "2", "--every", "2"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    data = json.loads((out / "diagnosis.json").read_text())
    assert data["settings"]["every"] == 2
    reports = data["reports"]
    # Snapshots after epochs 2, 4, ..., 12; judged from the third on, named by their epoch (0-based).
    assert [r["epoch"] for r in reports] == [5, 7, 9, 11]
    # tau = 2 snapshots is 4 epochs: the jumps judged at epochs 6 and 8 are settled at 10 and 12.
    settled = [all(t["forecast_error"] is not None for t in r["tensors"]) for r in reports]
    assert settled == [True, True, False, False]


def test_table_gives_the_median_over_epochs_of_each_record_read_plain_or_xz(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["diagnose", "--tiny", "--epochs", "9", "--history", "3", "--horizon", "2", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    reports = json.loads((out / "diagnosis.json").read_text())["reports"]
    capsys.readouterr()
    # The linear kind's accepted share per epoch, weighted by elements, then the median over epochs.
    shares = []
    for r in reports:
        rows = [t for t in r["tensors"] if t["kind"] == "linear"]
        shares.append(sum(t["accepted"] * t["numel"] for t in rows) / sum(t["numel"] for t in rows))
    assert main(["diagnose", "--table", str(out)]) == 0
    plain = capsys.readouterr().out
    header, _, row = plain.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["record, kind", "epochs", "accepted", "SNR"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    first, last = reports[0]["epoch"] + 1, reports[-1]["epoch"] + 1
    assert cells[:3] == ["d, linear", f"{first}–{last}", f"{statistics.median(shares):.2f}"]
    # Two windows of the 7 judged epochs (3..9): 3 and the remaining 4, each its own median.
    assert main(["diagnose", "--table", str(out), "--windows", "2"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()[2:]]
    linear = [r for r in rows if r[0] == "d, linear"]
    assert [r[1] for r in linear] == ["3–5", "6–9"]
    assert [r[2] for r in linear] == [f"{statistics.median(shares[:3]):.2f}", f"{statistics.median(shares[3:]):.2f}"]
    assert main(["diagnose", "--table", str(out), "--windows", "0"]) == 2
    assert "--windows must be >= 1" in capsys.readouterr().err
    packed = tmp_path / "packed" / "d"
    packed.mkdir(parents=True)
    with lzma.open(packed / "diagnosis.json.xz", "wt") as f:
        f.write((out / "diagnosis.json").read_text())
    assert main(["diagnose", "--table", str(packed)]) == 0
    assert capsys.readouterr().out == plain
    assert main(["diagnose", "--table", str(tmp_path / "none")]) == 2
    assert "no diagnosis.json or diagnosis.json.xz" in capsys.readouterr().err


def test_bad_options_are_refused_before_training(tmp_path, capsys):
    assert main(["diagnose", "--tiny", "--history", "2", "--out", str(tmp_path)]) == 2
    assert "history must be an int >= 3" in capsys.readouterr().err
    assert main(["diagnose", "--tiny", "--every", "0", "--out", str(tmp_path)]) == 2
    assert "--every must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "diagnosis.json").exists()


def test_a_run_too_short_for_the_history_is_refused_before_training(tmp_path, capsys):
    """``--every`` past the epochs, or a history longer than the snapshots, trained for an empty diagnosis."""
    for extra in (
        ["--epochs", "6", "--every", "20"],
        ["--epochs", "6", "--every", "3", "--history", "3"],
        ["--epochs", "4", "--history", "5"],
        ["--method", "baseline@epochs=4", "--history", "5"],
    ):
        assert main(["diagnose", "--tiny", *extra, "--out", str(tmp_path)]) == 2
        assert "fewer than --history" in capsys.readouterr().err
    for epochs in ("0", "-3"):
        with pytest.raises(SystemExit) as exit_:  # argparse's refusal, as pdt-bench compare's
            main(["diagnose", "--tiny", "--epochs", epochs, "--out", str(tmp_path)])
        assert exit_.value.code == 2 and "--epochs: expected a positive int" in capsys.readouterr().err
    assert not (tmp_path / "diagnosis.json").exists()
    # Just enough: 3 snapshots, after epochs 2, 4 and 6, one report.
    args = ["diagnose", "--tiny", "--epochs", "6", "--every", "2", "--history", "3", "--horizon", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert [r["epoch"] for r in json.loads((tmp_path / "diagnosis.json").read_text())["reports"]] == [5]
