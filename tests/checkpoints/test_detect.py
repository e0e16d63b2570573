"""Architecture detection from tensors alone, on full-size SD 1.x / 2.x / XL key sets built on
the meta device (shapes only, no memory), plus the eps/v, EMA and unknown-architecture rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from genmodels.checkpoints.components import Components, join_checkpoint
from genmodels.checkpoints.detect import detect_checkpoint, detect_family
from genmodels.checkpoints.io import CheckpointError
from genmodels.configs.autoencoder import get_autoencoder_config
from genmodels.configs.text import ENCODER_PRESETS, TextEncoderConfig
from genmodels.configs.unet import get_unet_config
from genmodels.models.autoencoder_kl import AutoencoderKL
from genmodels.models.text.encoders import TextEncoder
from genmodels.models.unet import UNetModel

REFINER_TEXT = TextEncoderConfig((ENCODER_PRESETS["sdxl"].embedders[1],))
CASES = {  # family: (UNet preset, VAE preset, text config)
    "sd1": ("sd1", "sd", ENCODER_PRESETS["sd1"]),
    "sd2": ("sd2", "sd", ENCODER_PRESETS["sd2"]),
    "sdxl-base": ("sdxl-base", "sdxl", ENCODER_PRESETS["sdxl"]),
    "sdxl-refiner": ("sdxl-refiner", "sdxl", REFINER_TEXT),
}
SD2_BIAS = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def meta_checkpoint(family: str, unet_name: str | None = None) -> dict[str, torch.Tensor]:
    """The full key set and shapes of a released single-file checkpoint (meta tensors)."""
    unet_preset, vae_preset, text = CASES[family]
    with torch.device("meta"):
        unet = UNetModel(get_unet_config(unet_name or unet_preset))
        vae = AutoencoderKL(get_autoencoder_config(vae_preset))
        encoder = TextEncoder(text)
    parts = Components(
        unet=unet.state_dict(),
        vae=vae.state_dict(),
        text=[e.model.state_dict() for e in encoder.embedders],
    )
    sd = join_checkpoint(parts, family)
    if family == "sd2":  # the eps/v statistic needs real values
        sd[SD2_BIAS] = torch.zeros(320)
    return sd


@pytest.mark.parametrize("family", list(CASES))
def test_released_architectures(family: str) -> None:
    unet_preset, vae_preset, text = CASES[family]
    spec = detect_checkpoint(meta_checkpoint(family))
    assert spec.family == family and spec.unet_preset == unet_preset
    assert spec.unet == get_unet_config(unet_preset)
    assert spec.vae == get_autoencoder_config(vae_preset)
    assert spec.text == text
    assert spec.prediction == "eps" and not spec.inpainting and not spec.has_ema
    assert spec.source_format == "ldm"


def test_inpainting_is_the_nine_channel_unet() -> None:
    spec = detect_checkpoint(meta_checkpoint("sd1", "sd1-inpainting"))
    assert spec.inpainting and spec.unet_preset == "sd1-inpainting"
    assert spec.description == "Stable Diffusion 1.x inpainting"
    sd2 = meta_checkpoint("sd2", "sd2-inpainting")
    sd2[SD2_BIAS] = torch.randn(320)  # inpainting models are never v (statistic not used)
    assert detect_checkpoint(sd2).prediction == "eps"


def test_sd2_v_prediction_heuristic_and_override() -> None:
    sd = meta_checkpoint("sd2")
    sd[SD2_BIAS] = torch.linspace(-0.3, 0.3, 320)  # std 0.17 > 0.09: 768-v
    spec = detect_checkpoint(sd)
    assert spec.prediction == "v" and spec.unet.prediction_type == "v"
    assert "output_blocks.11" in spec.prediction_source
    assert spec.unet_preset == "sd2-v"
    assert detect_checkpoint(sd, prediction="eps").prediction == "eps"
    sd[SD2_BIAS] = torch.linspace(-0.1, 0.1, 320)  # std 0.058: 512-base
    assert detect_checkpoint(sd).prediction == "eps"


def test_v_pred_and_ztsnr_marker_keys() -> None:
    sd = meta_checkpoint("sdxl-base")
    sd["v_pred"] = torch.tensor([])
    spec = detect_checkpoint(sd)
    assert (spec.prediction, spec.zero_terminal_snr) == ("v", False)
    sd["ztsnr"] = torch.tensor([])
    spec = detect_checkpoint(sd)
    assert spec.prediction_source == "v_pred marker key" and spec.zero_terminal_snr


def test_ema_detected() -> None:
    sd = meta_checkpoint("sd1")
    sd["model_ema.decay"] = torch.tensor(0.9999)
    assert not detect_checkpoint(sd).has_ema
    sd["model_ema.diffusion_modelout2weight"] = sd["model.diffusion_model.out.2.weight"]
    assert detect_checkpoint(sd).has_ema


def test_family_from_unet_alone() -> None:
    for family, context in (("sd1", 768), ("sd2", 1024)):
        sd = {k: v for k, v in meta_checkpoint(family).items() if k.startswith("model.")}
        assert detect_family(sd) == family, context
    xl = {k: v for k, v in meta_checkpoint("sdxl-refiner").items() if k.startswith("model.")}
    assert detect_family(xl) == "sdxl-refiner"


def test_missing_text_encoder_uses_released_sizes() -> None:
    sd = {k: v for k, v in meta_checkpoint("sd1").items() if not k.startswith("cond_stage")}
    assert detect_checkpoint(sd).text == ENCODER_PRESETS["sd1"]


def test_unknown_architecture_lists_keys() -> None:
    sd = {f"transformer.blocks.{i}.weight": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointError) as err:
        detect_checkpoint(sd)
    msg = str(err.value)
    assert "does not fit any known architecture" in msg
    assert "Missing keys: model.diffusion_model.input_blocks.0.0.weight" in msg
    assert "transformer.blocks.0.weight" in msg and "(+15 more)" in msg
    assert msg.count("transformer.blocks.") == 10


def test_unet_with_unknown_context_and_no_text_is_rejected() -> None:
    sd = {k: v for k, v in meta_checkpoint("sd1").items() if k.startswith("model.")}
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    sd[k] = torch.zeros(320, 500, device="meta")
    with pytest.raises(CheckpointError, match="unrecognised UNet context width 500"):
        detect_family(sd)


def test_sd2_in_sgm_layout_is_reported() -> None:
    sd = meta_checkpoint("sd2")
    sd = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="SD 2.x saved in the sgm layout"):
        detect_checkpoint(sd)


def test_bad_prediction_name() -> None:
    with pytest.raises(ValueError, match="prediction must be one of"):
        detect_checkpoint(meta_checkpoint("sd1"), prediction="flow")


def test_head_layout_that_does_not_fit_is_reported() -> None:
    from genmodels.checkpoints.infer import infer_unet_config
    from genmodels.configs.unet import UNetConfig

    cfg = UNetConfig(model_channels=96, channel_mult=(1,), attention_resolutions=(1,),
                     num_heads=1, context_dim=16)  # fmt: skip
    with torch.device("meta"):
        sd = UNetModel(cfg).state_dict()
    with pytest.raises(CheckpointError, match="head layout"):
        infer_unet_config(sd, "sd2")  # 96 channels are not a multiple of 64-channel heads
    assert infer_unet_config(sd, "sd1") == replace(cfg, num_heads=8)
