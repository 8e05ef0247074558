"""`pdt-bench results` over a study of two tiny compares: the page, targets, copied reports."""

from pdt_bench import cli

QUICK = ["--task", "mnist1d-mlp", "--tiny", "--epochs", "3", "--history", "2", "--start-epoch", "1", "--interval", "0"]
QUICK += ["--jobs", "0", "--quiet", "--seeds", "0"]


def test_results_page_over_a_study(tmp_path):
    study = tmp_path / "study"
    assert cli.main(["compare", *QUICK, "--methods", "pdt,nonselective", "--out", str(study / "mnist1d-mlp-sgd")]) == 0
    assert cli.main(["compare", *QUICK, "--methods", "lookahead", "--out", str(study / "other")]) == 0
    (study / "toy.txt").write_text("method  steps\npdt  30\n")
    preamble = tmp_path / "pre.md"
    preamble.write_text("# Results\n\nHow the study was run.\n")
    out = tmp_path / "docs" / "results.md"
    assert cli.main(["results", str(study), "--out", str(out), "--preamble", str(preamble)]) == 0
    text = out.read_text()
    assert text.startswith("# Results")
    # The MLP study has a 50 % target; a study without PDT runs says so instead of a verdict.
    assert "mnist1d-mlp-sgd: target ≥ 50%" in text and "other: no `pdt` runs" in text
    assert ("**reached**" in text) != ("**not reached**" in text)
    assert "| nonselective |" in text and "| lookahead |" in text
    for name in ("mnist1d-mlp-sgd", "other"):
        assert (tmp_path / "docs" / "results" / name / "report.md").exists()
        assert (tmp_path / "docs" / "results" / name / "summary.json").exists()
        assert (tmp_path / "docs" / "results" / name / "plots" / "train_loss.png").exists()
        assert f"(results/{name}/plots/train_loss.png)" in text
    assert text.rstrip().endswith("pdt  30\n```")
