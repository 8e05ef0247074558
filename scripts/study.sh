#!/usr/bin/env bash
# The reproduction study behind docs/results.md (v2): PDT against the baseline and the controls a
# skeptic asks for, at the paper's protocols. Runs are written under docs/results/<study>/runs and
# committed, so the study resumes on a new machine: a finished run is never run again. The order is
# by priority (the headline studies and their controls first), so a study stopped early has its most
# important numbers. On 2 idle CPU cores the whole script takes about 10 hours (CIFAR-10 runs take
# ~10 min each); `JOBS` sets how many runs go at once (default 2).
#   bash scripts/study.sh                 # everything, then docs/results.md
#   STAGE=page bash scripts/study.sh      # only rewrite docs/results.md from the finished runs
source "$(dirname "$0")/env.sh"
out="${OUT:-docs/results}"
five=0,1,2,3,4
three=0,1,2
controls=baseline,pdt,random-mask,pdt-linear
peers=pdt-reference,nonselective,lookahead,ema,schedule-free
compare() { pdt-bench compare --jobs "${JOBS:-2}" --quiet "$@"; }

# PDT's median epochs to the baseline's best training loss in a compare directory (empty if none).
pdt_epochs() {
  python - "$1" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/summary.json"))["methods"].get("pdt")
e = m and m["ttb_loss_epochs"]["median"]
print(round(e) if e else "")
PY
}

# The baseline's best learning rate in a compare directory: lowest mean best training loss.
best_lr() {
  python - "$1" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))["methods"]
lrs = {name: float(name.split("=")[1]) for name in s if name.startswith("baseline@lr=")}
best = min(["baseline", *lrs], key=lambda n: s[n]["best_train_loss"]["mean"])
print(lrs.get(best, ""))
PY
}

# A study: PDT and the controls first, then the budget-matched baseline at PDT's median epochs,
# then the peers; "$@" are the study's compare options.
study() {
  local dir="$1" seeds="$2"
  shift 2
  compare --out "$out/$dir" --seeds "$seeds" --methods "$controls" "$@"
  local e
  e="$(pdt_epochs "$out/$dir")"
  local budget=""
  [ -n "$e" ] && budget=",baseline@epochs=$e"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$controls$budget" "$@"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$controls$budget,$peers" "$@"
}

if [ "${STAGE:-all}" = all ]; then
  study cifar10-fcn-paper "$three" --task cifar10-fcn
  study mnist1d-mlp-sgd "$five" --task mnist1d-mlp
  study agnews-lstm-paper "$three" --task agnews-lstm
  # The baseline's lr sweep on the main task, then PDT at the best lr.
  compare --out "$out/mnist1d-mlp-sgd" --seeds "$five" --methods "$controls,$peers" --lr-sweep 0.1,0.2,0.4 \
    --task mnist1d-mlp
  lr="$(best_lr "$out/mnist1d-mlp-sgd")"
  if [ -n "$lr" ]; then
    compare --out "$out/mnist1d-mlp-sgd-best-lr" --seeds "$five" --methods baseline,pdt --task mnist1d-mlp --lr "$lr"
  fi
  study mnist1d-cnn-sgd "$five" --task mnist1d-cnn
  study mnist1d-mlp-adam "$five" --task mnist1d-mlp --optimizer adam --lr 0.001 --eta-min 1e-5
  study cifar10-fcn-practical "$three" --task cifar10-fcn --augment
  pdt-bench toy > "$out/toy.txt"
fi
pdt-bench results "$out" --out docs/results.md --targets scripts/study-targets.json --preamble scripts/study-notes.md
