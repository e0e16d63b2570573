"""Random LoRA files for the tests: kohya / LyCORIS keys written with our own name mapping."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from genmodels.adapters.kohya_names import kohya_names
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline


def text_models(pipe: LatentDiffusionPipeline) -> list[torch.nn.Module]:
    return [e.model for e in pipe.text_encoder.embedders]


def module_of(pipe: LatentDiffusionPipeline, target) -> torch.nn.Module:
    root = pipe.unet if target.component == "unet" else text_models(pipe)[target.index]
    return root.get_submodule(target.path)


def kohya_lora(
    pipe: LatentDiffusionPipeline, path: Path, seed: int = 0, rank: int = 4, alpha: float = 2.0,
    select: str = ".", layout: str | None = None,
) -> dict:  # fmt: skip
    """A kohya LoRA (LoCon for convs: the down tensor carries the kernel) on every module whose
    path matches ``select``; returns {Target: (down, up)}."""
    gen = torch.Generator().manual_seed(seed)
    sd, made = {}, {}
    names = kohya_names(pipe.unet, text_models(pipe), pipe.model_type, layout)
    for target, name in names.items():
        if not re.search(select, target.path):
            continue
        w = module_of(pipe, target).weight
        down = torch.randn(rank, *w.shape[1:], generator=gen) * 0.1
        up = torch.randn(w.shape[0], rank, *([1, 1] if w.ndim == 4 else []), generator=gen) * 0.1
        sd |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
               f"{name}.alpha": torch.tensor(alpha)}  # fmt: skip
        made[target] = (down, up)
    save_file(sd, str(path))
    return made
