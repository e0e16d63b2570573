"""The training loop: one explicit loop for pixel and latent diffusion, one CPU to many GPUs.

    trainer = Trainer(cfg); trainer.resume(); trainer.fit()

Per optimiser step k: the global batch k (``batch_indices``) and its randomness (a generator
seeded with (seed, k)) are pure functions of k, so resume and DDP reproduce single-process,
uninterrupted runs. Each rank takes its rows of the global batch, split into ``grad_accum``
micro-batches (DDP syncs gradients on the last one only).

Latent diffusion (``cfg.latent``): a frozen VAE encodes the images (once, into a cached latent
dataset, or per batch); samples are decoded through it. Text conditioning (``cfg.text``): the
dataset's captions are encoded once by a frozen text encoder; CFG dropout swaps in the empty
prompt's context.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genmodels.data.builtin import build_dataset
from genmodels.data.tensor_dataset import batch_indices
from genmodels.models.unet import UNetModel

from .checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng
from .checkpoint import save_checkpoint as write_checkpoint
from .config import OptimConfig, TrainConfig, dump_config
from .distributed import DistInfo, all_reduce_mean, init_distributed, wrap_model
from .ema import EMA
from .images import save_grid
from .latents import build_latent_dataset, encode_images, load_frozen_vae
from .logging import RunLogger
from .lr_schedules import make_scheduler
from .objectives import Objective, build_denoiser, build_loss, null_label
from .sampling import sample_cond, sample_labels
from .text_cond import CaptionEmbeddings, load_text_encoder

__all__ = ["Trainer", "make_optimizer"]

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (``cfg.name="adamw"``) or bitsandbytes' 8-bit AdamW (``"adamw8bit"``)."""
    kw = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        params = list(params)
        # torch's fused AdamW kernel (CPU and CUDA, torch >= 2.4): one pass over each tensor
        # instead of the per-parameter loop of ~10 ops that is torch's default on the CPU
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, **kw, fused=fused)
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as exc:
            raise ValueError(
                "optim.name='adamw8bit' needs the bitsandbytes package, which is not installed "
                "(pip install bitsandbytes), or use optim.name=adamw"
            ) from exc
        return bitsandbytes.optim.AdamW8bit(params, **kw)
    raise ValueError(f"unknown optim.name {cfg.name!r}; valid: adamw, adamw8bit")


