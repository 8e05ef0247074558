"""The table, summary JSON, report and every plot, produced from synthetic runs."""

import json
import math
import statistics

import numpy as np
import pytest
import torch
from fake_runs import make_run
from tables import table_rows

from pdt_bench import metrics, plots, report

PARAMS = {"conv.weight": "Conv2d", "conv.bias": "Conv2d", "fc.weight": "Linear", "fc.bias": "Linear"}
EPOCHS = 12
START = 5


def synthetic_run(method, seed, rate=0.3, seconds_per_epoch=1.0, pdt=False, diverge_at=None):
    """A run whose loss decays as ``exp(-rate * epoch)`` (seed-dependent wiggle), PDT statistics if ``pdt``."""
    epochs = []
    for e in range(1, EPOCHS + 1):
        loss = math.exp(-rate * e) * (1 + 0.02 * seed)
        if diverge_at is not None and e == diverge_at:
            loss = math.nan
        stats = None
        if pdt:
            predicted = e >= START
            ratio = 0.5 - 0.02 * e if predicted else 0.0
            stats = {"epoch": e - 1, "predicted": predicted, "accepted_ratio": ratio}
            if predicted:
                numel = 1000
                stats |= {
                    "accepted": int(ratio * numel),
                    "numel": numel,
                    "rejected": {
                        "consistency": 400,
                        "lower_bound": 50 * (EPOCHS - e),
                        "upper_bound": 20 * e,
                        "nonfinite": 0,
                    },
                    "accepted_ratio_per_param": {n: ratio * (0.5 + i / 4) for i, n in enumerate(PARAMS)},
                }
        epochs.append(
            {
                "epoch": e,
                "train_time": e * seconds_per_epoch,
                "pdt_time": 0.05 if pdt else 0.0,
                "eval_time": 0.2,
                "train_loss": loss,
                "batch_loss": 1.1 * loss,
                "train_acc": 1 - loss / 2,
                "val_loss": loss,
                "val_acc": 1 - loss / 2 - 0.01 * seed,
                "lr": 0.05,
                "pdt": stats,
            }
        )
        if diverge_at is not None and e == diverge_at:
            break
    return {
        "task": "synthetic",
        "method": method,
        "seed": seed,
        "config": {"task": "synthetic", "method": method, "seed": seed, "lr": 0.05, "epochs": EPOCHS},
        "epochs": epochs,
        "param_types": dict(PARAMS),
        "overhead": {
            "model_flops_per_epoch": 1e9,
            "pdt_flops_per_prediction": 1e7 if pdt else 0,
            "peak_memory_bytes": 2**30,
            "peak_memory_kind": "process RSS",
            "snapshot_bytes": 5 * 4000 if pdt else 0,
        },
        "diverged": diverge_at is not None,
    }


def synthetic_study():
    """baseline; pdt (faster per epoch, slower clock); slow (never reaches the baseline's best); a diverged run."""
    runs = []
    for seed in range(3):
        runs.append(synthetic_run("baseline", seed))
        runs.append(synthetic_run("pdt", seed, rate=0.45, seconds_per_epoch=1.05, pdt=True))
        runs.append(synthetic_run("slow", seed, rate=0.2))
        runs.append(synthetic_run("nonselective", seed, rate=0.5, pdt=True, diverge_at=7 if seed == 0 else None))
    return runs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    runs = synthetic_study()
    masks = {"conv.weight": torch.rand(8, 27) < 0.3, "fc.weight": torch.rand(10, 600) < 0.5}
    (out / "masks").mkdir()
    torch.save({"epoch": 6, "masks": masks}, out / "masks" / "pdt-seed1.pt")
    torch.save({"epoch": 9, "masks": masks}, out / "masks" / "nonselective-seed1.pt")
    summary = metrics.summarize(runs)
    paths = plots.write_plots(out, runs, mask_epoch=6)
    return out, runs, summary, paths


