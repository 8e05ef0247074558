"""The skeptic's controls: budget-matched baseline, EMA, schedule-free;
and the verdict on hand-made curves where no prediction ran, nothing was accepted, or one seed ran."""

import math

import pytest
import torch
from fake_data import write_cifar_pickles
from fake_runs import make_run

from pdt_bench import metrics, report, results, tasks
from pdt_bench.compare import budget_methods
from pdt_bench.methods import EMA_DECAY, parse_method
from pdt_bench.train import RunConfig, run
from torch_pdt import recompute_batch_norm

TINY = tasks.TaskOptions(tiny=True)
QUICK = dict(epochs=3, history=2, start_epoch=1, interval=0, task_options=TINY)


def test_method_suffixes_combine_and_bad_ones_are_named():
    m = parse_method("schedule-free@lr=0.5@epochs=30")
    assert (m.schedule_free, m.lr, m.epochs) == (True, 0.5, 30)
    assert parse_method("ema").ema_decay == EMA_DECAY and parse_method("ema@decay=0.9").ema_decay == 0.9
    assert parse_method("baseline@lrx2@epochs=7").lr_scale == 2.0
    adaptive = parse_method("pdt@pacing=adaptive@tolerance=0.1@on_jump=reset")
    assert adaptive.pdt == {"criterion": "pdt", "pacing": "adaptive", "tolerance": 0.1, "on_jump": "reset"}
    for bad, words in [
        ("baseline@epochs=0", "bad value"),
        ("baseline@epochs=x", "bad suffix"),
        ("baseline@decay=0.9", "bad value"),  # only ema has a decay
        ("ema@decay=1.5", "bad value"),
        ("pdt@tau=3", "bad suffix"),  # not a PDT option
        ("baseline@pacing=adaptive", "bad value"),  # a PDT option, on a method without PDT
        ("nope@lrx2", "unknown method"),
        ("pdt@horizon=2@horizon=3", "'pdt@horizon=2@horizon=3' sets horizon twice"),
        ("baseline@lrx2@lr=0.1", "sets lr twice"),  # the scale would be ignored
    ]:
        with pytest.raises(ValueError, match=words):
            parse_method(bad)


def test_budget_sweep_names_the_compressed_baselines():
    assert budget_methods("baseline", [0.25, 0.5, 1.0], 60) == ["baseline@epochs=15", "baseline@epochs=30"]
    assert budget_methods("baseline", [0.001, 0.002], 60) == ["baseline@epochs=1"]


def test_budget_matched_baseline_anneals_its_whole_schedule_into_its_epochs():
    r = run(RunConfig("mnist1d-mlp", "baseline@epochs=4", epochs=12, lr=0.1, eta_min=0.001, task_options=TINY))
    assert [e["epoch"] for e in r["epochs"]] == [1, 2, 3, 4] and r["config"]["epochs"] == 4
    # The lr after each epoch's schedule step: cosine from 0.1 to 0.001 over 4 epochs, not 12.
    expected = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)]
    assert [e["lr"] for e in r["epochs"]] == pytest.approx(expected)
    assert r["epochs"][-1]["lr"] == pytest.approx(0.001)


def _train_epoch(model, opt, x, y):
    for i in range(0, len(y), 8):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8]).backward()
        opt.step()


def test_ema_trains_as_the_baseline_and_evaluates_the_average():
    base = run(RunConfig("mnist1d-mlp", "baseline", **QUICK))
    ema = run(RunConfig("mnist1d-mlp", "ema", **QUICK))
    instant = run(RunConfig("mnist1d-mlp", "ema@decay=1e-9", **QUICK))
    batch = [[e["batch_loss"] for e in r["epochs"]] for r in (base, ema, instant)]
    assert batch[0] == batch[1] == batch[2]  # the average never feeds back into training
    full = [[e["train_loss"] for e in r["epochs"]] for r in (base, ema, instant)]
    assert full[1] != full[0]  # the averaged model is the one evaluated
    assert full[2] == pytest.approx(full[0], rel=1e-5)  # with no memory the average is the model


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar_pickles(root, per_batch=64)
    return tasks.TaskOptions(tiny=True, data_dir=root, cache_dir=root / "cache")


@pytest.mark.parametrize("task", ["mnist1d-mlp", "cifar10-fcn"])
def test_schedule_free_trains_without_a_schedule(task, tiny_cifar):
    options = tiny_cifar if task.startswith("cifar") else TINY
    r = run(RunConfig(task, "schedule-free", **(QUICK | {"task_options": options})))
    assert not r["diverged"] and all(math.isfinite(e["train_loss"]) for e in r["epochs"])
    lr = RunConfig(task, "baseline", task_options=options).resolved(tasks.build(task, options)).lr
    assert r["config"]["lr"] == pytest.approx(10 * lr)  # SGD's schedule-free rate: 10x the scheduled one
    assert len({e["lr"] for e in r["epochs"]}) == 1  # no learning-rate schedule
    assert run(RunConfig(task, "schedule-free@lr=0.01", **(QUICK | {"task_options": options})))["config"]["lr"] == 0.01
    doubled = run(RunConfig(task, "schedule-free@lrx2", **(QUICK | {"task_options": options, "epochs": 1})))
    assert doubled["config"]["lr"] == pytest.approx(20 * lr)  # @lrx scales schedule-free's own default


