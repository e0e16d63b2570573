"""load_pipeline parity: a tiny random SD 1.x / 2.x / XL base / XL refiner model saved by the
reference libraries (diffusers, transformers) in the diffusers layout, loaded by us from that
folder and from the single-file LDM checkpoint converted from it, gives the reference outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.convert import convert_checkpoint
from genmodels.checkpoints.io import CheckpointError, load_state_dict, save_state_dict
from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.pipelines.loading import load_pipeline
from tests.checkpoints.builders import FAMILIES, VAE, build_reference

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request, tmp_path_factory) -> tuple[str, Path, dict]:
    root = tmp_path_factory.mktemp(request.param)
    refs = build_reference(request.param, root / "diffusers")
    convert_checkpoint(root / "diffusers", root / "model.safetensors", "safetensors")
    return request.param, root, refs


def _unet_inputs(pipe: LatentDiffusionPipeline, ref_unet) -> tuple[dict, dict]:
    """Matching inputs for our UNet (x, t, context, y) and diffusers' (sample, timestep, ...)."""
    gen = torch.Generator().manual_seed(1)
    cfg = pipe.unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=gen)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 5, cfg.context_dim, generator=gen)
    ours = {"x": x, "timesteps": t, "context": ctx}
    ref = {"sample": x, "timestep": t, "encoder_hidden_states": ctx}
    if cfg.num_classes == "sequential":  # y = [pooled, Fourier(time_ids)] as sgm / diffusers
        n_ids = 6 if pipe.model_type == "sdxl-base" else 5
        pooled_dim = cfg.adm_in_channels - 256 * n_ids
        pooled = torch.randn(2, pooled_dim, generator=gen)
        time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64, 2.5][:n_ids]] * 2)
        emb = ref_unet.add_time_proj(time_ids.flatten()).reshape(2, -1)
        ours["y"] = torch.cat([pooled, emb], dim=-1)
        ref["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return ours, ref


@torch.no_grad()
def _check_parity(pipe: LatentDiffusionPipeline, refs: dict) -> None:
    ours, ref = _unet_inputs(pipe, refs["unet"])
    torch.testing.assert_close(pipe.unet(**ours), refs["unet"](**ref).sample, **TOL)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        pipe.vae.encode(x).mean, refs["vae"].encode(x).latent_dist.mean, **TOL
    )
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(pipe.vae.decode(z), refs["vae"].decode(z).sample, **TOL)
    ids = pipe.text_encoder.tokenize(["a photo of a cat, 4k", ""])
    folders = [k for k in refs if k.startswith("text_encoder")]
    for emb, folder, tokens in zip(pipe.text_encoder.embedders, folders, ids):
        flat = tokens[:, 0]  # (B, 77)
        got = emb.model(flat, output_hidden_states=True)
        want = refs[folder](flat, output_hidden_states=True)
        for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
            torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **TOL)
        if emb.config.with_pooled:
            torch.testing.assert_close(got.text_embeds, want.text_embeds, **TOL)


def test_parity_from_diffusers_folder(model) -> None:
    family, root, refs = model
    pipe = load_pipeline(root / "diffusers")
    assert pipe.model_type == family and pipe.info.source_format == "diffusers"
    assert not pipe.info.missing_keys and not pipe.info.unused_keys
    _check_parity(pipe, refs)


def test_parity_from_single_file_without_metadata(model, tmp_path) -> None:
    family, root, refs = model
    plain = tmp_path / "plain.safetensors"  # no genmodels metadata: detection from tensors
    save_state_dict(load_state_dict(root / "model.safetensors"), plain)
    pipe = load_pipeline(plain)
    assert pipe.model_type == family and pipe.info.source_format == "ldm"
    assert pipe.prediction == "eps"
    # without a config, the latent scale is the family's (SD 0.18215, SDXL 0.13025)
    assert pipe.scale_factor == (0.13025 if family.startswith("sdxl") else 0.18215)
    _check_parity(pipe, refs)
    if family == "sd1":  # a Lightning-style .ckpt with a top-level state_dict loads the same
        ckpt = tmp_path / "model.ckpt"
        torch.save({"state_dict": load_state_dict(plain), "global_step": 3}, ckpt)
        _check_parity(load_pipeline(ckpt), refs)


