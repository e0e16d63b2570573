"""Request and response bodies of AUTOMATIC1111's ``/sdapi/v1`` API (field names and defaults
of its published schema: ``StableDiffusionProcessingTxt2Img`` / ``...Img2Img``,
``TextToImageResponse``, ``ProgressResponse``, ``SamplerItem``, ``SchedulerItem``,
``SDModelItem``, ``PNGInfoRequest`` / ``PNGInfoResponse``).

Unknown fields are ignored, as A1111's models do, so requests written for A1111 (extension
fields included) are accepted. Ranges a request can get wrong are declared here, so a bad value
is a 422 naming the field (FastAPI's validation error, A1111's behaviour); the settings this
server does not implement are refused with a 400 by ``generation.check_supported``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genmodels.pipelines.seeds import MAX_SEED

__all__ = [
    "ImageToImageRequest", "ImageResponse", "PNGInfoRequest", "PNGInfoResponse",
    "ProgressResponse", "SDModelItem", "SamplerItem", "SchedulerItem", "TextToImageRequest",
]  # fmt: skip

_Seed = Field(-1, ge=-1, le=MAX_SEED)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextToImageRequest(_Request):
    """``POST /sdapi/v1/txt2img``."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = _Seed
    subseed: int = _Seed
    subseed_strength: float = Field(0.0, ge=0, le=1)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"  # deprecated: sampler_name wins when given
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000)
    steps: int = Field(50, ge=1)
    cfg_scale: float = Field(7.0, ge=0, allow_inf_nan=False)
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    enable_hr: bool = False
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class ImageToImageRequest(TextToImageRequest):
    """``POST /sdapi/v1/img2img``; a ``mask`` (white = repaint) makes it inpainting."""

    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False
    denoising_strength: float | None = Field(0.75, ge=0, le=1)


class ImageResponse(BaseModel):
    """``TextToImageResponse`` / ``ImageToImageResponse``: base64 PNGs, the request echoed,
    and ``info``, a JSON string (seeds, infotexts, ...)."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class PNGInfoRequest(_Request):
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]
