"""`pdt-bench overhead` with the compiled passes beside the eager ones (tiny N: the compile dominates)."""

import pytest
import torch
from tables import table_rows

from pdt_bench import cli
from pdt_bench import overhead as bench
from torch_pdt import kernel

needs_compiler = pytest.mark.skipif(
    not kernel.compiles(torch.device("cpu")), reason="torch.compile cannot build kernels here (no C++ compiler)"
)


@needs_compiler
def test_overhead_reports_the_compiled_step_beside_the_eager_one_and_the_floor(capsys):
    assert cli.main(["overhead", "--params", "20k", "--repeat", "2", "--history", "3", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert "PDT step, eager passes" in out and "PDT step, compiled passes" in out
    header, *body = table_rows(out[out.index("| kernel") :])
    assert header == [
        "kernel",
        "tensors",
        "step",
        "copy-in+Gram",
        "2nd Gram",
        "checks",
        "algebra",
        "pass",
        "floor",
        "step/floor",
    ]
    rows = {row[0]: [float(x) for x in row[1:]] for row in body}
    assert set(rows) == {"eager", "compiled"}
    # 20k parameters fit in any last-level cache: the report says its floor is the cache's.
    assert "a cache floor" in out
    for tensors, step, copy_in, second, checks, algebra, passes, floor, ratio in rows.values():
        assert tensors == 1 and step > 0 and ratio > 0  # (ms to one decimal: the floor of 20k values prints as 0.0)
    # The default noisy trajectory never needs the second Gram pass.
    assert "second Gram pass not needed (0 of 2 steps)" in out and "(2h+3) N 4 B floor" not in out


@needs_compiler
def test_the_compiled_measurement_predicts_as_the_eager_one():
    eager, compiled = (bench.measure(20_000, history=3, horizon=2, repeat=2, kernel=k) for k in ("eager", "compiled"))
    assert (eager["kernel"], compiled["kernel"]) == ("eager", "compiled")
    assert compiled["accepted_ratio"] == pytest.approx(eager["accepted_ratio"], abs=1e-4)
    assert 0 < eager["accepted_ratio"][0] < 1


@needs_compiler
def test_layerwise_graded_steps_are_timed_compiled_and_predict_as_eager():
    runs = [
        bench.measure(20_000, history=3, horizon=3, repeat=2, kernel=k, scope="layer", graded=True)
        for k in ("eager", "compiled")
    ]
    assert [r["kernel"] for r in runs] == ["eager", "compiled"]
    assert runs[1]["accepted_ratio"] == pytest.approx(runs[0]["accepted_ratio"], abs=1e-4)
    assert "scope layer, graded" in bench.format_report(runs[1])


def test_the_floor_is_a_memory_floor_once_the_copy_outgrows_the_last_level_cache():
    size, source = bench.last_level_cache(torch.device("cpu"))
    assert size > 0 and source
    fits, outgrows = ({"device": "cpu", "n": n} for n in (size // 8, size // 8 + 1))
    assert "cache floor" in bench._cache_words(fits)
    assert bench._cache_words(outgrows) is None


@needs_compiler
def test_a_smooth_trajectory_in_many_tensors_takes_the_second_gram_pass_compiled(capsys):
    args = ["overhead", "--params", "20k", "--repeat", "2", "--history", "3", "--horizon", "2", "--kernel", "compiled"]
    assert cli.main([*args, "--trajectory", "smooth", "--tensors", "300"]) == 0
    out = capsys.readouterr().out
    passes = "copy-in+Gram compiled, second Gram pass compiled (2 of 2 steps), predict+mask+assemble compiled"
    assert out.count(passes) == 2  # one tensor, then 300
    assert "in 300 tensor(s)" in out and "smooth trajectory" in out
    header, *body = table_rows(out[out.index("| kernel") :])
    assert [row[:2] for row in body] == [["compiled", "1"], ["compiled", "300"]]
    assert all(float(row[header.index("2nd Gram")]) > 0 for row in body)
    assert "compiled: the step with 300 tensors is" in out
    assert out.count("step / (2h+3) N 4 B floor") == 2  # the floor of a step that reads the snapshots twice
    # Compiled before the memory was read, second pass too: the compiler's memory is not PDT's.
    assert out.count("(a first prediction on the same layout, before)") == 2
    assert out.count("peak delta, compiled before") == 2


@needs_compiler
def test_the_passes_compile_before_the_memory_is_read():
    compiled = bench.measure(20_000, history=3, horizon=2, repeat=1, kernel="compiled", on_jump="reset")
    eager = bench.measure(20_000, history=3, horizon=2, repeat=1, kernel="eager")
    assert compiled["compile"] > compiled["first_prediction"] and eager["compile"] is None
    assert "compiled before" in bench.format_report(compiled)
    assert "compile " not in bench.format_report(eager)


@needs_compiler
def test_auto_compiles_before_the_memory_is_read_where_its_measured_run_compiles_and_only_there():
    # 20k elements in 300 tensors: "auto" compiles (kernel.AUTO_MIN_TENSORS); in one tensor it stays eager,
    # and no compile is claimed.
    many = bench.measure(20_000, history=3, horizon=2, repeat=1, kernel="auto", tensors=300)
    one = bench.measure(20_000, history=3, horizon=2, repeat=1, kernel="auto")
    assert (many["kernel"], one["kernel"]) == ("compiled", "eager")
    assert many["compile"] is not None and one["compile"] is None
    assert "compiled before" not in bench.format_report(one)


def test_the_tensor_ratio_pairs_the_runs_of_one_kernel_choice_even_where_auto_chose_two():
    # --kernel auto --tensors 300 on 20k: one tensor runs eager, 300 tensors compiled (it raised StopIteration).
    one = {"tensors": 1, "kernel": "eager", "step": [2.0]}
    many = {"tensors": 300, "kernel": "compiled", "step": [1.0]}
    assert bench.format_tensor_ratios([one, many]) == (
        "compiled: the step with 300 tensors is 0.50x the step with one (eager)"
    )
    same = {"tensors": 300, "kernel": "eager", "step": [4.0]}
    assert bench.format_tensor_ratios([one, same]) == "eager: the step with 300 tensors is 2.00x the step with one"


def test_the_tensors_split_the_parameters_evenly():
    assert bench.split_sizes(10, 3) == [4, 3, 3]
    assert bench.split_sizes(5, 5) == [1] * 5
    with pytest.raises(ValueError, match="--tensors"):
        bench.split_sizes(5, 6)


@pytest.mark.parametrize(
    "args, named",
    [
        # Self-attack (second pass): 0 or -1 tensors, threads or chunk size ran with a default silently;
        # --repeat 0 ended in "no median for empty data", --threads -2 and --device meta in tracebacks, and
        # more tensors than N were refused after the one-tensor timing had run.
        (["--tensors", "0"], "argument --tensors: expected a positive int, got '0'"),
        (["--threads", "0"], "argument --threads: expected a positive int, got '0'"),
        (["--threads", "-2"], "argument --threads: expected a positive int, got '-2'"),
        (["--chunk-size", "0"], "argument --chunk-size: expected a positive int, got '0'"),
        (["--repeat", "0"], "argument --repeat: expected a positive int, got '0'"),
        (["--device", "meta"], "--device meta: a meta tensor holds no data"),
        (["--params", "10", "--tensors", "20"], "--tensors must be in [1, N = 10], got 20"),
    ],
)
def test_a_bad_overhead_option_is_one_line_before_any_timing(args, named, capsys):
    try:
        code = cli.main(["overhead", "--kernel", "eager", "--params", "1000", *args])
    except SystemExit as e:  # argparse's refusal
        code = e.code
    printed = capsys.readouterr()
    assert code == 2 and printed.out == ""
    assert printed.err.count("\n") == 1 and named in printed.err
