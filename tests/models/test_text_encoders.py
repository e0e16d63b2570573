"""CLIP text transformer parity with HF transformers, and the SD1/SD2/SDXL conditioner rules."""

from __future__ import annotations

import pytest
import torch

from genmodels.configs.text import (
    CLIPTextConfig,
    EmbedderConfig,
    encoder_preset,
    text_preset,
)
from genmodels.models.text import CLIPTextModel, CLIPTokenizer, TextEncoder, load_text_state_dict

transformers = pytest.importorskip("transformers")

PROMPTS = ["a photograph of an astronaut riding a horse", "", "a red cube, studio light, 4k"]


def _hf_model(config: CLIPTextConfig, seed: int):
    """A random HF CLIPTextModel(WithProjection) with the same hyper-parameters, in fp32."""
    hf_config = transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        projection_dim=config.projection_dim or config.hidden_size,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModel
    if config.projection_dim is not None:
        cls = transformers.CLIPTextModelWithProjection
    model = cls(hf_config).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0); randomise them too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_state_dict(hf) -> dict[str, torch.Tensor]:
    """HF weights in the checkpoint layout: transformers 5's CLIPTextModel drops the
    ``text_model.`` prefix in memory (and maps it back when loading checkpoints)."""
    sd = hf.state_dict()
    if "text_model.final_layer_norm.weight" in sd:
        return sd
    return {k if k.startswith("text_projection") else f"text_model.{k}": v for k, v in sd.items()}


def _ours_from_hf(config: CLIPTextConfig, hf) -> CLIPTextModel:
    ours = CLIPTextModel(config).eval()
    load_text_state_dict(ours, _hf_state_dict(hf))
    return ours


def _ids(prompts: list[str], pad: int) -> torch.Tensor:
    """Reference (B, 77) ids: our tokenizer equals HF's (tests/models/test_tokenizer.py)."""
    return CLIPTokenizer(pad_token_id=pad)(prompts)


@pytest.mark.parametrize(("preset", "pad"), [("tiny-clip", 49407), ("tiny-openclip", 0)])
def test_parity_with_hf_clip_text_model_with_projection(preset: str, pad: int) -> None:
    config = text_preset(preset)
    hf = _hf_model(config, seed=0)
    ours = _ours_from_hf(config, hf)
    ids = _ids(PROMPTS, pad)
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True)
        out = ours(ids, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.text_embeds, ref.text_embeds, rtol=0, atol=1e-5)
    assert out.last_hidden_state.abs().max() > 0.1  # not a degenerate comparison


def test_parity_with_hf_clip_text_model_pooler() -> None:
    config = text_preset("tiny-clip", projection_dim=None)
    hf = _hf_model(config, seed=1)
    ours = _ours_from_hf(config, hf)
    assert ours.text_projection is None
    ids = _ids(PROMPTS, 49407)
    with torch.no_grad():
        ref, out = hf(input_ids=ids), ours(ids)
    torch.testing.assert_close(out.pooled, ref.pooler_output, rtol=0, atol=1e-5)
    assert out.text_embeds is None and out.hidden_states is None


def test_hidden_state_runs_only_needed_layers() -> None:
    torch.manual_seed(0)
    model = CLIPTextModel(text_preset("tiny-openclip")).eval()
    ids = _ids(PROMPTS, 0)
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        for layer in (-1, -2, -3, 0, 2):
            raw = model.hidden_state(ids, layer, final_norm=False)
            torch.testing.assert_close(raw, full.hidden_states[layer], rtol=0, atol=0)
        normed = model.hidden_state(ids, -1, final_norm=True)
    torch.testing.assert_close(normed, full.last_hidden_state, rtol=0, atol=0)
    # Pooled output at the first EOS: the argmax token id, for both padding conventions.
    eos = (ids == 49407).int().argmax(-1)
    torch.testing.assert_close(full.pooled, full.last_hidden_state[torch.arange(3), eos])


@pytest.fixture(scope="module")
def hf_pair():
    """Random HF CLIP-L-like and bigG-like tiny models (seeded), shared by the conditioner tests."""
    clip_l = _hf_model(text_preset("tiny-clip", projection_dim=None), seed=2)
    big_g = _hf_model(text_preset("tiny-openclip"), seed=3)
    return clip_l, big_g


def test_sd1_context_and_clip_skip(hf_pair) -> None:
    clip_l, _ = hf_pair
    with torch.no_grad():
        ref = clip_l(input_ids=_ids(PROMPTS, 49407), output_hidden_states=True)
        final_norm = (
            clip_l.final_layer_norm
            if hasattr(clip_l, "final_layer_norm")
            else clip_l.text_model.final_layer_norm
        )
        for clip_skip, want in (
            (None, ref.last_hidden_state),
            (2, final_norm(ref.hidden_states[-2])),
        ):
            encoder = TextEncoder("tiny-sd1", clip_skip=clip_skip).eval()
            encoder.load_text_state_dicts([_hf_state_dict(clip_l)])
            cond = encoder(PROMPTS)
            torch.testing.assert_close(cond.context, want, rtol=0, atol=1e-5)
            assert cond.pooled is None


