"""The ``pdt`` command line."""

from __future__ import annotations

import argparse
import sys

from . import toy


def _toy(args: argparse.Namespace) -> int:
    overrides = dict(
        history=args.history,
        horizon=args.horizon,
        start_epoch=args.start_epoch,
        interval=args.interval,
        history_after_jump=args.history_after_jump,
    )
    results = toy.compare(args.methods.split(",") if args.methods else None, steps=args.steps, **overrides)
    print(
        f"Toy problem (paper Sec. 3): GD lr {toy.LR}, threshold f < {toy.THRESHOLD}, {args.steps} steps; "
        f"PDT h={args.history} tau={args.horizon} T0={args.start_epoch} Ti={args.interval}"
    )
    print(toy.format_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdt", description="Predictive Differential Training tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("toy", help="the paper's toy problem: every method side by side")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(toy.METHODS)}")
    p.add_argument("--steps", type=int, default=100, help="gradient-descent steps per run (default 100)")
    p.add_argument("--history", type=int, default=5, help="h, snapshots fitted (default 5)")
    p.add_argument("--horizon", type=int, default=5, help="tau, steps predicted ahead (default 5)")
    p.add_argument("--start-epoch", type=int, default=5, help="T0, first step to predict after (default 5)")
    p.add_argument("--interval", type=int, default=1, help="Ti, plain steps between predictions (default 1)")
    p.add_argument(
        "--history-after-jump",
        choices=["optimizer", "assembled"],
        default="optimizer",
        help="what the history keeps after a prediction (default optimizer)",
    )
    p.set_defaults(func=_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"pdt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
