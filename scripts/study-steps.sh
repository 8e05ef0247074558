#!/usr/bin/env bash
# The step-mode study behind docs/results/notes.md's step-mode section: PDT every K optimizer steps
# on the byte-level transformer of `pdt-bench steps` (3,000 steps, cosine schedule with 100 warm-up
# steps), for AdamW and SGD with momentum. Per optimizer, three stages:
#   1. the baseline's learning rate: three rates, seed 0; the lowest best held-out loss wins;
#   2. at that rate, seed 0: the paper's PDT (K = 25, h = tau = T0 = 5, Ti = 1) and sweeps of K, tau,
#      Ti, the linear jump and the variants;
#   3. seeds 0-2: the baseline, the paper's PDT and the two sweep entries with the most fewer steps.
# Runs are written under docs/results/steps/<optimizer>/ and committed, so the study resumes; a
# finished run is never run again. `JOBS` sets how many runs go at once (default 1); `SETTINGS`
# adds options to every run (a quick check of the script: SETTINGS="--steps 40 --eval-every 10").
#   bash scripts/study-steps.sh
source "$(dirname "$0")/env.sh"
out="${OUT:-docs/results/steps}"
sweep="pdt@every_n_steps=10,pdt@every_n_steps=50,pdt@horizon=10,pdt@horizon=20,pdt@interval=0"
sweep+=",pdt-linear,pdt-linear@horizon=20,pdt-graded,pdt-layer"
# Second round, after the first put the longer horizon ahead: longer still, and more often.
sweep+=",pdt@horizon=30,pdt@horizon=40,pdt@horizon=20@every_n_steps=10,pdt@horizon=20@every_n_steps=15"
sweep+=",pdt@horizon=20@history=10,pdt-linear@horizon=10"
steps() { pdt-bench steps --jobs "${JOBS:-1}" --quiet ${SETTINGS:-} "$@" > /dev/null; }

# The learning rate of the baseline run with the lowest best held-out loss in a steps directory.
best_lr() {
  python - "$1" "$2" <<'PY'
import json, sys
methods = json.load(open(f"{sys.argv[1]}/summary.json"))["methods"]
lr = lambda name: name.split("@lr=")[1] if "@lr=" in name else sys.argv[2]
print(lr(min(methods, key=lambda n: methods[n]["best_loss"]["mean"])))
PY
}

# The two methods of a sweep (seed 0) with the most fewer steps, ties by the lower best loss.
top_two() {
  python - "$1" "$2" <<'PY'
import json, sys
methods = json.load(open(f"{sys.argv[1]}/summary.json"))["methods"]
swept = [n for n in sys.argv[2].split(",") if n in methods]
key = lambda n: (-(methods[n]["fewer_steps"]["median"] or -1e9), methods[n]["best_loss"]["mean"] or 1e9)
print(",".join(sorted(swept, key=key)[:2]))
PY
}

for optimizer in adamw sgd-momentum; do
  case "$optimizer" in
    adamw) lr=3e-3 others=1e-3,1e-2 ;;
    sgd-momentum) lr=0.3 others=0.1,1 ;;
  esac
  dir="$out/$optimizer"
  steps --out "$dir/lr" --seeds 0 --optimizer "$optimizer" --lr "$lr" --lr-sweep "$others" --methods baseline
  lr="$(best_lr "$dir/lr" "$lr")"
  steps --out "$dir" --seeds 0 --optimizer "$optimizer" --lr "$lr" --methods "baseline,pdt,$sweep"
  best="$(top_two "$dir" "$sweep")"
  steps --out "$dir" --seeds 0,1,2 --optimizer "$optimizer" --lr "$lr" --methods "baseline,pdt,$best"
  # The report over every method, each on the seeds it ran.
  steps --out "$dir" --seeds 0,1,2 --optimizer "$optimizer" --lr "$lr" --methods "baseline,pdt,$best,$sweep" --existing
  echo "$optimizer: lr $lr, three seeds for $best"
done
