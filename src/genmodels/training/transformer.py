"""``task: transformer``: stage 2 of the VQ models, a GPT over the codes of a trained VQGAN
(taming's ``Net2NetTransformer``; token layout in ``models/net2net.py``).

The loop: per-sample cross-entropy of each code given the prefix and the codes before it
(``next_token_loss``, with ``pkeep`` corruption of the inputs), AdamW with weight decay on the
matrices only (minGPT), the shared LR schedule (warm-up then cosine by default), clipping,
optional bf16 autocast, DDP and EMA as every task.

Writes ``transformer.safetensors`` + ``transformer.json`` (``checkpoints/runs.py``) and
``transformer_run.yaml`` into its folder (the VQGAN's unless ``out_dir`` is set; another folder
gets a copy of the VQGAN files, and ``cond_vqgan.*`` when the cond stage has its own VQGAN);
resumable checkpoints in ``transformer_checkpoints/``, its log in ``transformer_log.csv``, so
both stages can share a folder.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.runs import load_vqgan, save_transformer, save_vqgan
from genmodels.configs.gpt import GPTConfig
from genmodels.models.gpt import GPT, next_token_loss
from genmodels.models.net2net import TransformerMeta, encode_codes, make_cond_image, make_prefix
from genmodels.models.permuters import make_permuter
from genmodels.models.vqgan import VQModel

from .batches import BatchLoader, micro_batches, step_generator
from .data import all_images, build_task_dataset
from .distributed import DistInfo, init_distributed, wrap_model
from .ema import EMA
from .optim import OptimizerStep, autocast, make_optimizer
from .run import Run
from .task_configs import TransformerRunConfig, dump_config

__all__ = ["CKPT_DIR", "LOG_FIELDS", "OWNED", "train_transformer"]

CKPT_DIR = "transformer_checkpoints"
LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s")
# what this task writes in a folder it may share with the VQGAN (``Run(owned=...)``)
OWNED = ("transformer", "cond_vqgan")


class _Codes:
    """Code grids (N, h, w) with their labels and cond codes, as an in-memory dataset."""

    def __init__(self, codes: Tensor, labels: Tensor | None, cond: Tensor | None) -> None:
        self.codes, self.labels, self.cond = codes, labels, cond

    def __len__(self) -> int:
        return len(self.codes)

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return self.codes[idx], pick(self.labels), pick(self.cond)


def _prepare(cfg: TransformerRunConfig, device: torch.device) -> tuple:
    """The VQGAN(s), the codes of the data and the GPT's token layout."""
    vq = load_vqgan(cfg.vqgan_dir).to(device)
    dataset = build_task_dataset(cfg.data)
    images = all_images(dataset)
    labels = getattr(dataset, "labels", None)
    if images.shape[1] != vq.config.in_channels:
        raise ValueError(
            f"data has {images.shape[1]} channels, the VQGAN in {cfg.vqgan_dir} expects "
            f"{vq.config.in_channels}"
        )
    if cfg.n_classes > 0:
        if labels is None or int(torch.as_tensor(labels).min()) < 0:
            raise ValueError(f"n_classes={cfg.n_classes} but data.dataset has no labels")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if int(labels.max()) >= cfg.n_classes:
            raise ValueError(f"n_classes={cfg.n_classes} but labels go up to {int(labels.max())}")
    else:
        labels = None
    codes = encode_codes(vq, images.to(device)).cpu()  # (N, h, w)
    h, w = codes.shape[1:]
    cond_vq, cond_codes, cond = None, None, {}
    if cfg.cond_image is not None:
        cond_vq = load_vqgan(cfg.cond_vqgan_dir).to(device) if cfg.cond_vqgan_dir else vq
        size = cfg.cond_size or cfg.data.size // (2 if cfg.cond_image == "lowres" else 1)
        x = make_cond_image(images, cfg.cond_image, size, cond_vq.config.in_channels)
        cond_codes = encode_codes(cond_vq, x.to(device)).cpu()  # (N, ch, cw)
        cond = {"cond_image": cfg.cond_image, "cond_size": size,
                "cond_grid": tuple(cond_codes.shape[1:]), "cond_n_codes": cond_vq.n_codes,
                "cond_stage": "cond_vqgan" if cfg.cond_vqgan_dir else "first_stage"}  # fmt: skip
    n_prefix = cond_codes[0].numel() if cond_codes is not None else 1
    n_cond_tokens = cond_vq.n_codes if cond_vq is not None else max(cfg.n_classes, 1)
    gpt_cfg = GPTConfig(
        vocab_size=vq.n_codes + n_cond_tokens, block_size=n_prefix + h * w - 1,
        **asdict(cfg.model),
    )  # fmt: skip
    meta = TransformerMeta(gpt_cfg, vq.n_codes, cfg.n_classes, (h, w), cfg.permuter, **cond)
    return _Codes(codes, labels, cond_codes), meta, cond_vq