def test_bf16_pipeline_and_to(model) -> None:
    family, root, _ = model
    pipe = load_pipeline(root / "model.safetensors", dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    source = load_state_dict(root / "model.safetensors")  # fp32, streamed into bf16
    want = source["model.diffusion_model.input_blocks.0.0.weight"].to(torch.bfloat16)
    assert torch.equal(pipe.unet.input_blocks[0][0].weight, want)
    assert pipe.denoiser.sigmas.dtype == torch.float32
    pipe.to(dtype=torch.float32)
    assert pipe.dtype == torch.float32
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert pipe.scale_factor == VAE.scale_factor  # recorded in the diffusers VAE config


def test_denoiser_uses_prediction_override(model) -> None:
    _, root, _ = model
    pipe = load_pipeline(root / "model.safetensors", prediction="v")
    assert pipe.prediction == pipe.denoiser.prediction == "v"
    assert pipe.info.prediction_source == "override"
    with pytest.raises(ValueError, match="prediction must be one of"):
        load_pipeline(root / "model.safetensors", prediction="x")


def _sd1_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd1x")
    build_reference("sd1", root / "diffusers", seed=5)
    convert_checkpoint(root / "diffusers", root / "m.safetensors", "safetensors")
    return root / "m.safetensors"


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> Path:
    return _sd1_file(tmp_path_factory)


def test_strict_error_lists_missing_and_unexpected(sd1_file, tmp_path) -> None:
    sd = load_state_dict(sd1_file)
    removed = [k for k in sd if k.startswith("model.diffusion_model.output_blocks.1.")]
    for k in removed:
        del sd[k]
    sd["model.diffusion_model.bogus.weight"] = torch.zeros(3)
    path = tmp_path / "broken.safetensors"
    save_state_dict(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert f"Missing keys ({len(removed)})" in msg and removed[0] in msg
    assert "Unexpected keys (1): model.diffusion_model.bogus.weight" in msg
    assert msg.count("model.diffusion_model.output_blocks.1.") <= 10
    pipe = load_pipeline(path, strict=False)  # partial load: the rest stays random
    assert set(pipe.info.missing_keys) == set(removed)
    assert "model.diffusion_model.bogus.weight" in pipe.info.unused_keys
    want = sd["model.diffusion_model.input_blocks.0.0.weight"]
    assert torch.equal(pipe.unet.input_blocks[0][0].weight, want)


def test_separate_vae_file(sd1_file, tmp_path) -> None:
    sd = load_state_dict(sd1_file)
    vae = {k.removeprefix("first_stage_model."): v * 2 for k, v in sd.items() if "first_stage" in k}
    vae["loss.logvar"] = torch.zeros(())  # training-only tensors are ignored
    torch.save(vae, tmp_path / "vae.pt")
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    save_state_dict(no_vae, tmp_path / "unet_text.safetensors")
    with pytest.raises(CheckpointError, match="no VAE; pass one with vae="):
        load_pipeline(tmp_path / "unet_text.safetensors")
    pipe = load_pipeline(tmp_path / "unet_text.safetensors", vae=tmp_path / "vae.pt")
    got = pipe.vae.decoder.conv_out.weight
    torch.testing.assert_close(got, vae["decoder.conv_out.weight"], rtol=0, atol=0)
    assert pipe.info.vae_source == str(tmp_path / "vae.pt")
    want = sd["first_stage_model.decoder.conv_out.weight"]
    folder = sd1_file.parent / "diffusers"  # a diffusers folder or its diffusers-keyed VAE file
    for source in (folder, folder / "vae" / "diffusion_pytorch_model.safetensors"):
        got = load_pipeline(tmp_path / "unet_text.safetensors", vae=source).vae
        assert torch.equal(got.decoder.conv_out.weight, want), source


def test_use_ema_and_clip_skip(sd1_file, tmp_path) -> None:
    sd = load_state_dict(sd1_file)
    for k in list(sd):
        if k.startswith("model.diffusion_model."):
            sd["model_ema." + k[len("model.") :].replace(".", "")] = sd[k] + 1
    sd["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "ema.safetensors"
    save_state_dict(sd, path)
    plain = load_pipeline(path)
    assert plain.info.has_ema and not plain.info.used_ema
    streamed = load_pipeline(path, dtype=torch.float16)  # EMA tensors are not even read
    assert "model_ema.decay" in streamed.info.unused_keys
    assert streamed.info.source_dtypes == plain.info.source_dtypes
    ema = load_pipeline(path, use_ema=True)
    assert not [k for k in ema.info.unused_keys if k.startswith("model_ema.")]
    ema16 = load_pipeline(path, use_ema=True, dtype=torch.float16)
    w16 = (sd["model.diffusion_model.out.2.weight"] + 1).half()
    assert torch.equal(ema16.unet.out[2].weight, w16)
    w = "model.diffusion_model.out.2.weight"
    torch.testing.assert_close(ema.unet.out[2].weight, sd[w] + 1, rtol=0, atol=0)
    torch.testing.assert_close(plain.unet.out[2].weight, sd[w], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no model_ema"):
        load_pipeline(sd1_file, use_ema=True)
    skip2 = load_pipeline(sd1_file, clip_skip=2)
    assert skip2.text_encoder.config.embedders[0].layer == -2


def test_loading_never_modifies_the_source(sd1_file) -> None:
    before = sd1_file.read_bytes()
    pipe = load_pipeline(sd1_file)  # parameters are views of the private mapping
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(1.0)
    del pipe
    assert sd1_file.read_bytes() == before


@pytest.mark.parametrize("family", ["sd1", "sdxl-base"])
def test_inpainting_checkpoint(family: str, tmp_path: Path) -> None:
    refs = build_reference(family, tmp_path / "d", seed=3, in_channels=9)
    convert_checkpoint(tmp_path / "d", tmp_path / "m.safetensors", "safetensors")
    plain = tmp_path / "plain.safetensors"
    save_state_dict(load_state_dict(tmp_path / "m.safetensors"), plain)
    pipe = load_pipeline(plain)
    assert pipe.inpainting and pipe.unet.config.in_channels == 9
    assert pipe.info.description.endswith("inpainting")
    _check_parity(pipe, refs)
