"""OpenCLIP text-tower <-> HF layout conversion, checked by round trip and by an OpenCLIP-style
forward pass written here with plain torch ops (``nn.MultiheadAttention`` with ``in_proj``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmodels.checkpoints.openclip_keys import (
    extract_text_encoders,
    hf_to_openclip,
    openclip_to_hf,
    text_encoders_to_checkpoint,
)
from genmodels.configs.text import CLIPTextConfig, text_preset
from genmodels.models.text import CLIPTextModel, CLIPTokenizer, TextEncoder, load_text_state_dict


def _random_model(config: CLIPTextConfig, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p) + (1.0 if p.ndim == 1 and p.numel() > 1 else 0.0))
    return model


def _openclip_forward(sd: dict[str, Tensor], ids: Tensor, heads: int, act) -> dict[str, Tensor]:
    """open_clip ``CLIP.encode_text`` on raw OpenCLIP tensors: token + positional embedding,
    resblocks x + attn(ln_1(x)) and x + mlp(ln_2(x)) with a causal mask, ln_final,
    pooled = x[argmax(ids)] @ text_projection. Returns the penultimate and last outputs too."""
    width = sd["token_embedding.weight"].shape[1]
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    t = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:t]  # (B, T, D)
    mask = torch.full((t, t), float("-inf")).triu(1)
    outputs = []
    for i in range(n_layers):
        p = f"transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict(
            {
                "in_proj_weight": sd[p + "attn.in_proj_weight"],
                "in_proj_bias": sd[p + "attn.in_proj_bias"],
                "out_proj.weight": sd[p + "attn.out_proj.weight"],
                "out_proj.bias": sd[p + "attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = act(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        outputs.append(x)
    last = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = last[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return {"penultimate": outputs[-2], "last": last, "pooled": pooled}


def test_round_trip_is_bit_identical() -> None:
    model = _random_model(text_preset("tiny-openclip"), seed=0)
    ours = model.state_dict()
    openclip = hf_to_openclip(ours)
    assert openclip["text_projection"].shape == (48, 24)
    assert openclip["transformer.resblocks.2.attn.in_proj_weight"].shape == (144, 48)
    assert openclip["positional_embedding"].shape == (77, 48)
    assert len(openclip) == 4 + 1 + 12 * 3  # top-level, projection, 12 tensors per block
    back = openclip_to_hf(openclip)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize(("preset", "act"), [("tiny-openclip", F.gelu), ("tiny-clip", None)])
def test_forward_matches_openclip_style_reference(preset: str, act) -> None:
    config = text_preset(preset)
    if act is None:  # OpenAI CLIP's QuickGELU
        act = lambda v: v * torch.sigmoid(1.702 * v)  # noqa: E731
    model = _random_model(config, seed=1)
    openclip = hf_to_openclip(model.state_dict())
    ids = CLIPTokenizer(pad_token_id=0)(["a photo of a cat", "", "tiles, mosaic, gold leaf"])
    with torch.no_grad():
        ref = _openclip_forward(openclip, ids, config.num_attention_heads, act)
        out = model(ids, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-2], ref["penultimate"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, ref["last"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.text_embeds, ref["pooled"], rtol=0, atol=1e-5)
    # A model loaded from the OpenCLIP tensors gives the same numbers.
    reloaded = CLIPTextModel(config).eval()
    load_text_state_dict(reloaded, openclip_to_hf(openclip))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).text_embeds, out.text_embeds, rtol=0, atol=0)


def _checkpoint(family: str) -> tuple[dict[str, Tensor], list[CLIPTextModel]]:
    """A synthetic SD checkpoint holding tiny text encoders under the family's prefixes."""
    clip_l = _random_model(text_preset("tiny-clip", projection_dim=None), seed=2)
    big = _random_model(text_preset("tiny-openclip"), seed=3)
    unet = {"model.diffusion_model.out.0.weight": torch.ones(4)}
    hf_l = dict(clip_l.state_dict())
    hf_l["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # older HF checkpoints
    oc = {**hf_to_openclip(big.state_dict()), "logit_scale": torch.tensor(4.6)}
    parts = {
        "sd1": [("cond_stage_model.transformer.", hf_l, clip_l)],
        "sd2": [("cond_stage_model.model.", oc, big)],
        "sdxl": [
            ("conditioner.embedders.0.transformer.", hf_l, clip_l),
            ("conditioner.embedders.1.model.", oc, big),
        ],
    }[family]
    checkpoint = dict(unet)
    for prefix, sd, _ in parts:
        checkpoint.update({prefix + k: v for k, v in sd.items()})
    return checkpoint, [model for _, _, model in parts]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_extract_text_encoders_loads_strictly(family: str) -> None:
    checkpoint, models = _checkpoint(family)
    state_dicts = extract_text_encoders(checkpoint, family)
    assert len(state_dicts) == len(models)
    for sd, model in zip(state_dicts, models):
        expected = model.state_dict()
        assert sd.keys() == expected.keys()
        assert all(torch.equal(sd[k], expected[k]) for k in expected)
    encoder = TextEncoder(f"tiny-{family}")
    encoder.load_text_state_dicts(state_dicts)  # strict: every key present, no extras
    # Writing back gives the checkpoint's text-encoder tensors (minus position_ids/logit_scale).
    written = text_encoders_to_checkpoint(state_dicts, family)
    dropped = ("position_ids", "logit_scale")
    original = {k: v for k, v in checkpoint.items() if k in written or not k.endswith(dropped)}
    original = {k: v for k, v in original.items() if not k.startswith("model.diffusion_model.")}
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in written)


def test_bad_input() -> None:
    ours = _random_model(text_preset("tiny-openclip"), seed=0).state_dict()
    openclip = hf_to_openclip(ours)
    with pytest.raises(ValueError, match="unknown OpenCLIP text keys: transformer.foo"):
        openclip_to_hf({**openclip, "transformer.foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="not divisible by 3"):
        openclip_to_hf({"transformer.resblocks.0.attn.in_proj_bias": torch.zeros(10)})
    with pytest.raises(ValueError, match="unknown CLIP text keys: text_model.bogus"):
        hf_to_openclip({**ours, "text_model.bogus": torch.zeros(1)})
    partial = {k: v for k, v in ours.items() if "layers.1.self_attn.k_proj.weight" not in k}
    with pytest.raises(ValueError, match=r"layer 1: missing self_attn \['k'\] projection weight"):
        hf_to_openclip(partial)
    with pytest.raises(ValueError, match="unknown family 'sd3'"):
        extract_text_encoders({}, "sd3")
    with pytest.raises(ValueError, match="sdxl has 2 text encoders, got 1"):
        text_encoders_to_checkpoint([ours], "sdxl")
    with pytest.raises(ValueError, match="cond_stage_model.transformer."):
        extract_text_encoders({"model.diffusion_model.x": torch.zeros(1)}, "sd1")
    # A checkpoint whose text encoder has the wrong width names the offending keys.
    wrong = openclip_to_hf({**openclip, "ln_final.weight": torch.ones(40)})
    with pytest.raises(ValueError, match="text_model.final_layer_norm.weight: expected"):
        TextEncoder("tiny-sd2").load_text_state_dicts([wrong])
