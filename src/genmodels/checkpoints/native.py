"""genmodels' own checkpoint format: an LDM/sgm single-file safetensors whose metadata records
the exact configs (so non-standard and tiny models load without guessing).

Metadata key ``"genmodels"`` holds JSON: ``{"format_version": 1, "family", "prediction",
"zero_terminal_snr", "unet": UNetConfig, "vae": AutoencoderConfig, "text": TextEncoderConfig}``.
Every other reader sees a normal SD checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.autoencoder import AutoencoderConfig
from genmodels.configs.text import CLIPTextConfig, EmbedderConfig, TextEncoderConfig
from genmodels.configs.unet import UNetConfig
from genmodels.models.family import ModelFamily

METADATA_KEY = "genmodels"
FORMAT_VERSION = 1


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"genmodels metadata: unknown {cls.__name__} fields {unknown}")
    return cls(**{k: _tuples(v) for k, v in data.items()})


def text_config_from_dict(data: dict[str, Any]) -> TextEncoderConfig:
    embedders = tuple(
        _build(EmbedderConfig, {**e, "text": _build(CLIPTextConfig, e["text"])})
        for e in data["embedders"]
    )
    return _build(TextEncoderConfig, {**data, "embedders": embedders})


def encode_metadata(
    family: ModelFamily,
    prediction: str,
    zero_terminal_snr: bool,
    unet: UNetConfig,
    vae: AutoencoderConfig,
    text: TextEncoderConfig,
) -> dict[str, str]:
    """The safetensors metadata of a genmodels checkpoint."""
    data = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "prediction": prediction,
        "zero_terminal_snr": zero_terminal_snr,
        "unet": asdict(unet),
        "vae": asdict(vae),
        "text": asdict(text),
    }
    return {METADATA_KEY: json.dumps(data, sort_keys=True)}


def decode_metadata(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The parsed genmodels record (configs as dataclasses), or None for other files."""
    if METADATA_KEY not in metadata:
        return None
    try:
        data = json.loads(metadata[METADATA_KEY])
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"genmodels metadata: format_version {data.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION})"
            )
        return {
            "family": data["family"],
            "prediction": data["prediction"],
            "zero_terminal_snr": bool(data.get("zero_terminal_snr", False)),
            "unet": _build(UNetConfig, data["unet"]),
            "vae": _build(AutoencoderConfig, data["vae"]),
            "text": text_config_from_dict(data["text"]),
        }
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"genmodels metadata is malformed: {exc}") from exc
