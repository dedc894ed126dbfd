"""``cardiomm masks``: make a sampling mask, print both accelerations, save a picture and the array."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cardiomm.atomic import atomic_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "masks",
        help="make a sampling mask and report its effective and CMRxRecon accelerations",
        description="Make a reproducible cine sampling mask. R is the effective acceleration (grid samples / "
        "samples kept, calibration included) unless --convention cmrxrecon.",
    )
    from recon.masks import CALIBRATIONS, CONVENTIONS, DENSITIES, PATTERNS

    p.add_argument("--pattern", choices=PATTERNS, default="kt_gaussian")
    p.add_argument("--accel", type=float, default=24.0, help="acceleration R")
    p.add_argument("--shape", type=int, nargs=3, default=[20, 256, 256], metavar=("TIME", "KY", "KX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--acs-lines", type=int, default=16)
    p.add_argument("--convention", choices=CONVENTIONS, default="effective")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="auto")
    p.add_argument("--density", choices=DENSITIES, default=DENSITIES[0],
                   help="ky density of kt_gaussian: broad (default, close to CMRxRecon's) or kt-focuss (steeper)")
    p.add_argument("--png", type=Path, help="write a picture of the first frames and the time average")
    p.add_argument("--npy", type=Path, help="write the bool mask [time, ky, kx] as .npy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.masks import cmrxrecon_name, make_mask, pattern_label

    m = make_mask(
        args.pattern, args.accel, tuple(args.shape), seed=args.seed, acs_lines=args.acs_lines,
        convention=args.convention, calibration=args.calibration, density=args.density,
    )
    print(m.describe())
    print(f"CMRxRecon name: {cmrxrecon_name(m)}")
    mask = m.mask.cpu().numpy()
    if args.npy:
        with atomic_path(args.npy) as tmp:
            np.save(tmp, mask)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(4, mask.shape[0])
        fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * (n + 1), 2.8), constrained_layout=True)
        for i in range(n):
            axes[i].imshow(mask[i], cmap="gray", aspect="auto", interpolation="nearest")
            axes[i].set_title(f"frame {i}", fontsize=8)
        axes[n].imshow(mask.mean(0), cmap="viridis", aspect="auto", interpolation="nearest")
        axes[n].set_title("fraction of frames sampled", fontsize=8)
        for ax in axes:
            ax.set_xlabel("kx")
            ax.set_ylabel("ky")
        fig.suptitle(f"{pattern_label(args.pattern, m.density)}: R_eff {m.r_effective:.2f}, R_CMRxRecon {m.r_cmrxrecon:.2f}, seed {m.seed}",
                     fontsize=9)
        with atomic_path(args.png) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
    return 0