def train_transformer(
    cfg: TransformerRunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist: DistInfo | None = None,
) -> Path:
    """Train stage 2 over the codes of ``cfg.vqgan_dir``; returns the output directory."""
    dist = dist or init_distributed(cfg.device)
    device = dist.device
    data, meta, cond_vq = _prepare(cfg, device)
    run_cfg = replace(cfg, out_dir=cfg.run_dir)
    run = Run(run_cfg, dump_config(cfg), overwrite=overwrite, dist=dist, ckpt_dir=CKPT_DIR,
              log_name="transformer_log", fields=LOG_FIELDS, owned=OWNED)  # fmt: skip
    torch.manual_seed(cfg.seed)  # weights; dropout
    gpt = GPT(meta.gpt).to(device)
    decay = [p for n, p in gpt.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in gpt.named_parameters() if p.ndim < 2 or "emb" in n]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = OptimizerStep(make_optimizer(groups, cfg.optim), cfg.optim, cfg.steps, device,
                        cfg.precision)  # fmt: skip
    ema = EMA(gpt, cfg.ema) if cfg.ema.enabled else None
    run.track({"model": gpt} | ({"ema": ema.model} if ema else {}),
              {"opt": opt} | ({"ema": ema} if ema else {}))  # fmt: skip
    if resume:
        run.resume()
    train_gpt = wrap_model(gpt, dist)
    permuter = make_permuter(meta.permuter, *meta.grid).to(device)
    indices = BatchLoader(data, cfg.seed)
    parts = micro_batches(cfg.data.batch_size, dist, cfg.optim.grad_accum)
    accum = len(parts)
    with run:
        while run.step < cfg.steps and not run.stopping:
            k = run.step
            batch = indices.indices(cfg.data.batch_size, k)
            gen = step_generator(cfg.seed, k)  # pkeep corruption
            train_gpt.train()
            total = torch.zeros((), device=device)
            for m, rows in enumerate(parts):
                codes, labels, cond = data.rows(batch[rows])
                n = len(codes)
                z = permuter(codes.reshape(n, -1).to(device))  # (B, h*w)
                c = make_prefix(meta, None if labels is None else labels.to(device), n,
                                None if cond is None else cond.to(device))  # fmt: skip
                no_sync = getattr(train_gpt, "no_sync", None)
                sync = m == accum - 1 or no_sync is None
                with contextlib.nullcontext() if sync else no_sync():
                    with autocast(device, cfg.precision):
                        loss = next_token_loss(train_gpt, c, z, cfg.pkeep, gen).mean() / accum
                    opt.backward(loss)
                total += loss.detach()
            logs = opt.step()
            if ema is not None:
                ema.update(gpt)
            run.end_step(logs, loss=total)
        run.finish()
        if run.is_main:
            _write(cfg, run.out_dir, ema.model if ema is not None else gpt, meta, cond_vq)
    return run.out_dir


def _write(
    cfg: TransformerRunConfig, out: Path, gpt: GPT, meta: TransformerMeta, cond_vq: VQModel | None
) -> None:
    src = Path(cfg.vqgan_dir)
    if out.resolve() != src.resolve():  # vq-sample reads both models from one directory
        out.mkdir(parents=True, exist_ok=True)
        for name in ("vqgan.safetensors", "vqgan.json"):
            write_atomic(out / name, lambda p, name=name: shutil.copyfile(src / name, p))
    if cfg.cond_vqgan_dir:
        save_vqgan(out, cond_vq.cpu(), name="cond_vqgan")
    save_transformer(out, gpt.cpu(), meta)
    dump_config(cfg, out / "transformer_run.yaml")
