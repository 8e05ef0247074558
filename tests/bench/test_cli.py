"""The front door of ``pdt-bench``: errors before any run, a missing extra named, progress, the compact table."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdt_bench import cli, records

QUICK = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "2", "--history", "2", "--start-epoch", "1", "--interval", "0"]


def _pdt_bench(*args, prelude=""):
    """``pdt-bench ARGS`` in a fresh interpreter, after ``prelude`` (Python) has run: exit code, stderr."""
    code = f"import sys\n{prelude}\nfrom pdt_bench import cli\nsys.exit(cli.main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "args, named",
    [
        (["--methods", "baseline", "--pdt", "histroy=3"], "'histroy' is not a PDT option (did you mean history?)"),
        (["--methods", "baseline,pdt", "--pdt", "bogus=1", "--jobs", "2"], "--pdt: 'bogus' is not a PDT option;"),
        (["--methods", "pdt@shceduler=adaptive"], "bad suffix 'shceduler=adaptive' in 'pdt@shceduler=adaptive'"),
        (["--methods", "pdt@pacing=adaptve"], "pdt@pacing=adaptve: pacing must be one of"),
    ],
)
def test_a_bad_pdt_option_is_one_line_before_any_run(args, named, tmp_path):
    out = tmp_path / "x"
    code, err = _pdt_bench("compare", *QUICK, "--seeds", "0", "--out", str(out), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pdt-bench: error: ") and named in err
    if "not a PDT option" in named:
        assert "the options are history, horizon," in err and "on_jump" in err
    assert not out.exists()  # refused before the baseline ran


@pytest.mark.parametrize("module", ["numpy", "matplotlib", "tqdm"])
def test_a_missing_extra_names_the_install_command(module, tmp_path):
    blocked = f"for m in [{module!r}, {module + '.auto'!r}]: sys.modules[m] = None  # as if not installed"
    out = tmp_path / "x"
    code, err = _pdt_bench("compare", *QUICK, "--seeds", "0", "--jobs", "0", "--out", str(out), prelude=blocked)
    assert code == 2
    assert f"pdt-bench: error: {module} is missing: pip install 'torch-pdt[bench]'" in err
    assert "Traceback" not in err
    assert not (out / "runs").exists()


@pytest.mark.parametrize("jobs", ["0", "1"])
def test_every_jobs_value_shows_the_epochs_of_the_run_in_progress(jobs, tmp_path, capsys):
    args = ["compare", *QUICK, "--methods", "baseline", "--seeds", "0", "--jobs", jobs]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "baseline-seed0" in err and "epoch" in err and "train loss" in err and "runs: 100%" in err
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_compare_prints_the_compact_table_and_the_full_one_when_asked(tmp_path, capsys):
    args = ["compare", *QUICK, "--methods", "pdt", "--seeds", "0", "--jobs", "0", "--quiet", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    compact = capsys.readouterr().out
    assert max(len(line) for line in compact.splitlines()) <= 100
    assert "| train loss |   val acc |" in compact and "TTB-Loss s" not in compact
    # The tiny task stays at chance: nothing to judge, and no "helped" said.
    assert "no verdict: the baseline did not learn" in compact and "helped" not in compact
    assert cli.main([*args, "--wide"]) == 0  # the runs exist: only the table is printed again
    printed = capsys.readouterr()
    assert "TTB-Loss s" in printed.out
    assert "2 of 2 runs already finished under" in printed.err and "reused (--rerun runs them again)" in printed.err


def test_the_stress_example_runs_its_setting_and_variants_through_compare(tmp_path, capsys):
    example = importlib.util.spec_from_file_location("stress", Path(__file__).parents[2] / "examples/stress_mnist1d.py")
    stress = importlib.util.module_from_spec(example)
    example.loader.exec_module(stress)
    args = ["--setting", "tau9", "--variants", "fixed,adaptive-reset", *QUICK, "--seeds", "0", "--jobs", "0"]
    assert stress.main([*args, "--quiet", "--out", str(tmp_path)]) == 0
    runs = records.load_named_runs(tmp_path)
    assert set(runs) == {"baseline-seed0", "pdt-seed0", "pdt@pacing=adaptive@on_jump=reset-seed0"}
    config = runs["pdt@pacing=adaptive@on_jump=reset-seed0"]["config"]
    assert (config["horizon"], config["lr"], config["batch_size"], config["optimizer"]) == (9, 0.05, 128, "sgd")
    assert "pdt@pacing=adaptive@on_jump=reset" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, named",
    [
        (["--seeds", "-1"], "argument --seeds: expected comma-separated integers >= 0, got '-1'"),
        (["--threads", "-2"], "argument --threads: expected a positive int, got '-2'"),
        (["--train-subset", "0"], "argument --train-subset: expected a positive int, got '0'"),
        (["--eta-min", "nan"], "argument --eta-min: expected a finite number >= 0, got 'nan'"),
        # Self-attack (second pass): --mask-epoch 0 fell back to the default, -5 or 99 drew no heatmap, silently.
        (["--mask-epoch", "0"], "argument --mask-epoch: expected a positive int, got '0'"),
        (["--mask-epoch", "3"], "--mask-epoch 3 is past the last epoch (2)"),
        (["--device", "meta"], "--device meta: a meta tensor holds no data to train on"),
        (["--device", "nonsense"], "--device nonsense:"),
        pytest.param(
            ["--device", "cuda"],
            "--device cuda: not available in this build of torch",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this build has a CUDA device"),
        ),
    ],
)
def test_a_bad_harness_option_is_one_line_before_any_run(args, named, tmp_path):
    out = tmp_path / "x"
    code, err = _pdt_bench("compare", *QUICK, "--out", str(out), *args)
    assert code == 2
    assert err.count("\n") == 1 and named in err and "Traceback" not in err
    assert not out.exists()  # refused before the baseline ran


def test_help_imports_no_command_torch_or_matplotlib():
    code = (
        "import sys\nfrom pdt_bench import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'numpy')]\n"
        "heavy += [m for m in sys.modules if m.startswith('pdt_bench.') and m != 'pdt_bench.cli']\n"
        "print(heavy, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip() == "[]"
    assert all(name in done.stdout for name in cli.COMMANDS)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_is_listed_with_its_own_help(command):
    sub = cli.build_parser(command)._subparsers._group_actions[0]
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert listed[command] == cli.COMMANDS[command]
