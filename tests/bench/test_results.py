"""`pdt-bench results` over a study of tiny compares: headline, targets as data, links, refusals."""

import json
import subprocess

from pdt_bench import cli

QUICK = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "4", "--history", "2", "--start-epoch", "1", "--interval", "0"]
QUICK += ["--jobs", "0", "--quiet", "--seeds", "0,1"]


def test_results_page_over_a_study(tmp_path, capsys):
    study = tmp_path / "study"
    methods = "pdt,random-mask,pdt-linear,baseline@epochs=2"
    assert cli.main(["compare", *QUICK, "--methods", methods, "--out", str(study / "mlp")]) == 0
    # Four epochs with T0 = 5: PDT never predicts, and the page must say so instead of a reduction.
    waited = [a if a != "1" else "5" for a in QUICK]
    assert cli.main(["compare", *waited, "--methods", "pdt,lookahead", "--out", str(study / "waited")]) == 0
    (study / "toy.txt").write_text("method  steps\npdt  30\n")
    (study / "mlp" / "landscape").mkdir()
    drawn = {"task": "mnist1d-mlp", "seed": 1, "plane": "ends", "subset": 64, "methods": ["baseline", "pdt"]}
    (study / "mlp" / "landscape" / "landscape.json").write_text(json.dumps(drawn))
    notes = tmp_path / "notes.md"
    notes.write_text("How the study was run.\n")
    targets = tmp_path / "targets.json"
    want = {"reduction": 0.3, "ahead_of": ["random-mask", "pdt-linear", "ema"], "budget": True}
    targets.write_text(json.dumps({"mlp": want}))
    out = tmp_path / "docs" / "results.md"
    argv = ["results", str(study), "--out", str(out), "--notes", str(notes), "--targets", str(targets)]
    assert cli.main(argv) == 0
    text = out.read_text()
    # The notes are linked, not copied: one source for that text.
    assert text.startswith("# Results of the study under") and "[notes.md](<../notes.md>)" in text
    assert "was run." not in text
    assert "## Headline" in text
    headline = text.split("## Headline")[1].split("## mlp")[0]
    rows = {line.split("|")[1].strip(): line for line in headline.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"study", "mlp", "waited"}
    assert "no prediction" in rows["waited"] and "No effect to report: no prediction ran" in rows["waited"]
    assert "epochs=2: " in rows["mlp"]
    section = text.split("## mlp")[1].split("## waited")[0]
    assert "PDT ≥ 30% fewer epochs" in section and "(median of 2 seeds)" in section
    assert "PDT ahead of `random-mask`" in section and "PDT ahead of `ema`: **not run**" in section
    assert "at epoch 2, PDT's training loss" in section and "PDT lower on" in section
    # Links point at the compare directories themselves, relative to the page.
    assert "(<../study/mlp/report.md>)" in text and "(<../study/waited/plots/train_loss.png>)" in text
    assert "(<../study/waited/plots/train_loss_flops.png>)" in text
    # A study's landscape is shown with the plane it is drawn on and the command that drew it.
    assert "(<../study/mlp/landscape/landscape.png>)" in section and "through the common start" in section
    assert "--seed 1 --plane ends" in section and "landscape" not in text.split("## waited")[1]
    assert text.rstrip().endswith("pdt  30\n```")

    capsys.readouterr()
    assert cli.main(["results", str(study / "mlp"), "--out", str(tmp_path / "x.md")]) == 2
    assert "is a single compare output" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_results_writes_beside_the_study_and_never_replaces_a_tracked_page_unasked(tmp_path, capsys):
    study = tmp_path / "study"
    assert cli.main(["compare", *QUICK, "--methods", "pdt", "--seeds", "0", "--out", str(study / "mlp")]) == 0
    assert cli.main(["results", str(study)]) == 0
    page = study / "README.md"
    assert "## mlp" in page.read_text() and "(<mlp/report.md>)" in page.read_text()
    # Once git tracks the page, only an explicit --out replaces it.
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "study/README.md")
    page.write_text("kept by hand\n")
    capsys.readouterr()
    assert cli.main(["results", str(study)]) == 2
    assert "is tracked by git: pass --out" in capsys.readouterr().err
    assert page.read_text() == "kept by hand\n"
    assert cli.main(["results", str(study), "--out", str(page)]) == 0
    assert "## mlp" in page.read_text()


