"""The Stable Diffusion model families: one name for each checkpoint layout we load.

"sd1" (SD 1.x: CLIP ViT-L text encoder), "sd2" (SD 2.x: OpenCLIP ViT-H), "sdxl-base" (CLIP
ViT-L + OpenCLIP bigG, size conditioning) and "sdxl-refiner" (OpenCLIP bigG only, aesthetic
score conditioning), as sgm / A1111 tell the checkpoints apart.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["MODEL_FAMILIES", "ModelFamily"]

ModelFamily = Literal["sd1", "sd2", "sdxl-base", "sdxl-refiner"]
MODEL_FAMILIES: tuple[ModelFamily, ...] = get_args(ModelFamily)