def test_table_has_fixed_columns_and_counts(study):
    _, _, summary, _ = study
    parts = report.format_table(summary).split("\n\n")
    assert len(parts) > 1  # more figures than one screen-wide table holds
    for table in parts:
        lines = table.splitlines()
        assert len(lines) == 2 + 4
        assert len({len(line) for line in lines}) == 1
        # Aligned as plain text too: every row's column borders at the same places.
        assert len({tuple(i for i, c in enumerate(line) if c == "|") for line in lines}) == 1
        assert lines[1].split("|")[1].strip().endswith("-") and lines[1].split("|")[2].strip().endswith(":")
        assert len(table_rows(table)[0]) <= report.MAX_COLUMNS
        assert table_rows(table)[0][0] == "method"
    rows = {}
    for table in parts:
        for row in table_rows(table)[1:]:
            rows.setdefault(row[0], []).extend(row[1:])
    assert "n/r" in rows["slow"] and "0/3" in rows["slow"]
    assert "3/3" in rows["pdt"] and rows["nonselective"][-1] == "1/3"  # diverged 1 of 3
    assert any("±" in cell for cell in rows["pdt"])
    headers = [h for table in parts for h in table_rows(table)[0]]
    assert {"TTB-Loss s", "TTB-Acc s", "TTB-ValLoss s"} <= set(headers)


def _long_named_study():
    """The synthetic study with the long method names a budget and an lr sweep give."""
    runs = synthetic_study()
    for seed in range(3):
        runs.append(synthetic_run("baseline@epochs=32", seed, rate=0.31))
        runs.append(synthetic_run("schedule-free@lr=0.5", seed, rate=0.29))
    return metrics.summarize(runs)


def test_the_compact_table_fits_a_100_column_terminal():
    summary = _long_named_study()
    text = report.compact_table(summary)
    assert max(len(line) for line in text.splitlines()) <= 100
    header, *body = table_rows(text)
    assert header == ["method", "train loss", "val acc", "val loss", "final acc %", "accepted %"]
    rows = {row[0]: row for row in body}
    assert set(rows) == set(summary["methods"])
    # val_loss = train_loss in the synthetic runs, and val_acc = 1 - loss / 2 - 0.01 seed: one epoch count.
    assert rows["pdt"][1:4] == ["8 +33% 3/3"] * 3 and rows["slow"][1:4] == ["n/r n/r 0/3"] * 3
    assert rows["pdt"][4] == "98.77 (+1.16)" and rows["pdt"][5] == "33.0" and rows["baseline"][5] == "-"
    # The footnote defines every column.
    footnote = text[text.rindex("|") :]
    assert all(h in footnote.replace("\n", " ") for h in header[1:])
    # One verdict line per compared method, the report's judgement in short words.
    unwrapped = text.replace("\n  ", " ")  # a verdict wrapped at 100 columns goes on indented
    verdicts = {line.split(":")[0]: line for line in unwrapped.splitlines() if ": " in line and line[0] != "|"}
    assert set(summary["methods"]) - {"baseline"} <= set(verdicts)
    helped = "epochs to train loss, epochs to val acc, epochs to val loss, final loss, final acc"
    assert verdicts["pdt"] == f"pdt: helped {helped}."
    assert verdicts["nonselective"].endswith("; worse stability.")


def test_summary_json(study, tmp_path):
    _, _, summary, _ = study
    path = report.write_summary(tmp_path, summary)
    loaded = json.loads(path.read_text())
    assert loaded["reference"] == "baseline" and loaded["seeds"] == [0, 1, 2]
    assert loaded["methods"]["pdt"]["reduction_loss"]["n"] == 3
    assert loaded["methods"]["slow"]["never_reached_loss"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_every_plot_is_written(study):
    out, _, _, paths = study
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "train_loss.png",
            "val_acc.png",
            "train_loss_flops.png",
            "accepted_ratio.png",
            "accepted_ratio_per_layer.png",
            "accepted_ratio_per_layer_type.png",
            "rejection_reasons.png",
            "mask-pdt.png",  # nonselective's mask is of epoch 9, not the requested 6
        ]
    )
    for p in paths:
        assert p.parent == out / "plots" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_pdt_or_masks(tmp_path):
    runs = [synthetic_run("baseline", s) for s in range(2)]
    paths = plots.write_plots(tmp_path, runs)
    assert [p.name for p in paths] == ["train_loss.png", "val_acc.png", "train_loss_flops.png"]


