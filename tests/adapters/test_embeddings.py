"""Textual-inversion embeddings: parity with diffusers' ``load_textual_inversion`` (A1111 ``.pt``
on SD 1.x, ``clip_l`` / ``clip_g`` safetensors on SDXL), vectors counted in the 75-token chunks
(an embedding kept whole, as A1111) and BREAK, exact unload, ``TI hashes`` in the infotext and
``--embeddings-dir`` / ``--from-png``."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from genmodels.adapters.embeddings import EmbeddingError
from genmodels.adapters.hashes import embedding_hash
from genmodels.cli.generate import main
from genmodels.models.text.tokenizer import build_vocab, load_merges
from genmodels.pipelines.build import build_pipeline, save_pipeline
from genmodels.pipelines.conditioning import encode_prompts
from genmodels.pipelines.loading import load_pipeline
from genmodels.pipelines.metadata import parameters_from_infotext, read_png_parameters
from tests.checkpoints.builders import build_reference

PROMPT = "a photo of MyEmb, 4k"


def _hf_tokenizer(root: Path, pad: str | None = None):
    transformers = pytest.importorskip("transformers")
    merges = load_merges()
    root.mkdir(exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(build_vocab(merges)), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (root / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    kw = {"pad_token": pad} if pad else {}
    return transformers.CLIPTokenizer.from_pretrained(str(root), **kw)


def _embedding(family: str, path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    if family == "sd1":  # A1111 .pt
        vectors = torch.randn(3, 32, generator=g)
        torch.save({"string_to_param": {"*": vectors}, "name": "x", "step": 10}, path)
        return {"*": vectors}
    sets = {"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 48, generator=g)}
    save_file(sets, str(path))
    return sets


@pytest.mark.parametrize("family", ["sd1", "sdxl-base"])
@torch.no_grad()
def test_parity_with_diffusers(family, tmp_path) -> None:
    diffusers = pytest.importorskip("diffusers")
    refs = build_reference(family, tmp_path / "ref")
    pipe = load_pipeline(tmp_path / "ref")
    path = tmp_path / ("MyEmb.pt" if family == "sd1" else "MyEmb.safetensors")
    sets = _embedding(family, path)
    (loaded,) = pipe.load_embeddings(path)
    assert loaded.name == "MyEmb" and loaded.vectors == len(next(iter(sets.values())))
    tok = _hf_tokenizer(tmp_path / "tok")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = diffusers.StableDiffusionPipeline(
            vae=None, text_encoder=copy.deepcopy(refs["text_encoder"]), tokenizer=tok,
            unet=None, scheduler=None, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
    encoders = [(ref.text_encoder, tok, sets.get("*", sets.get("clip_l")))]
    if family != "sd1":
        tok2 = _hf_tokenizer(tmp_path / "tok2", pad="!")  # bigG pads with id 0 ("!")
        encoders.append((copy.deepcopy(refs["text_encoder_2"]), tok2, sets["clip_g"]))
    ours_ids = pipe.text_encoder.tokenize([PROMPT])
    for (te, hf_tok, vectors), emb, ids in zip(encoders, pipe.text_encoder.embedders, ours_ids):
        # diffusers matches its added tokens case-sensitively: give it the lower-cased name
        ref.load_textual_inversion(vectors, token="myemb", text_encoder=te, tokenizer=hf_tok)
        text = ref.maybe_convert_prompt(PROMPT.lower(), hf_tok)
        hf_ids = hf_tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert (hf_ids >= 49408).sum() == len(vectors) == (ids >= 49408).sum()
        got = emb.model(ids[:, 0], output_hidden_states=True)
        want = te(hf_ids, output_hidden_states=True)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(got.hidden_states[-2], want.hidden_states[-2], atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
        if got.text_embeds is not None:  # pooled at the EOS, not at the embedding's ids
            torch.testing.assert_close(got.text_embeds, want.text_embeds, atol=1e-4, rtol=1e-4)


def test_chunks_break_weights_and_unload(tmp_path) -> None:
    pipe = build_pipeline()
    before = encode_prompts(pipe.text_encoder, ["myemb, a cat"])[0]
    path = tmp_path / "myemb.safetensors"
    save_file({"emb_params": torch.randn(5, 32)}, str(path))
    pipe.load_embeddings(path)
    emb = pipe.text_encoder.embedders[0]
    ids = emb.tokenizer.encode("MYEMB a cat")  # any case, as A1111 (its tokens are lower case)
    assert ids[:5] == list(range(49408, 49413)) and ids[5:] == emb.tokenizer.encode("a cat")
    assert len(emb.token_chunks("word " * 70 + "myemb", 20)) == 1  # 70 + 5 = 75 tokens
    # an embedding that does not fit starts the next chunk whole (A1111), also when repeated
    assert [len(c) for c in emb.token_chunks("word " * 71 + "myemb", 20)] == [71, 5]
    assert [len(c) for c in emb.token_chunks("word " * 66 + "myemb myemb", 0)] == [71, 5]
    from genmodels.pipelines.prompt_weighting import weighted_chunks

    chunks = weighted_chunks(emb.tokenizer, "(myemb:1.5) BREAK cat")
    assert len(chunks) == 2 and chunks[0][1] == [1.5] * 5
    assert "myembx" not in emb.tokenizer.find_added_words("myembx")  # whole words only
    with_emb = encode_prompts(pipe.text_encoder, ["myemb, a cat"])[0]
    assert not torch.equal(with_emb, before)
    pipe.unload_embeddings()
    assert torch.equal(encode_prompts(pipe.text_encoder, ["myemb, a cat"])[0], before)


def test_bad_embeddings(tmp_path) -> None:
    pipe = build_pipeline()
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 48)}, str(xl))
    with pytest.raises(EmbeddingError, match=r"xl.safetensors: an SDXL embedding .* sd1 model"):
        pipe.load_embeddings(xl)
    wide = tmp_path / "wide.pt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}}, wide)
    with pytest.raises(EmbeddingError, match=r"wide.pt: an SD 1.x embedding"):
        pipe.load_embeddings(wide)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(wide.read_bytes()[:100])
    with pytest.raises(EmbeddingError, match="cut.pt: not a readable embedding"):
        pipe.load_embeddings(cut)
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, str(other))
    with pytest.raises(EmbeddingError, match="not a textual-inversion embedding"):
        pipe.load_embeddings(other)
    assert pipe.embedding_store.loaded == {}


def test_cli_ti_hashes_and_from_png(tmp_path, capsys) -> None:
    save_pipeline(build_pipeline(), tmp_path / "tiny.safetensors")
    emb_dir = tmp_path / "embeddings"
    emb_dir.mkdir()
    save_file({"emb_params": torch.randn(2, 32)}, str(emb_dir / "BadHands.safetensors"))
    save_file({"emb_params": torch.randn(1, 32)}, str(emb_dir / "unused.safetensors"))
    common = ["--ckpt", str(tmp_path / "tiny.safetensors"), "--steps", "2", "--dtype", "fp32",
              "--device", "cpu", "--quiet"]  # fmt: skip
    out = tmp_path / "out"
    assert main(["txt2img", *common, "--prompt", "a cat", "--negative-prompt", "badhands",
                 "--width", "16", "--height", "16", "--seed", "1", "--embeddings-dir",
                 str(emb_dir), "--outdir", str(out)]) == 0  # fmt: skip
    (png,) = out.glob("*.png")
    params = parameters_from_infotext(read_png_parameters(png))
    assert (
        params.extra["TI hashes"] == f"BadHands: {embedding_hash(emb_dir / 'BadHands.safetensors')}"
    )
    again = tmp_path / "again"
    assert main(["txt2img", *common, "--from-png", str(png), "--embeddings-dir", str(emb_dir),
                 "--outdir", str(again)]) == 0  # fmt: skip
    (png2,) = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(png2)))
    capsys.readouterr()
    assert main(["txt2img", *common, "--from-png", str(png), "--outdir", str(again)]) == 2
    err = capsys.readouterr().err
    assert "BadHands" in err and "TI hashes" in err
