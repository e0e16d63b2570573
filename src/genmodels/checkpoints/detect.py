"""What a checkpoint is, from its tensors alone: family, inpainting, parameterisation, EMA.

* Family (SD 1.x / 2.x / XL base / XL refiner) from the text-encoder prefixes
  (``checkpoints.components``), else from the UNet (context width, ``label_emb`` input width).
* Inpainting: a 9-channel ``input_blocks.0.0.weight`` (4 latent + 4 masked-image latent + mask).
* eps vs v, in order: an explicit override; genmodels metadata; the ``v_pred`` marker tensor
  (ComfyUI's convention for SDXL v-prediction files, with ``ztsnr`` for zero terminal SNR); for
  non-inpainting SD 2.x the ComfyUI / A1111 weight statistic (std of the LayerNorm bias
  ``norm1.bias`` of the last output transformer, ``output_blocks.11.1`` in SD 2.x, above 0.09
  means 768-v); otherwise eps. SD 2 512-base and 768-v have identical shapes, so the statistic
  is a heuristic; ``info.prediction_source`` says which rule decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from torch import Tensor

from genmodels.checkpoints.components import (
    TEXT_PREFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_family_from_keys,
    has_ema,
    split_checkpoint,
)
from genmodels.checkpoints.config_checks import (
    check_text_config,
    check_unet_config,
    check_vae_config,
)
from genmodels.checkpoints.infer import (
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    unet_preset_name,
)
from genmodels.checkpoints.io import CheckpointError
from genmodels.checkpoints.native import decode_metadata
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.text import (
    ENCODER_PRESETS,
    CLIPTextConfig,
    EmbedderConfig,
    TextEncoderConfig,
)
from genmodels.configs.unet import UNetConfig
from genmodels.models.family import ModelFamily

PREDICTIONS = ("eps", "v")
V_PRED_STD_THRESHOLD = 0.09  # ComfyUI supported_models.SD20.model_type / A1111

FAMILY_NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl-base": "Stable Diffusion XL base",
    "sdxl-refiner": "Stable Diffusion XL refiner",
}

_ENCODER_PRESET = {"sd1": "sd1", "sd2": "sd2", "sdxl-base": "sdxl", "sdxl-refiner": "sdxl"}

# Keys every known single-file checkpoint has (listed when nothing fits).
_EXPECTED_MARKERS = (
    UNET_PREFIX + "input_blocks.0.0.weight",
    UNET_PREFIX + "out.2.weight",
    VAE_PREFIX + "encoder.conv_in.weight",
    VAE_PREFIX + "decoder.conv_out.weight",
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    "cond_stage_model.model.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the pipeline of a checkpoint."""

    family: ModelFamily
    unet: UNetConfig
    vae: AutoencoderConfig | None  # None: the file has no VAE (give one with vae=)
    text: TextEncoderConfig
    prediction: str  # "eps" | "v"
    prediction_source: str  # which rule decided (override, metadata, v_pred key, ...)
    zero_terminal_snr: bool = False
    has_ema: bool = False
    source_format: str = "ldm"  # "ldm" | "genmodels" | "diffusers"

    @property
    def inpainting(self) -> bool:
        return self.unet.in_channels == 9

    @property
    def unet_preset(self) -> str | None:
        return unet_preset_name(self.unet)

    @property
    def description(self) -> str:
        name = FAMILY_NAMES[self.family]
        return name + (" inpainting" if self.inpainting else "")


def unknown_architecture(sd: Mapping[str, Tensor], reason: str) -> CheckpointError:
    """The error for tensors that fit no known architecture: up to 10 missing and 10 unexpected
    keys."""
    missing = [k for k in _EXPECTED_MARKERS if k not in sd][:10]
    known = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", "conditioner.", "model_ema.")
    unexpected = sorted(k for k in sd if not k.startswith(known))
    more = f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""
    return CheckpointError(
        f"the checkpoint does not fit any known architecture (SD 1.x, SD 2.x, SDXL base, SDXL "
        f"refiner): {reason}. Missing keys: {', '.join(missing) or '-'}. Unexpected keys: "
        f"{', '.join(unexpected[:10]) or '-'}{more}"
    )


