"""``task: finetune``: adapt a released Stable Diffusion checkpoint to a captioned image folder,
fully (the UNet) or with LoRA adapters::

    task: finetune
    init: sd15.safetensors          # any checkpoint load_pipeline reads
    train: lora                     # or full
    lora: {rank: 16, alpha: 16, conv_rank: 0, text_encoder: false}
    data: {path: my_images, size: 512, batch_size: 4, crop: center, random_flip: true}
    buckets: {enabled: true}
    captions: {dropout: 0.05, shuffle_tags: true, keep_tokens: 1}
    loss: {min_snr_gamma: 5, offset_noise: 0.05}
    optim: {lr: 1e-4, schedule: cosine, warmup_steps: 100, name: adamw8bit}
    steps: 2000
    precision: bf16
    sample_prompts: ["a photo of sks dog"]
    sample_every: 200

The UNet, VAE, text encoder(s), prediction type and schedule (zero terminal SNR included) come
from ``init``; the VAE and the text encoders are frozen (in ``frozen_precision``), and so is the
UNet under LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import DataConfig, EMAConfig, OptimConfig, RunConfig

__all__ = [
    "BucketConfig",
    "CacheConfig",
    "CaptionConfig",
    "FinetuneLossConfig",
    "FinetuneOutputConfig",
    "FinetuneRunConfig",
    "LoRAConfig",
]

LORA_TARGETS = ("attention", "proj", "ff")


@dataclass
class LoRAConfig:
    """LoRA (Hu et al. 2021): W x + (alpha / rank) up(down(dropout(x))), ``up`` zero-initialised.

    ``targets``: the UNet's attention projections (``to_q/k/v/out.0``), the transformers'
    ``proj_in`` / ``proj_out`` and their feed-forward layers (``ff``); ``conv_rank`` > 0 adds
    LoCon adapters to the ResBlocks' and up/down samplers' convs (kohya ``conv_dim``);
    ``text_encoder``: adapters on the text encoders' attention and MLP layers too (LR
    ``text_lr``, default ``optim.lr``). ``alpha`` null: equal to the rank (scale 1).
    ``save_dtype``: the dtype of the saved ``.safetensors``. ``init``: a kohya LoRA file to
    continue training from (kohya ``network_weights``); it must fit this model and settings."""

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    conv_rank: int = 0
    conv_alpha: float | None = None
    text_encoder: bool = False
    text_lr: float | None = None
    save_dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    init: str | None = None

    def __post_init__(self) -> None:
        if self.rank < 1 or self.conv_rank < 0:
            raise ValueError(f"lora.rank must be >= 1 and lora.conv_rank >= 0, got "
                             f"{self.rank} / {self.conv_rank}")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"lora.targets: {bad or 'empty'}; valid: {list(LORA_TARGETS)}")
        for key in ("alpha", "conv_alpha", "text_lr"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"lora.{key} must be > 0 or null, got {value}")


@dataclass
class BucketConfig:
    """Aspect-ratio buckets of about ``data.size``^2 pixels (``data/buckets.py``): sides in
    multiples of ``step`` within [``min_size``, ``max_size``] (default size / 2 and 2 size).
    Disabled: one square bucket ``data.size``."""

    enabled: bool = True
    step: int = 64
    min_size: int | None = None
    max_size: int | None = None


@dataclass
class CaptionConfig:
    """``dropout``: the fraction of captions replaced by "" (CFG training, kohya
    ``caption_dropout_rate``); ``shuffle_tags``: shuffle comma-separated tags, the first
    ``keep_tokens`` kept in front (kohya ``shuffle_caption``)."""

    dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"captions.dropout must be in [0, 1), got {self.dropout}")
        if self.keep_tokens < 0:
            raise ValueError(f"captions.keep_tokens must be >= 0, got {self.keep_tokens}")


@dataclass
class FinetuneLossConfig:
    """min-SNR-gamma (Hang et al. 2023; 5 recommended) and offset noise (Guttenberg 2023)."""

    min_snr_gamma: float | None = None
    offset_noise: float = 0.0


@dataclass
class CacheConfig:
    """On-disk caches (``training/finetune_cache.py``), in ``dir`` (default
    ``<out_dir>/cache``): VAE latents per (image content, bucket, crop, flip, VAE) and caption
    embeddings per (caption, text encoders). With ``data.crop: random`` latents are not cached
    (encoded each step, as kohya); with ``data.random_flip`` both orientations are cached."""

    latents: bool = True
    text: bool = True
    dir: str | None = None


@dataclass
class FinetuneOutputConfig:
    """The trained model in ``out_dir``. LoRA: ``<name>.safetensors`` in kohya's format. Full:
    ``<name>.safetensors`` (single file, LDM / sgm keys, as the source), a diffusers folder
    ``<name>/`` or both; ``weights``: the EMA or the raw UNet; ``fp16``: floats saved as fp16."""

    name: str = "model"
    format: Literal["safetensors", "diffusers", "both"] = "safetensors"
    weights: Literal["ema", "raw"] = "ema"
    fp16: bool = False


@dataclass
class FinetuneRunConfig(RunConfig):
    """``task: finetune`` (see the module docstring). ``aesthetic_score``: the SDXL refiner's
    score conditioning of every training image."""

    init: str = ""
    vae: str | None = None
    prediction: Literal["eps", "v"] | None = None
    train: Literal["full", "lora"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    loss: FinetuneLossConfig = field(default_factory=FinetuneLossConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    output: FinetuneOutputConfig = field(default_factory=FinetuneOutputConfig)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(dataset="folder", size=512, batch_size=1)
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(enabled=False))
    frozen_precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False
    aesthetic_score: float = 6.0
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 20
    guidance_scale: float = 7.0
    steps: int = 1000
    out_dir: str = "runs/finetune"

    @property
    def owned(self) -> tuple[str, ...]:
        """Names a run writes in ``out_dir``; the default ``cache/`` is not one of them, so a new
        run or ``--overwrite`` in the same folder keeps (and reuses) the cache."""
        return ("checkpoints", "config.yaml", "log", "samples", "tensorboard", self.output.name)

    def check_inputs(self) -> None:
        """The settings every run needs (the defaults leave them empty): called at its start."""
        if not self.init:
            raise ValueError("init: give the checkpoint to fine-tune (a file or diffusers folder)")
        if self.data.dataset != "folder" or not self.data.path:
            raise ValueError("data: fine-tuning reads a captioned image folder; set data.path "
                             "(and data.dataset: folder)")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if self.train == "full" and self.lora.text_encoder:
            raise ValueError("lora.text_encoder applies to train: lora")
