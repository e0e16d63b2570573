"""Typed run configs for the two VQ stages and the runs they drive (``genmodels train``).

A YAML file with ``task: vqgan`` serialises :class:`VQGANRunConfig` (stage 1: the VQGAN);
``task: transformer`` serialises :class:`TransformerRunConfig` (stage 2: a GPT over the codes of
a trained VQGAN). Loading checks keys and types with ``genmodels.training.config``'s
validators, so a typo fails with the dotted key (``train.lrr: unknown key; valid keys: ...``).
``model:`` may also be the name of a VQGAN preset (``model: digits``).

Output directory (read directly by ``genmodels vq-sample --ckpt DIR``):

* stage 1 writes ``vqgan.safetensors`` + ``vqgan.json`` + ``vqgan_run.yaml`` to ``out_dir``;
* stage 2 writes ``transformer.safetensors`` + ``transformer.json`` + ``transformer_run.yaml``
  into ``out_dir`` (default: the VQGAN directory; another directory gets a copy of the
  VQGAN files), and ``cond_vqgan.*`` when an image-conditional model has its own cond-stage
  VQGAN (``cond_vqgan_dir``). Every file is replaced atomically;
* every ``ckpt_every`` steps (the newest ``keep_last``), a resumable checkpoint in the trainer's
  layout (``checkpoint.py``): stage 1 in ``out_dir/checkpoints/step-<step>/`` (the VQModel with
  its codebook buffers; the discriminator, both optimisers, the batch generator, the RNG and the
  open log window in ``state.pt``), stage 2 in ``<its out_dir>/transformer_checkpoints/``, so
  both stages can share a directory. ``run_vqgan(cfg, resume=True)`` /
  ``run_transformer(cfg, resume=True)`` continue from the newest one exactly (the same weights
  as an uninterrupted run; a fresh run if there is none).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from genmodels.configs.vqgan import DIGITS, VQConfig, get_vqgan_config
from genmodels.data.builtin import build_dataset
from genmodels.models.gpt import GPT, GPTConfig
from genmodels.models.permuters import PERMUTERS
from genmodels.models.vqgan import VQModel
from genmodels.training.checkpoint import resume_from, save_checkpoint
from genmodels.training.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    merge_dicts,
)
from genmodels.training.transformer_train import (
    TransformerMeta,
    TransformerTrainConfig,
    encode_codes,
    make_cond_image,
    save_transformer,
    train_transformer,
)
from genmodels.training.vqgan_loss import VQGANLossConfig
from genmodels.training.vqgan_train import (
    VQGANTrainConfig,
    load_vqgan,
    reconstruct_psnr,
    save_vqgan,
    train_vqgan,
    write_atomic,
)

__all__ = [
    "VQ_TASKS",
    "VQDataConfig",
    "GPTModelConfig",
    "VQGANRunConfig",
    "TransformerRunConfig",
    "build_run_config",
    "load_run_config",
    "dump_run_config",
    "load_images",
    "resolve_device",
    "run_vqgan",
    "run_transformer",
    "small_image_loss",
    "stage_printer",
    "task_of",
]

Device = Literal["auto", "cpu", "cuda"]
VQGAN_CKPT_DIR, TRANSFORMER_CKPT_DIR = "checkpoints", "transformer_checkpoints"


def _check_ckpt_keys(cfg: Any) -> None:
    for name in ("ckpt_every", "keep_last"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def small_image_loss(in_channels: int, disc_start: int = 400) -> VQGANLossConfig:
    """L1 + L2 + a 2-layer PatchGAN (weight 0.1) from ``disc_start``; perceptual term off
    (no local LPIPS weights for tiny images)."""
    return VQGANLossConfig(
        disc_start=disc_start,
        perceptual_weight=0.0,
        l2_weight=1.0,
        disc_in_channels=in_channels,
        disc_num_layers=2,
        disc_ndf=32,
        disc_weight=0.1,
    )


@dataclass
class VQDataConfig:
    """Training images: ``digits``, ``emoji`` or an image ``folder`` at ``path``, at ``size`` px."""

    dataset: Literal["digits", "emoji", "folder"] = "digits"
    path: str | None = None
    size: int = 16


@dataclass
class GPTModelConfig:
    """minGPT sizes; ``vocab_size`` and ``block_size`` follow from the VQGAN and the classes."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0


