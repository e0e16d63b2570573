"""Parity of ControlNetModel and the controlled UNet with diffusers (random weights, tiny widths).

diffusers' ``ControlNetModel`` is saved with its own ``save_pretrained``; we read the folder with
OUR loader (key conversion, config from the tensors, heads from config.json) and compare the
residuals for the skip connections and the middle block, then a UNet step given those
residuals against diffusers' ``UNet2DConditionModel`` with ``down_block_additional_residuals``.
SD 1.x-style (conv projections, fixed head count) and SDXL-style (no attention at level 0,
per-level transformer depth, ``text_time`` addition embedding fed through ``y``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from genmodels.checkpoints.controlnet import read_controlnet
from genmodels.checkpoints.diffusers_unet import diffusers_to_ldm_unet, unet_config_from_diffusers
from genmodels.models.controlnet import ControlledUNet, ControlNetModel
from genmodels.models.unet import UNetModel
from genmodels.nn.embeddings import timestep_embedding

diffusers = pytest.importorskip("diffusers")

_ATTN_DOWN, _ATTN_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
UNETS: dict[str, dict[str, Any]] = {
    "sd1": dict(
        block_out_channels=(32, 64),
        down_block_types=(_ATTN_DOWN, "DownBlock2D"),
        up_block_types=("UpBlock2D", _ATTN_UP),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=24,
    ),
    "sdxl": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", _ATTN_DOWN, _ATTN_DOWN),
        up_block_types=(_ATTN_UP, _ATTN_UP, "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 2, 1),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    ),
}
HINT_CHANNELS = (8, 16, 32)  # two stride-2 stages: the control image is 4x the latent


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Random non-zero weights everywhere (the zero convs included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def reference_controlnet(name: str, seed: int = 0, hint=HINT_CHANNELS) -> torch.nn.Module:
    kw = {k: v for k, v in UNETS[name].items() if k != "up_block_types"}
    torch.manual_seed(seed)
    ref = diffusers.ControlNetModel(conditioning_embedding_out_channels=hint, **kw)
    perturb(ref, seed)
    return ref.eval()


def reference_unet(name: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(sample_size=16, **UNETS[name])
    perturb(ref, seed)
    return ref.eval()


def ours_from_folder(ref: torch.nn.Module, folder: Path) -> ControlNetModel:
    ref.save_pretrained(folder)
    cn = read_controlnet(folder)
    model = ControlNetModel(cn.config).eval()
    model.load_state_dict(cn.state_dict, strict=True)
    return model


def inputs(name: str, batch: int = 2, seed: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([3.0, 977.5][:batch])
    ctx = torch.randn(batch, 7, UNETS[name]["cross_attention_dim"], generator=g)
    hint = torch.rand(batch, 3, 64, 64, generator=g)
    ref: dict[str, Any] = dict(sample=x, timestep=t, encoder_hidden_states=ctx)
    ours: dict[str, Any] = dict(x=x, timesteps=t, context=ctx)
    if name == "sdxl":
        text_embeds = torch.randn(batch, 16, generator=g)
        time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [512.0, 768, 16, 32, 1024, 832]])
        time_ids = time_ids[:batch]
        ref["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        time_embeds = timestep_embedding(time_ids.flatten(), 8).reshape(batch, -1)
        ours["y"] = torch.cat([text_embeds, time_embeds], dim=1)
    return dict(ref, controlnet_cond=hint), dict(ours, hint=hint)


@pytest.mark.parametrize("name", list(UNETS))
def test_residuals_match_diffusers(name: str, tmp_path: Path) -> None:
    ref = reference_controlnet(name)
    ours = ours_from_folder(ref, tmp_path / "cn")
    ref_kw, ours_kw = inputs(name)
    with torch.no_grad():
        down_ref, mid_ref = ref(**ref_kw, conditioning_scale=0.7, return_dict=False)
        down, mid = ours(**ours_kw)
    assert len(down) == len(down_ref)
    for a, b in zip(down, down_ref):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(0.7 * a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(0.7 * mid, mid_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(UNETS))
def test_controlled_unet_step_matches_diffusers(name: str, tmp_path: Path) -> None:
    """A UNet step given the residuals of two ControlNets (weights 0.6 and 1.3) equals diffusers'
    UNet with the residuals of its ControlNets, summed as MultiControlNetModel does."""
    refs = [reference_controlnet(name, seed) for seed in (0, 5)]
    ours = [ours_from_folder(r, tmp_path / f"cn{i}") for i, r in enumerate(refs)]
    ref_unet = reference_unet(name)
    config = unet_config_from_diffusers(dict(ref_unet.config))
    unet = UNetModel(config).eval()
    unet.load_state_dict(diffusers_to_ldm_unet(ref_unet.state_dict(), config), strict=True)
    ref_kw, ours_kw = inputs(name)
    hint = ours_kw.pop("hint")
    weights = (0.6, 1.3)
    multi = diffusers.models.controlnets.MultiControlNetModel(refs)
    with torch.no_grad():
        down_ref, mid_ref = multi(
            **{**ref_kw, "controlnet_cond": [hint, hint]}, conditioning_scale=list(weights),
            return_dict=False,
        )  # fmt: skip
        unet_kw = {k: v for k, v in ref_kw.items() if k != "controlnet_cond"}
        expected = ref_unet(
            **unet_kw, down_block_additional_residuals=down_ref,
            mid_block_additional_residual=mid_ref,
        ).sample  # fmt: skip
        plain = ref_unet(**unet_kw).sample
        controlled = ControlledUNet(unet, ours, [hint[:1], hint[:1]])
        # the hint batch of 1 is tiled over x's batch: use the same image for both rows
        hint1 = {**ref_kw, "controlnet_cond": [hint[:1].expand(2, -1, -1, -1)] * 2}
        down_ref1, mid_ref1 = multi(**hint1, conditioning_scale=list(weights), return_dict=False)
        expected1 = ref_unet(
            **unet_kw, down_block_additional_residuals=down_ref1,
            mid_block_additional_residual=mid_ref1,
        ).sample  # fmt: skip
        actual1 = controlled(ours_kw.pop("x"), ours_kw.pop("timesteps"), weights, **ours_kw)
        both = ControlledUNet(unet, ours, [hint, hint])
        _, ours_kw2 = inputs(name)
        ours_kw2.pop("hint")
        actual = both(ours_kw2.pop("x"), ours_kw2.pop("timesteps"), weights, **ours_kw2)
    assert (expected - plain).abs().max() > 1e-3  # the control changes the step
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual1, expected1, atol=1e-4, rtol=0)


def test_zero_weights_are_exactly_no_control(tmp_path: Path) -> None:
    ours = ours_from_folder(reference_controlnet("sd1"), tmp_path / "cn")
    ref_unet = reference_unet("sd1")
    config = unet_config_from_diffusers(dict(ref_unet.config))
    unet = UNetModel(config).eval()
    unet.load_state_dict(diffusers_to_ldm_unet(ref_unet.state_dict(), config), strict=True)
    _, kw = inputs("sd1")
    hint = kw.pop("hint")
    x, t = kw.pop("x"), kw.pop("timesteps")
    with torch.no_grad():
        plain = unet(x, t, **kw)
        off = ControlledUNet(unet, [ours], [hint])(x, t, [0.0], **kw)
        on = ControlledUNet(unet, [ours], [hint])(x, t, [1.0], **kw)
    assert torch.equal(off, plain)
    assert not torch.equal(on, plain)


def test_our_keys_convert_with_diffusers_own_ldm_converter(tmp_path: Path) -> None:
    """diffusers' converter for original (cldm) ControlNet files accepts our tensors: the ldm
    layout we read is the one the original files use."""
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    ref = reference_controlnet("sd1", hint=(16, 32, 96, 256))  # its converter needs 4 stages
    ours = ours_from_folder(ref, tmp_path / "cn")
    ldm = {f"control_model.{k}": v for k, v in ours.state_dict().items()}
    config = dict(ref.config)
    converted = single_file.convert_controlnet_checkpoint(ldm, config)
    ref_sd = ref.state_dict()
    assert set(converted) == set(ref_sd)
    for key, value in converted.items():
        assert torch.equal(value, ref_sd[key]), key


_SDXL_CONTROLNET = dict(  # diffusers/controlnet-canny-sdxl-1.0's config.json
    block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", _ATTN_DOWN, _ATTN_DOWN),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)  # fmt: skip


@pytest.mark.parametrize("preset", ["sd1", "sd2", "sdxl-base"])
def test_released_sizes_have_diffusers_keys_and_shapes(preset: str) -> None:
    """Full-size SD 1.5 / 2.1 / XL ControlNets (on the meta device: no memory): our tensors
    convert to exactly the keys and shapes of diffusers' ControlNetModel of that release."""
    from genmodels.checkpoints.controlnet_keys import ldm_to_diffusers_controlnet
    from genmodels.configs.controlnet import ControlNetConfig
    from genmodels.configs.unet import get_unet_config

    kw: dict[str, Any] = {
        "sd1": dict(cross_attention_dim=768),
        "sd2": dict(attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                    use_linear_projection=True, upcast_attention=True),
        "sdxl-base": _SDXL_CONTROLNET,
    }[preset]  # fmt: skip
    config = ControlNetConfig(get_unet_config(preset))
    with torch.device("meta"):
        ref = diffusers.ControlNetModel(**kw)
        ours = ControlNetModel(config)
    converted = ldm_to_diffusers_controlnet(ours.state_dict(), config)
    ref_sd = ref.state_dict()
    assert set(converted) == set(ref_sd)
    assert all(converted[k].shape == ref_sd[k].shape for k in ref_sd)
    # and back: the ldm keys, read off the diffusers names alone
    from genmodels.checkpoints.controlnet_keys import diffusers_to_ldm_controlnet

    assert set(diffusers_to_ldm_controlnet(ref_sd)) == set(ours.state_dict())
