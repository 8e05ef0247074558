#!/usr/bin/env bash
# The benchmarks behind the core's speed and memory targets (issue "Core v3"), one after the other,
# each measuring its own floor or reference in the same run. Quote their lines; compare ratios, never
# seconds across machines. About 10-15 minutes on one idle CPU core (57M float32 needs ~3 GB).
#   bash scripts/core-targets.sh              # all of them, one thread
#   PARAMS=8M bash scripts/core-targets.sh    # the large-model rows at another size
# The rows: the 57M step against the memory-traffic floor with a noisy and a smooth history (which
# takes the second Gram pass), graded; 10,000 one-element tensors against one tensor of the same
# size; the graded pass's first prediction at tau = 40 with the compile caches off (its compile time
# and memory against the printed budget); the determinism tests (repeats bit-identical).
source "$(dirname "$0")/env.sh"
export OMP_NUM_THREADS=1
params="${PARAMS:-57M}"
run() {
  echo "\$ $*"
  "$@"
  echo
}
run pdt-bench overhead --params "$params" --kernel compiled --threads 1 --repeat 5 --trajectory noisy
run pdt-bench overhead --params "$params" --kernel compiled --threads 1 --repeat 5 --trajectory smooth
run pdt-bench overhead --params "$params" --kernel compiled --threads 1 --repeat 3 --graded
run pdt-bench overhead --params 10000 --tensors 10000 --kernel compiled --threads 1 --repeat 15
TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 run pdt-bench overhead --params 1M --horizon 40 --graded \
  --kernel compiled --threads 1 --repeat 3
EXTRAS=test source "$(dirname "$0")/env.sh"
run python -m pytest -q -p no:cacheprovider tests/test_determinism.py
