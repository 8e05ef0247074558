"""The ``pdt-bench`` command line: one sub-command per study, each defined beside its study."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

BENCH_EXTRA = ("numpy", "mnist1d", "matplotlib", "tqdm", "PIL", "pytorch_optimizer", "schedulefree")
"""Modules of the ``bench`` extra (``pyproject.toml``): a missing one is named with the install command."""


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: a missing extra is then reported by main(), not a traceback.
    from . import compare, diagnose, landscape, overhead, results, steps, sweep, toy

    parser = argparse.ArgumentParser(
        prog="pdt-bench", description="Benchmarks of Predictive Differential Training against baselines and peers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for study in (compare, sweep, steps, toy, overhead, results, landscape, diagnose):
        study.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _run(argv)
    except ModuleNotFoundError as e:
        module = (e.name or "").split(".")[0]
        if module not in BENCH_EXTRA:
            raise
        print(f"pdt-bench: error: {module} is missing: pip install 'torch-pdt[bench]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        words = "compare, sweep and steps keep every finished run: the same command continues"
        print(f"pdt-bench: interrupted ({words})", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit now: after its workers were stopped mid-run, the process pool's threads can wait forever
        # at interpreter exit; every finished run is already on disk (written atomically).
        os._exit(130)


def _run(argv: list[str]) -> int:
    from .tasks import DataMissing

    args = build_parser().parse_args(argv)
    args.command_line = "pdt-bench " + shlex.join(argv)  # recorded in reports
    try:
        return args.func(args)
    except (ValueError, DataMissing) as e:
        print(f"pdt-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
