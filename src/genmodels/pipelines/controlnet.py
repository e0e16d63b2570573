"""ControlNet units at generation (A1111's sd-webui-controlnet, diffusers' ControlNet pipelines).

    canny = load_controlnet("control_v11p_sd15_canny.safetensors", pipe)
    result = txt2img(pipe, "a house", control=[ControlUnit(canny, "edges.png", weight=0.8)])

A unit is a ControlNet, a control image and when / how strongly it acts:

* The image is used as given (no preprocessor: A1111's module "none"), resized to the output
  size (A1111's "Just Resize": area averaging when shrinking, Lanczos when enlarging) and
  converted to RGB in [0, 1].
* ``weight`` scales its residuals (diffusers' ``controlnet_conditioning_scale``); the residuals
  of several units add up.
* ``start`` / ``end`` are fractions of the sampling steps (A1111's "Guidance Start / End"): the
  unit acts at sampling step i of n when ``start <= i / n <= end``. Outside that range, or with
  weight 0, the UNet is called exactly as without the unit.

The control is computed inside the denoiser, on the cond and uncond rows of classifier-free
guidance alike (diffusers with ``guess_mode=False``): ``ControlSchedule`` turns sigma into the
step and passes ``control_weights`` to a ``DiscreteDenoiser`` over ``models.controlnet.
ControlledUNet``, which also serves 9-channel inpainting UNets (the ControlNet sees the 4-channel
latent, as diffusers' ControlNet inpainting pipeline).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from genmodels.checkpoints.controlnet import check_controlnet_fits, read_controlnet
from genmodels.checkpoints.io import CheckpointError
from genmodels.checkpoints.strict import strict_problems
from genmodels.diffusion.denoisers import DiscreteDenoiser, WrappedDenoiser
from genmodels.models.controlnet import ControlledUNet, ControlNetModel
from genmodels.models.family import ModelFamily
from genmodels.pipelines.controlnet_infotext import legacy_model_hash
from genmodels.pipelines.finite import check_finite
from genmodels.pipelines.image_reading import load_image
from genmodels.pipelines.images import pil_to_tensor
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.loading import _build, _load  # the pipeline loader's meta build / load

__all__ = [
    "ControlSchedule", "ControlUnit", "LoadedControlNet", "apply_control", "load_controlnet",
    "prepare_control",
]  # fmt: skip


@dataclass
class LoadedControlNet:
    """A ControlNet loaded for a pipeline, with what the PNG metadata records of it."""

    model: ControlNetModel
    name: str  # file (or folder) name without extension
    hash: str | None  # A1111's short hash of the weights file (8 hex digits)
    family: ModelFamily | None
    source: str

    @property
    def label(self) -> str:
        """A1111's model label, ``name [hash]``."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name


@dataclass
class ControlUnit:
    """One ControlNet with its control image, weight and active range of the sampling steps."""

    controlnet: LoadedControlNet | ControlNetModel
    image: Image.Image | Tensor | str | os.PathLike
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    @property
    def model(self) -> ControlNetModel:
        cn = self.controlnet
        return cn.model if isinstance(cn, LoadedControlNet) else cn

    @property
    def label(self) -> str:
        cn = self.controlnet
        return cn.label if isinstance(cn, LoadedControlNet) else "controlnet"

    def check(self, i: int) -> None:
        for name in ("weight", "start", "end"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"control unit {i}: {name} must be a finite number, got {v!r}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"control unit {i}: need 0 <= start <= end <= 1, got start={self.start}, "
                f"end={self.end}"
            )
        if not isinstance(self.controlnet, LoadedControlNet | ControlNetModel):
            raise ValueError(
                f"control unit {i}: controlnet must come from load_controlnet (or be a "
                f"ControlNetModel), got {type(self.controlnet).__name__}"
            )

    def active(self, fraction: float) -> bool:
        """A1111: the unit acts unless ``fraction < start or fraction > end``."""
        return self.start <= fraction <= self.end