class Trainer:
    """Owns the model, EMA, optimiser, LR schedule, data order and checkpoints of a run."""

    def __init__(
        self,
        cfg: TrainConfig,
        dataset: Any = None,
        dist: DistInfo | None = None,
        vae: torch.nn.Module | None = None,
        text_encoder: torch.nn.Module | None = None,
    ):
        """``vae`` / ``text_encoder``: ready modules instead of loading ``cfg.latent.vae_path`` /
        ``cfg.text`` (both are frozen here)."""
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = UNetModel(cfg.model).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema.enabled else None
        self.train_model = wrap_model(self.model, self.dist)
        denoiser = build_denoiser(self.train_model, cfg.objective)
        self.null = null_label(cfg.model.num_classes)
        self.objective = Objective(
            denoiser, build_loss(denoiser, cfg.objective), self.null, cfg.objective.cond_drop_prob
        )
        o = cfg.optim
        self.optimizer = make_optimizer(self.model.parameters(), o)
        self.scheduler = make_scheduler(self.optimizer, o, cfg.steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.dataset = dataset if dataset is not None else self._build_dataset()
        self._check_labels()
        self.captions: list[str] | None = None
        self.text = self._setup_text(text_encoder)
        self.vae = self._setup_latents(vae)
        self.sample_shape = self._sample_shape()  # (C, H, W) of what the UNet sees
        if self.sample_shape[0] != cfg.model.in_channels:
            raise ValueError(
                f"model.in_channels={cfg.model.in_channels} does not match the "
                f"{'latent' if self.vae is not None else 'image'} channels {self.sample_shape[0]}"
            )
        workers = cfg.data.num_workers
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None
        self.step = 0
        self.out_dir = Path(cfg.out_dir)
        if self.dist.world_size > 1 and cfg.data.batch_size % (self.dist.world_size * o.grad_accum):
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} must be divisible by world size "
                f"{self.dist.world_size} x optim.grad_accum={o.grad_accum}"
            )

    def _build_dataset(self) -> Any:
        d = self.cfg.data
        return build_dataset(d.dataset, size=d.size, path=d.path, crop=d.crop, flip=d.random_flip)

    def _check_labels(self) -> None:
        """A class-conditional model needs labels in [0, null) from the dataset."""
        if self.null is None:
            return
        labels = getattr(self.dataset, "labels", None)
        n = self.cfg.model.num_classes
        if labels is None or len(labels) == 0:
            raise ValueError(
                f"model.num_classes={n} makes a class-conditional model, but dataset "
                f"{self.cfg.data.dataset!r} has no class labels; set model.num_classes to null "
                "for an unconditional model"
            )
        labels = torch.as_tensor(labels)
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise ValueError(
                f"model.num_classes={n} makes a class-conditional model, but dataset "
                f"{self.cfg.data.dataset!r} has unlabelled images (for a folder: put every image "
                "in a top-level class sub-folder); set model.num_classes to null for an "
                "unconditional model"
            )
        if high >= self.null:
            raise ValueError(
                f"dataset {self.cfg.data.dataset!r} has label {high}, but model.num_classes={n} "
                f"holds classes 0..{self.null - 1} and the CFG null class {self.null}; set "
                f"model.num_classes to at least {high + 2}"
            )

    def _setup_text(self, encoder: torch.nn.Module | None) -> CaptionEmbeddings | None:
        if self.cfg.text.encoder is None:
            return None
        captions = getattr(self.dataset, "captions", None)
        if captions is None:
            raise ValueError(
                f"text.encoder is set but dataset {self.cfg.data.dataset!r} has no captions "
                "(use emoji, or a folder with .txt sidecars / metadata.jsonl)"
            )
        encoder = encoder if encoder is not None else load_text_encoder(self.cfg.text)
        text = CaptionEmbeddings(encoder.to(self.device).eval().requires_grad_(False))
        if text.context_dim != self.cfg.model.context_dim:
            raise ValueError(
                f"model.context_dim={self.cfg.model.context_dim} does not match the text "
                f"encoder's width {text.context_dim}"
            )
        self.captions = list(captions)
        text.precompute(self.captions)
        return text

    def _setup_latents(self, vae: torch.nn.Module | None) -> torch.nn.Module | None:
        lc = self.cfg.latent
        if not lc.enabled:
            if vae is not None:
                raise ValueError("a vae was given but latent.enabled is false")
            return None
        vae = load_frozen_vae(lc, self.device) if vae is None else vae.to(self.device)
        vae = vae.eval().requires_grad_(False)
        if lc.cache:
            self.dataset = build_latent_dataset(vae, self.dataset, lc, seed=self.cfg.seed)
        return vae

    def _sample_shape(self) -> tuple[int, ...]:
        x = self.dataset[0][0]
        if self.vae is not None and not self.cfg.latent.cache:
            x = encode_images(self.vae, x.unsqueeze(0))[0]
        return tuple(x.shape)

    def decode(self, x: Tensor) -> Tensor:
        """Samples of the UNet's space -> images in [-1, 1] (through the VAE when latent)."""
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.decode_latents(x.to(self.device)).float().clamp(-1, 1).cpu()

    # ---- one optimiser step -------------------------------------------------------------

    def _load(self, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        if hasattr(self.dataset, "batch"):  # in memory
            x, y = self.dataset.batch(indices)
        else:  # decoded per item (in a thread pool); augmentation seeded by (seed, step, index)
            base = (self.cfg.seed * 1_000_003 + self.step) * 1_000_003
            keys = [(int(i), base + int(i)) for i in indices]
            if self._pool is not None:
                items = list(self._pool.map(self.dataset.__getitem__, keys))
            else:
                items = [self.dataset[key] for key in keys]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([it[1] for it in items], dtype=torch.long)
            y = y if self.null is not None else None  # unconditional model: no labels
        x = x.to(self.device, non_blocking=True)
        if self.vae is not None and not self.cfg.latent.cache:  # encode on the fly (ldm)
            gen = None
            if self.cfg.latent.sample_posterior:
                gen = torch.Generator(self.device).manual_seed(self.cfg.seed + self.step)
            x = encode_images(self.vae, x, self.cfg.latent.sample_posterior, gen)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, None if y is None else y.to(self.device)

    def train_step(self) -> dict[str, float]:
        """One optimiser step on global batch ``self.step``; returns loss, lr, grad_norm."""
        cfg, k = self.cfg, self.step
        gb, accum, world = cfg.data.batch_size, cfg.optim.grad_accum, self.dist.world_size
        local, micro = gb // world, gb // world // accum
        indices = batch_indices(len(self.dataset), gb, cfg.seed, k)
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + k) % 2**63)
        draws = self.objective.draw(gb, self.sample_shape, gen)
        amp = _AMP[cfg.precision]
        self.train_model.train()
        total = torch.zeros((), device=self.device)
        first = self.dist.rank * local
        for m in range(accum):
            rows = slice(first + m * micro, first + (m + 1) * micro)
            x0, labels = self._load(indices[rows])
            context = None
            if self.text is not None:
                captions = [self.captions[int(i)] for i in indices[rows]]
                context = self.text.batch(captions, draws.drop[rows]).to(self.device)
            no_sync = getattr(self.train_model, "no_sync", None)
            last_micro = m == accum - 1
            with contextlib.nullcontext() if last_micro or no_sync is None else no_sync():
                with torch.autocast(
                    self.device.type, dtype=amp or torch.float32, enabled=bool(amp)
                ):
                    loss = self.objective.loss(x0, labels, draws.rows(rows), context)
                    loss = loss.mean() / accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": float(all_reduce_mean(total, self.dist)), "lr": lr,
                "grad_norm": float(grad_norm)}  # fmt: skip

    # ---- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only)."""
        if not self.dist.is_main:
            return None
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": capture_rng(),
        }
        return write_checkpoint(
            self.checkpoint_dir, self.step, self.model, self.ema and self.ema.model, state,
            dump_config(self.cfg), keep_last=self.cfg.keep_last,
        )  # fmt: skip

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` or the newest checkpoint of this run; False if none."""
        path = Path(path) if path is not None else latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = load_checkpoint(path, self.model, self.ema and self.ema.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng(state["rng"])
        self.step = int(state["step"])
        return True

    # ---- the loop -------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train until ``cfg.steps``; log, sample and checkpoint on the configured intervals."""
        cfg = self.cfg
        log = RunLogger(self.out_dir, cfg.steps, self.step, self.dist.is_main, cfg.progress)
        if self.dist.is_main:
            dump_config(cfg, self.out_dir / "config.yaml")
        last: dict[str, float] = {}
        t0, n0 = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps:
                last = self.train_step()
                log.advance()
                done = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or done:
                    last["images_per_s"] = (
                        (self.step - n0) * cfg.data.batch_size / (time.perf_counter() - t0)
                    )
                    if hasattr(self.dataset, "skipped"):  # corrupt images met so far
                        last["skipped_images"] = self.dataset.skipped
                    log.log(self.step, last)
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or done):
                    self.save_samples(self.out_dir / "samples" / f"step-{self.step:08d}.png")
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or done:
                    self.save_checkpoint()
        finally:
            log.close()
        return last

    def sampling_denoiser(self) -> torch.nn.Module:
        """The EMA (or raw) network wrapped in the objective's denoiser, in eval mode."""
        net = self.ema.model if self.ema is not None else self.model
        return build_denoiser(net, self.cfg.objective).eval()

    def save_samples(self, path: Path, per_class: int = 8) -> Path | None:
        """A grid of samples, rank 0 only: one row per class (class-conditional) or per caption
        (the dataset's first 8 distinct captions; text-conditional)."""
        if not self.dist.is_main:
            return None
        opts = dict(
            steps=self.cfg.sample_steps, guidance_scale=self.cfg.guidance_scale, seed=self.cfg.seed
        )
        if self.text is not None:
            captions = list(dict.fromkeys(self.captions))[:8]
            context = self.text.lookup(captions).repeat_interleave(per_class, dim=0)
            shape = (context.shape[0], *self.sample_shape)
            uncond = {"context": self.text.empty.unsqueeze(0)}
            x = sample_cond(self.sampling_denoiser(), shape, {"context": context}, uncond, **opts)
            nrow = per_class
        else:
            if self.null is not None:
                labels, nrow = torch.arange(self.null).repeat_interleave(per_class), per_class
            else:
                labels, nrow = None, 8
            n = len(labels) if labels is not None else 64
            x = sample_labels(
                self.sampling_denoiser(), labels, (n, *self.sample_shape), self.null, **opts
            )
        x = self.decode(x)
        return save_grid(x, path, nrow=nrow, scale=max(1, 64 // x.shape[-1]))