def test_results_refuses_a_missing_notes_file(tmp_path, capsys):
    study = tmp_path / "study"
    (study / "a").mkdir(parents=True)
    assert cli.main(["results", str(study), "--notes", str(tmp_path / "nope.md")]) == 2
    assert "--notes" in capsys.readouterr().err


def _summary(methods: dict) -> dict:
    """A compare summary with the keys the page reads, from per-seed (reduction, final accuracy) pairs."""
    out = {}
    for name, seeds in methods.items():
        per_seed = [
            {
                "seed": s,
                "compared": True,
                "reduction_loss_epochs": r,
                "final_val_acc": acc,
                "accepted_ratio": 0.2,
                "pdt_time_share": 0.01,
            }
            for s, (r, acc) in enumerate(seeds)
        ]
        reached = [r for r, _ in seeds if r is not None]
        stat = {"median": 10, "min": 10, "max": 10, "n": len(reached), "of": len(seeds), "mean": 0.5}
        out[name] = {
            "per_seed": per_seed,
            "ttb_loss_epochs": stat,
            "reduction_loss_epochs": stat | {"median": max(reached) if reached else None},
            "reduction_loss": stat,
            "final_val_acc": {"mean": sum(a for _, a in seeds) / len(seeds)},
            "final_loss_ratio": {"median": 0.5},
            "accepted_ratio": {"mean": 0.2},
            "runs": len(seeds),
            "compared": len(seeds),
            "diverged": 0,
            "pdt": name != "baseline",
            "predictions": {"max": 0 if name == "baseline" else 5},
            "accepting_predictions": {"max": 0 if name == "baseline" else 5},
        }
    return {"methods": out, "reference": "baseline", "seeds": [0, 1]}


def test_variants_are_set_against_pdt_seed_by_seed(tmp_path):
    """Leads in percentage points of the baseline's epochs, median over the seeds both ran; a variant counts
    for a study only with the lead and the accuracy; seeds where it missed the target are n/r."""
    from pdt_bench.results import write_results

    base = [(0.0, 0.70), (0.0, 0.70)]
    studies = {
        "a": {
            "baseline": base,
            "pdt": [(0.50, 0.72), (0.55, 0.72)],
            "pdt-linear@horizon=10": [(0.62, 0.73), (0.65, 0.72)],
        },
        "b": {
            "baseline": base,
            "pdt": [(0.40, 0.80), (0.40, 0.80)],
            "pdt-linear@horizon=10": [(0.60, 0.75), (0.60, 0.75)],
        },
        "c": {
            "baseline": base,
            "pdt": [(0.40, 0.80), (0.40, 0.80)],
            "pdt-linear@horizon=10": [(None, 0.80), (0.6, 0.8)],
        },
        "d": {
            "baseline": base,
            "pdt": [(0.40, 0.80), (0.40, 0.80)],
            "pdt-graded": [(0.45, 0.80), (0.45, 0.80)],
            "random-mask": [(0.9, 0.8), (0.9, 0.8)],
        },
    }
    for name, methods in studies.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(_summary(methods)))
    want = {"variants": {"lead": 0.1, "accuracy_tolerance": 0.003, "studies": 1, "not_counted": ["b"]}}
    text = write_results(tmp_path, tmp_path / "page.md", want).read_text()
    section = text.split("## Beyond the paper")[1]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in section.splitlines() if "| pdt" in line}
    assert "+11 pp" in rows[("pdt-linear@horizon=10", "a")]  # median of +12 and +10
    assert "+20 pp" in rows[("pdt-linear@horizon=10", "b")] and "-5.00" in rows[("pdt-linear@horizon=10", "b")]
    assert "n/r" in rows[("pdt-linear@horizon=10", "c")]
    assert "+5 pp" in rows[("pdt-graded", "d")] and not any("random-mask" in k for k in rows)  # a control
    # b is shown but left out of the count: 1 of 2 studies, not of 3.
    assert "- `pdt-linear@horizon=10`: 1 of 2 studies: a; **reached**" in section
    assert "(b shown, not counted)" in section
    assert "- `pdt-graded`: 0 of 1 studies; **not reached**" in section


