"""Identical runs give identical bits: in one process, across processes, for every criterion and dtype.

PDT's decisions are thresholds on forecasts; a last-bit difference between two identical runs can
flip one and make a run impossible to reproduce or resume. The source found was LAPACK's default
least-squares driver on the CPU (``dmd._least_squares`` says which and how often).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_graded import train
from test_kernel import needs_compiler

from torch_pdt import dmd
from torch_pdt.criteria import CRITERIA

REPEATS = 20
CONFIGS = [
    (criterion, dtype, graded)
    for criterion in (*CRITERIA, "random")
    for dtype in ("float64", "float32")
    for graded in (False, True)
    if not (graded and criterion == "random")
]


def fingerprint(criterion: str, dtype: str, graded: bool, kernel: str = "eager") -> str:
    """A hash of every weight after eight epochs (three predictions) and of every step's statistics."""
    options = dict(history=3, horizon=3, start_epoch=3, interval=1, criterion=criterion, graded=graded, kernel=kernel)
    torch.manual_seed(0)  # the random criterion's masks
    model, _, seen, stats = train(options, 8, dtype=getattr(torch, dtype))
    digest = hashlib.sha256(repr(stats).encode())
    for t in [*seen, *model.parameters()]:
        digest.update(t.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_least_squares_gives_the_same_bits_on_every_call():
    """Fails with ``torch.linalg.lstsq``'s default driver (93 of 300 calls differed at 5 x 3)."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.complex128):
        A, b = torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype)
        first = dmd._least_squares(A, b)
        # Allocations between the calls move the solver's workspace, as a training loop does.
        kept = []
        for i in range(300):
            kept.append(torch.empty(i % 7 + 1, dtype=torch.float64))
            assert torch.equal(dmd._least_squares(A, b), first)
        torch.testing.assert_close(first, torch.linalg.pinv(A) @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("criterion", "dtype", "graded"), CONFIGS)
def test_repeated_runs_are_bit_identical_in_one_process(criterion, dtype, graded):
    first = fingerprint(criterion, dtype, graded)
    assert all(fingerprint(criterion, dtype, graded) == first for _ in range(REPEATS - 1))


@needs_compiler
@pytest.mark.parametrize("criterion", ["pdt", "authors", "none"])
def test_repeated_compiled_runs_are_bit_identical(criterion):
    first = fingerprint(criterion, "float32", False, kernel="compiled")
    assert all(fingerprint(criterion, "float32", False, kernel="compiled") == first for _ in range(REPEATS - 1))


def test_runs_in_other_processes_give_the_same_bits():
    here = {config: fingerprint(*config) for config in CONFIGS}
    script = "import sys; from test_determinism import CONFIGS, fingerprint\nfor c in CONFIGS: print(fingerprint(*c))\n"
    tests = Path(__file__).parent
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=tests, capture_output=True, text=True, check=True, timeout=600
        ).stdout.split()
        assert dict(zip(CONFIGS, out, strict=True)) == here
