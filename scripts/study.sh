#!/usr/bin/env bash
# The reproduction study behind docs/results.md: PDT against the baseline and its peers, plus
# the baseline at other learning rates. The MNIST-1D studies get 5 seeds (the MLP with SGD the
# paper's settings); CIFAR-10 and AG News 3 seeds ($SEEDS_OTHER) and CPU-sized settings. Finished runs are
# kept in $OUT and not rerun, so the script can be stopped and started again. About 2 hours on 2
# idle CPU cores.
#   bash scripts/study.sh            # results under results/study
#   OUT=/elsewhere bash scripts/study.sh
source "$(dirname "$0")/env.sh"
out="${OUT:-results/study}"
seeds="${SEEDS:-0,1,2,3,4}"
other="${SEEDS_OTHER:-0,1,2}"
methods=baseline,pdt,pdt-reference,nonselective,random-mask,lookahead
compare() { pdt-bench compare --seeds "$seeds" --jobs "${JOBS:-2}" --quiet --methods "$methods" "$@"; }

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

compare --task mnist1d-mlp --lr-sweep 0.1,0.2,0.4 --out "$out/mnist1d-mlp-sgd"
lr="$(best_lr "$out/mnist1d-mlp-sgd")"
if [ -n "$lr" ]; then
  methods=baseline,pdt compare --task mnist1d-mlp --lr "$lr" --out "$out/mnist1d-mlp-sgd-best-lr"
fi
compare --task mnist1d-cnn --lr-sweep 0.1,0.2 --out "$out/mnist1d-cnn-sgd"
compare --task mnist1d-mlp --optimizer adam --lr 0.001 --eta-min 1e-5 --lr-sweep 0.002,0.004 \
  --out "$out/mnist1d-mlp-adam"
seeds="$other" compare --task cifar10-fcn --train-subset 5120 --epochs 15 --lr-sweep 0.1,0.2 --out "$out/cifar10-fcn-sgd"
seeds="$other" compare --task agnews-lstm --epochs 15 --lr-sweep 1.0,4.0 --out "$out/agnews-lstm-sgd"
pdt-bench toy > "$out/toy.txt"
pdt-bench results "$out" --out docs/results.md --preamble scripts/study-notes.md
