"""The ``pdt-bench`` command line: one sub-command per study, each defined beside its study."""

from __future__ import annotations

import argparse
import sys

from . import toy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdt-bench", description="Benchmarks of Predictive Differential Training against baselines and peers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for study in (toy,):
        study.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"pdt-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