def test_step_mode_studies_get_their_section_and_target(tmp_path):
    """A `pdt-bench steps` summary under STUDY/steps/<name>/: its table and link, and the best method run on three
    seeds against the target; a method on one seed does not count, however fast."""
    from pdt_bench.results import write_results

    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "summary.json").write_text(
        json.dumps(_summary({"baseline": [(0.0, 0.7)], "pdt": [(0.5, 0.7)]}))
    )

    def method(fewer, seeds):
        stat = {"median": fewer, "min": fewer, "max": fewer, "mean": 2.5, "of": seeds, "n": seeds}
        same = {"median": 3000, "min": 3000, "max": 3000, "mean": 2.5, "of": seeds, "n": seeds}
        keys = ("best_loss", "final_loss", "accepted_ratio", "pdt_time_share", "seconds_per_1k_steps")
        return {"compared": seeds, "fewer_steps": stat, "steps_to_target": same} | {k: {"mean": 0.1} for k in keys}

    summary = {
        "reference": "baseline",
        "seeds": [0, 1, 2],
        "methods": {"baseline": method(0.0, 3), "pdt": method(0.12, 3), "pdt@horizon=20": method(0.5, 1)},
    }
    (tmp_path / "steps" / "adamw").mkdir(parents=True)
    (tmp_path / "steps" / "adamw" / "summary.json").write_text(json.dumps(summary))
    text = write_results(tmp_path, tmp_path / "page.md", {"steps": {"fewer": 0.15}}).read_text()
    section = text.split("## Step mode")[1]
    assert "### adamw" in section and "(<steps/adamw/report.md>)" in section and "| pdt@horizon=20" in section
    assert "best `pdt`, +12%: **not reached**" in section
    summary["methods"]["pdt"]["fewer_steps"]["median"] = None  # missed on most seeds
    (tmp_path / "steps" / "adamw" / "summary.json").write_text(json.dumps(summary))
    text = write_results(tmp_path, tmp_path / "page.md", {"steps": {"fewer": 0.15}}).read_text()
    assert "none of `pdt` reached it on most seeds: **not reached**" in text


def _run(method: str, seed: int, hit: int, epochs: int = 10, final_acc: float = 0.80) -> dict:
    """A run record whose val acc and training loss reach 0.80 and 1.0 (the baseline's bests) at epoch
    ``hit`` (never, if past ``epochs``), the accuracy ending at ``final_acc``."""
    rows = []
    for e in range(1, epochs + 1):
        acc = (final_acc if e == epochs else 0.80) if e >= hit else 0.5 + 0.02 * e
        loss = 1.0 if e >= hit else 2.0 - 0.05 * e
        row = {"epoch": e, "train_time": float(e), "pdt_time": 0.0, "eval_time": 0.1, "train_loss": loss}
        row |= {"batch_loss": loss, "train_acc": acc, "val_loss": loss, "val_acc": acc, "lr": 0.1, "pdt": None}
        rows.append(row)
    return {"task": "t", "method": method, "seed": seed, "config": {}, "epochs": rows, "diverged": False}