def test_schedule_free_recomputes_batch_norm_statistics_at_the_evaluation_point():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    batches = [torch.randn(16, 4) * 3 + 1 for _ in range(3)]
    model.eval()
    recompute_batch_norm(model, batches)
    with torch.no_grad():
        out = torch.cat([model[0](b) for b in batches])
    torch.testing.assert_close(model[1].running_mean, out.mean(0))
    assert not model.training  # the mode is restored


def _summary(pdt_stats, seeds=(0, 1)):
    """The baseline's best loss 0.4 comes at epoch 3; pdt's curve reaches it at epoch 2 on seed 0, epoch 3
    on the others."""
    runs = [make_run("baseline", s, [1.0, 0.6, 0.4], [0.5, 0.6, 0.7]) for s in seeds]
    runs += [make_run("pdt", s, [1.0, 0.35 if s == 0 else 0.45, 0.3], [0.5, 0.62, 0.71], pdt=pdt_stats) for s in seeds]
    return metrics.summarize(runs)["methods"]


def test_verdict_says_when_no_prediction_ran():
    waited = [{"predicted": False, "accepted_ratio": 0.0}] * 3
    methods = _summary(waited)
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    assert "no effect to report: no prediction ran (every epoch was before T0 or short of the h snapshots" in line
    assert "sooner" not in line
    headers, rows = report._rows({"methods": methods})
    assert rows[1][headers.index("median % (epochs)")] == "no prediction"


def test_verdict_says_when_predictions_accepted_nothing():
    empty = [None, {"predicted": True, "accepted": 0, "accepted_ratio": 0.0}] + [
        {"predicted": True, "accepted": 0, "accepted_ratio": 0.0}
    ]
    methods = _summary(empty)
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    assert "its predictions accepted no element" in line


def test_verdict_judges_epochs_over_seeds_and_flags_one_seed():
    accepted = [None, {"predicted": True, "accepted": 3, "accepted_ratio": 0.3}] * 2
    methods = _summary(accepted[:3])
    line = report.verdict("pdt", methods["pdt"], methods["baseline"], "baseline")
    # Seed 0: 1 - 2/3 of the epochs; seed 1: 0; the median of two is their mean.
    assert "median 16.7 % sooner in epochs (seeds: +0 % to +33 %)" in line and "one seed" not in line
    one = _summary(accepted[:3], seeds=(0,))
    assert "(one seed: no spread, read with care)" in report.verdict("pdt", one["pdt"], one["baseline"], "baseline")


def test_the_practical_cifar_setting_trains(tiny_cifar):
    practical = tasks.TaskOptions(**(vars(tiny_cifar) | {"augment": True}))
    r = run(RunConfig("cifar10-fcn", "pdt", **(QUICK | {"task_options": practical})))
    assert not r["diverged"] and r["epochs"][-1]["pdt"]["predicted"]
    assert "crop+flip (practical)" in r["config"]["task_description"]


def test_verdict_of_a_method_that_diverged_everywhere():
    runs = [make_run("baseline", s, [1.0, 0.6, 0.4], [0.5, 0.6, 0.7]) for s in (0, 1)]
    runs += [make_run("wild", s, [1.0, math.nan], [0.5, 0.1], diverged=True) for s in (0, 1)]
    methods = metrics.summarize(runs)["methods"]
    assert report.verdict("wild", methods["wild"], methods["baseline"], "baseline") == "**wild**: diverged on 2/2 runs."


def test_headline_counts_a_control_that_ties_pdt_as_fast():
    stats = [None, {"predicted": True, "accepted": 3, "accepted_ratio": 0.3}, None]
    runs = [make_run("baseline", s, [1.0, 0.6, 0.4], [0.5, 0.6, 0.7]) for s in (0, 1)]
    for name in ("pdt", "pdt-linear"):
        runs += [make_run(name, s, [1.0, 0.6, 0.4], [0.5, 0.6, 0.7], pdt=stats) for s in (0, 1)]
    sentence = results._sentence(metrics.summarize(runs))
    assert sentence == (
        "PDT needs as many epochs to the training loss as the baseline; to val acc +0%, to val loss +0%; "
        "accuracy +0.00 points; as fast or faster: pdt-linear."
    )


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"s": {"reduction": "30%"}}', "s.reduction must be a float"),
        ('["s"]', "expected an object"),
        ('{"s": {"ahead_of": "random-mask"}}', "s.ahead_of must be a list"),
        ('{"s": {"budget": "no"}}', "s.budget must be a bool"),
        ('{"s": {"reduktion": 0.3}}', "unknown key"),
        ("{s: 1}", "targets file"),
    ],
)
def test_a_bad_targets_file_is_named_with_its_key(content, words, tmp_path):
    path = tmp_path / "targets.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=words) as error:
        results.load_targets(path)
    assert str(path) in str(error.value)
