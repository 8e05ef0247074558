"""The compare and sweep commands end to end on tiny data: files, reuse of finished runs, errors."""

import json

import pytest

from pdt_bench import cli, records

QUICK = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "3", "--history", "2", "--start-epoch", "1", "--interval", "0"]
QUICK += ["--jobs", "0", "--quiet"]


def test_compare_writes_runs_summary_report_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", *QUICK, "--methods", "pdt,nonselective", "--seeds", "0,1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "baseline" in table and "nonselective" in table and "report:" in table
    runs = list(records.load_named_runs(out))
    assert runs == [f"{m}-seed{s}" for m in ("baseline", "nonselective", "pdt") for s in (0, 1)]
    assert not (out / "runs").exists()  # folded into the store
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"baseline", "pdt", "nonselective"}
    report = (out / "report.md").read_text()
    assert "pdt-bench compare" in report and "plots/train_loss.png" in report
    assert (out / "plots" / "train_loss.png").stat().st_size > 0
    assert (out / "masks" / "pdt-seed0.pt").exists()


def test_finished_runs_are_not_run_again_unless_their_settings_change(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *QUICK, "--methods", "pdt", "--seeds", "0", "--out", str(out)]
    assert cli.main(args) == 0
    store = out / records.STORE
    stamp, before = store.stat().st_mtime_ns, records.load_named_runs(out)
    assert cli.main(args) == 0
    assert store.stat().st_mtime_ns == stamp
    # A PDT setting reruns PDT, not the baseline.
    assert cli.main([*args, "--horizon", "2"]) == 0
    after = records.load_named_runs(out)
    assert after["baseline-seed0"] == before["baseline-seed0"]
    assert after["pdt-seed0"]["config"]["horizon"] == 2 != before["pdt-seed0"]["config"]["horizon"]


def test_sweep_reuses_the_baseline_across_pdt_settings(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", *QUICK, "--grid", "horizon=2,3", "--grid", "interval=0,1", "--seeds", "0", "--out", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert text.count("pdt") >= 4
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert sorted((r["horizon"], r["interval"]) for r in rows) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    baselines = [records.load_named_runs(p.parent)["baseline-seed0"] for p in out.glob(f"*/{records.STORE}")]
    assert len(baselines) == 4 and all(b == baselines[0] for b in baselines)
    assert (out / "sweep-pdt.png").exists() and "sweep-pdt.png" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "--methods", "pdt,magic"], "unknown method"),
        (["compare", "--task", "imagenet"], "unknown task"),
        (["compare", "--task", "cifar10-fcn", "--data-dir", "/nonexistent/place"], "/nonexistent/place"),
        (["sweep", "--task", "mnist1d-mlp"], "--grid"),
        (["compare", "--methods", "schedule-free", "--optimizer", "rmsprop"], "no schedule-free twin"),
        (["compare", "--methods", "baseline@epochs=0"], "bad value"),
        (["compare", "--methods", "pdt", "--pdt", "bogus=1"], "--pdt: "),
        (["compare", "--methods", "pdt", "--history", "0"], "history"),
        (["compare", "--methods", "pdt", "--pdt", "criterion=nonsense"], "criterion"),
        (["compare", "--methods", "pdt-linear@jump=sideways"], "jump"),
        (["compare", "--methods", "pdt", "--pdt", "every_n_steps=2"], "steps PDT once per epoch"),
        (["compare", "--methods", "baseline@lr=0"], "must be positive"),
        (["compare", "--methods", "baseline@lrx0"], "must be positive"),
        (["compare", "--methods", "baseline", "--augment"], "has no augmentation"),
        (["compare", "--methods", "baseline", "--existing", "--rerun"], "choose one"),
    ],
)
def test_bad_input_fails_with_a_clear_message(args, message, tmp_path, capsys):
    assert cli.main([*args, "--out", str(tmp_path / "x"), "--jobs", "0", "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "runs").exists()  # refused before any run


def test_tensorboard_logs_every_run(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional")
    out = tmp_path / "tb"
    assert cli.main(["compare", *QUICK, "--seeds", "0", "--tensorboard", "--out", str(out)]) == 0
    logs = {p.parent.name for p in (out / "tensorboard").glob("*/events.out.tfevents.*")}
    assert logs == {"baseline-seed0", "pdt-seed0"}


def test_existing_reports_the_finished_runs_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    quick = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "2", "--jobs", "0", "--quiet", "--out", str(out)]
    assert cli.main(["compare", *quick, "--methods", "baseline,pdt", "--seeds", "0"]) == 0
    assert cli.main(["compare", *quick, "--methods", "baseline,pdt,ema", "--seeds", "0,1", "--existing"]) == 0
    assert list(records.load_named_runs(out)) == ["baseline-seed0", "pdt-seed0"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["baseline", "pdt"] and summary["seeds"] == [0]
    capsys.readouterr()
    assert cli.main(["compare", *quick, "--methods", "ema", "--seeds", "3", "--existing"]) == 2
    assert "no finished runs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--budget-sweep", "0"],
        ["--budget-sweep", "1.5"],
        ["--budget-sweep", "nan"],
        ["--budget-sweep", "inf"],
        ["--lr-sweep", "-0.1"],
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--lr", "0"],
    ],
)
def test_bad_numbers_are_refused_by_the_parser(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", *args, "--out", str(tmp_path / "x"), "--jobs", "0", "--quiet"])
    assert exit_.value.code == 2 and "expected" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_seed_or_lr_given_twice_runs_once(tmp_path):
    out = tmp_path / "x"
    quick = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "1", "--jobs", "0", "--quiet", "--out", str(out)]
    assert cli.main(["compare", *quick, "--methods", "baseline", "--seeds", "0,0", "--lr-sweep", "0.1,0.1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["methods"]["baseline@lr=0.1"]["runs"] == 1


def test_an_lr_sweep_runs_the_rates_it_was_given(tmp_path, capsys):
    """Self-attack (second pass): ``@lr={lr:g}`` kept 6 digits, so 0.1234567 and 0.1234568 ran once, at 0.123457."""
    quick = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "1", "--quiet", "--out", str(tmp_path / "x")]
    sweep = ["--lr-sweep", "0.1234567,0.1234568,1"]
    assert cli.main(["compare", *quick, "--methods", "baseline", *sweep, "--existing"]) == 2
    left_out = capsys.readouterr().err
    assert "baseline@lr=0.1234567-seed0" in left_out and "baseline@lr=0.1234568-seed0" in left_out
    assert "baseline@lr=1-seed0" in left_out  # a rate :g writes exactly keeps the committed studies' name
