"""The training-free acceleration flags shared by ``sample`` and the SD generation commands:
DeepCache feature caching (``--cache-interval``, ``--cache-depth``) and the CFG cut-off
(``--cfg-cutoff``). All are off by default, so the default output is the exact one; unset
flags are None, so a ``--from-png`` value can fill them."""

from __future__ import annotations

import argparse
import math

from genmodels.models.feature_cache import DeepCache

__all__ = ["add_acceleration_arguments", "check_acceleration", "deep_cache"]


def add_acceleration_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("acceleration (training-free, off by default)")
    g.add_argument("--cache-interval", type=int, default=None, metavar="N",
                   help="DeepCache: a full UNet evaluation every N-th one, the others rerun only "
                   "the shallow skip branch on cached deep features (1: off)")  # fmt: skip
    g.add_argument("--cache-depth", type=int, default=None, metavar="K",
                   help="DeepCache: UNet input blocks (and their skips) recomputed on cached "
                   "evaluations; larger is closer to exact, slower (default 1)")  # fmt: skip
    g.add_argument("--cfg-cutoff", type=float, default=None, metavar="SIGMA",
                   help="skip the unconditional pass below this noise level (A1111's negative "
                   "guidance minimum sigma, 'NGMS'; 0: off)")  # fmt: skip


def check_acceleration(args: argparse.Namespace) -> None:
    """Refuse bad values before any work."""
    if args.cache_interval is not None and args.cache_interval < 1:
        raise ValueError(f"--cache-interval must be >= 1, got {args.cache_interval}")
    if args.cache_depth is not None and args.cache_depth < 1:
        raise ValueError(f"--cache-depth must be >= 1, got {args.cache_depth}")
    cutoff = args.cfg_cutoff
    if cutoff is not None and not (math.isfinite(cutoff) and cutoff >= 0):
        raise ValueError(f"--cfg-cutoff must be a finite sigma >= 0, got {cutoff}")


def deep_cache(args: argparse.Namespace) -> DeepCache | None:
    """The DeepCache the flags ask for, or None when caching is off."""
    if (args.cache_interval or 1) == 1:
        return None
    return DeepCache(args.cache_interval, args.cache_depth or 1)
