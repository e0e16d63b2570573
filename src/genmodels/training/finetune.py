"""``task: finetune``: full or LoRA fine-tuning of a Stable Diffusion 1.x / 2.x / XL checkpoint.

    trainer = FinetuneTrainer(cfg); trainer.resume(); trainer.fit()

The checkpoint ``init`` is read by ``load_pipeline``: its UNet, VAE, text encoder(s), prediction
type and schedule (zero terminal SNR included) are the run's. The VAE and text encoders are
frozen (``frozen_precision``); under LoRA the UNet is frozen too and only the adapters
(``lora.py``) train. The loss is the diffusion loss contract (``DiffusionLoss`` with the
checkpoint's eps / v target, min-SNR-gamma and offset noise).

Per optimiser step k, as the diffusion task: global batch k (one aspect bucket,
``finetune_data.py``) and its randomness (sigma, noise, caption dropout, crops, flips, tag
order) are pure functions of (seed, k), so resume and DDP reproduce one uninterrupted process.
Latents and caption embeddings come from content-keyed disk caches (``finetune_cache.py``)
filled before the first step. SDXL's vector conditioning is built per image from the crop taken
(original size, crop top-left, target size; the refiner's aesthetic score).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from genmodels.data.buckets import CropInfo
from genmodels.data.captions import shuffle_tags
from genmodels.diffusion.denoisers import DiscreteDenoiser
from genmodels.diffusion.objectives import ObjectiveConfig, build_loss
from genmodels.diffusion.schedules import make_alphas_cumprod
from genmodels.pipelines.conditioning import SDXLSizeConditioning, sdxl_vector
from genmodels.pipelines.loading import load_pipeline

from .batches import micro_batches, step_generator
from .distributed import DistInfo, average_gradients, init_distributed, wrap_model
from .ema import EMA
from .finetune_cache import LatentStore, TensorCache, TextStore, file_digest, module_digest
from .finetune_config import FinetuneRunConfig
from .finetune_data import FinetuneData
from .finetune_export import lora_metadata, read_lora_file, save_full, save_kohya_lora
from .finetune_samples import save_prompt_samples
from .logging import FIELDS
from .lora import build_lora_network, load_kohya_weights
from .optim import OptimizerStep, autocast, make_optimizer
from .run import Run
from .task_configs import dump_config

__all__ = ["FinetuneTrainer", "load_init", "train_finetune"]

_FROZEN = {"bf16": torch.bfloat16, "fp32": torch.float32}


def load_init(cfg: FinetuneRunConfig, device: torch.device):  # -> LatentDiffusionPipeline
    """The checkpoint ``cfg.init`` in fp32; a file that does not load is one error naming it."""
    try:
        return load_pipeline(cfg.init, torch.float32, device, vae=cfg.vae,
                             prediction=cfg.prediction)  # fmt: skip
    except (ValueError, OSError) as exc:
        text = str(exc)
        raise ValueError(text if cfg.init in text else f"init: {cfg.init}: {text}") from None


class FinetuneTrainer:
    """Owns the loaded model, adapters / UNet under training, data, caches and the run folder."""

    def __init__(self, cfg: FinetuneRunConfig, dist: DistInfo | None = None, *,
                 overwrite: bool = False) -> None:  # fmt: skip
        cfg.check_inputs()
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run = Run(cfg, dump_config(cfg), overwrite=overwrite, dist=self.dist, fields=FIELDS,
                       owned=cfg.owned)  # fmt: skip
        self.data = FinetuneData(cfg)  # bad input fails before the model is read
        torch.manual_seed(cfg.seed)  # identical adapters on every rank
        self.pipe = pipe = load_init(cfg, self.device)
        if pipe.inpainting:
            raise ValueError(f"init: {cfg.init}: inpainting checkpoints cannot be fine-tuned here")
        frozen = _FROZEN[cfg.frozen_precision]
        pipe.vae.to(frozen).eval().requires_grad_(False)
        self.unet = pipe.unet
        self.train_te = cfg.train == "lora" and cfg.lora.text_encoder
        pipe.text_encoder.to(torch.float32 if self.train_te else frozen).eval()
        pipe.text_encoder.requires_grad_(False)
        if cfg.gradient_checkpointing:  # ldm's use_checkpoint on every ResBlock / transformer
            for module in self.unet.modules():
                if hasattr(module, "use_checkpoint"):
                    module.use_checkpoint = True
        self.lora = None
        if cfg.train == "lora":
            self.unet.to(frozen).requires_grad_(False)
            te = pipe.text_encoder if self.train_te else None
            self.lora = build_lora_network(self.unet, te, pipe.model_type, cfg.lora).to(self.device)
            if cfg.lora.init is not None:
                load_kohya_weights(self.lora, read_lora_file(cfg.lora.init), cfg.lora.init,
                                   pipe.model_type)  # fmt: skip
            self.lora.attach()
            self.trained: torch.nn.Module = self.lora
        else:
            self.unet.float().requires_grad_(True)
            self.trained = self.unet
        self.unet.train()
        self.ema = EMA(self.trained, cfg.ema) if cfg.ema.enabled else None
        self.train_model = wrap_model(self.unet, self.dist) if cfg.train == "full" else self.unet
        ac = make_alphas_cumprod(zero_terminal_snr=pipe.zero_terminal_snr)
        self.denoiser = DiscreteDenoiser(self.train_model, ac, prediction=pipe.prediction)
        self.denoiser.to(self.device)
        objective = ObjectiveConfig(kind=pipe.prediction, zero_terminal_snr=pipe.zero_terminal_snr,
                                    min_snr_gamma=cfg.loss.min_snr_gamma,
                                    offset_noise=cfg.loss.offset_noise)  # fmt: skip
        self.loss_fn = build_loss(self.denoiser, objective)
        self.optim = OptimizerStep(make_optimizer(self._param_groups(), cfg.optim), cfg.optim,
                                   cfg.steps, self.device, cfg.precision)  # fmt: skip
        self.rows = micro_batches(cfg.data.batch_size, self.dist, cfg.optim.grad_accum)
        self._setup_caches()
        name = "lora" if self.lora is not None else "unet"
        modules = {name: self.trained} | ({"ema": self.ema.model} if self.ema else {})
        self.run.track(modules, {"optim": self.optim} | ({"ema": self.ema} if self.ema else {}))

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def out_dir(self) -> Path:
        return self.run.out_dir

    def _param_groups(self) -> list[dict]:
        if self.lora is None:
            return [{"params": list(self.unet.parameters())}]
        unet = [p for n, a in self.lora.adapters.items() if n.startswith("lora_unet_")
                for p in a.parameters()]  # fmt: skip
        text = [p for n, a in self.lora.adapters.items() if not n.startswith("lora_unet_")
                for p in a.parameters()]  # fmt: skip
        groups = [{"params": unet}]
        if text:
            groups.append({"params": text, "lr": self.cfg.lora.text_lr or self.cfg.optim.lr})
        return groups

    # ---- caches ---------------------------------------------------------------------------

    def _setup_caches(self) -> None:
        cfg = self.cfg
        root = Path(cfg.cache.dir) if cfg.cache.dir else self.out_dir / "cache"
        self.digests = [file_digest(p) for p in self.data.folder.files]
        self.cache_latents = cfg.cache.latents and cfg.data.crop == "center"
        self.latents = LatentStore(TensorCache(root / "latents" if self.cache_latents else None),
                                   self._encode_images, module_digest(self.pipe.vae),
                                   cfg.data.crop)  # fmt: skip
        cache_text = cfg.cache.text and not self.train_te and not cfg.captions.shuffle_tags
        te_id = module_digest(self.pipe.text_encoder) if cache_text else ""
        self.text = TextStore(TensorCache(root / "text" if cache_text else None),
                              self._encode_text, te_id)  # fmt: skip
        if self.cache_latents:
            self._fill_latents()
        if cache_text:
            self.text.batch(sorted(set(self.data.captions)) + [""])

    def _fill_latents(self, batch: int = 32) -> None:
        """Encode every image (both orientations with random flips) not in the cache yet, in
        batches of one bucket."""
        todo: dict[tuple[int, int], list[tuple[str, Tensor, CropInfo]]] = {}
        for i in range(len(self.data)):
            if self.data.folder.files[i] in self.data.folder.bad:
                continue
            for flipped in (False, True) if self.cfg.data.random_flip else (False,):
                bucket = self.data.bucket(i)
                key = self.latents.key(self.digests[i], bucket, flipped)
                if self.latents.get(key) is not None:
                    continue
                with contextlib.suppress(OSError):  # recorded as bad, listed at the end
                    todo.setdefault(bucket, []).append((key, *self.data.load(i, 0, flip=flipped)))
                if len(todo.get(bucket, ())) == batch:
                    self.latents.put_many(todo.pop(bucket))
        for items in todo.values():
            self.latents.put_many(items)

    @torch.no_grad()
    def _encode_images(self, x: Tensor) -> Tensor:
        vae = self.pipe.vae
        x = x.to(self.device, next(vae.parameters()).dtype)
        return vae.encode_latents(x, sample=False).float()

    def _encode_text(self, captions: list[str]) -> tuple[Tensor, Tensor | None]:
        """Captions -> (context, pooled); with gradients into text-encoder adapters."""
        # plain tokenization (no A1111 weighting syntax in captions), as kohya / diffusers
        with contextlib.nullcontext() if self.train_te else torch.no_grad():
            out = self.pipe.text_encoder(captions)
        return out.context, out.pooled

    # ---- one optimiser step ---------------------------------------------------------------

    def _image(self, image: int, seed: int) -> tuple[Tensor, CropInfo]:
        """The latent (C, h, w) of ``image`` for this step, and its crop."""
        flipped = self.cfg.data.random_flip and torch.rand(
            1, generator=torch.Generator().manual_seed(seed)).item() < 0.5  # fmt: skip
        if self.cache_latents:
            key = self.latents.key(self.digests[image], self.data.bucket(image), flipped)
            found = self.latents.get(key)
            if found is None:  # not filled yet (or failed to decode then: raises OSError)
                found = self.latents.put(key, *self.data.load(image, 0, flip=flipped))
            return found
        x, info = self.data.load(image, seed)  # random crop: encoded every step
        return self._encode_images(x.unsqueeze(0))[0], info

    def _rows(self, images: list[int], step: int) -> tuple[list[Tensor], list[CropInfo]]:
        """Latents and crops of ``images``; an unreadable image is replaced by the next good
        image of the same bucket (it is counted and listed at the end)."""
        base = (self.cfg.seed * 1_000_003 + step) * 1_000_003
        latents, crops = [], []
        for image in images:
            same = [j for j, b in enumerate(self.data.bucket_of_image)
                    if b == self.data.bucket_of_image[image]]  # fmt: skip
            start = same.index(image)
            for j in same[start:] + same[:start]:
                try:
                    z, info = self._image(j, base + image)
                    break
                except OSError:
                    continue
            else:
                raise ValueError(f"no image of bucket {self.data.bucket(image)} can be decoded")
            latents.append(z)
            crops.append(info)
        return latents, crops

    def _cond(self, images: list[int], drop: Tensor, crops: list[CropInfo], step: int
              ) -> dict[str, Tensor]:  # fmt: skip
        cfg = self.cfg
        base = (cfg.seed * 1_000_003 + step) * 1_000_003
        captions = []
        for image, dropped in zip(images, drop.tolist()):
            caption = self.data.captions[image]
            if cfg.captions.shuffle_tags:
                caption = shuffle_tags(caption, cfg.captions.keep_tokens, base + image)
            captions.append("" if dropped else caption)
        if self.train_te:
            context, pooled = self._encode_text(captions)
        else:
            context, pooled = self.text.batch(captions)
        cond = {"context": context.to(self.device)}
        if self.pipe.is_sdxl:
            cond["y"] = torch.cat([
                sdxl_vector(pooled[r : r + 1].to(self.device), self.pipe.model_type,
                            SDXLSizeConditioning(c.original_size, c.crop_top_left, c.target_size,
                                                 cfg.aesthetic_score), c.target_size)
                for r, c in enumerate(crops)
            ])  # fmt: skip
        return cond

    def train_step(self) -> dict[str, float]:
        """One optimiser step on global batch ``self.step`` (counted, logged and checkpointed
        when due by ``Run.end_step``)."""
        cfg, k = self.cfg, self.step
        gb, accum = cfg.data.batch_size, cfg.optim.grad_accum
        images = self.data.batch(gb, cfg.seed, k)
        bw, bh = self.data.bucket(images[0])
        vc = self.pipe.vae.config
        shape = (vc.embed_dim, bh // vc.downsample_factor, bw // vc.downsample_factor)
        gen = step_generator(cfg.seed, k)
        sigma, noise = self.loss_fn.draw(gb, shape, generator=gen)
        drop = torch.rand(gb, generator=gen) < cfg.captions.dropout
        total = torch.zeros((), device=self.device)
        for m, rows in enumerate(self.rows):
            part = images[rows]
            latents, crops = self._rows(part, k)
            x0 = torch.stack(latents).to(self.device)
            last_micro = m == accum - 1
            no_sync = getattr(self.train_model, "no_sync", None)
            with contextlib.nullcontext() if last_micro or no_sync is None else no_sync():
                with autocast(self.device, cfg.precision):
                    cond = self._cond(part, drop[rows], crops, k)
                    loss = self.loss_fn(self.denoiser, x0, cond, sigma=sigma[rows],
                                        noise=noise[rows])  # fmt: skip
                    loss = loss.mean() / accum
                self.optim.backward(loss)
            total += loss.detach()
        if self.lora is not None:  # adapters live outside DDP: average by hand
            average_gradients(self.optim.params(), self.dist)
        logs = self.optim.step()
        if self.ema is not None:
            self.ema.update(self.trained)
        logs["skipped_images"] = self.data.folder.skipped
        return self.run.end_step(logs, loss=total)

    # ---- checkpoints, samples, output -----------------------------------------------------

    def resume(self, path: str | Path | None = None) -> bool:
        return self.run.resume(path)

    def fit(self) -> dict[str, float]:
        """Train to ``cfg.steps``; samples every ``sample_every``; write the model at the end."""
        cfg, run = self.cfg, self.run
        with run:
            if run.is_main:
                dump_config(cfg, self.out_dir / "config.yaml")
            while run.step < cfg.steps and not run.stopping:
                self.train_step()
                done = run.step == cfg.steps
                if cfg.sample_prompts and cfg.sample_every and (run.due(cfg.sample_every) or done):
                    self.save_samples()
            run.finish()
            if run.is_main:
                self.save_output()
        self._report_skipped()
        return run.last_record

    def _report_skipped(self) -> None:
        bad = sorted(self.data.folder.bad)
        if bad and self.dist.is_main:
            print(f"skipped {len(bad)} unreadable image(s):", flush=True)
            for path in bad:
                print(f"  {path}", flush=True)

    def _final_module(self) -> torch.nn.Module:
        use_ema = self.ema is not None and self.cfg.output.weights == "ema"
        return self.ema.model if use_ema else self.trained

    def save_output(self) -> list[Path]:
        """The LoRA file or the full checkpoint in ``out_dir`` (rank 0)."""
        cfg = self.cfg
        if self.lora is not None:
            meta = lora_metadata(cfg, self.pipe.model_type, self.pipe.prediction, self.step,
                                 len(self.data.items), self.data.tag_frequency())  # fmt: skip
            path = self.out_dir / f"{cfg.output.name}.safetensors"
            return [save_kohya_lora(path, self._final_module(), meta, cfg.lora.save_dtype)]
        return save_full(cfg, self._final_module().state_dict(), self.out_dir)

    def save_samples(self) -> list[Path]:
        """Images of ``sample_prompts`` (with and, for LoRA, without the adapter), rank 0."""
        if not self.dist.is_main:
            return []
        paths = save_prompt_samples(self.pipe, self.lora, self.cfg, self.step,
                                    self.out_dir / "samples")  # fmt: skip
        writer = self.run.logger.writer if self.run.logger is not None else None
        if writer is not None:  # the same grid in TensorBoard's Images tab
            with Image.open(paths[0]) as img:
                width, height = img.size
            writer.add_image("samples", paths[0].read_bytes(), height, width, self.step)
        return paths


def train_finetune(
    cfg: FinetuneRunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> Path:
    """Fine-tune ``cfg.init`` (``--resume``: from the newest intact checkpoint); returns
    ``out_dir``."""
    trainer = FinetuneTrainer(cfg, dist=dist, overwrite=overwrite)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer.out_dir
