"""``genmodels train CONFIG.yaml [key=value ...]``: run the training loop.

The YAML file serialises ``genmodels.training.config.TrainConfig`` (sections ``model``,
``data``, ``objective``, ``optim``, ``ema`` and top-level keys); it may give only the keys it
changes. ``--preset`` starts from a named preset instead of the defaults. Launch with
``torchrun --nproc-per-node N -m genmodels.cli.main train ...`` for data-parallel training.
"""

from __future__ import annotations

import argparse

from genmodels.configs.train import get_train_config
from genmodels.training.config import load_config
from genmodels.training.distributed import shutdown
from genmodels.training.trainer import Trainer

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a diffusion model from a YAML config", description=__doc__
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (optional with --preset)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    p.add_argument("--preset", default=None, help="start from a preset (e.g. digits-demo)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in out_dir"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no file given: the first item is an override
        config, overrides = None, [config, *overrides]
    base = get_train_config(args.preset) if args.preset else None
    cfg = load_config(config, overrides, base=base)
    if args.print_config:
        from genmodels.training.config import dump_config

        print(dump_config(cfg), end="")
        return 0
    trainer = Trainer(cfg)
    try:
        if args.resume and trainer.resume() and trainer.dist.is_main:
            print(f"resumed at step {trainer.step}")
        trainer.fit()
    finally:
        shutdown()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="genmodels")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
