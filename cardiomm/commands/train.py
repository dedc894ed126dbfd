"""``cardiomm train``: train / validate / test / apply the CardioMM network (LightningCLI).

Everything after ``train`` goes to :func:`cardiomm.training.cli.run_cli`, e.g.::

    cardiomm train fit --config configs/tiny.yaml
    cardiomm train fit --config configs/base.yaml --config configs/ddp.yaml --trainer.num_nodes=2
    cardiomm train validate --config configs/base.yaml --ckpt_path lightning_logs/last.ckpt
    cardiomm train fit --help
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train / validate / test / predict with the CardioMM network (LightningCLI; see 'cardiomm train --help')",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # --help belongs to the LightningCLI
        prefix_chars="\0",  # no option of ours: every argument, '--help' included, is passed on
    )
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help="LightningCLI arguments")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from cardiomm.training.cli import run_cli

    # LightningCLI re-reads sys.argv for its help text and warns when it also gets ``args``:
    # show it the command line as ``cardiomm train`` sees it.
    sys.argv = [sys.argv[0], *args.cli_args]
    run_cli(None)
    return 0
