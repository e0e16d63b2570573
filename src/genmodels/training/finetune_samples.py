"""Sample images of a fine-tuning run: fixed prompts every ``sample_every`` steps, with the
adapter and (LoRA) without it, side by side, as kohya's ``sample_prompts`` / diffusers'
``validation_prompt``; written to ``<out_dir>/samples/step-N.png``."""

from __future__ import annotations

from pathlib import Path

import torch

from genmodels.nn.fast import fast_paths_enabled, set_fast_paths
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline

from .finetune_config import FinetuneRunConfig
from .images import save_grid
from .lora import LoRANetwork

__all__ = ["save_prompt_samples"]


def _images(pipe: LatentDiffusionPipeline, cfg: FinetuneRunConfig) -> torch.Tensor:
    size = cfg.data.size
    out = [
        pipe.txt2img(prompt, width=size, height=size, steps=cfg.sample_steps,
                     cfg_scale=cfg.guidance_scale, seed=cfg.seed).pixels
        for prompt in cfg.sample_prompts
    ]  # fmt: skip
    return torch.cat(out) * 2 - 1  # (P, 3, H, W) in [-1, 1]


def save_prompt_samples(pipe: LatentDiffusionPipeline, lora: LoRANetwork | None,
                        cfg: FinetuneRunConfig, step: int, folder: Path) -> list[Path]:  # fmt: skip
    """One grid: a row per prompt, the trained model first (then the base model for LoRA)."""
    modules = [pipe.unet, pipe.text_encoder] + ([lora] if lora is not None else [])
    modes = [m.training for m in modules]
    fast = fast_paths_enabled()
    set_fast_paths(False)  # the bf16 fast path reads proj_in.weight, bypassing the adapter hooks
    try:
        for m in modules:
            m.eval()
        columns = [_images(pipe, cfg)]
        if lora is not None:
            with lora.disabled():
                columns.append(_images(pipe, cfg))
    finally:
        set_fast_paths(fast)
        for m, mode in zip(modules, modes):
            m.train(mode)
    grid = torch.stack(columns, dim=1).flatten(0, 1)  # (P * columns, 3, H, W)
    path = save_grid(grid, folder / f"step-{step:08d}.png", nrow=len(columns))
    return [path]
