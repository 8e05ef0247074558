#!/usr/bin/env bash
# The reproduction study behind docs/results.md (v2): PDT against the baseline and the controls a
# skeptic asks for, at the paper's protocols. Runs are written under docs/results/<study>/runs and
# committed, so the study resumes on a new machine: a finished run is never run again. The order is
# by priority (the headline studies and their controls first), so a study stopped early has its most
# important numbers. On 2 idle CPU cores the whole script takes about 15 hours (CIFAR-10 runs take
# ~10 min each); `JOBS` sets how many runs go at once (default 2).
#   bash scripts/study.sh                                  # everything, then docs/results.md
#   STUDIES="mnist1d-mlp-sgd toy" bash scripts/study.sh     # some studies, then the page
#   STUDIES=none bash scripts/study.sh                      # only rewrite the page
# The step-mode study is scripts/study-steps.sh.
source "$(dirname "$0")/env.sh"
out="${OUT:-docs/results}"
five=0,1,2,3,4
three=0,1,2
controls=baseline,pdt,random-mask,pdt-linear
peers=pdt-reference,nonselective,lookahead,ema,schedule-free
# Beyond the paper: the linear jump at longer horizons (the search below chose them), then the variants.
beyond=pdt-linear@horizon=20,pdt-linear@horizon=10
variants=pdt-layer,pdt-graded,pdt-layer-graded
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
# then the peers, the linear jumps and the variants (the full list is left in $all_methods); "$@"
# are the study's compare options.
study() {
  local dir="$1" seeds="$2"
  shift 2
  compare --out "$out/$dir" --seeds "$seeds" --methods "$controls" "$@"
  local e
  e="$(pdt_epochs "$out/$dir")"
  local budget=""
  [ -n "$e" ] && budget=",baseline@epochs=$e"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$controls$budget" "$@"
  all_methods="$controls$budget,$peers"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$all_methods" "$@"
  all_methods+=",$beyond"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$all_methods" "$@"
  all_methods+=",$variants"
  compare --out "$out/$dir" --seeds "$seeds" --methods "$all_methods" "$@"
}

# The search for a PDT that does more than the paper's, on the cheapest study: horizons, prediction
# every epoch, graded horizons, each with the forecast and with the linear jump; seeds 0-2.
search() {
  local grid=baseline,pdt,pdt-linear,pdt@horizon=10,pdt-linear@horizon=10,pdt@interval=0,pdt-linear@interval=0
  grid+=,pdt-graded@horizon=10,pdt-linear@horizon=15,pdt-linear@horizon=20
  compare --out "$out/search-mnist1d-mlp-sgd" --seeds 0,1,2 --methods "$grid" --task mnist1d-mlp
}

run_study() {
  case "$1" in
    cifar10-fcn-paper)
      study "$1" "$three" --task cifar10-fcn
      compare --out "$out/$1" --seeds "$three" --methods "$all_methods,pdt-fresh-bn" --task cifar10-fcn
      ;;
    mnist1d-mlp-sgd)
      study "$1" "$five" --task mnist1d-mlp
      # The baseline's lr sweep on the main task, then PDT at the best lr.
      compare --out "$out/$1" --seeds "$five" --methods "$all_methods" --lr-sweep 0.1,0.2,0.4 --task mnist1d-mlp
      local lr
      lr="$(best_lr "$out/$1")"
      if [ -n "$lr" ]; then
        compare --out "$out/$1-best-lr" --seeds "$five" --methods "baseline,pdt,pdt-linear,$beyond,$variants" \
          --task mnist1d-mlp --lr "$lr"
      fi
      ;;
    agnews-lstm-paper) study "$1" "$three" --task agnews-lstm ;;
    mnist1d-cnn-sgd) study "$1" "$five" --task mnist1d-cnn ;;
    mnist1d-mlp-adam) study "$1" "$five" --task mnist1d-mlp --optimizer adam --lr 0.001 --eta-min 1e-5 ;;
    cifar10-fcn-practical) study "$1" "$three" --task cifar10-fcn --augment ;;
    search) search ;;
    toy) pdt-bench toy > "$out/toy.txt" ;;
    *) echo "unknown study $1" >&2; return 2 ;;
  esac
}

# STUDIES picks some, in order (e.g. two streams at JOBS=1 each); "none" only rewrites the page.
for name in ${STUDIES:-cifar10-fcn-paper mnist1d-mlp-sgd agnews-lstm-paper mnist1d-cnn-sgd mnist1d-mlp-adam cifar10-fcn-practical search toy}; do
  [ "$name" = none ] || run_study "$name"
done
pdt-bench results "$out" --out docs/results.md --targets scripts/study-targets.json --notes docs/results/notes.md