def load_controlnet(path: str | os.PathLike, pipe: LatentDiffusionPipeline) -> LoadedControlNet:
    """Load a ControlNet file or diffusers folder for ``pipe`` (its device and dtype); a
    ControlNet of another family is refused, naming the file and both families."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: ControlNet not found")
    cn = read_controlnet(path, like=pipe.unet.config)
    check_controlnet_fits(
        cn, pipe.unet.config, pipe.model_type, pipe.vae.config.embed_dim,
        pipe.vae.downsample_factor, str(path),
    )  # fmt: skip
    model = _build(ControlNetModel, cn.config, meta=True)
    problems = strict_problems(model, cn.state_dict)
    if problems:
        raise CheckpointError(
            f"{path}: the ControlNet tensors do not fit the measured architecture: "
            + "; ".join(problems)
        )
    _load(model, cn.state_dict, pipe.dtype, pipe.device, strict=True)
    name = path.name if path.is_dir() else path.stem
    digest = legacy_model_hash(cn.weights_file) if cn.weights_file.is_file() else None
    return LoadedControlNet(model.eval(), name, digest, cn.family, str(path))


def _control_image(image: Any, width: int, height: int, max_pixels: int | None, i: int) -> Tensor:
    """(1, 3, height, width) float32 RGB in [0, 1] (A1111 "Just Resize")."""
    if isinstance(image, str | os.PathLike):
        image = load_image(image, "RGB", max_pixels)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (width, height):
            shrink = width * height < image.width * image.height
            method = Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS
            image = image.resize((width, height), method)
        return pil_to_tensor(image, "RGB")[None]
    if not isinstance(image, Tensor):
        raise ValueError(f"control unit {i}: image must be a path, PIL image or tensor")
    t = image.detach().float().cpu()
    t = t[None] if t.ndim == 3 else t
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(
            f"control unit {i}: image tensor must be (B, 3, H, W), got {tuple(t.shape)}"
        )
    check_finite(t, f"control unit {i} image")
    if t.shape[-2:] != (height, width):
        t = F.interpolate(t, size=(height, width), mode="bicubic", antialias=True)
    return t.clamp(0, 1)


def prepare_control(
    units: Sequence[ControlUnit], width: int, height: int, batch_size: int,
    max_pixels: int | None = None,
) -> list[Tensor]:  # fmt: skip
    """Check the units and read their control images at the output size."""
    if isinstance(units, ControlUnit):
        raise ValueError("control must be a list of ControlUnit (got one unit; wrap it in [])")
    hints = []
    for i, unit in enumerate(units):
        if not isinstance(unit, ControlUnit):
            raise ValueError(f"control[{i}] must be a ControlUnit, got {type(unit).__name__}")
        unit.check(i)
        hint = _control_image(unit.image, width, height, max_pixels, i)
        if hint.shape[0] not in (1, batch_size):
            raise ValueError(
                f"control unit {i}: {hint.shape[0]} images, expected 1 or batch_size={batch_size}"
            )
        hints.append(hint)
    return hints


def step_index(sigmas: Tensor, sigma: float) -> int:
    """The sampling step that evaluates the model at ``sigma``: i with sigmas[i] >= sigma >
    sigmas[i + 1] (an intermediate evaluation of a 2nd-order step counts to its step)."""
    above = int((sigmas[:-1] >= sigma * (1 - 1e-5)).sum())
    return min(max(above - 1, 0), len(sigmas) - 2)


class ControlSchedule(WrappedDenoiser):
    """Denoiser wrapper giving each unit its weight at the current step (0 outside [start, end])
    as ``control_weights`` to the denoiser over a ``ControlledUNet``."""

    def __init__(
        self, denoiser: Callable[..., Tensor], units: Sequence[ControlUnit], sigmas: Tensor
    ) -> None:
        super().__init__(denoiser)
        self.units = list(units)
        self.step_sigmas = sigmas.detach().float().cpu()

    def weights_at(self, sigma: float) -> list[float]:
        steps = len(self.step_sigmas) - 1
        fraction = step_index(self.step_sigmas, sigma) / steps
        return [float(u.weight) if u.active(fraction) else 0.0 for u in self.units]

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        s = torch.as_tensor(sigma)
        weights = self.weights_at(float(s.max()))
        return self.denoiser(x, sigma, control_weights=weights, **cond)


def apply_control(
    denoiser: DiscreteDenoiser, units: Sequence[ControlUnit], hints: Sequence[Tensor],
    sigmas: Tensor,
) -> ControlSchedule:  # fmt: skip
    """``denoiser`` (over a UNet, or a 9-channel inpainting wrapper of one) with the units'
    control, for a run over ``sigmas`` (the steps actually sampled). The ControlNets are moved
    to the UNet's device and dtype."""
    device = denoiser.sigmas.device
    dtype = next(denoiser.model.parameters()).dtype
    for unit in units:  # follow the pipeline if it moved since load_controlnet (in place)
        unit.model.to(device=device, dtype=dtype)
    net = ControlledUNet(denoiser.model, [u.model for u in units], [h.to(device) for h in hints])
    alphas_cumprod = 1 / (1 + denoiser.sigmas.double() ** 2)
    controlled = DiscreteDenoiser(net, alphas_cumprod, denoiser.prediction, denoiser.quantize)
    controlled.to(device)
    controlled.sigmas.copy_(denoiser.sigmas)  # the very same table: bit-exact without control
    controlled.log_sigmas.copy_(denoiser.log_sigmas)
    return ControlSchedule(controlled, units, sigmas)