@dataclass
class VQGANRunConfig:
    """Stage 1: a VQGAN on ``data`` (Esser et al. 2021), saved to ``out_dir``."""

    model: VQConfig = field(default_factory=lambda: DIGITS)  # in YAML also a preset name
    data: VQDataConfig = field(default_factory=VQDataConfig)
    train: VQGANTrainConfig = field(
        default_factory=lambda: VQGANTrainConfig(loss=small_image_loss(DIGITS.in_channels))
    )
    out_dir: str = "runs/vqgan"
    ckpt_every: int = 0  # a resumable checkpoint every N steps; 0: none
    keep_last: int = 2  # resumable checkpoints kept (0: all)
    device: Device = "auto"

    def __post_init__(self) -> None:
        _check_ckpt_keys(self)
        f = self.model.downsample_factor
        if self.data.size % f:
            raise ValueError(f"data.size={self.data.size} is not divisible by model's factor {f}")
        if self.train.loss.disc_in_channels != self.model.in_channels:
            raise ValueError(
                f"train.loss.disc_in_channels={self.train.loss.disc_in_channels} must equal "
                f"model.in_channels={self.model.in_channels}"
            )


@dataclass
class TransformerRunConfig:
    """Stage 2: a GPT over the codes of the VQGAN in ``vqgan_dir`` (taming's Net2Net)."""

    vqgan_dir: str = "runs/vqgan"
    data: VQDataConfig = field(default_factory=VQDataConfig)
    gpt: GPTModelConfig = field(default_factory=GPTModelConfig)
    train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    permuter: str = "identity"
    n_classes: int = 10  # class-conditional on the dataset's labels; 0: unconditional (SOS)
    # condition on the codes of a view of the target instead (taming's cond stage; n_classes 0)
    cond_image: Literal["lowres", "edges"] | None = None
    cond_size: int | None = None  # px of the conditioning image; default data.size (// 2 lowres)
    cond_vqgan_dir: str | None = None  # the cond-stage VQGAN; None: the first stage encodes it
    out_dir: str | None = None  # None: next to the VQGAN, in vqgan_dir
    ckpt_every: int = 0  # a resumable checkpoint every N steps; 0: none
    keep_last: int = 2  # resumable checkpoints kept (0: all)
    device: Device = "auto"

    def __post_init__(self) -> None:
        _check_ckpt_keys(self)
        if self.permuter not in PERMUTERS:
            raise ValueError(f"permuter: unknown {self.permuter!r}; valid: {list(PERMUTERS)}")
        if self.n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {self.n_classes}")
        if self.cond_image is not None and self.n_classes:
            raise ValueError(f"cond_image={self.cond_image!r} needs n_classes: 0")
        if self.cond_image is None and (self.cond_size, self.cond_vqgan_dir) != (None, None):
            raise ValueError("cond_size / cond_vqgan_dir need a cond_image (lowres or edges)")
        if self.cond_size is not None and self.cond_size < 1:
            raise ValueError(f"cond_size must be >= 1, got {self.cond_size}")


VQ_TASKS: dict[str, type] = {"vqgan": VQGANRunConfig, "transformer": TransformerRunConfig}
RunConfig = VQGANRunConfig | TransformerRunConfig


def _resolve_model(data: dict[str, Any]) -> None:
    """``model: NAME`` -> the VQGAN preset ``NAME`` as a mapping."""
    if isinstance(data.get("model"), str):
        data["model"] = get_vqgan_config(data["model"]).to_dict()


