"""CLIP tokenizer: equality with HF ``CLIPTokenizer`` (built offline from our shipped vocabulary)
and with the reference ``regex`` pre-tokenizer, A1111 chunking, padding rules and bad input."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
import torch

from genmodels.models.text.tokenizer import (
    CLIPTokenizer,
    build_vocab,
    load_merges,
    pre_tokenize,
    split_chunks,
)

CORPUS = [
    "a photograph of an astronaut riding a horse",
    "Héllo Wörld, naïve café résumé",
    "e\u0301clair (decomposed accent, NFC-normalised)",
    "日本語のテキスト 東京タワー 中文，标点。 한국어 텍스트",
    "עברית العربية ไทย हिन्दी",
    "😀🎉 emoji 👍🏽 👨‍👩‍👧 flags 🇫🇷",
    "I'm you're they've we'll he'd it's don't 'dog 'Sup O'NEILL",
    "3.14159 and 1,000,000 ²³ ½ Ⅻ ٣ 42nd",
    "hello!!! ??? ... ,,, ;-) :D <3 (masterpiece:1.2) [best quality]",
    "tab\tnew\nline  many   spaces\u00a0nbsp\u3000ideographic",
    "&amp; &lt;b&gt; html stays escaped in HF",
    "<|startoftext|> literal specials <|endoftext|>",
    "UPPER lower MiXeD İstanbul straße STRASSE ẞ",
    "a_b-c+d=e #hashtag @mention http://example.com/path?q=1&x=2",
    "\u200b zero width, ﬁne ligature, full\uff01width\uff21, “curly” ‘quotes’",
    "x" * 300,
    "word " * 100,
    "",
    "   ",
]


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory):
    """HF CLIPTokenizer from vocab.json + merges.txt written from our vocabulary, as HF's
    conversion of the OpenAI file does (no network)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("clip_tokenizer")
    merges = load_merges()
    (root / "vocab.json").write_text(json.dumps(build_vocab(merges)), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (root / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer.from_pretrained(str(root))


def test_vocabulary_layout(ours: CLIPTokenizer) -> None:
    assert ours.vocab_size == 49408
    assert ours.encoder["<|startoftext|>"] == 49406 and ours.encoder["<|endoftext|>"] == 49407
    assert ours.encoder["!"] == 0 and ours.encoder["!</w>"] == 256
    assert ours.comma_token_id == 267


def test_golden_ids(ours: CLIPTokenizer) -> None:
    ids = ours("a photograph of an astronaut riding a horse")[0]
    expected = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert ids[:10].tolist() == expected
    assert ids.shape == (77,) and (ids[10:] == 49407).all()


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_hf(ours: CLIPTokenizer, hf, text: str) -> None:
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]


def test_padded_batch_matches_hf(ours: CLIPTokenizer, hf) -> None:
    expected = hf(CORPUS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ours(CORPUS).tolist() == expected


def test_random_unicode_matches_hf(ours: CLIPTokenizer, hf) -> None:
    rng = random.Random(0)
    pools = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x530), (0x600, 0x700), (0x900, 0xE80)]
    pools += [(0x2000, 0x2C00), (0x3000, 0x3100), (0x4E00, 0x4F00), (0xAC00, 0xAC80)]
    pools += [(0xFF00, 0xFFF0), (0x1F300, 0x1FA00), (0x10000, 0x10100)]
    texts = []
    while len(texts) < 1500:
        chars = [
            chr(rng.randrange(*rng.choice(pools))) if rng.random() > 0.15 else " "
            for _ in range(rng.randint(1, 30))
        ]
        text = "".join(chars)
        if "\u03a3" not in text:  # final sigma: see test_known_differences_from_hf_fast
            texts.append(text)
    got = [ours.encode(t) for t in texts]
    assert got == hf(texts, add_special_tokens=False)["input_ids"]


