"""``task: diffusion``: the training loop of pixel and latent diffusion, one CPU to many GPUs.

    trainer = Trainer(cfg); trainer.resume(); trainer.fit()

Per optimiser step k: the global batch k and its randomness (a generator seeded with (seed, k):
sigma, noise and offset noise from the loss's ``draw``, then the CFG dropout mask) are pure
functions of k (``batches.py``), so resume and DDP reproduce single-process, uninterrupted runs.
Each rank takes its rows of the global batch, split into ``grad_accum`` micro-batches (DDP syncs
gradients on the last one only), and calls the loss through its contract,
``loss_fn(denoiser, x0, cond, sigma=..., noise=...)``.

Latent diffusion (``cfg.latent``): a frozen VAE encodes the images (once, into a cached latent
dataset, or per batch); samples are decoded through it. Text conditioning (``cfg.text``): the
dataset's captions are encoded once by a frozen text encoder; CFG dropout swaps in the empty
prompt's context.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genmodels.checkpoints.vae import load_frozen_vae
from genmodels.data.builtin import build_dataset
from genmodels.diffusion.objectives import build_denoiser, build_loss, null_label
from genmodels.models.text.captions import CaptionEmbeddings, load_text_encoder
from genmodels.models.unet import UNetModel
from genmodels.pipelines.trained import sample_cond, sample_labels

from .batches import BatchLoader, micro_batches, step_generator
from .distributed import DistInfo, init_distributed, wrap_model
from .ema import EMA
from .images import save_grid
from .latents import build_latent_dataset
from .logging import FIELDS
from .optim import OptimizerStep, autocast, make_optimizer
from .run import Run
from .task_configs import DiffusionRunConfig, dump_config

__all__ = ["Trainer", "train_diffusion"]


class Trainer:
    """Owns the model, EMA, optimiser, data order and the run folder of a diffusion run."""

    def __init__(
        self,
        cfg: DiffusionRunConfig,
        dataset: Any = None,
        dist: DistInfo | None = None,
        vae: torch.nn.Module | None = None,
        text_encoder: torch.nn.Module | None = None,
        *,
        overwrite: bool = False,
    ):
        """``vae`` / ``text_encoder``: ready modules instead of loading ``cfg.latent.vae_path`` /
        ``cfg.text`` (both are frozen here)."""
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run = Run(cfg, dump_config(cfg), overwrite=overwrite, dist=self.dist,
                       fields=FIELDS)  # fmt: skip
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = UNetModel(cfg.model).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema.enabled else None
        self.train_model = wrap_model(self.model, self.dist)
        self.denoiser = build_denoiser(self.train_model, cfg.objective)
        self.loss_fn = build_loss(self.denoiser, cfg.objective)
        self.null = null_label(cfg.model.num_classes)
        self.optim = OptimizerStep(make_optimizer(self.model.parameters(), cfg.optim), cfg.optim,
                                   cfg.steps, self.device, cfg.precision)  # fmt: skip
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
        self.rows = micro_batches(cfg.data.batch_size, self.dist, cfg.optim.grad_accum)
        self.loader = BatchLoader(self.dataset, cfg.seed, cfg.data.num_workers)
        modules = {"model": self.model} | ({"ema": self.ema.model} if self.ema else {})
        self.run.track(modules, {"optim": self.optim} | ({"ema": self.ema} if self.ema else {}))

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def out_dir(self) -> Path:
        return self.run.out_dir

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim.optimizer

    def _build_dataset(self) -> Any:
        d = self.cfg.data
        return build_dataset(d.dataset, size=d.size, path=d.path, crop=d.crop, flip=d.random_flip)

    def _check_labels(self) -> None:
        """A class-conditional model needs labels in [0, null) from the dataset."""
        if self.null is None:
            return
        labels = getattr(self.dataset, "labels", None)
        n, name = self.cfg.model.num_classes, self.cfg.data.dataset
        if labels is None or len(labels) == 0:
            raise ValueError(
                f"model.num_classes={n} makes a class-conditional model, but dataset {name!r} "
                "has no class labels; set model.num_classes to null for an unconditional model"
            )
        labels = torch.as_tensor(labels)
        if int(labels.min()) < 0:
            raise ValueError(
                f"model.num_classes={n} makes a class-conditional model, but dataset {name!r} "
                "has unlabelled images (for a folder: put every image in a top-level class "
                "sub-folder); set model.num_classes to null for an unconditional model"
            )
        high = int(labels.max())
        if high >= self.null:
            raise ValueError(
                f"dataset {name!r} has label {high}, but model.num_classes={n} holds classes "
                f"0..{self.null - 1} and the CFG null class {self.null}; set model.num_classes "
                f"to at least {high + 2}"
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

    def _encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images -> scaled latents (the posterior mode, or a sample with ``generator``)."""
        with torch.no_grad():
            return self.vae.encode_latents(x, generator, sample=generator is not None).float()

    def _sample_shape(self) -> tuple[int, ...]:
        x = self.dataset[0][0]
        if self.vae is not None and not self.cfg.latent.cache:
            x = self._encode(x.unsqueeze(0).to(self.device))[0]
        return tuple(x.shape)

    def decode(self, x: Tensor) -> Tensor:
        """Samples of the UNet's space -> images in [-1, 1] (through the VAE when latent)."""
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.decode_latents(x.to(self.device)).float().clamp(-1, 1).cpu()

    # ---- one optimiser step -------------------------------------------------------------

    def _load(self, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        x, y = self.loader.load(indices, self.step)
        x = x.to(self.device, non_blocking=True)
        if self.vae is not None and not self.cfg.latent.cache:  # encode on the fly (ldm)
            gen = None
            if self.cfg.latent.sample_posterior:
                gen = torch.Generator(self.device).manual_seed(self.cfg.seed + self.step)
            x = self._encode(x, gen)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, None if self.null is None else y.to(self.device)

    def _cond(self, labels: Tensor | None, drop: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """The UNet's conditioning of a micro-batch, CFG dropout applied (``drop`` rows get the
        null class / the empty prompt's context)."""
        cond: dict[str, Tensor] = {}
        if self.null is not None:
            cond["y"] = torch.where(drop.to(labels.device), self.null, labels)
        if self.text is not None:
            captions = [self.captions[int(i)] for i in indices]
            cond["context"] = self.text.batch(captions, drop).to(self.device)
        return cond

    def train_step(self) -> dict[str, float]:
        """One optimiser step on global batch ``self.step``: the step is counted, logged and
        checkpointed when due (``Run.end_step``); returns loss, lr, grad_norm."""
        cfg, k = self.cfg, self.step
        gb, accum = cfg.data.batch_size, cfg.optim.grad_accum
        indices = self.loader.indices(gb, k)
        gen = step_generator(cfg.seed, k)
        sigma, noise = self.loss_fn.draw(gb, self.sample_shape, generator=gen)
        drop = torch.rand(gb, generator=gen) < cfg.objective.cond_drop_prob
        self.train_model.train()
        total = torch.zeros((), device=self.device)
        for m, rows in enumerate(self.rows):
            x0, labels = self._load(indices[rows])
            cond = self._cond(labels, drop[rows], indices[rows])
            no_sync = getattr(self.train_model, "no_sync", None)
            last_micro = m == accum - 1
            with contextlib.nullcontext() if last_micro or no_sync is None else no_sync():
                with autocast(self.device, cfg.precision):
                    loss = self.loss_fn(self.denoiser, x0, cond, sigma=sigma[rows],
                                        noise=noise[rows])  # fmt: skip
                    loss = loss.mean() / accum
                self.optim.backward(loss)
            total += loss.detach()
        logs = self.optim.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if hasattr(self.dataset, "skipped"):  # corrupt images met so far
            logs["skipped_images"] = self.dataset.skipped
        return self.run.end_step(logs, loss=total)

    # ---- checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.run.ckpt_root

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 only)."""
        return self.run.save()

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from the newest intact checkpoint of this run (or checkpoint ``path``);
        False if there is none."""
        return self.run.resume(path)

    # ---- the loop -------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train until ``cfg.steps``; log, sample and checkpoint on the configured intervals."""
        cfg, run = self.cfg, self.run
        with run:
            if run.is_main:
                dump_config(cfg, self.out_dir / "config.yaml")
            while run.step < cfg.steps and not run.stopping:
                self.train_step()
                done = run.step == cfg.steps
                if cfg.sample_every and (run.due(cfg.sample_every) or done):
                    self.save_samples(self.out_dir / "samples" / f"step-{run.step:08d}.png")
            run.finish()
        self.loader.close()
        return run.last_record

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


def train_diffusion(
    cfg: DiffusionRunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> Path:
    """Train a diffusion run (``--resume``: from its newest intact checkpoint); returns its
    ``out_dir``."""
    trainer = Trainer(cfg, dist=dist, overwrite=overwrite)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer.out_dir
