"""``genmodels train`` with ``task: autoencoder``: the KL autoencoder of latent diffusion.

A YAML file with ``task: autoencoder`` serialises :class:`AutoencoderRunConfig`. Loading checks
keys and types with ``genmodels.training.config``'s validators, so a typo fails with the dotted
key (``train.lrr: unknown key; valid keys: ...``). ``model:`` may also be the name of an
autoencoder preset (``model: digits``). ``data:`` is the VQ stages' data section (built-in
``digits`` / ``emoji`` or an image ``folder``). The loop is
:func:`~genmodels.training.autoencoder_train.train_autoencoder_kl` (ldm's
``LPIPSWithDiscriminator``): L1 (+ ``train.loss.l2_weight`` L2, + LPIPS from local weights at
``train.loss.lpips_path``) + ``train.kl_weight`` KL, and, when ``train.loss.disc_factor > 0``,
a PatchGAN from ``train.loss.disc_start`` (``disc_loss`` hinge / vanilla, adaptive weight times
``disc_weight``). ``train.loss.disc_in_channels`` follows ``model.out_ch``; the loop puts
``kl_weight`` in the place of ``train.loss.codebook_weight``.

Output directory (``out_dir``):

* ``config.yaml``: this run config, ``task: autoencoder`` first;
* ``log.csv`` (and ``tensorboard/``): the mean losses of every ``train.log_every`` steps;
* ``samples/recon-<step>.png``: the first ``grid_images`` images (top row) over their
  posterior-mode reconstructions, every ``sample_every`` steps and at the end;
* ``vae.safetensors``: the autoencoder (ldm key names, its ``AutoencoderConfig`` as metadata,
  ``scale_factor`` = 1 / std of its latents when ``scale_by_std``, ldm ``scale_by_std``),
  written every ``ckpt_every`` steps and at the end;
* ``checkpoints/step-<step>/``: every ``ckpt_every`` steps (the newest ``keep_last``), the
  trainer's checkpoint layout (``checkpoint.py``): the autoencoder, and in ``state.pt`` the
  discriminator, both optimisers, the batch generator and the RNG, for ``--resume``;
* ``summary.json``: reconstruction PSNR over the data, the latent scale, the last log record.

``config.yaml``, ``vae.safetensors`` and ``summary.json`` are replaced atomically (temp file +
rename). Latent diffusion takes the result as its frozen VAE with
``latent.vae_path=<out_dir>/vae.safetensors`` (or just ``<out_dir>``): the ``digits-ldm``
preset reads ``runs/ae-digits``, where ``--preset autoencoder-digits`` writes. ``--resume``
continues from the newest checkpoint exactly: the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.configs.autoencoder import DIGITS, AutoencoderConfig, get_autoencoder_config
from genmodels.models.autoencoder_kl import AutoencoderKL

from .autoencoder_train import (
    AutoencoderTrainConfig,
    latent_scale_factor,
    reconstruction_psnr,
    save_autoencoder_kl,
    train_autoencoder_kl,
)
from .checkpoint import resume_from, save_checkpoint
from .config import apply_overrides, config_from_dict, config_to_dict, merge_dicts, read_yaml
from .images import save_grid
from .latents import VAE_FILE
from .logging import RunLogger
from .vq_config import VQDataConfig, load_images, resolve_device, stage_printer

__all__ = [
    "LOG_FIELDS",
    "AutoencoderRunConfig",
    "build_autoencoder_config",
    "dump_autoencoder_config",
    "load_autoencoder_config",
    "run_autoencoder",
]

TASK = "autoencoder"
# columns of log.csv: train_autoencoder_kl's record keys (GAN ones empty before disc_start)
LOG_FIELDS = ("step", "rec_loss", "kl_loss", "g_loss", "d_weight", "d_loss", "logits_real",
              "logits_fake", "seconds")  # fmt: skip


@dataclass
class AutoencoderRunConfig:
    """A KL autoencoder (Rombach et al. 2022, stage 1) on ``data``, saved to ``out_dir``."""

    model: AutoencoderConfig = field(default_factory=lambda: DIGITS)  # in YAML also a preset name
    data: VQDataConfig = field(default_factory=lambda: VQDataConfig(size=8))
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    scale_by_std: bool = True  # model.scale_factor := 1 / std of the trained latents
    sample_every: int = 0  # reconstruction grid every N steps; 0: only at the end
    ckpt_every: int = 0  # vae.safetensors + a resumable checkpoint every N steps; 0: at the end
    keep_last: int = 2  # resumable checkpoints kept (0: all)
    grid_images: int = 8
    out_dir: str = "runs/autoencoder"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if self.train.loss.disc_in_channels != self.model.out_ch:  # the loop would set it anyway
            loss = replace(self.train.loss, disc_in_channels=self.model.out_ch)
            self.train = replace(self.train, loss=loss)
        f = self.model.downsample_factor
        if self.data.size % f:
            raise ValueError(f"data.size={self.data.size} is not divisible by model's factor {f}")
        for name, low in (("sample_every", 0), ("ckpt_every", 0), ("keep_last", 0),
                          ("grid_images", 1)):  # fmt: skip
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")


def _preset(name: str, key: str) -> dict[str, Any]:
    try:
        return get_autoencoder_config(name).to_dict()
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _resolve_model(data: dict[str, Any]) -> None:
    """``model: NAME`` -> the autoencoder preset ``NAME`` as a mapping."""
    if isinstance(data.get("model"), str):
        data["model"] = _preset(data["model"], "model")


def build_autoencoder_config(
    loaded: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: AutoencoderRunConfig | None = None,
) -> AutoencoderRunConfig:
    """``base`` (or the defaults), then ``loaded`` (a YAML mapping without ``task``), then
    ``key=value`` overrides (``model=NAME`` names a preset); every key and value checked."""
    data = config_to_dict(base if base is not None else AutoencoderRunConfig())
    loaded = dict(loaded or {})
    _resolve_model(loaded)
    merge_dicts(data, loaded)
    for item in overrides or []:
        key, _, raw = item.partition("=")
        if key.strip() == "model" and raw and not raw.lstrip().startswith(("{", "[")):
            data["model"] = _preset(raw.strip(), "model")
        else:
            data = apply_overrides(data, [item])
    _resolve_model(data)
    return config_from_dict(AutoencoderRunConfig, data)


def load_autoencoder_config(
    path: str | Path, overrides: list[str] | None = None
) -> AutoencoderRunConfig:
    """Read a YAML run config (``task: autoencoder`` or no ``task`` key)."""
    loaded = read_yaml(path)
    task = loaded.pop("task", TASK)
    if task != TASK:
        raise ValueError(f"{path}: task: expected {TASK!r}, got {task!r}")
    return build_autoencoder_config(loaded, overrides)


def dump_autoencoder_config(cfg: AutoencoderRunConfig, path: str | Path | None = None) -> str:
    """YAML text of ``cfg`` with ``task: autoencoder`` first (written atomically to ``path``)."""
    text = yaml.safe_dump({"task": TASK} | config_to_dict(cfg), sort_keys=False)
    if path is not None:
        write_atomic(path, lambda p: p.write_text(text))
    return text


@torch.no_grad()
def _save_reconstructions(model: AutoencoderKL, x: Tensor, path: Path) -> None:
    """Originals (top row) over their posterior-mode reconstructions, enlarged to >= 32 px."""
    model.eval()
    x_rec = model(x.to(next(model.parameters()).device), sample_posterior=False)[0]
    save_grid(torch.cat([x, x_rec.cpu()]), path, nrow=x.shape[0], scale=max(1, 32 // x.shape[-1]))


def _save_vae(model: AutoencoderKL, images: Tensor, cfg: AutoencoderRunConfig) -> float:
    """Write ``vae.safetensors`` (with the latent scale when ``scale_by_std``); returns it."""
    if cfg.scale_by_std:
        model.config = replace(model.config, scale_factor=latent_scale_factor(model, images))
    save_autoencoder_kl(Path(cfg.out_dir) / VAE_FILE, model)
    return model.config.scale_factor


def run_autoencoder(
    cfg: AutoencoderRunConfig,
    log: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = False,
) -> Path:
    """Train the autoencoder and write ``cfg.out_dir`` (see the module docstring); returns it.
    ``resume``: continue from the newest checkpoint in ``out_dir`` (a fresh run if none)."""
    device = resolve_device(cfg.device)
    images, _ = load_images(cfg.data)  # (N, C, H, W) in [-1, 1]
    if images.shape[1] != cfg.model.in_channels:
        raise ValueError(
            f"data.dataset={cfg.data.dataset!r} has {images.shape[1]} channels, "
            f"model.in_channels={cfg.model.in_channels}"
        )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_autoencoder_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.train.seed)  # weight initialisation
    model = AutoencoderKL(cfg.model).to(device)
    grid, steps = images[: cfg.grid_images], cfg.train.steps
    printer = log or stage_printer(TASK)
    state = resume_from(out / "checkpoints", model, resume, TASK)
    if state is None:
        (out / "log.csv").unlink(missing_ok=True)  # a fresh run: no rows of an earlier one
    start = 0 if state is None else int(state["step"])
    logger = RunLogger(out, steps, start, bar=False, fields=LOG_FIELDS)

    def on_log(step: int, record: dict[str, float]) -> None:
        logger.log(step, {k: v for k, v in record.items() if k != "step"})
        printer(step, record)

    def on_step(step: int, loop_state: Callable[[], dict[str, Any]]) -> None:
        if step == steps:
            return  # the final grid and checkpoint follow the loop
        if cfg.sample_every and step % cfg.sample_every == 0:
            _save_reconstructions(model, grid, out / "samples" / f"recon-{step:08d}.png")
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            config_text = dump_autoencoder_config(cfg)
            save_checkpoint(out / "checkpoints", step, model, None, loop_state(), config_text,
                            keep_last=cfg.keep_last)  # fmt: skip
            _save_vae(model, images, cfg)
        model.train()

    try:
        records = train_autoencoder_kl(model, images, cfg.train, on_log, on_step, state)
    finally:
        logger.close()
    scale = _save_vae(model, images, cfg)
    _save_reconstructions(model, grid, out / "samples" / f"recon-{steps:08d}.png")
    psnr = reconstruction_psnr(model, images)
    print(f"{TASK}: PSNR {psnr:.2f} dB, scale_factor {scale:.4g}", flush=True)
    summary = {"psnr_db": psnr, "scale_factor": scale, "steps": steps}
    text = json.dumps(summary | {"final": records[-1] if records else {}}, indent=2)
    write_atomic(out / "summary.json", lambda p: p.write_text(text))
    return out