def test_known_differences_from_hf_fast(ours: CLIPTokenizer, hf) -> None:
    # The reference Python tokenizers (OpenAI SimpleTokenizer, HF's slow CLIPTokenizer used by
    # ldm/sgm) lower-case with str.lower(), which turns a word-final capital sigma into 'ς', and
    # collapse whitespace with str.split(), which also splits on U+001C..U+001F. HF's Rust
    # normalizer lower-cases per character and only replaces \s. We follow the Python references.
    assert ours.encode("ΟΔΟΣ") == ours.encode("\u03bf\u03b4\u03bf\u03c2")  # final 'ς'
    assert ours.encode("ΟΔΟΣ") != hf("ΟΔΟΣ", add_special_tokens=False)["input_ids"]
    assert ours.encode("a\x1cb") == ours.encode("a b")
    # The reference pattern's IGNORECASE flag: U+0345 matches no alternative, "'ſ" is a contraction.
    assert ours.encode("a\u0345b") == ours.encode("a b")
    assert list(pre_tokenize("x'\u017f")) == ["x", "'\u017f"]


def test_pre_tokenizer_matches_regex_on_all_assigned_code_points() -> None:
    regex = pytest.importorskip("regex")
    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
        r"""[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    # Every code point the running Python's Unicode database assigns (newer assignments may be
    # classified differently by a newer `regex`; private-use code points are sampled), in letter,
    # number and punctuation contexts. U+001C..U+001F are whitespace to str.split() only and are
    # removed by clean_text before pre-tokenizing.
    chars = [
        chr(cp)
        for cp in range(0x20, 0x110000)
        if (cat := unicodedata.category(chr(cp))) not in ("Cn", "Cs")
        and (cat != "Co" or cp % 97 == 0)
    ]
    text = "".join(f"{c}a{c}1{c}{c}'s!'{c} " for c in chars)
    assert list(pre_tokenize(text)) == pattern.findall(text)


def test_html_unescape_option() -> None:
    openclip_style = CLIPTokenizer(pad_token_id=0, html_unescape=True)
    assert openclip_style.encode("fish &amp;amp; chips") == openclip_style.encode("fish & chips")
    ids = openclip_style("hi")[0]
    assert ids[:4].tolist() == [49406, 1883, 49407, 0] and (ids[3:] == 0).all()


def test_decode_round_trip(ours: CLIPTokenizer) -> None:
    text = "a photo of a café, 東京 😀"
    assert ours.decode(ours.encode(text)) == "a photo of a café , 東京 😀"


def test_truncation_keeps_bos_75_tokens_eos(ours: CLIPTokenizer) -> None:
    ids = ours("word " * 100)[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:76] == ours.encode("word")[0]).all()


def test_tokenize_chunks_plain(ours: CLIPTokenizer) -> None:
    word = ours.encode("cat")[0]
    for n_tokens, n_chunks in ((0, 1), (1, 1), (75, 1), (76, 2), (150, 2), (151, 3)):
        chunks = ours.tokenize_chunks("cat " * n_tokens, comma_backtrack=0)
        assert chunks.shape == (n_chunks, 77)
        assert (chunks[:, 0] == 49406).all()
        body = chunks[:, 1:76].reshape(-1)
        assert (body == word).sum() == n_tokens
        last = n_tokens - 75 * (n_chunks - 1)
        assert chunks[-1, last + 1] == 49407 and (chunks[-1, last + 1 :] == 49407).all()
    assert torch.equal(ours.tokenize_chunks("a cat")[0], ours("a cat")[0])


def test_split_chunks_comma_backtrack() -> None:
    comma, w = 267, 1
    ids = [w] * 70 + [comma] + [w] * 10  # comma 5 tokens before the 75-token boundary
    assert [len(c) for c in split_chunks(ids, 75, comma, 20)] == [71, 10]
    assert split_chunks(ids, 75, comma, 20)[0][-1] == comma
    assert [len(c) for c in split_chunks(ids, 75, comma, 0)] == [75, 6]
    far = [w] * 50 + [comma] + [w] * 40  # comma 24 tokens before the boundary: no backtrack
    assert [len(c) for c in split_chunks(far, 75, comma, 20)] == [75, 16]
    # A comma that opens a new chunk does not count as a break point (A1111 resets last_comma).
    edge = [w] * 75 + [comma] + [w] * 80
    assert [len(c) for c in split_chunks(edge, 75, comma, 20)] == [75, 75, 6]
    assert split_chunks([], 75, comma, 20) == [[]]


def test_bad_input(ours: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="str"):
        ours.encode(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list of str"):
        ours(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="pad_token_id"):
        CLIPTokenizer(pad_token_id=50000)
    with pytest.raises(ValueError, match="comma_backtrack"):
        split_chunks([1], 75, 267, -1)
