"""``genmodels train CONFIG.yaml [key=value ...]``: run a training loop.

A top-level ``task:`` key picks the loop: ``diffusion`` (the default) serialises
``genmodels.training.config.TrainConfig`` (sections ``model``, ``data``, ``objective``,
``optim``, ``ema`` and top-level keys); ``autoencoder`` serialises the KL autoencoder of latent
diffusion (``genmodels.training.autoencoder_run``: writes ``vae.safetensors`` for
``latent.vae_path``); ``vqgan`` and ``transformer`` serialise the two VQ stages of
``genmodels.training.vq_config``. A file may give only the keys it changes. ``--preset`` starts
from a named preset instead of the defaults (``digits-demo``, ``autoencoder-digits`` then
``digits-ldm``, ``vqgan-digits``, ``transformer-digits``, ...); an autoencoder or VQ preset
implies its task. ``--resume`` continues any task from the newest checkpoint in its output
directory (``ckpt_every``; a fresh run if there is none). Launch diffusion runs with
``torchrun --nproc-per-node N -m genmodels.cli.main train ...`` for data-parallel training.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from genmodels.configs.autoencoder_train import AUTOENCODER_TRAIN_PRESETS
from genmodels.configs.train import TRAIN_PRESETS, get_train_config
from genmodels.configs.vq_train import VQ_TRAIN_PRESETS
from genmodels.training.autoencoder_run import (
    build_autoencoder_config,
    dump_autoencoder_config,
    run_autoencoder,
)
from genmodels.training.config import load_config, read_yaml
from genmodels.training.distributed import shutdown
from genmodels.training.trainer import Trainer
from genmodels.training.vq_config import (
    VQ_TASKS,
    TransformerRunConfig,
    build_run_config,
    dump_run_config,
    run_transformer,
    run_vqgan,
    task_of,
)

TASKS = ("diffusion", "autoencoder", *VQ_TASKS)

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a diffusion model, a KL autoencoder or a VQGAN / its transformer",
        description=__doc__,
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (optional with --preset)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    p.add_argument(
        "--preset",
        default=None,
        help="start from a preset (e.g. digits-demo, autoencoder-digits, vqgan-digits)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in out_dir",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(func=run)


def _read_yaml(path: str | None) -> dict[str, Any]:
    return {} if path is None else read_yaml(path)


def _pick_task(loaded: dict[str, Any], overrides: list[str], preset: str | None) -> str:
    """The task from ``task=`` overrides, else the file's ``task:``, else the preset's."""
    task = loaded.pop("task", None)
    for item in [o for o in overrides if o.split("=", 1)[0].strip() == "task"]:
        overrides.remove(item)
        task = yaml.safe_load(item.split("=", 1)[1])
    implied = None
    if preset is not None:
        if preset in VQ_TRAIN_PRESETS:
            implied = task_of(VQ_TRAIN_PRESETS[preset])
        elif preset in AUTOENCODER_TRAIN_PRESETS:
            implied = "autoencoder"
        elif preset in TRAIN_PRESETS:
            implied = "diffusion"
        else:
            valid = sorted([*TRAIN_PRESETS, *AUTOENCODER_TRAIN_PRESETS, *VQ_TRAIN_PRESETS])
            raise ValueError(f"unknown training preset {preset!r}; valid names: {valid}")
    task = task if task is not None else implied or "diffusion"
    if task not in TASKS:
        raise ValueError(f"task: unknown {task!r}; valid: {', '.join(TASKS)}")
    if implied is not None and task != implied:
        raise ValueError(f"task: {task!r} does not match preset {preset!r} (a {implied} preset)")
    return task


def _run_diffusion(args: argparse.Namespace, config: str | None, overrides: list[str]) -> int:
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


def _run_vq(
    args: argparse.Namespace, task: str, loaded: dict[str, Any], overrides: list[str]
) -> int:
    base = VQ_TRAIN_PRESETS[args.preset] if args.preset else None
    cfg = build_run_config(task, loaded, overrides, base)
    if args.print_config:
        print(dump_run_config(cfg), end="")
        return 0
    run_stage = run_transformer if isinstance(cfg, TransformerRunConfig) else run_vqgan
    out = run_stage(cfg, resume=args.resume)
    print(f"wrote {out}")
    return 0


def _run_autoencoder(args: argparse.Namespace, loaded: dict[str, Any], overrides: list[str]) -> int:
    base = AUTOENCODER_TRAIN_PRESETS[args.preset] if args.preset else None
    cfg = build_autoencoder_config(loaded, overrides, base)
    if args.print_config:
        print(dump_autoencoder_config(cfg), end="")
        return 0
    print(f"wrote {run_autoencoder(cfg, resume=args.resume)}")
    return 0


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # no file given: the first item is an override
        config, overrides = None, [config, *overrides]
    loaded = _read_yaml(config)
    had_task = "task" in loaded
    task = _pick_task(loaded, overrides, args.preset)
    if task == "autoencoder":
        return _run_autoencoder(args, loaded, overrides)
    if task != "diffusion":
        return _run_vq(args, task, loaded, overrides)
    if not had_task:
        return _run_diffusion(args, config, overrides)
    with tempfile.TemporaryDirectory() as tmp:  # TrainConfig has no ``task`` key: drop it
        stripped = Path(tmp) / "config.yaml"
        stripped.write_text(yaml.safe_dump(loaded, sort_keys=False))
        return _run_diffusion(args, str(stripped), overrides)


def main() -> int:
    parser = argparse.ArgumentParser(prog="genmodels")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
