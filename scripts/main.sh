#!/usr/bin/env bash
# The main job: PDT against the plain optimizer on the default task (an MLP on MNIST-1D, data
# generated locally), one seed, both runs in parallel; about 2 minutes on 2 CPU cores. Prints
# the results table; report, plots and per-epoch records go to results/main/.
# Any `pdt-bench compare` option can be added, e.g. `bash scripts/main.sh --seeds 0,1,2`.
# Installs torch-pdt with the harness only (the [bench] extra).
EXTRAS=bench source "$(dirname "$0")/env.sh"
pdt-bench compare --task mnist1d-mlp --methods baseline,pdt --seeds 0 --jobs 2 --out results/main "$@"
