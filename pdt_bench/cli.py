"""The ``pdt-bench`` command line: one sub-command per study, each defined beside its study."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from typing import NoReturn

BENCH_EXTRA = ("numpy", "mnist1d", "matplotlib", "tqdm", "PIL", "pytorch_optimizer", "schedulefree")
"""Modules of the ``bench`` extra (``pyproject.toml``): a missing one is named with the install command."""


COMMANDS = {
    "compare": "methods x seeds on one task: table, report.md, plots",
    "sweep": "the paper's App. A.9 grid (tau, Ti, T0, h; lr x batch size) on one task",
    "steps": "PDT in step mode (every K optimizer steps) on a byte-level language model, in steps to target",
    "toy": "the paper's toy problem: every method side by side",
    "overhead": "time one PDT step against the memory-traffic floor",
    "scaleout": "a PDT step per rank at W ranks against one process (DDP, FSDP2, ZeRO-3)",
    "results": "one Markdown page over a study's compare directories",
    "landscape": "one seed's weight trajectories (baseline and PDT) over the training loss on a plane",
    "diagnose": "why PDT accepts what it accepts: per tensor and kind, on one run",
    "nino": "NiNo and WNN+ against Adam and PDT in step mode on NiNo's C10 tasks",
}
"""Sub-command -> its one-line help, each defined in the module of the same name. Only the command
that runs is imported (torch and the tasks take seconds): ``pdt-bench --help`` imports none."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose refusal is one line on stderr and exit status 2 (not the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: every command's name and help, and the full options of ``command`` only."""
    parser = _Parser(
        prog="pdt-bench", description="Benchmarks of Predictive Differential Training against baselines and peers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, summary in COMMANDS.items():
        if name == command:
            # Imported here, not at the top: a missing extra is then reported by main(), not a traceback.
            importlib.import_module(f".{name}", __package__).add_command(sub)
        else:
            sub.add_parser(name, help=summary)
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
        words = "compare, sweep, steps and nino keep every finished run: the same command continues"
        print(f"pdt-bench: interrupted ({words})", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit now: after its workers were stopped mid-run, the process pool's threads can wait forever
        # at interpreter exit; every finished run is already on disk (written atomically).
        os._exit(130)


def _run(argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.command_line = "pdt-bench " + shlex.join(argv)  # recorded in reports
    from .tasks import DataMissing  # after parsing: --help and a bad option never import torch

    try:
        return args.func(args)
    except (ValueError, DataMissing) as e:
        print(f"pdt-bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
