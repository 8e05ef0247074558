"""TTB, runtime reduction and the study summary on hand-made curves, with answers worked out by hand."""

import math

import pytest
from fake_runs import make_run

from pdt_bench.metrics import best, describe, run_row, summarize, time_to_target

# Seed 0: the baseline's best loss 0.25 comes at its last epoch (10 s); its best accuracy 0.8 at epoch 3 (6 s).
BASE0 = make_run("baseline", 0, [1.0, 0.6, 0.4, 0.3, 0.25], [0.5, 0.7, 0.8, 0.8, 0.79])
# Seed 1: its best loss 0.2 is tied at epochs 4 and 5: the first one counts (8 s).
BASE1 = make_run("baseline", 1, [1.0, 0.5, 0.3, 0.2, 0.2], [0.5, 0.6, 0.7, 0.75, 0.75])
# PDT: slower epochs (2.5 s) but fewer of them. Predictions at epochs 4 and 5; epoch 3 waited.
STATS = [
    None,
    None,
    {"predicted": False, "accepted_ratio": 0.0},
    {"predicted": True, "accepted_ratio": 0.4},
    {"predicted": True, "accepted_ratio": 0.2},
]
PDT0_LOSSES = [0.9, 0.5, 0.24, 0.2, 0.18]
PDT0_ACCS = [0.6, 0.8, 0.82, 0.83, 0.83]
PDT0 = make_run("pdt", 0, PDT0_LOSSES, PDT0_ACCS, 2.5, pdt=STATS)
PDT1 = make_run("pdt", 1, [0.8, 0.4, 0.2, 0.15, 0.1], [0.6, 0.75, 0.76, 0.77, 0.77], 2.5, pdt=STATS)
# A slower method (3 s per epoch): reaches seed 0's target only at its last epoch, never seed 1's.
SLOW0 = make_run("slow", 0, [1.0, 0.8, 0.6, 0.4, 0.25], [0.5, 0.6, 0.7, 0.8, 0.8], 3.0)
SLOW1 = make_run("slow", 1, [1.0, 0.8, 0.6, 0.4, 0.3], [0.5, 0.6, 0.7, 0.7, 0.7], 3.0)
# Diverged on seed 0 after reaching the target; fine (and as fast as the baseline) on seed 1.
WILD0 = make_run("wild", 0, [0.9, 0.2, math.nan], [0.6, 0.8, 0.1], diverged=True)
WILD1 = make_run("wild", 1, [1.0, 0.5, 0.3, 0.2, 0.2], [0.5, 0.6, 0.7, 0.75, 0.75])
RUNS = [BASE0, BASE1, PDT0, PDT1, SLOW0, SLOW1, WILD0, WILD1]


def test_time_to_target_first_epoch_reaching_it():
    epochs = PDT0["epochs"]
    assert time_to_target(epochs, "train_loss", 0.25) == (7.5, 3)
    assert time_to_target(epochs, "train_loss", 0.2) == (10.0, 4)  # equal counts as reached
    assert time_to_target(epochs, "val_acc", 0.8) == (5.0, 2)  # accuracy: higher is better
    assert time_to_target(epochs, "train_loss", 0.1) is None
    assert time_to_target(epochs, "val_acc", 0.9) is None


def test_non_finite_values_never_reach_a_target():
    assert time_to_target(WILD0["epochs"], "train_loss", 0.1) is None
    assert best(WILD0["epochs"], "train_loss") == 0.2
    assert best(make_run("x", 0, [math.nan], [0.1])["epochs"], "train_loss") is None


def test_reference_ttb_is_its_first_best_epoch():
    row = run_row(BASE1, BASE1)
    assert (row["ttb_loss_s"], row["ttb_loss_epochs"]) == (8.0, 4)  # tie at epochs 4 and 5
    assert (row["ttb_acc_s"], row["ttb_acc_epochs"]) == (8.0, 4)
    assert row["reduction_loss"] == row["reduction_acc"] == 0.0
    assert row["final_loss_ratio"] == 1.0


def test_faster_method():
    row = run_row(PDT0, BASE0)
    # Loss 0.24 <= 0.25 at epoch 3 = 7.5 s against the baseline's 10 s.
    assert (row["ttb_loss_s"], row["ttb_loss_epochs"]) == (7.5, 3)
    assert row["reduction_loss"] == pytest.approx(1 - 7.5 / 10)
    # In epochs the gain is larger: PDT's epochs are slower (2.5 s against 2 s), 3 of 5 epochs.
    assert row["reduction_loss_epochs"] == pytest.approx(1 - 3 / 5)
    # Accuracy 0.8 at epoch 2 = 5 s against the baseline's 6 s.
    assert (row["ttb_acc_s"], row["ttb_acc_epochs"]) == (5.0, 2)
    assert row["reduction_acc"] == pytest.approx(1 - 5 / 6)
    assert row["final_loss_ratio"] == pytest.approx(0.18 / 0.25)
    assert row["best_train_loss"] == 0.18 and row["best_val_acc"] == 0.83 and row["final_val_acc"] == 0.83
    # Mean over the two predicting epochs only; the waiting epoch's 0.0 does not dilute it.
    assert row["accepted_ratio"] == pytest.approx(0.3)
    assert row["pdt_time_share"] == pytest.approx(1.0 / 12.5)


