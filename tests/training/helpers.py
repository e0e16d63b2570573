"""Tiny training configs and a subprocess runner shared by the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from genmodels.configs.unet import UNetConfig
from genmodels.training.config import DataConfig
from genmodels.training.task_configs import DiffusionRunConfig as TrainConfig
from genmodels.training.task_configs import dump_config

ROOT = Path(__file__).resolve().parents[2]

TINY_UNET = UNetConfig(
    in_channels=1,
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    num_head_channels=32,
    num_classes=11,
)


def tiny_config(out_dir: Path, **kw) -> TrainConfig:
    fields = dict(
        model=TINY_UNET,
        data=DataConfig(dataset="digits", size=8, batch_size=8),
        steps=6,
        out_dir=str(out_dir),
        progress=False,
        log_every=1,
    )
    fields.update(kw)
    return TrainConfig(**fields)


def write_config(cfg: TrainConfig, path: Path) -> Path:
    dump_config(cfg, path)
    return path


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return e


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "genmodels.cli.main", "train", str(config), *extra]


def run_train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(config, *extra), env=env(), capture_output=True, text=True, timeout=300
    )


def final_weights(out_dir: Path, step: int, name: str = "model") -> dict:
    return load_file(Path(out_dir) / "checkpoints" / f"step-{step:08d}" / f"{name}.safetensors")