def test_sd2_penultimate_with_final_norm_and_zero_padding(hf_pair) -> None:
    _, big_g = hf_pair
    encoder = TextEncoder("tiny-sd2").eval()
    encoder.load_text_state_dicts([_hf_state_dict(big_g)])
    tokens = encoder.tokenize(PROMPTS)[0]
    assert tokens.shape == (3, 1, 77) and tokens[1, 0, :3].tolist() == [49406, 49407, 0]
    with torch.no_grad():
        ref = big_g(input_ids=_ids(PROMPTS, 0), output_hidden_states=True)
        want = big_g.text_model.final_layer_norm(ref.hidden_states[-2])
        cond = encoder(PROMPTS)
    torch.testing.assert_close(cond.context, want, rtol=0, atol=1e-5)


def test_sdxl_concatenated_context_and_pooled(hf_pair) -> None:
    clip_l, big_g = hf_pair
    encoder = TextEncoder("tiny-sdxl").eval()
    encoder.load_text_state_dicts([_hf_state_dict(clip_l), _hf_state_dict(big_g)])
    with torch.no_grad():
        ref_l = clip_l(input_ids=_ids(PROMPTS, 49407), output_hidden_states=True)
        ref_g = big_g(input_ids=_ids(PROMPTS, 0), output_hidden_states=True)
        cond = encoder(PROMPTS)
    want = torch.cat([ref_l.hidden_states[-2], ref_g.hidden_states[-2]], dim=-1)
    assert cond.context.shape == (3, 77, 32 + 48)
    torch.testing.assert_close(cond.context, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(cond.pooled, ref_g.text_embeds, rtol=0, atol=1e-5)


def test_long_prompts_are_encoded_per_chunk_and_padded_with_empty_chunks() -> None:
    torch.manual_seed(0)
    encoder = TextEncoder("tiny-sdxl").eval()
    long_prompt = "a " * 70 + "red, " * 20 + "blue"
    tokens = encoder.tokenize([long_prompt, "short"])
    assert [t.shape for t in tokens] == [(2, 2, 77), (2, 2, 77)]
    with torch.no_grad():
        cond = encoder([long_prompt, "short"])
        first, second = (encoder.encode_tokens([t[:1, i : i + 1] for t in tokens]) for i in (0, 1))
        empty = encoder("")
    assert cond.context.shape == (2, 154, 80)
    torch.testing.assert_close(cond.context[:1], torch.cat([first.context, second.context], 1))
    torch.testing.assert_close(cond.pooled[:1], first.pooled)  # pooled from the first chunk
    torch.testing.assert_close(cond.context[1:, 77:], empty.context)
    torch.testing.assert_close(cond.context[1:, :77], encoder("short").context)


def test_presets_and_configs() -> None:
    sd1, sd2, sdxl = (encoder_preset(n) for n in ("sd1", "sd2", "sdxl"))
    assert sd1.embedders[0].layer == -1 and sd1.embedders[0].final_norm
    assert sd2.embedders[0].layer == -2 and sd2.embedders[0].pad_token_id == 0
    assert [e.text.hidden_size for e in sdxl.embedders] == [768, 1280]
    assert [e.final_norm for e in sdxl.embedders] == [False, False]
    assert encoder_preset("sd1", clip_skip=2).embedders[0].layer == -2
    assert text_preset("openclip-bigg").num_hidden_layers == 32
    assert text_preset("openclip-h").hidden_act == "gelu" and text_preset("clip-l").hidden_act == (
        "quick_gelu"
    )


def test_bad_input() -> None:
    encoder = TextEncoder("tiny-sd1")
    with pytest.raises(ValueError, match="str"):
        encoder(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="str"):
        encoder(["ok", b"bytes"])  # type: ignore[list-item]
    model = encoder.embedders[0].model
    bad = dict(model.state_dict())
    bad["text_model.final_layer_norm.weight"] = torch.zeros(7)
    del bad["text_model.encoder.layers.0.mlp.fc1.bias"]
    bad["text_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_text_state_dict(model, bad)
    msg = str(err.value)
    assert "text_model.final_layer_norm.weight: expected (32,), got (7,)" in msg
    assert "missing keys: text_model.encoder.layers.0.mlp.fc1.bias" in msg
    assert "unexpected keys: text_model.extra.weight" in msg
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(78, dtype=torch.long))
    with pytest.raises(ValueError, match="layer"):
        model.hidden_state(torch.zeros(1, 5, dtype=torch.long), layer=-5)
    with pytest.raises(ValueError, match="unknown text encoder preset"):
        encoder_preset("sd3")
    with pytest.raises(ValueError, match="clip_skip"):
        encoder_preset("sd1", clip_skip=0)
    with pytest.raises(ValueError, match="layer must be in"):
        EmbedderConfig(text_preset("tiny-clip"), layer=-4)
    with pytest.raises(ValueError, match="divisible"):
        CLIPTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="relu")  # type: ignore[arg-type]