def test_sweep_heatmap(tmp_path):
    rows = [
        {"lr": lr, "batch_size": b, "reduction": None if (lr, b) == (0.1, 256) else lr * b / 100}
        for lr in (0.01, 0.05, 0.1)
        for b in (64, 256)
    ]
    path = plots.plot_sweep(tmp_path / "sweep.png", rows, x="lr", y="batch_size", value="reduction")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_report(study):
    out, runs, summary, paths = study
    command = "pdt-bench compare --task synthetic --methods baseline,pdt,slow,nonselective --seeds 0,1,2"
    text = report.write_report(out, runs, summary, command, paths).read_text()
    assert command in text
    listed = text[text.index("## Settings") : text.index("## Results")]
    assert "- `lr`: 0.05\n" in listed and "- `epochs`: 12\n" in listed and "|" not in listed
    assert "![train_loss](<plots/train_loss.png>)" in text and "![mask-pdt](<plots/mask-pdt.png>)" in text
    assert "its best loss at its last epoch on 3/3 seeds" in text
    assert "### Final-loss ratio" in text and "authors' loss definition" in text
    verdicts = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert set(verdicts) == {"pdt", "slow", "nonselective"}
    # pdt reaches the loss target on every seed, sooner on the clock, and ends lower.
    assert (
        "helped with: epochs to the best train loss, epochs to the best validation accuracy, epochs to the best "
        "validation loss, final train loss, final accuracy;" in (verdicts["pdt"])
    )
    assert "on 3/3 runs, median" in verdicts["pdt"] and "sooner in epochs (seeds: +" in verdicts["pdt"]
    assert (
        "helped with: nothing" in verdicts["slow"]
        and "never reached the baseline's best train loss" in (verdicts["slow"])
    )
    assert "stability" in verdicts["nonselective"] and "diverged on 1/3 runs" in verdicts["nonselective"]


def test_verdict_reads_small_differences_as_about_the_same():
    runs = [synthetic_run(m, s) for m in ("baseline", "twin") for s in range(2)]
    methods = metrics.summarize(runs)["methods"]
    line = report.verdict("twin", methods["twin"], methods["baseline"], "baseline")
    same = "epochs to the best train loss, epochs to the best validation accuracy, epochs to the best validation loss"
    assert f"helped with: nothing; about the same: {same}," in line
    assert "did not help with: nothing." in line and "median at the same time in epochs" in line


def test_flops_to_the_reference_best_count_model_and_pdt_work(study):
    out, runs, summary, paths = study
    text = report.write_report(out, runs, summary, "pdt-bench compare", paths).read_text()
    rows = {row[0]: row for row in table_rows(text[text.index("## Overheads") :])[1:]}
    # The baseline reaches its own best at its last epoch: 12 epochs of 1e9 FLOPs.
    assert "1.2e+10 (3/3)" in rows["baseline"]
    # pdt's loss exp(-0.45 e)(1 + 0.02 s) first reaches exp(-0.3 * 12)(1 + 0.02 s) at epoch 8,
    # after predictions at epochs 5 to 8 (START = 5): 8e9 + 4e7 FLOPs.
    assert "8.04e+09 (3/3)" in rows["pdt"]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots draw, kept instead of written: ``(figure, title)`` pairs."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, title=None: figures.append((fig, title)) or path)
    return figures


def test_the_mask_heatmap_shows_sparse_acceptance_on_a_colour_scale(drawn, tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"big.weight": torch.rand(256, 4096, generator=g) < 0.1, "none.weight": torch.zeros(10, 64, dtype=bool)}
    plots._mask_plot(tmp_path / "m.png", "pdt", 0, {"epoch": 6, "masks": masks}, "synthetic, study s")
    ((fig, title),) = drawn
    big, none, bar = fig.axes
    assert title == "synthetic, study s"
    image = big.images[0]
    cells = image.get_array()
    # A layer with 10 % accepted is visibly coloured (a linear block mean showed it as none), and a block of
    # 64 weights with a single accepted one is an eighth up the scale, not 1/64.
    assert cells.shape == (32, 512) and float(np.median(image.norm(cells))) > 0.25
    assert image.norm(cells[cells > 0]).min() >= 0.125
    assert none.images[0].get_array().max() == 0
    assert "accepted fraction" in bar.get_ylabel() and "a cell: the fraction of its block" in big.get_title()


def test_the_training_loss_plot_marks_the_reference_best_and_names_the_study(drawn, tmp_path):
    runs = synthetic_study()
    plots._curve_plot(tmp_path / "l.png", runs, "train_loss", "loss", True, "synthetic, study s", "baseline")
    ((fig, title),) = drawn
    target = statistics.fmean(metrics.best(r["epochs"], "train_loss") for r in runs if r["method"] == "baseline")
    for ax in fig.axes:
        flat = [line.get_ydata() for line in ax.get_lines() if len(line.get_ydata()) == 2]
        marks = [y for y in flat if y[0] == y[1] == pytest.approx(target)]
        assert len(marks) == 1
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert f"baseline's best: {target:.4g}" in labels and title == "synthetic, study s"


