"""Single-file LDM/sgm <-> diffusers folder conversion: bit-identical round trips, the original
key layouts, and folders the reference libraries load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genmodels.checkpoints.convert import convert_checkpoint, read_checkpoint
from genmodels.checkpoints.diffusers_folder import EXTRA_FILE
from genmodels.checkpoints.io import load_state_dict, read_metadata, save_state_dict
from genmodels.models.text.tokenizer import CLIPTokenizer
from genmodels.pipelines.loading import load_pipeline
from tests.checkpoints.builders import FAMILIES, build_reference, diffusers, transformers


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module", params=list(FAMILIES))
def converted(request, tmp_path_factory) -> tuple[str, Path, dict]:
    root = tmp_path_factory.mktemp(request.param)
    refs = build_reference(request.param, root / "ref")
    convert_checkpoint(root / "ref", root / "single.safetensors", "safetensors")
    convert_checkpoint(root / "single.safetensors", root / "back", "diffusers")
    return request.param, root, refs


def test_single_file_round_trip_is_bit_identical(converted) -> None:
    _, root, _ = converted
    convert_checkpoint(root / "back", root / "again.safetensors", "safetensors")
    assert_identical(
        load_state_dict(root / "single.safetensors"), load_state_dict(root / "again.safetensors")
    )
    assert read_metadata(root / "single.safetensors") == read_metadata(root / "again.safetensors")


def test_written_folder_loads_in_the_reference_libraries(converted) -> None:
    family, root, refs = converted
    loaders = {
        "unet": diffusers.UNet2DConditionModel.from_pretrained,
        "vae": diffusers.AutoencoderKL.from_pretrained,
        "text_encoder": transformers.CLIPTextModel.from_pretrained,
        "text_encoder_2": transformers.CLIPTextModelWithProjection.from_pretrained,
    }
    for name, ref in refs.items():
        loaded = loaders[name](root / "back" / name)
        assert_identical(loaded.state_dict(), ref.state_dict())  # diffusers -> LDM -> diffusers
    index = json.loads((root / "back" / "model_index.json").read_text())
    assert set(refs) <= set(index)
    # no "!": HF treats the SD 2 pad token "!" as special and splits "!!" apart (open_clip
    # does not), a known difference of the diffusers SD 2 tokenizer.
    prompt = "A photo of an astronaut, riding a horse... 4k"
    for folder, emb_tok in _tokenizers(family):
        hf = transformers.CLIPTokenizer.from_pretrained(root / "back" / folder)
        got = hf(prompt, padding="max_length", max_length=77).input_ids
        assert got == emb_tok(prompt)[0].tolist(), folder


def _tokenizers(family: str) -> list[tuple[str, CLIPTokenizer]]:
    eos, pad0 = CLIPTokenizer(), CLIPTokenizer(pad_token_id=0)
    return {
        "sd1": [("tokenizer", eos)],
        "sd2": [("tokenizer", pad0)],
        "sdxl-base": [("tokenizer", eos), ("tokenizer_2", pad0)],
        "sdxl-refiner": [("tokenizer_2", pad0)],
    }[family]


def test_single_file_uses_the_original_key_layout(converted) -> None:
    family, root, _ = converted
    sd = load_state_dict(root / "single.safetensors")
    assert sd["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # ldm 1x1 conv
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd
    openclip = {"sd2": "cond_stage_model.model.", "sdxl-base": "conditioner.embedders.1.model.",
                "sdxl-refiner": "conditioner.embedders.0.model."}.get(family)  # fmt: skip
    if openclip:
        qkv = sd[openclip + "transformer.resblocks.0.attn.in_proj_weight"]
        width = sd[openclip + "token_embedding.weight"].shape[1]
        assert qkv.shape == (3 * width, width)
        assert (openclip + "positional_embedding") in sd
    else:
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in sd
    if family == "sdxl-base":
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sd
        assert sd["conditioner.embedders.1.model.text_projection"].shape == (48, 24)  # (D, P)


def test_original_extras_survive_a_diffusers_round_trip(tmp_path: Path) -> None:
    """An SD 2-style file: fp16, OpenCLIP text_projection and logit_scale (no place in the
    diffusers layout), HF position_ids, EMA tensors and a v_pred marker."""
    build_reference("sd2", tmp_path / "ref")
    convert_checkpoint(tmp_path / "ref", tmp_path / "a.safetensors", "safetensors")
    sd = {k: v.half() for k, v in load_state_dict(tmp_path / "a.safetensors").items()}
    width = sd["cond_stage_model.model.token_embedding.weight"].shape[1]
    sd["cond_stage_model.model.text_projection"] = torch.randn(width, 16).half()
    sd["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    sd["model_ema.diffusion_modelout2weight"] = sd["model.diffusion_model.out.2.weight"] + 1
    sd["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
    sd["v_pred"] = torch.tensor([])
    save_state_dict(sd, tmp_path / "orig.safetensors")  # no metadata: detected from tensors
    spec = convert_checkpoint(tmp_path / "orig.safetensors", tmp_path / "d", "diffusers")
    assert spec.prediction == "v" and spec.has_ema
    assert (tmp_path / "d" / EXTRA_FILE).is_file()
    sched = json.loads((tmp_path / "d" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    pipe = load_pipeline(tmp_path / "d")  # the projection is back in the model
    assert pipe.info.has_ema and pipe.prediction == "v"
    proj = pipe.text_encoder.embedders[0].model.text_projection.weight
    assert torch.equal(proj, sd["cond_stage_model.model.text_projection"].t().float())
    convert_checkpoint(tmp_path / "d", tmp_path / "b.safetensors", "safetensors")
    assert_identical(load_state_dict(tmp_path / "b.safetensors"), sd)
    back, spec2 = read_checkpoint(tmp_path / "b.safetensors")
    assert spec2.prediction == "v" and spec2.source_format == "genmodels"


def test_conversion_refuses_to_overwrite(tmp_path: Path) -> None:
    build_reference("sd1", tmp_path / "ref")
    src = tmp_path / "m.safetensors"
    convert_checkpoint(tmp_path / "ref", src, "safetensors")
    before = src.read_bytes()
    with pytest.raises(ValueError, match="destination is the source"):
        convert_checkpoint(src, src, "safetensors")
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(src, tmp_path / "ref", "diffusers")
    with pytest.raises(ValueError, match="unknown target format"):
        convert_checkpoint(src, tmp_path / "x", "onnx")  # type: ignore[arg-type]
    assert src.read_bytes() == before
