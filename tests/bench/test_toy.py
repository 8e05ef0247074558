"""The paper's toy problem (Sec. 3, App. A.1) through the real plug-in, and the `pdt-bench toy` command."""

import math

import pytest

from pdt_bench import cli, toy


@pytest.fixture(scope="module")
def paper_setting():
    """h = 5, tau = 5, T0 = 5, Ti = 1, 100 GD steps: every method."""
    return {r.method: r for r in toy.compare(steps=100)}


def test_gd_needs_53_steps(paper_setting):
    assert paper_setting["gd"].steps_to_threshold == 53


def test_faster_xyz_variant_needs_about_25_steps(paper_setting):
    assert 24 <= paper_setting["gd-3x-xyz"].steps_to_threshold <= 27


def test_pdt_reaches_the_threshold_within_30_steps_and_stays_stable(paper_setting):
    pdt = paper_setting["pdt"]
    assert pdt.steps_to_threshold is not None and pdt.steps_to_threshold <= 30
    assert not pdt.diverged and pdt.final_loss < paper_setting["gd"].final_loss
    assert pdt.predictions >= 40 and 0.0 < pdt.mean_accepted_ratio < 1.0


def test_nonselective_prediction_diverges(paper_setting):
    """Accepting every prediction (Tano et al. style) blows up, as in the paper's ablation."""
    nonselective = paper_setting["nonselective"]
    assert nonselective.steps_to_threshold is None and not math.isfinite(nonselective.final_loss)


def test_consistency_only_is_not_faster_and_diverges_when_predicting_every_epoch(paper_setting):
    """At Ti = 1 consistency-only ties with PDT; predicting every epoch (Ti = 0) it diverges while PDT does not."""
    assert paper_setting["consistency-only"].steps_to_threshold >= paper_setting["pdt"].steps_to_threshold
    every_epoch = {r.method: r for r in toy.compare(["pdt", "consistency-only"], interval=0)}
    assert every_epoch["consistency-only"].diverged
    assert not every_epoch["pdt"].diverged and every_epoch["pdt"].steps_to_threshold <= 30


def test_cli_prints_every_method(capsys):
    assert cli.main(["toy", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    for method in toy.METHODS:
        assert method in out
    assert cli.main(["toy", "--methods", "gd,unknown"]) == 2
    assert "method must be one of" in capsys.readouterr().err
