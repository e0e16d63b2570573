"""The ``genmodels`` command: one sub-command per module in this package, each thin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from genmodels import __version__
from genmodels.cli import (
    convert,
    demo,
    generate,
    import_taming,
    info,
    sample,
    samplers,
    train,
    vq_sample,
)

# Each sub-command module provides register(subparsers) and a run(args) -> int it sets as
# the parser's default ``func``.
COMMANDS = (demo, train, sample, samplers, info, convert, import_taming, generate, vq_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genmodels",
        description="Train and sample generative image models: latent diffusion, "
        "k-diffusion samplers, VQGAN + GPT.",
    )
    parser.add_argument("--version", action="version", version=f"genmodels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad input: a clear message, no traceback
        print(f"genmodels {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
