#!/usr/bin/env bash
# The checks of the compiled kernel that need a GPU (issue 11, section 4); CI never runs this.
#
#   bash scripts/gpu-check.sh            # about 3-5 minutes on one GPU, most of it compiling
#
# Needs a Python whose torch has CUDA and Triton (the project's .venv pins the CPU build, so
# it is not used): $PYTHON, else python3. Nothing is downloaded. Output goes to stdout and,
# when $OUT is set, to $OUT/gpu-check.txt. Exit status 0 only if every check passed.
#   1. PDT(kernel="compiled") against kernel="eager" on CUDA parameters (float32 and bfloat16,
#      criteria "pdt" and "authors", one large and several small tensors): the same
#      statistics, weights within float32 rounding of the displacement;
#   2. no recompile while the ring turns over 2h predictions;
#   3. pdt-bench overhead --device cuda --params 57M --repeat 5: both kernels and the floor.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
log="${OUT:-/tmp}/gpu-check.txt"
mkdir -p "$(dirname "$log")"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
  "$py" - <<'EOF'
import sys
import time

import torch

from torch_pdt import PDT, kernel

assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, "device", torch.cuda.get_device_name(), "triton", kernel.compiles(torch.device("cuda")))
dev = torch.device("cuda")
failures = []


def run(kernel_name, sizes, dtype, criterion, epochs, h=3, tau=3):
    g = torch.Generator(device=dev).manual_seed(0)
    w = [0.05 * torch.randn(n, generator=g, device=dev, dtype=torch.float64) for n in sizes]
    v = [1e-2 * torch.randn(n, generator=g, device=dev, dtype=torch.float64) for n in sizes]
    params = [torch.nn.Parameter(torch.zeros(n, device=dev, dtype=dtype)) for n in sizes]
    pdt = PDT(torch.optim.SGD(params, lr=0.0), history=h, horizon=tau, start_epoch=h, interval=0,
              criterion=criterion, kernel=kernel_name)
    stats = []
    for _ in range(epochs):
        with torch.no_grad():
            for p, wi, vi in zip(params, w, v):
                wi += vi + 3e-3 * torch.randn(wi.shape, generator=g, device=dev, dtype=torch.float64)
                vi *= 0.8
                p.copy_(wi)
        stats.append(pdt.step())
    return stats, params


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(name)


sizes = [3_000_000, 7, 1, 300, 20_000]
for dtype in (torch.float32, torch.bfloat16):
    for criterion in ("pdt", "authors"):
        start = time.perf_counter()
        (sc, pc), (se, pe) = (run(k, sizes, dtype, criterion, epochs=7) for k in ("compiled", "eager"))
        same = all(a.get(k) == b.get(k) for a, b in zip(sc, se) for k in ("accepted", "rejected", "accepted_ratio_per_param"))
        diff = [abs(a.get("accepted", 0) - b.get("accepted", 0)) for a, b in zip(sc, se)]
        bound = kernel.DECISION_BOUND * sum(sizes)
        check(f"compiled == eager statistics ({dtype}, {criterion})", same or max(diff) <= bound,
              f"accepted differ by {max(diff)} (bound {bound:.0f}); {time.perf_counter() - start:.0f} s")
        eps = torch.finfo(dtype).eps
        close = all(torch.allclose(a, b, rtol=4 * eps, atol=1e-6) for a, b in zip(pc, pe))
        check(f"compiled weights close to eager ({dtype}, {criterion})", close)

graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
stats, _ = run("compiled", sizes, torch.float32, "pdt", epochs=3 + 2 * 3 + 1)
check("no recompile over 2h predictions as the ring turns",
      torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs and sum(s["predicted"] for s in stats) >= 6,
      f"graphs {graphs} -> {torch._dynamo.utils.counters['stats']['unique_graphs']}")
print("FAILED:", failures if failures else "none")
sys.exit(1 if failures else 0)
EOF
  status=$?
  # The overhead command alone: the rest of pdt-bench imports the study's dependencies.
  "$py" - <<'EOF' || status=1
import argparse
import sys

from pdt_bench import overhead

sub = argparse.ArgumentParser().add_subparsers()
overhead.add_command(sub)
args = sub.choices["overhead"].parse_args(["--device", "cuda", "--params", "57M", "--repeat", "5", "--kernel", "both"])
sys.exit(args.func(args))
EOF
  exit $status
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