def detect_family(sd: Mapping[str, Tensor]) -> ModelFamily:
    """The model family of an LDM/sgm state dict (full keys)."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        raise unknown_architecture(sd, f"no {UNET_PREFIX}* tensors")
    family = detect_family_from_keys(sd)
    if family == "sdxl-refiner" and UNET_PREFIX + "label_emb.0.0.weight" not in sd:
        raise unknown_architecture(
            sd,
            "conditioner.embedders.0.model.* without an SDXL label_emb (SD 2.x saved in the "
            "sgm layout is not supported; rename the prefix to cond_stage_model.model.)",
        )
    if family is not None:
        return family
    label = sd.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is not None:
        return {2816: "sdxl-base", 2560: "sdxl-refiner"}.get(label.shape[1], "sdxl-base")
    k = next((v for key, v in sd.items() if key.endswith("attn2.to_k.weight")), None)
    context = None if k is None else k.shape[1]
    if context in (768, 1024):
        return "sd1" if context == 768 else "sd2"
    raise unknown_architecture(
        sd, f"no text-encoder tensors and an unrecognised UNet context width {context}"
    )


def detect_prediction(
    unet: Mapping[str, Tensor], sd: Mapping[str, Tensor], family: ModelFamily, in_channels: int
) -> tuple[str, str, bool]:
    """(prediction, rule that decided, zero_terminal_snr) from marker keys and weights."""
    ztsnr = "ztsnr" in sd
    if "v_pred" in sd:
        return "v", "v_pred marker key", ztsnr
    if family == "sd2" and in_channels == 4:
        n = max((int(k.split(".")[1]) for k in unet if k.startswith("output_blocks.")), default=-1)
        for idx in range(n, -1, -1):
            bias = unet.get(f"output_blocks.{idx}.1.transformer_blocks.0.norm1.bias")
            if bias is not None:
                std = float(bias.float().std(unbiased=False))
                pred = "v" if std > V_PRED_STD_THRESHOLD else "eps"
                rule = f"SD 2 heuristic (output_blocks.{idx} norm1.bias std {std:.3f}"
                return pred, f"{rule} {'>' if pred == 'v' else '<='} {V_PRED_STD_THRESHOLD})", ztsnr
    return "eps", "default (no v-prediction marker)", ztsnr


def _template(family: ModelFamily) -> tuple[EmbedderConfig, ...]:
    if family == "sdxl-refiner":  # sgm refiner: only the OpenCLIP bigG embedder of the base
        return (ENCODER_PRESETS["sdxl"].embedders[1],)
    return ENCODER_PRESETS[_ENCODER_PRESET[family]].embedders


def text_config_for(
    family: ModelFamily, texts: list[CLIPTextConfig] | None = None
) -> TextEncoderConfig:
    """The family's text conditioner rules (layer, norm, padding) on measured CLIP configs
    (None: the released model sizes)."""
    template = _template(family)
    texts = [e.text for e in template] if texts is None else texts
    if len(texts) != len(template):
        raise CheckpointError(f"{family} needs {len(template)} text encoders, found {len(texts)}")
    embedders = []
    for emb, text in zip(template, texts):
        if emb.with_pooled and text.projection_dim is None:
            raise CheckpointError(f"{family}: the pooled text encoder has no text_projection")
        embedders.append(replace(emb, text=text))
    return replace(ENCODER_PRESETS["sd1"], embedders=tuple(embedders))


def with_clip_skip(text: TextEncoderConfig, clip_skip: int | None) -> TextEncoderConfig:
    """A1111 clip_skip (1 = last layer, 2 = penultimate) applied to every embedder."""
    if clip_skip is None:
        return text
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1 (1 = last layer), got {clip_skip}")
    return replace(text, embedders=tuple(replace(e, layer=-clip_skip) for e in text.embedders))


def check_prediction(prediction: str | None) -> None:
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} or None, got {prediction!r}")


def _check_record(sd: Mapping[str, Tensor], record: dict) -> None:
    """genmodels metadata configs against the tensors, before anything is built from them."""
    family = record["family"]
    if family not in FAMILY_NAMES:
        raise CheckpointError(f"genmodels metadata: unknown family {family!r}")
    parts = split_checkpoint(sd, family)
    check_unet_config(record["unet"], parts.unet, "genmodels metadata (unet)")
    if parts.vae:
        check_vae_config(record["vae"], parts.vae, "genmodels metadata (vae)")
    embedders = record["text"].embedders
    if all(parts.text) and len(embedders) == len(parts.text):
        for i, (emb, text) in enumerate(zip(embedders, parts.text)):
            check_text_config(emb.text, text, f"genmodels metadata (text.embedders[{i}].text)")


def detect_checkpoint(
    sd: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    prediction: str | None = None,
) -> ModelSpec:
    """Detect the architecture of a single-file LDM/sgm (or genmodels) checkpoint."""
    check_prediction(prediction)
    record = decode_metadata(dict(metadata or {}))
    if record is not None:
        _check_record(sd, record)
        pred = prediction or record["prediction"]
        return ModelSpec(
            record["family"], record["unet"], record["vae"], record["text"], pred,
            "override" if prediction else "genmodels metadata", record["zero_terminal_snr"],
            has_ema(sd), "genmodels",
        )  # fmt: skip
    family = detect_family(sd)
    parts = split_checkpoint(sd, family)
    unet = infer_unet_config(parts.unet, family)
    vae = infer_vae_config(parts.vae, family) if parts.vae else None
    layouts = [layout for _, layout in TEXT_PREFIXES[family]]
    if all(parts.text):
        texts = [infer_text_config(t, layout) for t, layout in zip(parts.text, layouts)]
        text = text_config_for(family, texts)
    else:  # no text encoder: the released sizes (strict loading then lists what is missing)
        text = text_config_for(family)
    pred, source, ztsnr = detect_prediction(parts.unet, sd, family, unet.in_channels)
    if prediction is not None:
        pred, source = prediction, "override"
    unet = replace(unet, prediction_type=pred)
    return ModelSpec(family, unet, vae, text, pred, source, ztsnr, has_ema(sd))
