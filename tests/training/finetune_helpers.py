"""A tiny SD checkpoint (built with diffusers, saved as an LDM single file) and captioned image
folders for the fine-tuning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genmodels.checkpoints.convert import convert_checkpoint
from genmodels.training.finetune_config import FinetuneRunConfig
from genmodels.training.tasks import build_config
from tests.checkpoints.builders import build_reference


def tiny_checkpoint(root: Path, family: str = "sd1") -> tuple[Path, dict]:
    """(LDM single file, the diffusers reference modules); diffusers folder: root/diffusers."""
    refs = build_reference(family, root / "diffusers")
    convert_checkpoint(root / "diffusers", root / "model.safetensors", "safetensors")
    return root / "model.safetensors", refs


def image_folder(root: Path, sizes: list[tuple[int, int]], sub: str = "3_cat",
                 seed: int = 0) -> Path:  # fmt: skip
    """Random images of ``sizes`` (w, h) with ``name.txt`` captions in ``root/sub``."""
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a cat, picture {i}, red", encoding="utf-8")
    return root


def finetune_config(init: Path, folder: Path, out_dir: Path, **changes: Any) -> FinetuneRunConfig:
    """A tiny run: 64 px images, buckets of 32 px steps, fp32 everywhere, rank-4 LoRA."""
    yaml: dict[str, Any] = {
        "init": str(init),
        "data": {"path": str(folder), "size": 64, "batch_size": 2},
        "buckets": {"step": 32, "min_size": 32},
        "lora": {"rank": 4},
        "optim": {"lr": 1e-3},
        "frozen_precision": "fp32",
        "steps": 3,
        "out_dir": str(out_dir),
        "progress": False,
        "log_every": 1,
        "ckpt_minutes": 0,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(yaml.get(key), dict):
            yaml[key] = {**yaml[key], **value}
        else:
            yaml[key] = value
    return build_config("finetune", yaml)