def test_slower_method_has_a_negative_reduction():
    row = run_row(SLOW0, BASE0)
    assert (row["ttb_loss_s"], row["ttb_loss_epochs"]) == (15.0, 5)
    assert row["reduction_loss"] == pytest.approx(1 - 15 / 10)
    assert row["reduction_loss_epochs"] == 0.0  # the same 5 epochs, each slower
    assert row["reduction_acc"] == pytest.approx(1 - 12 / 6)


def test_never_reached():
    row = run_row(SLOW1, BASE1)
    assert row["ttb_loss_s"] is None and row["ttb_loss_epochs"] is None and row["reduction_loss"] is None
    assert row["ttb_acc_s"] is None


def test_authors_batch_loss_definition_is_measured_separately():
    # Same full-pass curve, but batch losses that only reach the baseline's best batch loss at epoch 5.
    run = make_run("pdt", 0, PDT0_LOSSES, PDT0_ACCS, 2.5, batch_losses=[1.0, 0.9, 0.5, 0.3, 0.25])
    row = run_row(run, BASE0)
    assert row["ttb_loss_s"] == 7.5
    assert row["ttb_batch_loss_s"] == 12.5 and row["reduction_batch_loss"] == pytest.approx(1 - 12.5 / 10)


def test_describe():
    assert describe([1.0, 3.0]) == {
        "mean": 2.0,
        "std": pytest.approx(math.sqrt(2)),
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "n": 2,
        "of": 2,
    }
    assert describe([1.0, 2.0, None])["median"] == 2.0  # a miss ranks last
    assert describe([1.0, None])["median"] is None  # half missed: the median is a miss
    assert describe([None, -1.0, 0.5], missing=-math.inf)["median"] == -1.0
    one = describe([4.0, None])
    assert (one["mean"], one["std"], one["n"], one["of"]) == (4.0, 0.0, 1, 2)
    assert describe([]) == {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0, "of": 0}
    # The spread counts a miss too: a reduction that never came is the lowest one, and has no value.
    spread = describe([0.3, None, 0.5], missing=-math.inf)
    assert (spread["min"], spread["max"], spread["median"]) == (None, 0.5, 0.3)


def test_summary_per_method():
    methods = summarize(RUNS)["methods"]
    assert list(methods) == ["baseline", "pdt", "slow", "wild"]

    base = methods["baseline"]
    assert base["ttb_loss_s"]["mean"] == 9.0 and base["reduction_loss"]["mean"] == 0.0

    pdt = methods["pdt"]
    # Seed 0: 1 - 7.5/10 = 0.25; seed 1: 0.2 at epoch 3 = 7.5 s against 8 s: 1 - 7.5/8 = 0.0625.
    assert pdt["reduction_loss"]["mean"] == pytest.approx(0.15625)
    assert pdt["reduction_loss"]["std"] == pytest.approx(0.1875 / math.sqrt(2))
    assert pdt["reduction_loss"]["median"] == pytest.approx(0.15625)
    assert pdt["ttb_loss_epochs"]["mean"] == 3.0 and pdt["never_reached_loss"] == 0
    assert pdt["final_loss_ratio"]["mean"] == pytest.approx((0.18 / 0.25 + 0.1 / 0.2) / 2)
    assert pdt["accepted_ratio"]["mean"] == pytest.approx(0.3)

    slow = methods["slow"]
    # Reached on seed 0 only: mean over that seed, the miss counted, no median (half missed).
    assert slow["ttb_loss_s"] == {"mean": 15.0, "std": 0.0, "median": None, "min": 15.0, "max": None, "n": 1, "of": 2}
    assert slow["reduction_loss"]["mean"] == pytest.approx(-0.5) and slow["reduction_loss"]["median"] is None
    assert slow["never_reached_loss"] == 1
    assert slow["accepted_ratio"]["n"] == 0  # no PDT: nothing to average

    wild = methods["wild"]
    # The diverged seed is left out of every statistic and counted.
    assert (wild["runs"], wild["diverged"], wild["compared"]) == (2, 1, 1)
    assert wild["ttb_loss_s"] == {"mean": 8.0, "std": 0.0, "median": 8.0, "min": 8.0, "max": 8.0, "n": 1, "of": 1}
    assert wild["final_val_acc"]["mean"] == 0.75
    assert all(math.isfinite(s["mean"]) for s in wild.values() if isinstance(s, dict) and s["n"])


def test_any_method_can_be_the_reference():
    summary = summarize(RUNS, reference="pdt")
    assert summary["reference"] == "pdt"
    assert summary["methods"]["pdt"]["reduction_loss"]["mean"] == 0.0
    # The baseline never gets down to PDT's best losses (0.18 and 0.1).
    assert summary["methods"]["baseline"]["never_reached_loss"] == 2
    assert summary["methods"]["baseline"]["ttb_loss_s"]["mean"] is None
    with pytest.raises(ValueError, match="no runs of the reference method 'lookahead'"):
        summarize(RUNS, reference="lookahead")


def test_seed_without_a_successful_reference_is_not_compared():
    wild_reference = summarize([WILD0, WILD1, PDT0, PDT1], reference="wild")
    pdt = wild_reference["methods"]["pdt"]
    assert pdt["compared"] == 1 and pdt["ttb_loss_s"]["of"] == 1
    assert pdt["final_val_acc"]["n"] == 2  # non-comparative figures still use every successful run
