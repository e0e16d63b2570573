"""Stage 1: train a VQGAN (autoencoder + codebook + PatchGAN) in one explicit loop.

Each step (taming's two optimiser indices, in order):

1. autoencoder: x_rec, L_codebook = model(x); loss = VQGANLoss.generator_loss(...); Adam step
   on encoder / decoder / quant convs / codebook;
2. discriminator (from ``disc_start`` on): VQGANLoss.discriminator_loss(x, x_rec.detach());
   Adam step on the discriminator.

Adam with betas (0.5, 0.9) as taming. Forward passes can run under bf16 autocast (``bf16``);
the quantiser computes distances and its loss in float32 either way. Codebook usage and
perplexity are accumulated over each logging window. A Gumbel quantiser's temperature follows
``gumbel_temperature`` (taming's ``temperature_scheduling``), set before each step.

``on_step`` / ``resume`` checkpoint and continue the loop exactly (``training/checkpoint.py``):
the codebook's EMA statistics, k-means flag and dead-code counters are buffers of the model,
so its state dict carries them; the loop's state holds the rest.

Checkpoints: ``<dir>/vqgan.safetensors`` (taming key names) + ``<dir>/vqgan.json`` (the
:class:`~genmodels.configs.vqgan.VQConfig`), read back by :func:`load_vqgan`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.strict import load_strict
from genmodels.configs.vqgan import VQConfig
from genmodels.models.quantize_gumbel import (
    GumbelQuantize,
    cosine_temperature,
    exponential_temperature,
)
from genmodels.models.vqgan import VQModel
from genmodels.training.checkpoint import capture_loop, restore_loop
from genmodels.training.vqgan_loss import VQGANLoss, VQGANLossConfig

__all__ = [
    "GumbelTemperatureConfig",
    "VQGANTrainConfig",
    "train_vqgan",
    "save_vqgan",
    "load_vqgan",
    "reconstruct_psnr",
]


@dataclass
class GumbelTemperatureConfig:
    """Temperature of a Gumbel quantiser by step; defaults are taming's Gumbel VQGAN configs.

    ``cosine``: linear warm-up t_start -> t_max over ``warm_up_steps``, cosine decay to t_min
    at ``max_decay_steps`` (:func:`cosine_temperature`); ``exponential``:
    max(t_min, t_start exp(-rate step)) (DALL-E); ``constant``: t_start.
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

    def at(self, step: int) -> float:
        """The temperature at training step ``step``."""
        if self.schedule == "cosine":
            span = (self.warm_up_steps, self.max_decay_steps)
            return cosine_temperature(step, *span, self.t_start, self.t_max, self.t_min)
        if self.schedule == "exponential":
            return exponential_temperature(step, self.t_start, self.rate, self.t_min)
        return self.t_start


