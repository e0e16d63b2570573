"""A1111 prompt emphasis: the parser against A1111's documented examples, chunking with weights
and BREAK, the mean-restoring weighting, and weighted encoding vs the plain TextEncoder."""

from __future__ import annotations

import pytest
import torch

from genmodels.models.text.encoders import TextEncoder
from genmodels.pipelines.conditioning import encode_prompts
from genmodels.pipelines.prompt_weighting import (
    apply_weights,
    parse_prompt_attention,
    weighted_chunks,
)

# stable-diffusion-webui modules/prompt_parser.py, parse_prompt_attention docstring
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_parse_matches_a1111_examples(text, expected) -> None:
    assert parse_prompt_attention(text) == expected


def test_parse_square_break_escapes_and_stray_weight() -> None:
    assert parse_prompt_attention("[word]") == [("word", 1 / 1.1)]
    assert parse_prompt_attention("[[a]]") == [("a", 1 / 1.1 / 1.1)]
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_prompt_attention("a \\\\ b") == [("a \\ b", 1.0)]
    assert parse_prompt_attention("x:1.5) y") == [("x:1.5) y", 1.0)]  # no open bracket: text
    assert parse_prompt_attention("") == [("", 1.0)]


def test_parse_bad_input() -> None:
    with pytest.raises(ValueError, match="prompt must be a str"):
        parse_prompt_attention(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad emphasis weight"):
        parse_prompt_attention("(a:1.2.3)")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder("tiny-sd1").eval()


def test_chunks_weights_and_break(encoder) -> None:
    tok = encoder.embedders[0].tokenizer
    chunks = weighted_chunks(tok, "a (cat:1.5) BREAK dog")
    assert [c[0] for c in chunks] == [tok.encode("a cat"), tok.encode("dog")]
    assert [c[1] for c in chunks] == [[1.0, 1.5], [1.0]]
    assert weighted_chunks(tok, "") == [([], [])]
    assert weighted_chunks(tok, "BREAK a") == [([], []), (tok.encode("a"), [1.0])]
    long = ", ".join(["red cat"] * 30)  # 89 tokens: split at a comma like split_chunks
    ids = [c[0] for c in weighted_chunks(tok, f"({long})")]
    assert ids == [c.tolist()[1 : 1 + len(i)] for c, i in zip(tok.tokenize_chunks(long), ids)]
    assert len(ids) == 2 and sum(map(len, ids)) == len(tok.encode(long))


def test_apply_weights_restores_mean() -> None:
    z = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0)) + 1
    assert torch.equal(apply_weights(z, torch.ones(2, 5)), z)
    w = torch.tensor([[1.0, 1.2, 1.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0, 1.0]])
    out = apply_weights(z, w)
    torch.testing.assert_close(out.mean(dim=(1, 2)), z.mean(dim=(1, 2)))
    scale = z.mean(dim=(1, 2)) / (z * w[..., None]).mean(dim=(1, 2))
    torch.testing.assert_close(out, z * w[..., None] * scale[:, None, None])
    centred = z - z.mean(dim=(1, 2), keepdim=True)  # mean 0: A1111 would divide 0 by ~0
    assert torch.isfinite(apply_weights(centred.double(), w)).all()
    with pytest.raises(ValueError, match="multipliers must have shape"):
        apply_weights(z, torch.ones(2, 4))


@pytest.mark.parametrize("preset", ["tiny-sd1", "tiny-sdxl"])
def test_unweighted_encoding_equals_text_encoder(preset) -> None:
    torch.manual_seed(0)
    enc = TextEncoder(preset).eval()
    prompts = ["a photo of a cat, " * 10, ""]
    context, pooled = encode_prompts(enc, prompts)
    with torch.no_grad():
        ref = enc(prompts)
    torch.testing.assert_close(context, ref.context, rtol=0, atol=0)
    if ref.pooled is not None:
        torch.testing.assert_close(pooled, ref.pooled, rtol=0, atol=0)


def test_weight_changes_only_weighted_sequence(encoder) -> None:
    plain, _ = encode_prompts(encoder, ["a cat"])
    weighted, _ = encode_prompts(encoder, ["a (cat:1.5)"])
    assert not torch.allclose(plain, weighted)
    torch.testing.assert_close(plain.mean(), weighted.mean())
    same, _ = encode_prompts(encoder, ["a (cat:1.0)"])
    torch.testing.assert_close(same, plain)
    with pytest.raises(ValueError, match="prompt must be a str"):
        encode_prompts(encoder, [1])  # type: ignore[list-item]
