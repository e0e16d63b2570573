"""The config of each training task: a :class:`~genmodels.training.config.RunConfig` (the
shared ``data`` / ``optim`` / ``ema`` sections and run settings) plus the task's ``model`` and
own sections. ``dump_config`` writes one with its ``task:`` first; ``tasks.py`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from genmodels.checkpoints.atomic import write_atomic
from genmodels.configs.autoencoder import DIGITS as AE_DIGITS
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.conditioning import LatentConfig, TextConfig
from genmodels.configs.io import config_to_dict
from genmodels.configs.unet import UNetConfig
from genmodels.configs.vqgan import DIGITS as VQ_DIGITS
from genmodels.configs.vqgan import VQConfig
from genmodels.diffusion.objectives import ObjectiveConfig
from genmodels.models.permuters import PERMUTERS

from .autoencoder_loss import AutoencoderLossConfig
from .config import DataConfig, EMAConfig, OptimConfig, RunConfig
from .finetune_config import FinetuneRunConfig
from .regularizers import RegularizerConfig

__all__ = [
    "CONFIG_CLASSES",
    "AutoencoderRunConfig",
    "DEFAULT_UNET",
    "DiffusionRunConfig",
    "GPTSizes",
    "GumbelTemperatureConfig",
    "TaskConfig",
    "TransformerRunConfig",
    "VQGANRunConfig",
    "dump_config",
    "small_image_loss",
    "task_of",
]

# A small class-conditional pixel UNet for 1-channel images (10 classes + the CFG null class).
DEFAULT_UNET = UNetConfig(
    in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(), num_head_channels=32, num_classes=11, use_scale_shift_norm=True,
)  # fmt: skip

# the GAN autoencoders' Adam (taming / ldm): betas (0.5, 0.9), no clipping, no weight decay
_GAN_OPTIM = OptimConfig(betas=(0.5, 0.9), grad_clip=None)


@dataclass
class DiffusionRunConfig(RunConfig):
    """``task: diffusion``. ``model`` is a ``UNetConfig`` (in YAML also a UNet preset name, or
    ``{preset: NAME, ...changes}``; gradient checkpointing is ``model.use_checkpoint``);
    ``latent`` makes it latent diffusion (a frozen VAE), ``text`` text-conditional (a frozen
    text encoder); ``sample_steps`` / ``guidance_scale`` are those of its sample grids."""

    model: UNetConfig = field(default_factory=lambda: DEFAULT_UNET)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    channels_last: bool = False
    sample_steps: int = 20
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if not 0.0 <= self.guidance_scale < float("inf"):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}"
            )
        if self.text.encoder is not None:
            if self.model.context_dim is None:
                raise ValueError(
                    f"text.encoder={self.text.encoder!r} needs a UNet with cross-attention: "
                    "set model.context_dim to the encoder's width"
                )
            if self.model.num_classes is not None:
                raise ValueError(
                    "text.encoder and class labels (model.num_classes) cannot be combined; "
                    "set model.num_classes to null for text conditioning"
                )


def _check_divisible(size: int, factor: int) -> None:
    if size % factor:
        raise ValueError(f"data.size={size} is not divisible by the model's factor {factor}")


def _check_gan(cfg: RunConfig, loss: AutoencoderLossConfig, channels: int) -> None:
    if cfg.optim.grad_accum != 1:
        raise ValueError("optim.grad_accum must be 1 for the GAN autoencoder tasks")
    if loss.disc_in_channels not in (None, channels):
        raise ValueError(
            f"loss.disc_in_channels={loss.disc_in_channels} must equal the images' "
            f"channels ({channels})"
        )


@dataclass
class AutoencoderRunConfig(RunConfig):
    """``task: autoencoder``: the KL autoencoder of latent diffusion (stage 1; ldm's
    ``AutoencoderKL`` + ``LPIPSWithDiscriminator``). ``model`` is an ``AutoencoderConfig`` (in
    YAML also a preset name); ``regularizer`` the KL term and its weight; ``scale_by_std``:
    store 1 / std of the trained latents as the latent scale (ldm ``scale_by_std``)."""

    model: AutoencoderConfig = field(default_factory=lambda: AE_DIGITS)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=8))
    optim: OptimConfig = field(default_factory=lambda: _GAN_OPTIM)
    loss: AutoencoderLossConfig = field(
        default_factory=lambda: AutoencoderLossConfig(perceptual_weight=0.0, disc_factor=0.0)
    )
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    steps: int = 2000
    log_every: int = 100
    scale_by_std: bool = True
    grid_images: int = 8
    out_dir: str = "runs/autoencoder"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regularizer.kind != "kl":
            raise ValueError(
                "regularizer.kind: the autoencoder task trains a KL autoencoder; a codebook "
                "(vq) autoencoder is task: vqgan"
            )
        _check_divisible(self.data.size, self.model.downsample_factor)
        _check_gan(self, self.loss, self.model.out_ch)
        if self.grid_images < 1:
            raise ValueError(f"grid_images must be >= 1, got {self.grid_images}")


@dataclass
class GumbelTemperatureConfig:
    """Temperature of a Gumbel quantiser by step; defaults are taming's Gumbel VQGAN configs.

    ``cosine``: linear warm-up t_start -> t_max over ``warm_up_steps``, cosine decay to t_min
    at ``max_decay_steps``; ``exponential``: max(t_min, t_start exp(-rate step)) (DALL-E);
    ``constant``: t_start.
    """

    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    t_start: float = 0.9
    t_max: float = 0.9
    t_min: float = 1e-6
    warm_up_steps: int = 0
    max_decay_steps: int = 1_000_001
    rate: float = 1e-5

    def __post_init__(self) -> None:
        if min(self.t_start, self.t_max, self.t_min) <= 0:
            raise ValueError(
                f"Gumbel temperatures must be > 0, got t_start={self.t_start}, "
                f"t_max={self.t_max}, t_min={self.t_min}"
            )
        if not 0 <= self.warm_up_steps < self.max_decay_steps:
            raise ValueError("need 0 <= warm_up_steps < max_decay_steps")


def small_image_loss(disc_start: int = 400) -> AutoencoderLossConfig:
    """L1 + L2 + a 2-layer PatchGAN (weight 0.1) from ``disc_start``; perceptual term off
    (no local LPIPS weights for tiny images)."""
    return AutoencoderLossConfig(
        disc_start=disc_start, perceptual_weight=0.0, l2_weight=1.0,
        disc_num_layers=2, disc_ndf=32, disc_weight=0.1,
    )  # fmt: skip


@dataclass
class VQGANRunConfig(RunConfig):
    """``task: vqgan``: stage 1 of the VQ models (Esser et al. 2021), written as
    ``vqgan.safetensors`` + ``vqgan.json`` for ``vq-sample`` and the transformer task.
    ``model`` is a ``VQConfig`` (in YAML also a preset name)."""

    model: VQConfig = field(default_factory=lambda: VQ_DIGITS)
    optim: OptimConfig = field(default_factory=lambda: _GAN_OPTIM)
    loss: AutoencoderLossConfig = field(default_factory=small_image_loss)
    regularizer: RegularizerConfig = field(
        default_factory=lambda: RegularizerConfig(kind="vq", weight=1.0)
    )
    gumbel_temperature: GumbelTemperatureConfig = field(default_factory=GumbelTemperatureConfig)
    steps: int = 2000
    log_every: int = 100
    out_dir: str = "runs/vqgan"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regularizer.kind != "vq":
            raise ValueError("regularizer.kind: a VQGAN's regulariser is its codebook (vq)")
        _check_divisible(self.data.size, self.model.downsample_factor)
        _check_gan(self, self.loss, self.model.in_channels)


@dataclass
class GPTSizes:
    """minGPT sizes; ``vocab_size`` and ``block_size`` follow from the VQGAN and the classes."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0


