"""What a fine-tuning run writes for the ecosystem to load.

* LoRA: a kohya sd-scripts ``.safetensors`` (``<name>.lora_down.weight``, ``.lora_up.weight``,
  ``.alpha``; names from ``adapters.kohya_names``) with kohya's ``ss_*`` metadata, which A1111,
  ComfyUI and diffusers' ``load_lora_weights`` read.
* Full: the source checkpoint with its UNet replaced, as a single ``.safetensors`` in the LDM /
  sgm layout (``model.diffusion_model.*``; stale ``model_ema.*`` tensors of the source dropped)
  and / or a diffusers folder, through the one converter (``checkpoints/convert.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genmodels.checkpoints.components import EMA_PREFIX, UNET_PREFIX
from genmodels.checkpoints.convert import read_checkpoint, save_checkpoint
from genmodels.checkpoints.diffusers_folder import write_diffusers_folder
from genmodels.checkpoints.io import load_state_dict, save_state_dict

from .finetune_config import FinetuneRunConfig
from .lora import LoRANetwork

__all__ = ["BASE_MODEL_VERSIONS", "legacy_model_hash", "lora_metadata", "read_lora_file",
           "save_full", "save_kohya_lora"]  # fmt: skip

# kohya's ss_base_model_version values (sd-scripts library/train_util.py)
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl-base": "sdxl_base_v1-0",
                       "sdxl-refiner": "sdxl_refiner_v1-0"}  # fmt: skip
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old model hash (kohya ``ss_sd_model_hash``): SHA-256 of the 64 KiB at offset
    1 MiB, first 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _full_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lora_metadata(cfg: FinetuneRunConfig, family: str, prediction: str, step: int,
                  num_images: int, tag_frequency: str) -> dict[str, str]:  # fmt: skip
    """kohya's ``ss_*`` training metadata of the LoRA."""
    init = Path(cfg.init)
    lo, o = cfg.lora, cfg.optim
    meta: dict[str, Any] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": lo.rank,
        "ss_network_alpha": lo.alpha if lo.alpha is not None else lo.rank,
        "ss_network_dropout": lo.dropout,
        "ss_network_args": json.dumps(
            {"conv_dim": lo.conv_rank, "conv_alpha": lo.conv_alpha or lo.conv_rank}
            if lo.conv_rank
            else {}
        ),
        "ss_base_model_version": BASE_MODEL_VERSIONS[family],
        "ss_v2": family == "sd2",
        "ss_v_parameterization": prediction == "v",
        "ss_sd_model_name": init.name,
        "ss_sd_model_hash": legacy_model_hash(init) if init.is_file() else "",
        "ss_new_sd_model_hash": _full_hash(init) if init.is_file() else "",
        "ss_steps": step,
        "ss_max_train_steps": cfg.steps,
        "ss_resolution": f"({cfg.data.size}, {cfg.data.size})",
        "ss_num_train_images": num_images,
        "ss_tag_frequency": tag_frequency,
        "ss_total_batch_size": cfg.data.batch_size,
        "ss_gradient_accumulation_steps": o.grad_accum,
        "ss_learning_rate": o.lr,
        "ss_unet_lr": o.lr,
        "ss_text_encoder_lr": (lo.text_lr or o.lr) if lo.text_encoder else 0.0,
        "ss_network_train_unet_only": not lo.text_encoder,
        "ss_optimizer": o.name,
        "ss_lr_scheduler": o.schedule,
        "ss_lr_warmup_steps": o.warmup_steps,
        "ss_min_snr_gamma": cfg.loss.min_snr_gamma,
        "ss_noise_offset": cfg.loss.offset_noise,
        "ss_caption_dropout_rate": cfg.captions.dropout,
        "ss_shuffle_caption": cfg.captions.shuffle_tags,
        "ss_keep_tokens": cfg.captions.keep_tokens,
        "ss_enable_bucket": cfg.buckets.enabled,
        "ss_mixed_precision": cfg.precision,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_seed": cfg.seed,
        "ss_output_name": cfg.output.name,
    }
    return {k: str(v) for k, v in meta.items()}


def save_kohya_lora(path: str | os.PathLike, network: LoRANetwork, metadata: dict[str, str],
                    dtype: str = "fp16") -> Path:  # fmt: skip
    """Write ``network`` as a kohya LoRA file (atomically)."""
    target = _DTYPES[dtype]
    tensors: dict[str, Tensor] = {}
    for name, a in network.adapters.items():
        tensors[f"{name}.lora_down.weight"] = a.lora_down.weight.detach().to(target)
        tensors[f"{name}.lora_up.weight"] = a.lora_up.weight.detach().to(target)
        tensors[f"{name}.alpha"] = a.alpha.detach().to(target)
    save_state_dict(tensors, path, metadata)
    return Path(path)


def read_lora_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a kohya LoRA file (errors name the file)."""
    tensors = load_state_dict(path)
    if not any(k.endswith(".lora_down.weight") for k in tensors):
        raise ValueError(f"{path}: not a kohya LoRA file (no *.lora_down.weight tensors)")
    return tensors


def save_full(cfg: FinetuneRunConfig, unet_state: dict[str, Tensor], out_dir: Path) -> list[Path]:
    """The source checkpoint with ``unet_state`` as its UNet, in ``cfg.output.format``."""
    sd, spec = read_checkpoint(cfg.init, cfg.prediction)
    sd = {k: v for k, v in sd.items() if not k.startswith(EMA_PREFIX)}
    for k, v in unet_state.items():
        sd[UNET_PREFIX + k] = v.detach().cpu()
    if cfg.output.fp16:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    written = []
    name = cfg.output.name
    if cfg.output.format in ("safetensors", "both"):
        save_checkpoint(sd, spec, out_dir / f"{name}.safetensors")
        written.append(out_dir / f"{name}.safetensors")
    if cfg.output.format in ("diffusers", "both"):
        write_diffusers_folder(sd, spec, out_dir / name, overwrite=True)
        written.append(out_dir / name)
    return written
