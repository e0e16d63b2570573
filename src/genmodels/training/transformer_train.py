"""Stage 2: train a GPT over the VQGAN's codes (taming's ``Net2NetTransformer``), and sample.

The image vocabulary is the ``n_codes`` code indices; conditioning tokens follow it:

* class-conditional: token ``n_codes + label`` (``class_prefix(labels, offset=n_codes)``);
* unconditional: one SOS token ``n_codes``.

So ``vocab_size = n_codes + max(n_classes, 1)`` and ``block_size = h * w`` (the prefix plus
all codes but the last). Codes are put in the order of a permuter (identity = raster,
z_curve, ...) before the GPT sees them and put back after sampling.

The loop: per-sample cross-entropy of each code given the prefix and the codes before it
(``next_token_loss``, with ``pkeep`` corruption of the inputs), AdamW (betas 0.9/0.95 as
minGPT), linear warm-up then cosine decay, gradient clipping, optional bf16 autocast.

Checkpoints: ``<dir>/transformer.safetensors`` + ``<dir>/transformer.json`` next to the
VQGAN's files (:func:`~genmodels.training.vqgan_train.save_vqgan`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genmodels.models.gpt import GPT, GPTConfig, class_prefix, next_token_loss, sos_prefix
from genmodels.models.gpt_sampling import sample
from genmodels.models.permuters import make_permuter
from genmodels.models.vqgan import VQModel
from genmodels.training.vqgan_train import write_atomic

__all__ = [
    "TransformerTrainConfig",
    "TransformerMeta",
    "encode_codes",
    "make_prefix",
    "train_transformer",
    "save_transformer",
    "load_transformer",
    "sample_images",
]


@dataclass
class TransformerTrainConfig:
    """Settings of the stage-2 loop."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    pkeep: float = 1.0
    seed: int = 0
    bf16: bool = False
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.log_every < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, lr > 0, log_every >= 1; got {self.steps}, "
                f"{self.batch_size}, {self.lr}, {self.log_every}"
            )
        if not 0.0 <= self.pkeep <= 1.0:
            raise ValueError(f"pkeep must be in [0, 1], got {self.pkeep}")


@dataclass
class TransformerMeta:
    """What sampling needs besides the weights: the token layout and the code grid."""

    gpt: GPTConfig
    n_codes: int
    n_classes: int  # 0 = unconditional (SOS token)
    grid: tuple[int, int]
    permuter: str = "identity"

    def __post_init__(self) -> None:
        self.grid = tuple(self.grid)
        need = self.n_codes + max(self.n_classes, 1)
        if self.gpt.vocab_size < need:
            raise ValueError(
                f"vocab_size {self.gpt.vocab_size} < n_codes + conditioning tokens = {need}"
            )
        if self.gpt.block_size < self.grid[0] * self.grid[1]:
            raise ValueError(
                f"block_size {self.gpt.block_size} < codes per image {self.grid[0] * self.grid[1]}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"grid": list(self.grid)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerMeta:
        return cls(**(d | {"gpt": GPTConfig(**d["gpt"])}))


@torch.no_grad()
def encode_codes(vq: VQModel, images: Tensor, batch_size: int = 256) -> Tensor:
    """Code indices (N, h, w) of images (N, C, H, W)."""
    vq.eval()
    return torch.cat(
        [
            vq.encode_to_indices(images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    )


def make_prefix(meta: TransformerMeta, labels: Tensor | None, batch: int) -> Tensor:
    """Conditioning tokens (B, 1): class ``n_codes + label`` or the SOS token ``n_codes``."""
    if meta.n_classes == 0:
        return sos_prefix(batch, meta.n_codes)
    if labels is None:
        raise ValueError(f"a class-conditional model ({meta.n_classes} classes) needs labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= meta.n_classes):
        raise ValueError(f"class labels must lie in [0, {meta.n_classes}), got {labels.tolist()}")
    return class_prefix(labels, offset=meta.n_codes)


def _lr_factor(step: int, cfg: TransformerTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train_transformer(
    gpt: GPT,
    meta: TransformerMeta,
    codes: Tensor,
    labels: Tensor | None,
    cfg: TransformerTrainConfig,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``gpt`` on code grids (N, h, w) (+ labels (N,)); returns the logged records."""
    if codes.ndim != 3 or tuple(codes.shape[1:]) != meta.grid:
        raise ValueError(f"expected codes (N, {meta.grid[0]}, {meta.grid[1]}), got {codes.shape}")
    device = next(gpt.parameters()).device
    torch.manual_seed(cfg.seed)  # dropout
    permuter = make_permuter(meta.permuter, *meta.grid).to(device)
    decay = [p for n, p in gpt.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in gpt.named_parameters() if p.ndim < 2 or "emb" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}],
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=0.0,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    gpt.train()
    records, total, t0 = [], 0.0, time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, codes.shape[0], (cfg.batch_size,), generator=gen)
        z = permuter(codes[idx].reshape(cfg.batch_size, -1).to(device))  # (B, h*w)
        c = make_prefix(meta, None if labels is None else labels[idx].to(device), cfg.batch_size)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = next_token_loss(gpt, c, z, cfg.pkeep, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
        opt.step()
        total += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            record = {"step": step + 1, "loss": total / n, "seconds": time.perf_counter() - t0}
            records.append(record)
            if callback is not None:
                callback(step + 1, record)
            total = 0.0
    gpt.eval()
    return records


@torch.no_grad()
def sample_images(
    vq: VQModel,
    gpt: GPT,
    meta: TransformerMeta,
    labels: Tensor | None,
    n: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """``n`` images (n, C, H, W) in [-1, 1]; sample i uses a CPU generator seeded ``seed + i``.

    Tokens outside the image vocabulary are never drawn (their logits are masked).
    """
    device = next(gpt.parameters()).device
    prefix = make_prefix(meta, labels, n).to(device)

    h, w = meta.grid

    def mask_logits(_: int, logits: Tensor) -> None:
        logits[:, meta.n_codes :] = float("-inf")  # in place: only image codes can be drawn

    tokens = sample(
        gpt, prefix, h * w, seed, temperature, top_k, top_p, callback=mask_logits
    )  # (n, h*w) in the permuter's order
    permuter = make_permuter(meta.permuter, h, w).to(device)
    codes = permuter(tokens, reverse=True).reshape(n, h, w)
    return vq.decode_code(codes).clamp(-1, 1)


def save_transformer(directory: str | Path, gpt: GPT, meta: TransformerMeta) -> Path:
    """Write ``transformer.safetensors`` + ``transformer.json`` to ``directory`` (atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in gpt.state_dict().items()}
    write_atomic(directory / "transformer.safetensors", lambda p: save_file(weights, str(p)))
    text = json.dumps(meta.to_dict(), indent=2)
    write_atomic(directory / "transformer.json", lambda p: p.write_text(text))
    return directory


def load_transformer(directory: str | Path) -> tuple[GPT, TransformerMeta]:
    """Rebuild the GPT and its :class:`TransformerMeta` written by :func:`save_transformer`."""
    directory = Path(directory)
    meta_path, weights_path = directory / "transformer.json", directory / "transformer.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise ValueError(f"not a transformer checkpoint directory: {p} is missing")
    meta = TransformerMeta.from_dict(json.loads(meta_path.read_text()))
    gpt = GPT(meta.gpt)
    gpt.load_state_dict(load_file(str(weights_path)), strict=True)
    return gpt.eval(), meta
