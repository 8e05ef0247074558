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
#   STUDIES=v3 JOBS=2 bash scripts/study.sh                 # the v3 studies only (issue 21)
# The v3 studies (v3-<task>, after the v2 ones by default) ask what practitioners run: each task's
# baseline and schedule-free tuned by an lr sweep (v3-<task>-lr, chosen by final validation
# accuracy), then PDT, the controls, LAWA and schedule-free (alone and under PDT) at the tuned lrs.
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

# The tuned learning rate of PREFIX (a method: `baseline`, `schedule-free`) in a compare directory:
# the highest mean final validation accuracy over `PREFIX@lr=X` and PREFIX itself, whose rate is
# DEFAULT (the task's); a rate that diverged on any seed is out. Ties go to the first in the
# summary's order.
best_lr_by_acc() {
  python - "$@" <<'PY'
import json, sys
path, prefix, default = sys.argv[1:]
s = json.load(open(f"{path}/summary.json"))["methods"]
lrs = {name: float(name.split("=")[1]) for name in s if name.startswith(f"{prefix}@lr=")}
if prefix in s:
    lrs[prefix] = float(default)
lrs = {n: lr for n, lr in lrs.items() if not s[n]["diverged"] and s[n]["final_val_acc"]["mean"] is not None}
print(f"{lrs[max(lrs, key=lambda n: s[n]['final_val_acc']['mean'])]:g}" if lrs else "")
PY
}

# A v3 study (issue 21): what practitioners run. NAME is the study, DEFAULT_LR the task's lr,
# BASE_LRS and SF_LRS the swept lrs (comma-separated, log-spaced around the task's and around
# schedule-free's default), then the compare options. The sweep (seeds $sweep_seeds) goes to
# v3-NAME-lr; the baseline and schedule-free are each tuned by final validation accuracy; then at
# the tuned lrs, in priority order on seeds 0-2 (v3-NAME): PDT and the controls, schedule-free and
# PDT stacked on it (both points), the tuned baseline compressed to PDT's epochs, PDT with EMA.
sweep_seeds="${SWEEP_SEEDS:-0}"
v3_core=baseline,pdt,random-mask,lawa,pdt-lawa
v3() {
  local name="$1" default_lr="$2" base_lrs="$3" sf_lrs="$4"
  shift 4
  local sweep="$out/v3-$name-lr" sf_methods="" lr
  for lr in ${sf_lrs//,/ }; do sf_methods+=",schedule-free@lr=$lr"; done
  compare --out "$sweep" --seeds "$sweep_seeds" --methods "baseline" --lr-sweep "$base_lrs" "$@"
  local base sf
  base="$(best_lr_by_acc "$sweep" baseline "$default_lr")"
  echo "v3-$name: tuned lr $base (baseline), by final val acc on seeds $sweep_seeds" >&2
  [ -n "$base" ] || return 1
  local dir="$out/v3-$name" methods="baseline,pdt"
  compare --out "$dir" --seeds "$three" --methods "$methods" "$@" --lr "$base"
  # Schedule-free's sweep only after PDT at the tuned baseline: on the costly tasks that comparison
  # is the one a partial study must have.
  compare --out "$sweep" --seeds "$sweep_seeds" --methods "baseline$sf_methods" --lr-sweep "$base_lrs" "$@"
  sf="$(best_lr_by_acc "$sweep" schedule-free "$default_lr")"
  echo "v3-$name: tuned lr $sf (schedule-free), by final val acc on seeds $sweep_seeds" >&2
  [ -n "$sf" ] || return 1
  # Budget curves (issue 26): the tuned baseline and PDT with the schedule compressed to 0.8, 0.67
  # and 0.5 of the task's epochs ($budget_epochs); then the controls, and the variants' curves.
  local b m
  for m in baseline pdt _ ${budget_variants//,/ }; do
    if [ "$m" = _ ]; then
      methods+=",${v3_core#baseline,pdt,}"
    else
      for b in $budget_epochs; do methods+=",$m@epochs=$b"; done
    fi
    compare --out "$dir" --seeds "$three" --methods "$methods" "$@" --lr "$base"
  done
  methods+=",schedule-free@lr=$sf,pdt-schedule-free@lr=$sf"
  compare --out "$dir" --seeds "$three" --methods "$methods" "$@" --lr "$base"
  local e
  e="$(pdt_epochs "$dir")"
  [ -n "$e" ] && methods+=",baseline@epochs=$e"
  methods+=",pdt-schedule-free@lr=$sf@point=train,pdt-ema"
  compare --out "$dir" --seeds "$three" --methods "$methods" "$@" --lr "$base"
}

# The compressed budgets of a v3 study, in epochs: 0.8, 0.67 and 0.5 of the task's 60 or 30.
budgets_of() { case "$1" in 60) echo "48 40 30" ;; 30) echo "24 20 15" ;; esac; }
budget_variants="${BUDGET_VARIANTS:-pdt-lr-horizon,pdt-lawa}"

