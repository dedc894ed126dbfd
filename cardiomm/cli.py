"""The ``cardiomm`` command line: one entry point, one module per subcommand.

Each module in :mod:`cardiomm.commands` exposes ``register(subparsers)`` that adds its
subcommand and sets ``func`` (a callable taking the parsed arguments and returning an exit
code).  Modules are imported only when listed here, so adding a command is one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cardiomm.allocator import tune_cpu_allocator

#: Subcommand modules, in the order ``cardiomm --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "cardiomm.commands.bench",
    "cardiomm.commands.demo",
    "cardiomm.commands.masks",
    "cardiomm.commands.phantom",
    "cardiomm.commands.recon",
    "cardiomm.commands.segment",
    "cardiomm.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardiomm",
        description="CardioMM: accelerated cardiac MRI from multi-coil k-space to images and biomarkers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    tune_cpu_allocator()  # long CPU jobs: no page faults on every large tensor (cardiomm.allocator)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished outputs are kept, unfinished ones were not written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"cardiomm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