def test_no_verdict_against_a_reference_that_did_not_learn():
    runs = [synthetic_run("baseline", s, rate=0.001) for s in range(2)]  # loss 0.999x its first epoch's
    runs += [synthetic_run("pdt", s, rate=0.3, pdt=True) for s in range(2)]
    summary = metrics.summarize(runs)
    methods = summary["methods"]
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    assert line.startswith("**pdt**: no verdict: the baseline did not learn (final training loss")
    assert "helped" not in report.compact_table(summary)
    learned = metrics.summarize(synthetic_study())["methods"]
    assert report.did_not_learn(learned["baseline"], "baseline") is None


def negative(run, shift=1.0):
    """``run`` with its losses lowered by ``shift``: a loss below zero, as SimSiam's cosine similarity."""
    for e in run["epochs"]:
        for key in ("train_loss", "batch_loss", "val_loss"):
            e[key] -= shift
    return run


def test_a_negative_loss_is_judged_and_drawn_as_a_positive_one(tmp_path):
    positive = [synthetic_run("baseline", s, rate=0.2) for s in range(2)]
    positive += [synthetic_run("pdt", s, rate=0.4, pdt=True) for s in range(2)]
    shifted = [
        negative(
            synthetic_run(
                r["method"], r["seed"], rate=0.2 if r["method"] == "baseline" else 0.4, pdt=r["method"] == "pdt"
            )
        )
        for r in positive
    ]
    verdicts = []
    for runs in (positive, shifted):
        methods = metrics.summarize(runs)["methods"]
        assert report.did_not_learn(methods["baseline"], "baseline") is None
        verdicts.append(report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline"))
    assert "final train loss" in verdicts[1].split("about the same")[0].split("helped with:")[1]
    assert verdicts[0].split(" (")[0] == verdicts[1].split(" (")[0]
    flat = [negative(synthetic_run("baseline", s, rate=0.001), shift=2.0) for s in range(2)]  # -1.001 to -1.012
    assert "did not learn" in report.did_not_learn(metrics.summarize(flat)["methods"]["baseline"], "baseline")
    assert all(p.exists() for p in plots.write_plots(tmp_path, shifted))


def test_a_diverged_run_leaves_a_positive_loss_on_a_log_scale(drawn, tmp_path):
    runs = synthetic_study()  # nonselective's seed 0 ends on a NaN loss: not drawn, so not a reason to go linear
    plots._curve_plot(tmp_path / "l.png", runs, "train_loss", "loss", True, "s", "baseline")
    plots.loss_against_flops(tmp_path / "f.png", runs)
    assert [ax.get_yscale() for fig, _ in drawn for ax in fig.axes] == ["log", "log", "log"]


def test_the_final_loss_is_judged_seed_by_seed_where_the_reference_changes_sign():
    # PDT ends lower on both seeds; the reference ends above zero on one and below on the other.
    acc = [0.5] * 3
    runs = [make_run("baseline", 0, [1.0, 0.7, 0.5], acc), make_run("baseline", 1, [1.0, 0.3, -0.05], acc)]
    runs += [make_run("pdt", 0, [1.0, 0.6, 0.45], acc), make_run("pdt", 1, [1.0, 0.2, -0.2], acc)]
    methods = metrics.summarize(runs)["methods"]
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    assert "final train loss" in line.split("about the same")[0].split("helped with:")[1]


def test_a_reference_that_ends_at_zero_loss_is_summarized_without_a_final_loss_verdict():
    acc = [0.5] * 3
    runs = [make_run("baseline", s, [1.0, 0.5, 0.0], acc) for s in range(2)]
    runs += [make_run("pdt", s, [1.0, 0.4, 0.1], acc) for s in range(2)]
    methods = metrics.summarize(runs)["methods"]
    assert methods["pdt"]["final_loss_ratio"]["n"] == 0
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    assert "final train loss not compared (the baseline's is 0)" in line
    assert "final train loss" not in line.split(". It ")[0]


def test_a_link_whose_target_holds_a_space_stays_a_link():
    assert report.link("report", "my study/report.md") == "[report](<my study/report.md>)"
    assert report.link("loss", "a b/loss.png", image=True) == "![loss](<a b/loss.png>)"
