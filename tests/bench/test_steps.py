"""``pdt-bench steps`` end to end on a tiny CSV: files, resume, steps to target, refusals, step-mode PDT."""

import json

import pytest
from fake_data import write_agnews

from pdt_bench import cli, records, steps

QUICK = ["--steps", "40", "--eval-every", "10", "--warmup", "5", "--width", "16", "--seeds", "0", "--every", "2"]
"""40 steps; PDT every 2 steps (h = 5, T0 = 5, Ti = 1) predicts from step 12 on."""


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "ag_news_test.csv"
    write_agnews(path, rows_per_class=30)
    return path


def _study(data, out, *extra):
    return ["steps", "--data", str(data), "--out", str(out), *QUICK, *extra]


def test_steps_writes_records_summary_report_and_plot(data, tmp_path, capsys):
    out = tmp_path / "study"
    assert cli.main(_study(data, out, "--methods", "baseline,pdt", "--quiet")) == 0  # --jobs 1: a worker process
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "| steps to target |" in table and "\npdt (one seed): " in table
    runs = records.load_named_runs(out)
    assert list(runs) == ["baseline-seed0", "pdt-seed0"]
    record = runs["pdt-seed0"]
    assert [step for step, _ in record["curve"]] == [10, 20, 30, 40]
    assert len(record["train_loss"]) == 4 and record["steps_done"] == 40
    assert 0 < record["pdt_s"] < record["clock_s"] and record["eval_s"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"baseline", "pdt"}
    assert summary["methods"]["baseline"]["steps_to_target"]["n"] == 1
    report = (out / "report.md").read_text()
    assert report.index("pdt-bench steps --data") < report.index("## Settings")
    assert "- **pdt** (one seed): " in report and "plots/heldout_loss.png" in report
    assert (out / "plots" / "heldout_loss.png").stat().st_size > 0


def test_pdt_in_step_mode_predicts_every_k_steps(data, tmp_path):
    out = tmp_path / "study"
    method = "pdt@every_n_steps=4@start_epoch=2@interval=0"
    assert cli.main(_study(data, out, "--methods", method, "--jobs", "0", "--quiet")) == 0
    runs = records.load_named_runs(out)
    record = runs[f"{method}-seed0"]
    assert record["config"]["every"] == 4 and record["config"]["pdt_options"]["every_n_steps"] == 4
    # h = 5 snapshots, T0 = 2, Ti = 0: the first prediction after the 5th period (step 20), then every period.
    assert [step for step, _ in record["predicted_at"]] == [20, 24, 28, 32, 36, 40]
    assert record["predictions"] == 6 and 0 <= record["accepted_ratio"] <= 1
    baseline = runs["baseline-seed0"]
    assert baseline["predictions"] is None and baseline["pdt_s"] == 0


def test_a_finished_run_is_not_run_again_unless_its_settings_change(data, tmp_path, monkeypatch):
    out = tmp_path / "study"
    args = _study(data, out, "--methods", "baseline,pdt", "--jobs", "0", "--quiet")
    assert cli.main(args) == 0
    store = out / records.STORE
    stamp, before = store.stat().st_mtime_ns, records.load_named_runs(out)
    ran = []
    monkeypatch.setattr(steps, "run", lambda config, report=None: ran.append(config.method))
    assert cli.main(args) == 0
    assert ran == [] and store.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # Another K reruns PDT, not the baseline; --existing then runs nothing.
    assert cli.main([*args, "--every", "4"]) == 0
    after = records.load_named_runs(out)
    assert after["baseline-seed0"] == before["baseline-seed0"]
    assert after["pdt-seed0"]["config"]["every"] == 4 != before["pdt-seed0"]["config"]["every"]


def _record(method, seed, curve, predictions=None):
    return {
        "method": method,
        "seed": seed,
        "config": {},
        "curve": curve,
        "diverged": False,
        "accepted_ratio": None if predictions is None else 0.25,
        "predictions": predictions,
        "accepting_predictions": predictions,
        "pdt_s": 1.0 if predictions else 0.0,
        "clock_s": 10.0,
        "steps_done": curve[-1][0],
    }


