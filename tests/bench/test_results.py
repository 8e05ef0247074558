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
    assert text.startswith("# Results of the study under") and "[notes.md](../notes.md)" in text
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
    assert "(../study/mlp/report.md)" in text and "(../study/waited/plots/train_loss.png)" in text
    assert "(../study/waited/plots/train_loss_flops.png)" in text
    # A study's landscape is shown with the plane it is drawn on and the command that drew it.
    assert "(../study/mlp/landscape/landscape.png)" in section and "through the common start" in section
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
    assert "## mlp" in page.read_text() and "(mlp/report.md)" in page.read_text()
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
