"""``genmodels train [CONFIG.yaml] [key=value ...] [--preset NAME] [--resume | --overwrite]``.

A top-level ``task:`` key picks the training task (``diffusion``, ``autoencoder``, ``vqgan``,
``transformer``, ``finetune``: full / LoRA training of an SD checkpoint ``init``; a preset
implies its own). Every task has one layout: its ``model``, the
shared ``data`` / ``optim`` / ``ema`` sections, run settings (``steps``, ``precision``,
``out_dir``, ``ckpt_every``, ...) and its own sections; a file gives only the keys it changes.
``--preset`` starts from a named preset (``digits-demo``, ``autoencoder-digits`` then
``digits-ldm``, ``vqgan-digits`` then ``transformer-digits``, ...). A folder that holds a run
is refused unless ``--resume`` (continue from its newest intact checkpoint, exactly) or
``--overwrite`` (replace it). Ctrl-C saves a checkpoint and stops. Launch with
``torchrun --nproc-per-node N -m genmodels.cli.main train ...`` for data-parallel training.
"""

from __future__ import annotations

import argparse
import os

from genmodels.configs.io import read_yaml
from genmodels.training.distributed import shutdown
from genmodels.training.presets import PRESETS
from genmodels.training.run import TrainingStopped
from genmodels.training.run_dir import check_fresh
from genmodels.training.task_configs import dump_config
from genmodels.training.tasks import TASKS, build_config, output_of, resolve_task

__all__ = ["register", "run"]

_FLAGS = ("--resume", "--overwrite", "--print-config")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a diffusion model, a KL autoencoder or a VQGAN / its transformer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (optional with --preset)")
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="key=value overrides, e.g. optim.lr=1e-4"
    )
    p.add_argument("--preset", default=None, help=f"start from a preset: {', '.join(PRESETS)}")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in out_dir")
    how.add_argument("--overwrite", action="store_true", help="replace the run in out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides or [])
    for flag in _FLAGS:  # flags given after the overrides land in them (argparse.REMAINDER)
        while flag in overrides:
            overrides.remove(flag)
            setattr(args, flag[2:].replace("-", "_"), True)
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if config is not None and "=" in config:  # no file given: the first item is an override
        config, overrides = None, [config, *overrides]
    if config is None and args.preset is None and not overrides:
        args.parser.print_usage()
        print("genmodels train: give a config file, --preset NAME or key=value overrides "
              f"(presets: {', '.join(PRESETS)})")  # fmt: skip
        return 2
    loaded = read_yaml(config) if config is not None else {}
    task = resolve_task(loaded, overrides, args.preset)
    cfg = build_config(task, loaded, overrides, preset=args.preset, source=config)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    out_dir, owned = output_of(cfg)
    if not args.overwrite and os.environ.get("RANK", "0") == "0":  # before any work (rank 0;
        # checked again under the run's lock when training starts)
        check_fresh(out_dir, args.resume, False, owned)
    finished = False
    try:
        out = TASKS[task].train(cfg, overwrite=args.overwrite, resume=args.resume)
        finished = True
    except TrainingStopped:  # Ctrl-C / SIGTERM: the checkpoint and its line are written
        return 130
    finally:
        shutdown(finished)
    print(f"wrote {out}")
    return 0