def test_steps_to_target_is_the_first_evaluation_at_the_baselines_best_of_the_same_seed():
    records = [
        _record("baseline", 0, [[10, 3.0], [20, 2.5], [30, 2.4], [40, 2.45]]),
        _record("baseline", 1, [[10, 3.0], [20, 2.6], [30, 2.5], [40, 2.2]]),
        _record("pdt", 0, [[10, 2.9], [20, 2.4], [30, 2.3], [40, 2.3]], predictions=3),
        _record("pdt", 1, [[10, 2.9], [20, 2.5], [30, 2.3], [40, 2.25]], predictions=3),  # never 2.2
    ]
    summary = steps.summarize(records)
    base, pdt = summary["methods"]["baseline"], summary["methods"]["pdt"]
    assert [r["steps_to_target"] for r in base["per_seed"]] == [30, 40]
    assert [r["steps_to_target"] for r in pdt["per_seed"]] == [20, None]
    assert pdt["per_seed"][0]["fewer_steps"] == pytest.approx(1 - 20 / 30)
    assert pdt["steps_to_target"]["n"] == 1 and pdt["steps_to_target"]["max"] is None
    assert steps._steps_cell(pdt) == "never (20-never)"
    assert pdt["final_loss"]["mean"] == pytest.approx(2.275) and pdt["pdt_time_share"]["mean"] == pytest.approx(0.1)
    assert steps.steps_to_target([[10, 2.0], [20, 1.0]], 1.5) == 20


@pytest.mark.parametrize(
    "methods, message",
    [
        ("ema", "ema: pdt-bench steps runs the baseline and the methods that only change PDT's options"),
        ("baseline@epochs=3", "not epochs"),
        ("pdt@every_n_steps=0", "every_n_steps"),
        ("pdt@lr=1e999", "pdt@lr=1e999: the learning rate must be positive and finite"),
    ],
)
def test_methods_that_cannot_run_in_step_mode_are_refused_before_any_run(methods, message, data, tmp_path, capsys):
    out = tmp_path / "study"
    assert cli.main(_study(data, out, "--methods", methods, "--jobs", "0")) == 2
    assert message in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_missing_data_names_what_to_provide(tmp_path, capsys):
    out = tmp_path / "study"
    missing = tmp_path / "nowhere" / "ag_news_test.csv"
    assert cli.main(_study(missing, out, "--jobs", "0")) == 2
    err = capsys.readouterr().err
    assert f"pdt-bench: error: AG News not found: {missing} does not exist" in err and "--data FILE" in err
    assert not (out / "runs").exists()


@pytest.mark.parametrize("content", ['{"method": "pdt", "con', "{}", "[1]", '{"config": null}'])
def test_a_run_file_that_is_not_a_record_is_named_and_run_again(content, data, tmp_path, capsys):
    """A truncated or hand-edited runs/ file neither stops the study with a traceback nor counts as finished."""
    out = tmp_path / "study"
    args = _study(data, out, "--methods", "baseline,pdt", "--jobs", "0", "--quiet")
    assert cli.main(args) == 0
    broken = out / "runs" / "pdt-seed0.json"  # a run file beside the store, newer than its line
    broken.parent.mkdir()
    broken.write_text(content)
    capsys.readouterr()
    assert cli.main([*args, "--existing"]) == 0  # left out, and said why
    err = capsys.readouterr().err
    assert f"{broken}: not a readable run record" in err and "left out: pdt-seed0" in err
    assert cli.main(args) == 0
    assert f"{broken}: not a readable run record" in capsys.readouterr().err
    assert not broken.exists() and records.load_run(broken)["config"]["every"] == 2  # run again, packed


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seeds", "", "argument --seeds: expected comma-separated integers >= 0, got ''"),
        ("--seeds", ",", "argument --seeds: expected comma-separated integers >= 0, got ','"),
        ("--threads", "0", "argument --threads: expected a positive int, got '0'"),
        ("--eta-min", "-1e-3", "--eta-min must be a finite learning rate, 0 or more, got -0.001"),
        ("--eta-min", "nan", "--eta-min must be a finite learning rate, 0 or more, got nan"),
        # Self-attack (second pass): a NaN weight decay passes torch's `< 0` check and trains on NaN.
        ("--weight-decay", "nan", "argument --weight-decay: expected a finite number >= 0, got 'nan'"),
        ("--weight-decay", "-1", "argument --weight-decay: expected a finite number >= 0, got '-1'"),
    ],
)
def test_bad_arguments_are_refused_before_any_run(option, value, message, data, tmp_path, capsys):
    out = tmp_path / "study"
    try:
        code = cli.main(_study(data, out, "--jobs", "0", f"{option}={value}"))
    except SystemExit as e:  # argparse's refusal
        code = e.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_data_that_is_a_directory_or_not_text_is_named(tmp_path, capsys):
    out = tmp_path / "study"
    assert cli.main(_study(tmp_path, out, "--jobs", "0")) == 2
    assert f"AG News not found: {tmp_path} is not a file" in capsys.readouterr().err
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe1,title,text\n" * 50)
    assert cli.main(_study(binary, out, "--jobs", "0")) == 2
    assert f"pdt-bench: error: {binary}: not UTF-8 text" in capsys.readouterr().err
    assert not (out / "runs").exists()
