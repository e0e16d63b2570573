"""Stage 2: train a GPT over the VQGAN's codes (taming's ``Net2NetTransformer``), and sample.

The image vocabulary is the ``n_codes`` code indices; conditioning tokens follow it:

* class-conditional: token ``n_codes + label`` (``class_prefix(labels, offset=n_codes)``);
* unconditional: one SOS token ``n_codes``;
* image-conditional (taming's cond stage): the raster-order codes ``c`` of a conditioning
  image derived from the target (:func:`make_cond_image`: a low-resolution or an edge map),
  encoded by a cond-stage VQGAN (the first stage itself by default), as tokens
  ``n_codes + c``.

So ``vocab_size = n_codes + max(n_classes, 1)`` (or ``n_codes + cond_n_codes``) and
``block_size = n_prefix + h * w - 1`` (the prefix plus all codes but the last). Codes are put
in the order of a permuter (identity = raster, z_curve, ...) before the GPT sees them and put
back after sampling. Images larger than the training grid are sampled through a sliding
window (raster order only).

The loop: per-sample cross-entropy of each code given the prefix and the codes before it
(``next_token_loss``, with ``pkeep`` corruption of the inputs), AdamW (betas 0.9/0.95 as
minGPT), linear warm-up then cosine decay, gradient clipping, optional bf16 autocast.

``on_step`` / ``resume`` checkpoint and continue the loop exactly (``training/checkpoint.py``);
the learning rate is a function of the step alone.

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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from genmodels.checkpoints.atomic import write_atomic
from genmodels.checkpoints.strict import load_strict
from genmodels.models.gpt import GPT, GPTConfig, class_prefix, next_token_loss, sos_prefix
from genmodels.models.gpt_sampling import sample, sample_sliding_window
from genmodels.models.permuters import make_permuter
from genmodels.models.vqgan import VQModel
from genmodels.training.checkpoint import capture_loop, restore_loop
from genmodels.training.vqgan_train import load_vqgan

__all__ = [
    "COND_IMAGES",
    "TransformerTrainConfig",
    "TransformerMeta",
    "encode_codes",
    "make_cond_image",
    "load_cond_stage",
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


COND_IMAGES = ("lowres", "edges")
COND_STAGES = ("first_stage", "cond_vqgan")


@dataclass
class TransformerMeta:
    """What sampling needs besides the weights: the token layout and the code grid.

    ``cond_image`` ("lowres" / "edges", None for class / SOS prefixes) conditions on the
    ``cond_grid`` codes of a ``cond_size`` px conditioning image, encoded by the first stage
    or by ``cond_vqgan.*`` beside it (``cond_stage``); ``cond_n_codes`` is that VQGAN's
    vocabulary.

    ``cond_offset`` is the id of the first conditioning token (SOS, class 0 or cond code 0);
    None puts them after the image codes (``n_codes``, genmodels' layout). Imported taming
    models use 0 or their ``sos_token``: their conditioning tokens share ids with image codes.
    """

    gpt: GPTConfig
    n_codes: int
    n_classes: int  # 0 = unconditional (SOS token) or image-conditional
    grid: tuple[int, int]
    permuter: str = "identity"
    cond_image: str | None = None
    cond_size: int = 0
    cond_grid: tuple[int, int] = (0, 0)
    cond_n_codes: int = 0
    cond_stage: str = "first_stage"
    cond_offset: int | None = None

    def __post_init__(self) -> None:
        self.grid, self.cond_grid = tuple(self.grid), tuple(self.cond_grid)
        if self.cond_image is not None:
            if self.cond_image not in COND_IMAGES or self.cond_stage not in COND_STAGES:
                raise ValueError(
                    f"cond_image must be one of {COND_IMAGES} and cond_stage one of "
                    f"{COND_STAGES}, got {self.cond_image!r} and {self.cond_stage!r}"
                )
            if self.n_classes or self.cond_n_codes < 1 or min(self.cond_grid) < 1:
                raise ValueError(
                    "an image-conditional model needs n_classes=0, cond_n_codes >= 1 and a "
                    f"cond_grid, got {self.n_classes}, {self.cond_n_codes}, {self.cond_grid}"
                )
        if self.cond_offset is not None and self.cond_offset < 0:
            raise ValueError(f"cond_offset must be >= 0, got {self.cond_offset}")
        n_cond = self.cond_n_codes if self.cond_image else max(self.n_classes, 1)
        need = max(self.n_codes, self.cond_start + n_cond)
        if self.gpt.vocab_size < need:
            raise ValueError(
                f"vocab_size {self.gpt.vocab_size} < {need} tokens ({self.n_codes} image codes, "
                f"{n_cond} conditioning tokens from id {self.cond_start})"
            )
        if self.gpt.block_size < self.n_prefix + self.grid[0] * self.grid[1] - 1:
            raise ValueError(
                f"block_size {self.gpt.block_size} < {self.n_prefix} conditioning tokens + "
                f"{self.grid[0] * self.grid[1]} codes per image - 1"
            )

    @property
    def cond_start(self) -> int:
        """Id of the first conditioning token."""
        return self.n_codes if self.cond_offset is None else self.cond_offset

    @property
    def n_prefix(self) -> int:
        """Conditioning tokens before the codes."""
        return self.cond_grid[0] * self.cond_grid[1] if self.cond_image else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"grid": list(self.grid), "cond_grid": list(self.cond_grid)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerMeta:
        return cls(**(d | {"gpt": GPTConfig(**d["gpt"])}))


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def make_cond_image(images: Tensor, kind: str, size: int, channels: int | None = None) -> Tensor:
    """The conditioning image of each target (N, C, H, W) in [-1, 1] -> (N, channels, size, size).

    * ``lowres``: area-averaged to ``size`` px (taming's ``downsample_cond_size``);
    * ``edges``: Sobel gradient magnitude of the grey image, scaled to [-1, 1] per image,
      then area-resized to ``size`` px.

    ``channels`` (default C): grey is repeated to RGB, RGB averaged to grey.
    """
    if kind not in COND_IMAGES:
        raise ValueError(f"unknown cond_image {kind!r}; valid: {COND_IMAGES}")
    if images.ndim != 4 or size < 1:
        raise ValueError(f"expected images (N, C, H, W) and size >= 1, got {images.shape}, {size}")
    x = images.float()
    if kind == "edges":
        grey = F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
        kx = _SOBEL.to(x.device).view(1, 1, 3, 3)
        gx, gy = F.conv2d(grey, kx), F.conv2d(grey, kx.transpose(2, 3))
        mag = torch.sqrt(gx.square() + gy.square())  # (N, 1, H, W)
        x = 2 * mag / mag.amax((1, 2, 3), keepdim=True).clamp(min=1e-8) - 1
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    channels = images.shape[1] if channels is None else channels
    if x.shape[1] != channels:
        if x.shape[1] not in (1, 3) or channels not in (1, 3):
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    return x.contiguous()


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


def load_cond_stage(directory: str | Path, meta: TransformerMeta, vq: VQModel) -> VQModel | None:
    """The VQGAN that encodes the conditioning images (None for class / SOS models)."""
    if meta.cond_image is None:
        return None
    return vq if meta.cond_stage == "first_stage" else load_vqgan(directory, name="cond_vqgan")


def make_prefix(
    meta: TransformerMeta, labels: Tensor | None, batch: int, cond_codes: Tensor | None = None
) -> Tensor:
    """Conditioning tokens, from id ``s = meta.cond_start`` (``n_codes`` unless imported): class
    ``s + label`` or the SOS token ``s`` (B, 1), or the codes of the conditioning image
    (B, ch, cw) as tokens ``s + c`` (B, ch*cw)."""
    if meta.cond_image is not None:
        shape = (batch, *meta.cond_grid)
        if cond_codes is None or tuple(cond_codes.shape) != shape:
            got = None if cond_codes is None else tuple(cond_codes.shape)
            raise ValueError(f"an image-conditional model needs cond codes {shape}, got {got}")
        if int(cond_codes.min()) < 0 or int(cond_codes.max()) >= meta.cond_n_codes:
            raise ValueError(f"cond codes must lie in [0, {meta.cond_n_codes})")
        return cond_codes.reshape(batch, -1).long() + meta.cond_start
    if meta.n_classes == 0:
        return sos_prefix(batch, meta.cond_start)
    if labels is None:
        raise ValueError(f"a class-conditional model ({meta.n_classes} classes) needs labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= meta.n_classes):
        raise ValueError(f"class labels must lie in [0, {meta.n_classes}), got {labels.tolist()}")
    return class_prefix(labels, offset=meta.cond_start)


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
    cond_codes: Tensor | None = None,
    on_step: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train ``gpt`` on code grids (N, h, w) (+ labels (N,), or the codes (N, ch, cw) of the
    conditioning images for an image-conditional ``meta``); returns the logged records.

    ``on_step(step, state)`` gets the number of finished steps after every step and a function
    returning the loop's state; ``resume``: such a state, with ``gpt`` already holding the
    weights saved with it (the optimiser, the batch / pkeep generator, the global RNG of
    dropout, the open log window and the earlier records are restored)."""
    if codes.ndim != 3 or tuple(codes.shape[1:]) != meta.grid:
        raise ValueError(f"expected codes (N, {meta.grid[0]}, {meta.grid[1]}), got {codes.shape}")
    if cond_codes is not None and len(cond_codes) != len(codes):
        raise ValueError(f"{len(cond_codes)} cond codes for {len(codes)} code grids")
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
    records: list[dict[str, float]] = []
    total, count, start = 0.0, 0, 0  # loss sum and steps of the open log window
    if resume is not None:
        start = restore_loop(resume, gen, opt=opt)
        total, count = float(resume["total"]), int(resume["count"])
        records = list(resume["records"])

    def state() -> dict[str, Any]:
        window = {"total": total, "count": count, "records": list(records)}
        return capture_loop(step + 1, gen, opt=opt) | window

    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        idx = torch.randint(0, codes.shape[0], (cfg.batch_size,), generator=gen)
        z = permuter(codes[idx].reshape(cfg.batch_size, -1).to(device))  # (B, h*w)
        c = make_prefix(
            meta,
            None if labels is None else labels[idx].to(device),
            cfg.batch_size,
            None if cond_codes is None else cond_codes[idx].to(device),
        )
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
        count += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "loss": total / count, "seconds": time.perf_counter() - t0}
            records.append(record)
            if callback is not None:
                callback(step + 1, record)
            total, count = 0.0, 0
        if on_step is not None:
            on_step(step + 1, state)
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
    *,
    cond_images: Tensor | None = None,
    cond_vq: VQModel | None = None,
    size: int | None = None,
) -> Tensor:
    """``n`` images (n, C, H, W) in [-1, 1]; sample i uses a CPU generator seeded ``seed + i``.

    ``cond_images`` (n, C', H', W') are the images an image-conditional model's conditioning
    is made from (:func:`make_cond_image`), encoded by ``cond_vq`` (default: ``vq``). ``size``
    (px, default the training size) above the training size samples through a sliding window
    of the training grid. Tokens outside the image vocabulary are never drawn.
    """
    device = next(gpt.parameters()).device
    f, (h, w) = vq.cfg.downsample_factor, meta.grid
    gh, gw = vq.cfg.latent_shape(size) if size is not None else (h, w)
    if gh < h or gw < w:
        raise ValueError(f"size {size} is below the training size {h * f}")
    cond_codes = None
    if meta.cond_image is not None:
        if cond_images is None or len(cond_images) != n:
            raise ValueError(f"this model is image-conditional: pass {n} cond_images")
        if cond_vq is None and meta.cond_stage != "first_stage":
            raise ValueError("this model's cond stage is its own VQGAN: pass cond_vq")
        cond_vq = vq if cond_vq is None else cond_vq
        # for a larger output the conditioning image grows with it (pixels per cond code fixed)
        px = meta.cond_size * gh // h
        x = make_cond_image(cond_images.to(device), meta.cond_image, px, cond_vq.cfg.in_channels)
        cond_codes = encode_codes(cond_vq, x)  # (n, ch, cw)
    elif cond_images is not None:
        raise ValueError("this model is not image-conditional: cond_images do not apply")

    def mask_logits(_: int, logits: Tensor) -> None:
        logits[:, meta.n_codes :] = float("-inf")  # in place: only image codes can be drawn

    if (gh, gw) == (h, w):
        prefix = make_prefix(meta, labels, n, cond_codes).to(device)
        tokens = sample(
            gpt, prefix, h * w, seed, temperature, top_k, top_p, callback=mask_logits
        )  # (n, h*w) in the permuter's order
        permuter = make_permuter(meta.permuter, h, w).to(device)
        codes = permuter(tokens, reverse=True).reshape(n, h, w)
        return vq.decode_code(codes).clamp(-1, 1)
    if meta.permuter != "identity":
        raise ValueError(f"sliding-window sampling needs raster order, not {meta.permuter!r}")
    prefix, cond_grid = None, None
    if meta.cond_image is None:
        prefix = make_prefix(meta, labels, n).to(device)
    elif meta.cond_grid != meta.grid:
        raise ValueError(
            f"sliding-window sampling crops the condition like the codes: it needs a cond grid "
            f"{meta.cond_grid} equal to the code grid {meta.grid}"
        )
    else:
        cond_grid = cond_codes.long() + meta.cond_start  # (n, gh, gw) tokens
    sampling = (seed, temperature, top_k, top_p)
    codes = sample_sliding_window(
        gpt, (gh, gw), (h, w), prefix, cond_grid, *sampling, callback=mask_logits
    )  # (n, gh, gw)
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
    try:
        load_strict(gpt, load_file(str(weights_path)), "GPT state dict")
    except ValueError as exc:
        raise ValueError(f"{weights_path}: {exc}") from None
    return gpt.eval(), meta
