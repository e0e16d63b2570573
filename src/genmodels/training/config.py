"""The sections every training task shares, and the run settings common to all of them.

Every task's config (``diffusion``, ``autoencoder``, ``vqgan``, ``transformer``; see
``tasks.py``) is a :class:`RunConfig` with its own ``model`` and task sections, so every YAML
file has one layout::

    task: autoencoder
    model: digits            # the task's architecture (a preset name or its fields)
    data: {dataset: digits, size: 8, batch_size: 64}
    optim: {lr: 2e-3, betas: [0.5, 0.9], schedule: cosine, warmup_steps: 100}
    ema: {enabled: false}
    steps: 300
    precision: bf16
    out_dir: runs/ae-digits

Loading checks each key against the dataclass fields and each value against the field's type
(``configs/io.py``), so a typo fails at once naming the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DataConfig",
    "EMAConfig",
    "LambdaCycle",
    "OptimConfig",
    "RunConfig",
]


@dataclass
class DataConfig:
    """Where images come from: ``digits``, ``emoji`` or an image ``folder`` at ``path``.

    ``batch_size`` is the global batch of one optimiser step (split over DDP ranks and
    ``optim.grad_accum`` micro-batches).
    """

    dataset: Literal["digits", "emoji", "folder"] = "digits"
    path: str | None = None
    size: int = 16
    batch_size: int = 64
    num_workers: int = 0
    crop: Literal["center", "random"] = "center"
    random_flip: bool = False


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
    """AdamW, its LR schedule and the step (clipping, accumulation).

    ``name``: ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes' ``AdamW8bit``, only when the
    ``bitsandbytes`` package is installed). ``schedule``: ``constant`` (after an optional linear
    warm-up), ``cosine`` (warm-up, then down to ``min_lr_ratio``) or ldm's ``lambda_linear``.
    ``disc_lr``: the discriminator's LR of the GAN tasks (default ``lr``).
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
    disc_lr: float | None = None


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


# lower bounds of the shared integer settings (dotted keys as in the YAML)
_MINIMUMS = {
    "data.size": 1,
    "data.batch_size": 1,
    "data.num_workers": 0,
    "optim.warmup_steps": 0,
    "optim.grad_accum": 1,
    "steps": 1,
    "log_every": 1,
    "ckpt_every": 0,
    "keep_last": 0,
    "sample_every": 0,
}


@dataclass
class RunConfig:
    """The settings of a run that every task has; a task's config adds ``model`` and its own
    sections (one level of dataclass inheritance, the task's fields after these).

    Checkpoints (``checkpoints/step-N/`` under ``out_dir``, the newest ``keep_last`` kept) are
    written every ``ckpt_every`` steps, and in any case once ``ckpt_minutes`` have passed since
    the last one, so a killed run loses at most that much; Ctrl-C / SIGTERM write one too.
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(enabled=False))
    steps: int = 1000
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 0  # 0: only by time (ckpt_minutes) and at the end
    ckpt_minutes: float = 5.0  # 0: never by time
    keep_last: int = 2
    sample_every: int = 0  # 0: samples only at the end
    progress: bool = True

    def __post_init__(self) -> None:
        for key, low in _MINIMUMS.items():
            section, _, name = key.rpartition(".")
            value = getattr(getattr(self, section) if section else self, name)
            if value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")
        o = self.optim
        if not o.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {o.lr}")
        if o.disc_lr is not None and not o.disc_lr > 0:
            raise ValueError(f"optim.disc_lr must be > 0, got {o.disc_lr}")
        if o.grad_clip is not None and not o.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {o.grad_clip}")
        if self.data.batch_size % o.grad_accum:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} must be divisible by "
                f"optim.grad_accum={o.grad_accum}"
            )
        if self.ckpt_minutes < 0:
            raise ValueError(f"ckpt_minutes must be >= 0, got {self.ckpt_minutes}")
