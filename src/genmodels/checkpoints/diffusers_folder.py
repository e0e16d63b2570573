"""Reading and writing diffusers Stable Diffusion folders as LDM/sgm state dicts.

A folder holds ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` (HF CLIP-L for
SD 1.x / XL, OpenCLIP-H in HF layout for SD 2.x), ``text_encoder_2/`` (XL: bigG with projection),
``tokenizer(_2)/`` and ``scheduler/``. Reading converts every component to the single-file LDM
keys (``checkpoints.diffusers_unet`` / ``diffusers_vae`` / ``openclip_keys``); writing does the
reverse. Tensors a diffusers folder has no place for (e.g. SD 2's ``text_projection`` and
``logit_scale``, EMA weights, marker keys) go to ``genmodels_extra.safetensors`` at the top, which
diffusers ignores, so LDM -> diffusers -> LDM is lossless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from genmodels.checkpoints.atomic import write_folder_atomic
from genmodels.checkpoints.components import (
    TEXT_PREFIXES,
    Components,
    join_checkpoint,
    split_checkpoint,
)
from genmodels.checkpoints.config_checks import (
    check_diffusers_unet,
    check_diffusers_vae,
    check_hf_text,
)
from genmodels.checkpoints.detect import ModelSpec, check_prediction, text_config_for
from genmodels.checkpoints.diffusers_configs import (
    DIFFUSERS_VERSION,
    prediction_from_scheduler,
    scheduler_config,
    text_config_from_hf,
    text_config_to_hf,
    unet_config_to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from genmodels.checkpoints.diffusers_unet import (
    diffusers_to_ldm_unet,
    ldm_to_diffusers_unet,
    unet_config_from_diffusers,
)
from genmodels.checkpoints.diffusers_vae import diffusers_vae_to_ldm, ldm_vae_to_diffusers
from genmodels.checkpoints.io import (
    CheckpointError,
    load_state_dict,
    read_json,
    save_state_dict,
    write_json,
)
from genmodels.models.family import ModelFamily
from genmodels.models.text.tokenizer import build_vocab, load_merges

StateDict = dict[str, Tensor]
EXTRA_FILE = "genmodels_extra.safetensors"
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_MODEL_FOLDERS = ("unet", "vae")
_PIPELINE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl-base": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
}
# diffusers folder names of each family's text encoders (in embedder order).
_TEXT_FOLDERS = {
    "sd1": ("text_encoder",),
    "sd2": ("text_encoder",),
    "sdxl-base": ("text_encoder", "text_encoder_2"),
    "sdxl-refiner": ("text_encoder_2",),
}


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def component_weights_file(folder: Path) -> Path | None:
    """The weights file (or shard index) of one component folder, in diffusers' order of
    preference (safetensors first; fp16 variants; ``*.index.json`` for sharded weights)."""
    for stem in _WEIGHT_NAMES:
        for variant in ("", ".fp16"):
            for ext in (".safetensors", ".bin"):
                for name in (f"{stem}{variant}{ext}", f"{stem}{variant}{ext}.index.json"):
                    if (folder / name).is_file():
                        return folder / name
    return None


def find_component_weights(folder: Path) -> StateDict:
    """The tensors of one component folder (safetensors preferred; fp16 variants; shards)."""
    path = component_weights_file(folder)
    if path is None:
        raise CheckpointError(f"{folder}: no weights file (diffusion_pytorch_model / model)")
    if not path.name.endswith(".index.json"):
        return load_state_dict(path)
    shards = sorted(set(read_json(path).get("weight_map", {}).values()))
    out: StateDict = {}
    for shard in shards:
        out.update(load_state_dict(folder / shard))
    return out


def missing_parts(root: Path) -> list[str]:
    """What a diffusers folder lacks to be a complete model (relative paths), as diffusers'
    ``DiffusionPipeline.from_pretrained`` needs it: ``model_index.json``, and for every
    component it names, the folder with its config and, for models, its weights."""
    if not (root / "model_index.json").is_file():
        return ["model_index.json"]
    index = read_json(root / "model_index.json")
    named = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
             and len(v) == 2 and v[0] is not None]  # fmt: skip
    missing = []
    for name in dict.fromkeys(["unet", *named]):
        folder = root / name
        if not folder.is_dir():
            missing.append(f"{name}/")
        elif name in _MODEL_FOLDERS or name.startswith("text_encoder"):
            if not (folder / "config.json").is_file():
                missing.append(f"{name}/config.json")
            if component_weights_file(folder) is None:
                missing.append(f"{name}/ weights (diffusion_pytorch_model.* / model.*)")
        elif name == "scheduler" and not (folder / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
        elif name.startswith("tokenizer") and not any(folder.iterdir()):
            missing.append(f"{name}/ files")
    return missing


def check_complete(root: Path) -> None:
    """Refuse a partial diffusers folder (an interrupted download or conversion), naming what
    is missing."""
    missing = missing_parts(root)
    if missing:
        raise CheckpointError(
            f"{root}: incomplete diffusers folder (an interrupted conversion or download?): "
            f"missing {', '.join(missing)}"
        )


def _family(root: Path) -> ModelFamily:
    has1, has2 = (root / "text_encoder").is_dir(), (root / "text_encoder_2").is_dir()
    if has1 and has2:
        return "sdxl-base"
    if has2:
        return "sdxl-refiner"
    if has1:
        act = read_json(root / "text_encoder" / "config.json").get("hidden_act")
        return "sd2" if act == "gelu" else "sd1"
    unet = read_json(root / "unet" / "config.json")
    if unet.get("addition_embed_type") == "text_time":
        dim = unet.get("projection_class_embeddings_input_dim")
        return "sdxl-refiner" if dim == 2560 else "sdxl-base"
    return "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"


def _hf_text_keys(sd: StateDict) -> StateDict:
    """transformers 5 saves CLIPTextModel without the ``text_model.`` prefix: add it back."""
    return {
        k if k.startswith("text_model.") or k == "text_projection.weight" else "text_model." + k: v
        for k, v in sd.items()
    }


def _component(
    folder: Path,
    check: Callable[[dict, StateDict, str], None],
    rename: Callable[[StateDict], StateDict] = dict,
) -> tuple[dict, StateDict]:
    """(config.json, weights) of one component, the config checked against the weights."""
    config = read_json(folder / "config.json")
    sd = rename(find_component_weights(folder))
    check(config, sd, str(folder / "config.json"))
    return config, sd


def _config(build: Callable[[dict], object], folder: Path, data: dict) -> Any:
    try:
        return build(data)
    except ValueError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from exc


def read_diffusers_folder(
    root: str | Path, prediction: str | None = None
) -> tuple[StateDict, ModelSpec]:
    """Full LDM/sgm state dict and ModelSpec of a diffusers SD folder."""
    root = Path(root)
    check_prediction(prediction)
    if not is_diffusers_folder(root):
        raise CheckpointError(f"{root}: not a diffusers folder (no model_index.json or unet/)")
    check_complete(root)
    family = _family(root)
    # Each config.json is checked against its weights before it sizes anything (a crafted
    # layers_per_block=100000 would otherwise build 100000 blocks): config_checks.
    unet_json, unet_sd = _component(root / "unet", check_diffusers_unet)
    unet_cfg = _config(unet_config_from_diffusers, root / "unet", unet_json)
    parts = Components(unet=diffusers_to_ldm_unet(unet_sd, unet_cfg))
    vae_cfg = None
    if (root / "vae").is_dir():
        vae_json, vae_sd = _component(root / "vae", check_diffusers_vae)
        vae_cfg = vae_config_from_diffusers(vae_json, family)
        parts.vae = diffusers_vae_to_ldm(vae_sd)
    texts = []
    for name in _TEXT_FOLDERS[family]:
        if not (root / name).is_dir():
            break
        text_json, text_sd = _component(root / name, check_hf_text, _hf_text_keys)
        texts.append(text_json)
        parts.text.append(text_sd)
    if len(texts) < len(_TEXT_FOLDERS[family]):
        parts.text, texts = [], []
    if (root / EXTRA_FILE).is_file():
        parts.unused = load_state_dict(root / EXTRA_FILE)
    full = join_checkpoint(parts, family)
    # The projection comes back from the extra file for SD 2 (whose HF text_encoder has none);
    # its width is read off the weight (SD 2's config.json says 512 for a 1024-wide projection).
    projections = [t.get("text_projection.weight") for t in split_checkpoint(full, family).text]
    configs = [
        replace(text_config_from_hf(cfg, True), projection_dim=None if p is None else p.shape[0])
        for cfg, p in zip(texts, projections)
    ]
    pred, ztsnr, source = "eps", False, "default (no scheduler config)"
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        (pred, ztsnr), source = prediction_from_scheduler(read_json(sched)), "scheduler config"
    if prediction is not None:
        pred, source = prediction, "override"
    spec = ModelSpec(
        family, replace(unet_cfg, prediction_type=pred), vae_cfg,
        text_config_for(family, configs or None), pred, source, ztsnr,
        any(k.startswith("model_ema.") for k in parts.unused), "diffusers",
    )  # fmt: skip
    return full, spec


def _write_tokenizer(folder: Path, pad_token_id: int) -> None:
    """vocab.json / merges.txt from the BPE file shipped with genmodels (CLIP's vocabulary)."""
    merges = load_merges()
    vocab = build_vocab(merges)
    pad = {v: k for k, v in vocab.items()}[pad_token_id]
    write_json(folder / "vocab.json", vocab)
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(text, encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": pad, "unk_token": "<|endoftext|>"}  # fmt: skip
    write_json(folder / "special_tokens_map.json", special)
    write_json(folder / "tokenizer_config.json", {
        **special, "do_lower_case": True, "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer", "errors": "replace",
    })  # fmt: skip


def write_diffusers_folder(
    sd: dict[str, Tensor], spec: ModelSpec, root: str | Path, overwrite: bool = False
) -> None:
    """Write an LDM/sgm state dict (full keys) with its ModelSpec as a diffusers folder.

    The folder is written under a hidden temporary name and renamed to ``root`` only when
    complete (``atomic.write_folder_atomic``). ``root`` must be missing or empty; with
    ``overwrite`` an existing diffusers model folder is replaced (any other folder is refused).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder; give a folder name")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(
                f"{root}: destination folder exists and is not empty (--overwrite replaces a "
                "diffusers model folder)"
            )
        if not is_diffusers_folder(root):
            raise ValueError(
                f"{root}: not a diffusers model folder (no model_index.json or unet/); "
                "refusing to replace it even with --overwrite"
            )
    write_folder_atomic(root, lambda tmp: _write_folder(sd, spec, tmp), replace=overwrite)


def _write_folder(sd: dict[str, Tensor], spec: ModelSpec, root: Path) -> None:
    parts = split_checkpoint(sd, spec.family)
    index: dict[str, object] = {
        "_class_name": _PIPELINE_CLASS[spec.family],
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    write_json(root / "unet" / "config.json", unet_config_to_diffusers(spec.unet))
    save_state_dict(ldm_to_diffusers_unet(parts.unet, spec.unet),
                    root / "unet" / "diffusion_pytorch_model.safetensors")  # fmt: skip
    if parts.vae:
        if spec.vae is None:
            raise ValueError("write_diffusers_folder: VAE tensors but no VAE config")
        write_json(root / "vae" / "config.json", vae_config_to_diffusers(spec.vae))
        save_state_dict(ldm_vae_to_diffusers(parts.vae),
                        root / "vae" / "diffusion_pytorch_model.safetensors")  # fmt: skip
        index["vae"] = ["diffusers", "AutoencoderKL"]
    prefixes = TEXT_PREFIXES[spec.family]
    for name, emb, text, (prefix, layout) in zip(
        _TEXT_FOLDERS[spec.family], spec.text.embedders, parts.text, prefixes
    ):
        if not text:
            continue
        cls = "CLIPTextModelWithProjection" if emb.with_pooled else "CLIPTextModel"
        if not emb.with_pooled and "text_projection.weight" in text:  # SD 2: no place in HF
            text = dict(text)
            proj = text.pop("text_projection.weight")  # (P, D); OpenCLIP stores (D, P)
            if layout == "openclip":
                parts.unused[prefix + "text_projection"] = proj.t()
            else:
                parts.unused[prefix + "text_projection.weight"] = proj
        write_json(root / name / "config.json", text_config_to_hf(emb.text, emb.with_pooled))
        save_state_dict(text, root / name / "model.safetensors", {"format": "pt"})
        tok = "tokenizer" + name[len("text_encoder") :]
        _write_tokenizer(root / tok, emb.pad_token_id)
        index[name] = ["transformers", cls]
        index[tok] = ["transformers", "CLIPTokenizer"]
    write_json(root / "scheduler" / "scheduler_config.json",
               scheduler_config(spec.prediction, spec.zero_terminal_snr))  # fmt: skip
    if parts.unused:
        save_state_dict(parts.unused, root / EXTRA_FILE)
    if spec.family in ("sd1", "sd2"):
        index.update(safety_checker=[None, None], feature_extractor=[None, None],
                     requires_safety_checker=False)  # fmt: skip
    write_json(root / "model_index.json", index)
