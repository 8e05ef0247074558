"""Stress PDT's pacing rules and optimizer-state policies on MNIST-1D, through ``pdt-bench compare``.

    python examples/stress_mnist1d.py --setting sgd-lr0.1
    python examples/stress_mnist1d.py --setting sgd-momentum --variants fixed,fixed-reset,fixed-rescale --seeds 0
    python examples/stress_mnist1d.py --setting tau9 --wide --pdt criterion=authors   # any compare option

Each setting is a hard case for PDT; each variant is a PDT method with its pacing rule and what
happens to the optimizer's velocities after a jump (``adaptive-reset`` runs
``pdt@pacing=adaptive@on_jump=reset``).
Every variant gets the epoch's mean training loss (the harness passes it to ``PDT.step``). The
table says how many epochs each variant needs to reach the baseline's best training loss and its
final accuracy; ``--wide`` adds the seconds, the final-loss ratio, the predictions made and rolled
back, and the diverged runs (a weight gone non-finite). Runs, report and plots go to
``results/stress-<setting>/`` and resume there.
"""

from __future__ import annotations

import argparse
import sys

from pdt_bench import cli

SETTINGS = {
    "sgd-lr0.1": "--optimizer sgd --lr 0.1 --batch-size 256 --schedule constant",  # paper Table 5's hard case
    "tau9": "--optimizer sgd --lr 0.05 --batch-size 128 --eta-min 1e-3 --horizon 9",  # App. A.9: tau >= 9 explodes
    "momentum-lr0.1": "--optimizer sgd-momentum --lr 0.1 --batch-size 256 --schedule constant",
    "sgd-momentum": "--optimizer sgd-momentum --lr 0.02 --batch-size 128 --eta-min 4e-4",
    "adam": "--optimizer adam --lr 1e-3 --batch-size 128 --eta-min 2e-5",
}
"""Setting -> compare options; without ``--schedule constant`` the learning rate follows a cosine to lr / 50."""

VARIANTS = {
    (rule if policy == "keep" else f"{rule}-{policy}"): "pdt"
    + ("" if rule == "fixed" else f"@pacing={rule}")
    + ("" if policy == "keep" else f"@on_jump={policy}")
    for rule in ("fixed", "reference", "adaptive")
    for policy in ("keep", "reset", "rescale")
}
"""Variant -> the PDT method that runs it (PDT's defaults, pacing ``fixed`` and ``keep``, left out of the name;
``reference`` is PDT's earlier name of the ``authors`` pacing rule)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Other options go to compare.")
    parser.add_argument("--setting", choices=SETTINGS, default="sgd-lr0.1", help="default sgd-lr0.1")
    parser.add_argument("--variants", default="fixed,reference,adaptive", help=f"subset of {','.join(VARIANTS)}")
    args, compare_options = parser.parse_known_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    methods = ",".join(["baseline", *(VARIANTS[n] for n in names)])
    return cli.main(
        ["compare", "--task", "mnist1d-mlp", "--epochs", "30", "--seeds", "0,1,2", *SETTINGS[args.setting].split()]
        + ["--methods", methods, "--out", f"results/stress-{args.setting}", *compare_options]
    )


if __name__ == "__main__":
    sys.exit(main())