@dataclass
class TransformerRunConfig(RunConfig):
    """``task: transformer``: stage 2, a GPT over the codes of the VQGAN in ``vqgan_dir``
    (taming's Net2Net), written beside it (``out_dir`` null) or into ``out_dir``.

    Conditioning: the class (``n_classes`` > 0, the dataset's labels), nothing (0: one SOS
    token) or the codes of a view of the target (``cond_image``: ``lowres`` / ``edges``,
    taming's cond stage; encoded by the first stage or the VQGAN in ``cond_vqgan_dir``).
    ``pkeep``: the fraction of input codes kept (the rest replaced by random codes)."""

    model: GPTSizes = field(default_factory=GPTSizes)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            betas=(0.9, 0.95), weight_decay=0.01, schedule="cosine", warmup_steps=100
        )  # fmt: skip
    )
    vqgan_dir: str = "runs/vqgan"
    permuter: str = "identity"
    n_classes: int = 10
    cond_image: Literal["lowres", "edges"] | None = None
    cond_size: int | None = None  # px of the conditioning image; default data.size (// 2 lowres)
    cond_vqgan_dir: str | None = None  # the cond-stage VQGAN; None: the first stage encodes it
    pkeep: float = 1.0
    steps: int = 2000
    log_every: int = 100
    out_dir: str | None = None  # None: next to the VQGAN, in vqgan_dir

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.permuter not in PERMUTERS:
            raise ValueError(f"permuter: unknown {self.permuter!r}; valid: {list(PERMUTERS)}")
        if self.n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {self.n_classes}")
        if self.cond_image is not None and self.n_classes:
            raise ValueError(f"cond_image={self.cond_image!r} needs n_classes: 0")
        if self.cond_image is None and (self.cond_size, self.cond_vqgan_dir) != (None, None):
            raise ValueError("cond_size / cond_vqgan_dir need a cond_image (lowres or edges)")
        if self.cond_size is not None and self.cond_size < 1:
            raise ValueError(f"cond_size must be >= 1, got {self.cond_size}")
        if not 0.0 <= self.pkeep <= 1.0:
            raise ValueError(f"pkeep must be in [0, 1], got {self.pkeep}")

    @property
    def run_dir(self) -> str:
        """Where the run writes: ``out_dir``, else the VQGAN's folder."""
        return self.out_dir if self.out_dir is not None else self.vqgan_dir


TaskConfig = (
    DiffusionRunConfig | AutoencoderRunConfig | VQGANRunConfig | TransformerRunConfig
    | FinetuneRunConfig
)  # fmt: skip
CONFIG_CLASSES: dict[str, type] = {
    "diffusion": DiffusionRunConfig,
    "autoencoder": AutoencoderRunConfig,
    "vqgan": VQGANRunConfig,
    "transformer": TransformerRunConfig,
    "finetune": FinetuneRunConfig,
}


def task_of(cfg: Any) -> str:
    """The ``task:`` name of a config."""
    for name, cls in CONFIG_CLASSES.items():
        if type(cfg) is cls:
            return name
    raise ValueError(f"not a training task config: {type(cfg).__name__}")


def dump_config(cfg: TaskConfig, path: str | Path | None = None) -> str:
    """YAML text of ``cfg``: ``task:`` and ``model:`` first (written atomically to ``path``)."""
    data = config_to_dict(cfg)
    model = {"model": data.pop("model")} if "model" in data else {}  # finetune: from ``init``
    ordered = {"task": task_of(cfg)} | model | data
    text = yaml.safe_dump(ordered, sort_keys=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_text(text))
    return text