def test_tuned_targets_count_studies_with_the_measured_numbers(tmp_path, capsys):
    """The "tuned" targets: PDT to the tuned baseline's best val acc (with the accuracy), PDT on schedule-free
    against schedule-free's own best training loss at the better point, PDT ahead of the averages."""
    from pdt_bench.records import pack, save_json
    from pdt_bench.results import load_targets, write_results

    hits = {
        # PDT 30 % sooner, ahead of both controls; stacked 20 % sooner at point=eval, 10 % at point=train.
        "v3-a": {
            "baseline": 10,
            "pdt": 7,
            "lawa": 9,
            "random-mask": 8,
            "schedule-free@lr=0.5": 10,
            "pdt-schedule-free@lr=0.5": 8,
            "pdt-schedule-free@lr=0.5@point=train": 9,
        },
        # PDT 10 % sooner, behind the random mask; stacked never reaches schedule-free's best.
        "v3-b": {
            "baseline": 10,
            "pdt": 9,
            "lawa": 11,
            "random-mask": 8,
            "schedule-free@lr=0.5": 10,
            "pdt-schedule-free@lr=0.5": 11,
        },
        # PDT 40 % sooner but 1 point less accurate at the end: the held-out target is missed.
        "v3-c": {"baseline": 10, "pdt": 6, "lawa": 11, "random-mask": 11},
    }
    for study, methods in hits.items():
        for method, hit in methods.items():
            for seed in (0, 1):
                acc = 0.79 if (study, method) == ("v3-c", "pdt") else 0.80
                path = tmp_path / study / "runs" / f"{method}-seed{seed}.json"
                save_json(path, _run(method, seed, hit, final_acc=acc))
        if study == "v3-c":  # only its run store, as a clone has it (summaries are not committed)
            assert pack(tmp_path / study) is not None and not (tmp_path / study / "runs").exists()
            continue
        summary = {"methods": {}, "reference": "baseline", "seeds": [0, 1]}
        (tmp_path / study / "summary.json").write_text(json.dumps(summary))
    want = {
        "studies": [*hits, "v3-d"],
        "held_out": 0.2,
        "held_out_studies": 2,
        "accuracy_tolerance": 0.003,
        "stacked": 0.15,
        "stacked_studies": 1,
        "ahead_of": ["lawa", "random-mask"],
        "ahead_studies": 1,
    }
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"tuned": want}))
    text = write_results(tmp_path, tmp_path / "page.md", load_targets(targets)).read_text()
    section = text.split("## At the tuned configuration")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| v3-")}
    assert "7 (7–7) 2/2, +30%" in rows["v3-a"] and "; train: 9 (9–9) 2/2, +10%" in rows["v3-a"]
    assert "eval: 8 (8–8) 2/2, +20%" in rows["v3-a"] and "n/r 0/2, n/r" in rows["v3-b"]
    cells = {name: [c.strip() for c in row.split("|")[1:-1]] for name, row in rows.items()}
    assert cells["v3-b"][-2] == "schedule-free@lr=0.5: 10 (10–10) 2/2"
    assert cells["v3-c"][3:5] == ["6 (6–6) 2/2, +40%", "-1.00"] and cells["v3-c"][-2:] == ["not run", "not run"]
    assert (
        "val acc, final accuracy at most 0.3 points lower, on ≥ 2 studies: 1 of 3 (v3-a); **not reached**: 1 "
        "instead of 2" in section
    )
    assert "best training loss, on ≥ 1 studies: 1 of 3 (v3-a (`pdt-schedule-free@lr=0.5`)); **reached**" in section
    assert (
        "PDT ahead of `lawa` and `random-mask` in epochs to the tuned baseline's best val acc, on ≥ 1 studies: "
        "2 of 3 (v3-a, v3-c); **reached**" in section
    )
    assert "- Not run yet (counted as missing): v3-d" in section
    # The page puts the section right after the headline, and `results` prints every target line.
    assert text.index("## At the tuned configuration") < text.index("## v3-a")
    printed = capsys.readouterr().out
    assert "not reached: 1 instead of 2" in printed and max(map(len, printed.splitlines())) <= 100
