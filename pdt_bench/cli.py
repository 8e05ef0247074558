"""The ``pdt-bench`` command line: one sub-command per study, each defined beside its study."""

from __future__ import annotations

import argparse
import shlex
import sys

from . import compare, landscape, overhead, results, sweep, toy
from .tasks import DataMissing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdt-bench", description="Benchmarks of Predictive Differential Training against baselines and peers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for study in (compare, sweep, toy, overhead, results, landscape):
        study.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "pdt-bench " + shlex.join(argv)  # recorded in reports
    try:
        return args.func(args)
    except (ValueError, DataMissing) as e:
        print(f"pdt-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
