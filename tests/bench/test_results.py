"""`pdt-bench results` over a study of tiny compares: headline, targets as data, links, refusals."""

import json

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
    preamble = tmp_path / "pre.md"
    preamble.write_text("# Results\n\nHow the study was run.\n")
    targets = tmp_path / "targets.json"
    want = {"reduction": 0.3, "ahead_of": ["random-mask", "pdt-linear", "ema"], "budget": True}
    targets.write_text(json.dumps({"mlp": want}))
    out = tmp_path / "docs" / "results.md"
    argv = ["results", str(study), "--out", str(out), "--preamble", str(preamble), "--targets", str(targets)]
    assert cli.main(argv) == 0
    text = out.read_text()
    assert text.startswith("# Results") and "## Headline" in text
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
    assert text.rstrip().endswith("pdt  30\n```")

    capsys.readouterr()
    assert cli.main(["results", str(study / "mlp"), "--out", str(tmp_path / "x.md")]) == 2
    assert "is a single compare output" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