run_study() {
  budget_epochs="$(budgets_of 60)"
  case "$1" in v3-agnews-transformer | v3-cifar10-resnet-recipe) budget_epochs="$(budgets_of 30)" ;; esac
  case "$1" in
    v3-mnist1d-cnn-sgd) v3 mnist1d-cnn-sgd 0.05 0.1,0.2,0.4,0.8 0.25,0.5,1,2,4 --task mnist1d-cnn ;;
    v3-mnist1d-mlp-sgd) v3 mnist1d-mlp-sgd 0.05 0.1,0.2,0.4,0.8,1.6,3.2 0.25,0.5,1,2,4,8 --task mnist1d-mlp ;;
    v3-mnist1d-mlp-adam)
      v3 mnist1d-mlp-adam 0.001 0.0005,0.002,0.004,0.008 0.0005,0.001,0.002,0.004,0.008,0.016,0.032 \
        --task mnist1d-mlp --optimizer adam --lr 0.001 --eta-min 1e-5
      ;;
    v3-agnews-transformer)
      v3 agnews-transformer 0.0005 0.00025,0.001,0.002,0.004,0.008 0.00025,0.0005,0.001,0.002,0.004,0.008 \
        --task agnews-transformer
      ;;
    v3-cifar10-resnet-recipe) v3 cifar10-resnet-recipe 0.1 0.05,0.2,0.4 0.25,0.5,1,2 --task cifar10-resnet-recipe ;;
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
    simsiam-paper)
      # The paper's Table 3 protocol shrunk to a CPU (the task's --help); PDT against the baseline
      # on every seed before the controls. Its held-out metric is a kNN classifier's accuracy.
      compare --out "$out/$1" --seeds "$three" --methods baseline,pdt --task simsiam
      study "$1" "$three" --task simsiam
      ;;
    mnist1d-cnn-sgd) study "$1" "$five" --task mnist1d-cnn ;;
    mnist1d-mlp-adam) study "$1" "$five" --task mnist1d-mlp --optimizer adam --lr 0.001 --eta-min 1e-5 ;;
    cifar10-fcn-practical) study "$1" "$three" --task cifar10-fcn --augment ;;
    search) search ;;
    toy) pdt-bench toy > "$out/toy.txt" ;;
    *) echo "unknown study $1" >&2; return 2 ;;
  esac
}

# STUDIES picks some, in order (e.g. two streams at JOBS=1 each); "none" only rewrites the page.
v3_studies="v3-mnist1d-cnn-sgd v3-mnist1d-mlp-sgd v3-mnist1d-mlp-adam v3-agnews-transformer v3-cifar10-resnet-recipe"
v3_studies+=" simsiam-paper"
v2_studies="cifar10-fcn-paper mnist1d-mlp-sgd agnews-lstm-paper mnist1d-cnn-sgd mnist1d-mlp-adam cifar10-fcn-practical"
# STUDIES=v3 runs the v3 studies only, by priority (the cheap tasks first).
[ "${STUDIES:-}" = v3 ] && STUDIES="$v3_studies"
for name in ${STUDIES:-$v2_studies search toy $v3_studies}; do
  [ "$name" = none ] || run_study "$name" || echo "study $name stopped: exit status $?" >&2
done
pdt-bench results "$out" --out docs/results.md --targets scripts/study-targets.json --notes docs/results/notes.md