@dataclass
class VQGANTrainConfig:
    """Settings of the stage-1 loop."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    disc_lr: float | None = None  # defaults to lr
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    bf16: bool = False
    log_every: int = 100
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    gumbel_temperature: GumbelTemperatureConfig = field(default_factory=GumbelTemperatureConfig)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.log_every < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr > 0, log_every >= 1; got {self.steps}, "
                f"{self.batch_size}, {self.lr}, {self.log_every}"
            )


def _autocast(enabled: bool, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_vqgan(
    model: VQModel,
    images: Tensor,
    cfg: VQGANTrainConfig,
    loss_fn: VQGANLoss | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``images`` (N, C, H, W) in [-1, 1]; returns the logged records.

    Batches are drawn with replacement from a generator seeded with ``cfg.seed``. ``callback``
    gets each logged record; ``on_step(step, state)`` the number of finished steps after every
    step and a function returning the loop's state (for checkpoints; it must leave ``model`` in
    training mode). ``resume``: such a state, with ``model`` already holding the weights saved
    with it; the loop continues at its step exactly (``loss_fn``, both optimisers, the batch
    generator, the global RNG, the open log window and the earlier records are restored).
    """
    if images.ndim != 4 or images.shape[1] != model.cfg.in_channels:
        raise ValueError(
            f"expected images (N, {model.cfg.in_channels}, H, W), got {tuple(images.shape)}"
        )
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)  # k-means start, dead-code restarts, Gumbel noise
    loss_fn = loss_fn if loss_fn is not None else VQGANLoss(cfg.loss)
    loss_fn.to(device).train()
    model.train()
    opt_ae = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas
    )
    opt_d = torch.optim.Adam(
        loss_fn.discriminator.parameters(), lr=cfg.disc_lr or cfg.lr, betas=cfg.betas
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    counts = torch.zeros(model.cfg.n_embed, dtype=torch.long)  # code usage of the log window
    sums: dict[str, float] = {}
    count = 0  # steps summed in ``sums`` / ``counts`` since the last logged record
    records: list[dict[str, float]] = []
    start = 0
    stateful = {"loss": loss_fn, "opt_ae": opt_ae, "opt_d": opt_d}
    if resume is not None:
        start = restore_loop(resume, gen, **stateful)
        counts.copy_(resume["counts"])
        sums, count = dict(resume["sums"]), int(resume["count"])
        records = list(resume["records"])

    def state() -> dict[str, Any]:
        window = {"counts": counts.clone(), "sums": dict(sums), "count": count}
        return capture_loop(step + 1, gen, **stateful) | window | {"records": list(records)}

    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
        x = images[idx].to(device)
        temperature = None
        if isinstance(model.quantize, GumbelQuantize):  # taming's temperature_scheduling
            temperature = model.quantize.temperature = cfg.gumbel_temperature.at(step)
        with _autocast(cfg.bf16, device):
            x_rec, q_loss, info = model(x)
        x_rec = x_rec.float()
        loss, logs = loss_fn.generator_loss(q_loss, x, x_rec, step, model.get_last_layer())
        if temperature is not None:
            logs["temperature"] = temperature
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        if step >= cfg.loss.disc_start:
            with _autocast(cfg.bf16, device):
                d_loss, d_logs = loss_fn.discriminator_loss(x, x_rec.detach(), step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logs |= d_logs
        counts += info.counts.cpu()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            p = counts.float() / counts.sum()
            record = {k: v / count for k, v in sums.items()} | {
                "step": step + 1,
                "usage": float((counts > 0).float().mean()),
                "perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum())),
                "seconds": time.perf_counter() - t0,
            }
            records.append(record)
            if callback is not None:
                callback(step + 1, record)
            counts.zero_()
            sums, count = {}, 0
        if on_step is not None:
            on_step(step + 1, state)
    model.eval()
    return records


@torch.no_grad()
def reconstruct_psnr(model: VQModel, images: Tensor, batch_size: int = 256) -> tuple[float, Tensor]:
    """PSNR (dB, images in [-1, 1] -> peak-to-peak 2) and code counts (n_embed,) over images."""
    model.eval()
    se, counts = 0.0, torch.zeros(model.cfg.n_embed, dtype=torch.long)
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        x_rec, _, info = model(x)
        se += float((x_rec.clamp(-1, 1) - x).square().sum())
        counts += info.counts.cpu()
    mse = se / images.numel()
    return 10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item(), counts


def save_vqgan(
    directory: str | Path,
    model: VQModel,
    extra: dict[str, Any] | None = None,
    name: str = "vqgan",
) -> Path:
    """Write ``<name>.safetensors`` + ``<name>.json`` ({"config": ..., **extra}) to ``directory``.

    Each file is replaced atomically (:func:`write_atomic`); the JSON is written last.
    ``name="cond_vqgan"`` stores a transformer's cond-stage VQGAN beside the first stage.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(directory / f"{name}.safetensors", lambda p: save_file(weights, str(p)))
    text = json.dumps({"config": model.cfg.to_dict()} | (extra or {}), indent=2)
    write_atomic(directory / f"{name}.json", lambda p: p.write_text(text))
    return directory


def load_vqgan(directory: str | Path, name: str = "vqgan") -> VQModel:
    """Rebuild a :class:`VQModel` written by :func:`save_vqgan` (strict key matching)."""
    directory = Path(directory)
    cfg_path, weights_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ValueError(f"not a VQGAN checkpoint directory: {p} is missing")
    cfg = VQConfig.from_dict(json.loads(cfg_path.read_text())["config"])
    model = VQModel(cfg)
    try:
        load_strict(model, load_file(str(weights_path)), "VQModel state dict")
    except ValueError as exc:
        raise ValueError(f"{weights_path}: {exc}") from None
    return model.eval()
