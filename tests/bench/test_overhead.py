"""`pdt-bench overhead` with the compiled passes beside the eager ones (tiny N: the compile dominates)."""

import pytest
import torch

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
    table = out[out.index("kernel ") :].splitlines()
    assert table[0].split() == ["kernel", "step", "copy-in+Gram", "algebra", "pass", "floor", "step/floor"]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in table[1:3]}
    assert set(rows) == {"eager", "compiled"}
    for step, copy_in, algebra, passes, floor, ratio in rows.values():
        assert step > 0 and ratio > 0  # (milliseconds to one decimal: the floor of 20k values prints as 0.0)


@needs_compiler
def test_the_compiled_measurement_predicts_as_the_eager_one():
    eager, compiled = (bench.measure(20_000, history=3, horizon=2, repeat=2, kernel=k) for k in ("eager", "compiled"))
    assert (eager["kernel"], compiled["kernel"]) == ("eager", "compiled")
    assert compiled["accepted_ratio"] == pytest.approx(eager["accepted_ratio"], abs=1e-4)
    assert 0 < eager["accepted_ratio"][0] < 1