def _apply_vq_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` overrides in order; ``model=NAME`` names a VQGAN preset (the shared
    :func:`apply_overrides` reads it as a UNet preset)."""
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip() == "model" and raw and not raw.lstrip().startswith(("{", "[")):
            data["model"] = get_vqgan_config(raw.strip()).to_dict()
        else:
            data = apply_overrides(data, [item])
    return data


def build_run_config(
    task: str,
    loaded: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """The ``task`` config: ``base`` (or the defaults), then ``loaded`` (a YAML mapping), then
    ``key=value`` overrides; every key and value checked against the dataclasses."""
    if task not in VQ_TASKS:
        raise ValueError(f"task: unknown {task!r}; valid: diffusion, {', '.join(VQ_TASKS)}")
    cls = VQ_TASKS[task]
    if base is not None and not isinstance(base, cls):
        raise ValueError(f"task: {task!r} does not match the preset ({type(base).__name__})")
    data = config_to_dict(base if base is not None else cls())
    loaded = dict(loaded or {})
    _resolve_model(loaded)
    merge_dicts(data, loaded)
    data = _apply_vq_overrides(data, list(overrides or []))
    _resolve_model(data)
    return config_from_dict(cls, data)


def task_of(cfg: RunConfig) -> str:
    """The ``task:`` name of a run config."""
    return next(name for name, cls in VQ_TASKS.items() if isinstance(cfg, cls))


def load_run_config(
    path: str | Path, overrides: list[str] | None = None, base: RunConfig | None = None
) -> RunConfig:
    """Read a YAML run config with a ``task:`` key (``vqgan`` / ``transformer``)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    default = task_of(base) if base is not None else None
    task = loaded.pop("task", default)
    if task is None:
        raise ValueError(f"{path}: missing task (one of {', '.join(VQ_TASKS)})")
    return build_run_config(task, loaded, overrides, base)


def dump_run_config(cfg: RunConfig, path: str | Path | None = None) -> str:
    """YAML text of ``cfg`` with its ``task:`` first (written atomically to ``path`` if given)."""
    text = yaml.safe_dump({"task": task_of(cfg)} | config_to_dict(cfg), sort_keys=False)
    if path is not None:
        write_atomic(path, lambda p: p.write_text(text))
    return text


def load_images(data: VQDataConfig) -> tuple[Tensor, Tensor | None]:
    """All images (N, C, H, W) in [-1, 1] and their labels (N,) (None when unlabelled)."""
    ds = build_dataset(data.dataset, size=data.size, path=data.path)
    if hasattr(ds, "images"):
        return ds.images, ds.labels
    items = [ds[i] for i in range(len(ds))]  # an image folder: decoded once, kept in memory
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return torch.stack([x for x, _ in items]), (None if bool((labels < 0).all()) else labels)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def stage_printer(stage: str) -> Callable[[int, dict[str, float]], None]:
    """A training callback printing ``<stage> step N: key=value ...`` per logged record."""

    def log(step: int, record: dict[str, float]) -> None:
        values = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step")
        print(f"{stage} step {step}: {values}", flush=True)

    return log


def _checkpointer(
    root: Path, cfg: RunConfig, model: torch.nn.Module
) -> Callable[[int, Callable[[], dict[str, Any]]], None]:
    """An ``on_step`` writing a resumable checkpoint every ``cfg.ckpt_every`` steps (not at the
    last step: the run's own files follow the loop)."""

    def on_step(step: int, loop_state: Callable[[], dict[str, Any]]) -> None:
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.train.steps:
            save_checkpoint(root, step, model, None, loop_state(), dump_run_config(cfg),
                            keep_last=cfg.keep_last)  # fmt: skip

    return on_step


def run_vqgan(cfg: VQGANRunConfig, log: Callable | None = None, resume: bool = False) -> Path:
    """Train stage 1 and write the VQGAN to ``cfg.out_dir``; returns that directory.
    ``resume``: continue from the newest checkpoint in ``out_dir`` (a fresh run if none)."""
    device = resolve_device(cfg.device)
    images, _ = load_images(cfg.data)  # (N, C, H, W)
    if images.shape[1] != cfg.model.in_channels:
        raise ValueError(
            f"data.dataset={cfg.data.dataset!r} has {images.shape[1]} channels, "
            f"model.in_channels={cfg.model.in_channels}"
        )
    torch.manual_seed(cfg.train.seed)  # weight initialisation
    model = VQModel(cfg.model).to(device)
    out = Path(cfg.out_dir)
    root = out / VQGAN_CKPT_DIR
    state = resume_from(root, model, resume, "vqgan")
    printer, on_step = log or stage_printer("vqgan"), _checkpointer(root, cfg, model)
    records = train_vqgan(model, images, cfg.train, None, printer, on_step, state)
    psnr, counts = reconstruct_psnr(model, images.to(device))
    usage = float((counts > 0).float().mean())
    print(f"vqgan: PSNR {psnr:.2f} dB, codebook usage {usage:.1%} of {len(counts)} codes")
    extra = {"psnr_db": psnr, "usage": usage, "steps": cfg.train.steps, "log": records}
    save_vqgan(out, model.cpu(), extra=extra)
    dump_run_config(cfg, out / "vqgan_run.yaml")
    return out


def _copy_vqgan(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vqgan.safetensors", "vqgan.json"):
        write_atomic(dst / name, lambda p, name=name: shutil.copyfile(src / name, p))


def run_transformer(
    cfg: TransformerRunConfig, log: Callable | None = None, resume: bool = False
) -> Path:
    """Train stage 2 over the codes of ``cfg.vqgan_dir``; returns the output directory.
    ``resume``: continue from the newest checkpoint in its ``transformer_checkpoints/``."""
    device = resolve_device(cfg.device)
    vq = load_vqgan(cfg.vqgan_dir).to(device)
    images, labels = load_images(cfg.data)
    if images.shape[1] != vq.cfg.in_channels:
        raise ValueError(
            f"data has {images.shape[1]} channels, the VQGAN in {cfg.vqgan_dir} expects "
            f"{vq.cfg.in_channels}"
        )
    if cfg.n_classes > 0:
        if labels is None:
            raise ValueError(f"n_classes={cfg.n_classes} but data.dataset has no labels")
        if int(labels.max()) >= cfg.n_classes:
            raise ValueError(f"n_classes={cfg.n_classes} but labels go up to {int(labels.max())}")
    codes = encode_codes(vq, images.to(device)).cpu()  # (N, h, w)
    h, w = codes.shape[1:]
    cond_vq, cond_codes, cond = None, None, {}
    if cfg.cond_image is not None:
        cond_vq = load_vqgan(cfg.cond_vqgan_dir).to(device) if cfg.cond_vqgan_dir else vq
        size = cfg.cond_size or cfg.data.size // (2 if cfg.cond_image == "lowres" else 1)
        x = make_cond_image(images, cfg.cond_image, size, cond_vq.cfg.in_channels)
        cond_codes = encode_codes(cond_vq, x.to(device)).cpu()  # (N, ch, cw)
        cond = {
            "cond_image": cfg.cond_image,
            "cond_size": size,
            "cond_grid": tuple(cond_codes.shape[1:]),
            "cond_n_codes": cond_vq.n_codes,
            "cond_stage": "cond_vqgan" if cfg.cond_vqgan_dir else "first_stage",
        }
    n_prefix = cond_codes[0].numel() if cond_codes is not None else 1
    n_cond_tokens = cond_vq.n_codes if cond_vq is not None else max(cfg.n_classes, 1)
    gpt_cfg = GPTConfig(
        vocab_size=vq.n_codes + n_cond_tokens, block_size=n_prefix + h * w - 1, **asdict(cfg.gpt)
    )
    meta = TransformerMeta(gpt_cfg, vq.n_codes, cfg.n_classes, (h, w), cfg.permuter, **cond)
    torch.manual_seed(cfg.train.seed)  # weight initialisation
    gpt = GPT(gpt_cfg).to(device)
    src = Path(cfg.vqgan_dir)
    out = Path(cfg.out_dir) if cfg.out_dir is not None else src
    root = out / TRANSFORMER_CKPT_DIR
    state = resume_from(root, gpt, resume, "transformer")
    train_labels = labels if cfg.n_classes > 0 else None
    printer, on_step = log or stage_printer("transformer"), _checkpointer(root, cfg, gpt)
    records = train_transformer(
        gpt, meta, codes, train_labels, cfg.train, printer, cond_codes, on_step, state
    )
    if out.resolve() != src.resolve():  # vq-sample reads both models from one directory
        _copy_vqgan(src, out)
    if cfg.cond_vqgan_dir:
        save_vqgan(out, cond_vq.cpu(), name="cond_vqgan")
    save_transformer(out, gpt.cpu(), meta)
    dump_run_config(cfg, out / "transformer_run.yaml")
    text = json.dumps(records, indent=1)
    write_atomic(out / "transformer_log.json", lambda p: p.write_text(text))
    return out
