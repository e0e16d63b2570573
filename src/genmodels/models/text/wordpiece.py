"""BERT WordPiece tokenizer (Devlin et al. 2019; Wu et al. 2016), stdlib only.

Basic tokenisation, as the original BERT ``BasicTokenizer``: drop NUL, U+FFFD and control
characters and map whitespace to spaces; put spaces around CJK ideographs; NFC; split on
whitespace; lower-case and strip accents (NFD, drop Mn) when ``do_lower_case``; split off every
punctuation character (ASCII symbols and Unicode P*). Then each word is split greedily into the
longest vocabulary pieces, continuations prefixed ``##``; a word with an unknown piece, or over
100 characters, becomes ``[UNK]``. The special tokens ``[CLS]`` ``[SEP]`` ``[PAD]`` ``[MASK]``
``[UNK]`` written literally in the text are kept as those tokens, as HF does.

    tok = WordPieceTokenizer.from_folder(folder)   # vocab.txt + tokenizer_config.json
    ids, mask = tok(["a red heart", ""], max_length=32)   # (B, 32) each: [CLS] ... [SEP] [PAD]...
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["WordPieceTokenizer", "basic_tokenize", "load_vocab", "wordpiece"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
MAX_CHARS_PER_WORD = 100
# CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana, which are written with spaces)
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    """ASCII non-alphanumeric symbols (``$``, ``^``, ``~`` too) or Unicode category P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in _CJK_RANGES)


def clean_text(text: str, tokenize_chinese_chars: bool = True) -> str:
    """Invalid and control characters dropped, whitespace as spaces, CJK ideographs spaced."""
    out = []
    for ch in text:
        if ch in "\x00\ufffd" or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif tokenize_chinese_chars and _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return "".join(out)


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    pieces: list[str] = []
    start = True
    for ch in word:
        if _is_punctuation(ch):
            pieces.append(ch)
            start = True
        else:
            if start:
                pieces.append("")
                start = False
            pieces[-1] += ch
    return pieces


def basic_tokenize(
    text: str,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
) -> list[str]:
    """Words and punctuation of ``text`` before WordPiece (``strip_accents`` None: as
    ``do_lower_case``)."""
    words = unicodedata.normalize("NFC", clean_text(text, tokenize_chinese_chars)).split()
    out = []
    for word in words:
        if do_lower_case:
            word = word.lower()
        if strip_accents or (strip_accents is None and do_lower_case):
            word = _strip_accents(word)
        out.extend(_split_punctuation(word))
    return out


def wordpiece(word: str, vocab: dict[str, int], unk_token: str = "[UNK]") -> list[str]:
    """Greedy longest-match-first pieces of one word (``##`` marks continuations)."""
    if len(word) > MAX_CHARS_PER_WORD:
        return [unk_token]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:
            return [unk_token]  # no piece of the vocabulary starts here: the whole word is unknown
        pieces.append(piece)
        start = end
    return pieces


@lru_cache
def load_vocab(path: str | Path) -> dict[str, int]:
    """Token -> id from a ``vocab.txt`` (one token a line, the id is the line number)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: WordPiece vocab.txt does not exist")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: the vocabulary lacks the special tokens {missing}")
    return vocab


class WordPieceTokenizer:
    """Text -> BERT ids: ``[CLS]`` + WordPiece ids + ``[SEP]``, truncated and padded."""

    def __init__(
        self,
        vocab_path: str | Path,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        max_length: int = 512,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS], [SEP]), got {max_length}")
        self.vocab = load_vocab(str(vocab_path))
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_length = max_length
        self.cls_token_id, self.sep_token_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_token_id, self.unk_token_id = self.vocab["[PAD]"], self.vocab["[UNK]"]

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int | None = None) -> WordPieceTokenizer:
        """From an HF model folder: ``vocab.txt`` and the options of ``tokenizer_config.json``."""
        folder = Path(folder)
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        kind = config.get("tokenizer_class", "BertTokenizer")
        if kind not in ("BertTokenizer", "BertTokenizerFast"):
            raise ValueError(f"{path}: tokenizer_class {kind!r} is not a BERT tokenizer")
        return cls(
            folder / "vocab.txt",
            do_lower_case=bool(config.get("do_lower_case", True)),
            strip_accents=config.get("strip_accents"),
            tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
            max_length=max_length or int(config.get("model_max_length", 512)),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of ``text`` (no ``[CLS]`` / ``[SEP]``)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        tokens: list[str] = []
        for part in _SPECIAL_RE.split(text):
            if part in SPECIAL_TOKENS:
                tokens.append(part)
                continue
            opts = (self.do_lower_case, self.strip_accents, self.tokenize_chinese_chars)
            for word in basic_tokenize(part, *opts):
                tokens.extend(wordpiece(word, self.vocab))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without ``[CLS]`` / ``[SEP]`` and without truncation."""
        return [self.vocab[t] for t in self.tokenize(text)]

    def __call__(
        self, texts: str | Sequence[str], max_length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``input_ids`` and ``attention_mask``, both (B, max_length) int64: ``[CLS]``, the first
        ``max_length - 2`` ids, ``[SEP]``, then ``[PAD]`` with mask 0."""
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a str or a sequence of str, got {texts!r:.80}")
        length = self.max_length if max_length is None else max_length
        if not 2 <= length <= self.max_length:
            raise ValueError(f"max_length must be in [2, {self.max_length}], got {length}")
        ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [self.cls_token_id, *self.encode(text)[: length - 2], self.sep_token_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask
