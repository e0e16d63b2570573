"""The ``genmodels`` command: one sub-command per module in this package, each thin."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from genmodels import __version__
from genmodels.cli import (
    convert,
    demo,
    generate,
    import_taming,
    info,
    merge,
    sample,
    samplers,
    serve,
    train,
    vq_sample,
)

# Each sub-command module provides register(subparsers) and a run(args) -> int it sets as
# the parser's default ``func``.
COMMANDS = (
    demo, train, sample, samplers, info, convert, import_taming, generate, vq_sample, merge, serve,
)  # fmt: skip


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


def _stdout_closed() -> int:
    """The reader of our output went away (``genmodels samplers | head``): stop quietly.

    The recipe of the Python docs (signal / SIGPIPE note): point stdout at devnull so the
    interpreter's final flush does not raise a second BrokenPipeError, and exit 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. Bad input (ValueError, incl. CheckpointError) and OS errors
    (missing file, permission denied, truncated image) print one line and exit 2; a closed
    stdout pipe exits 1 without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (ValueError, OSError) as exc:  # bad input: a clear message, no traceback
        print(f"genmodels {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
