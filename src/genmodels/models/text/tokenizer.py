"""CLIP byte-level BPE tokenizer (Radford et al. 2021), matching OpenAI's SimpleTokenizer and HF
``CLIPTokenizer`` token for token, with stdlib only (no ``regex``, no ``ftfy``).

Cleanup: NFC normalisation (what ftfy's ``fix_text`` and HF's normalizer both end with), optional
double ``html.unescape`` (OpenAI/OpenCLIP do it, HF does not), whitespace collapse, lower-casing.
ftfy's other repairs (mojibake, curly quotes, ligatures, full-width forms) are not reproduced, as in
HF's tokenizer; prompts that need them tokenize as HF tokenizes them.

The reference pre-tokenizer regex ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` is implemented as a scanner over Unicode categories
(``str.isalpha`` is exactly ``\\p{L}``; ``\\p{N}`` is category N*), which the stdlib ``re`` cannot
express exactly.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from genmodels.configs.text import BOS_TOKEN_ID, CONTEXT_LENGTH, EOS_TOKEN_ID

DEFAULT_BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab 49408 = 512 byte symbols + merges + 2
VOCAB_SIZE = 512 + NUM_MERGES + 2  # ids from here on are added words (embeddings)
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
# The reference compiles its pattern with IGNORECASE. On lower-cased text that matters twice:
# "'ſ" (long s folds to s) is the contraction "'s", and U+0345 (Mn, folds to a letter) matches
# neither [\p{L}] nor [^\s\p{L}\p{N}], so findall drops it. HF's Rust tokenizer (no flag) differs.
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'\u017f")
_YPOGEGRAMMENI = "\u0345"


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
    themselves, the other 68 bytes to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the vocabulary order


@lru_cache
def load_merges(path: str | Path = DEFAULT_BPE_PATH) -> tuple[tuple[str, str], ...]:
    """The first ``NUM_MERGES`` merge rules of the gzipped BPE file (line 0 is a version header)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : NUM_MERGES + 1]
    merges = tuple(tuple(line.split()) for line in lines)
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {NUM_MERGES} merge lines of two symbols each")
    return merges  # type: ignore[return-value]


def build_vocab(merges: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Token -> id in CLIP's order: 256 byte symbols, the same with ``</w>``, merges, specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += list(SPECIAL_TOKENS)
    return {t: i for i, t in enumerate(tokens)}


@lru_cache
def _tables(path: str | Path) -> tuple[dict[str, int], dict[int, str], dict[tuple[str, str], int]]:
    """(token -> id, id -> token, merge -> rank), shared read-only by tokenizers of one file."""
    merges = load_merges(path)
    encoder = build_vocab(merges)
    return encoder, {i: t for t, i in encoder.items()}, {m: r for r, m in enumerate(merges)}


def clean_text(text: str, html_unescape: bool = False) -> str:
    """NFC, optional double html unescape (OpenAI ``basic_clean``), whitespace collapse, lower."""
    text = unicodedata.normalize("NFC", text)
    if html_unescape:
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


_LETTER, _NUMBER, _SKIP, _OTHER = range(4)


@lru_cache(maxsize=65536)
def _char_class(ch: str) -> int:
    """Which class of the reference pattern a character belongs to: [\\p{L}] (str.isalpha is
    exactly category L*), [\\p{N}] (category N*), skipped (whitespace, U+0345) or the rest."""
    if ch.isalpha():
        return _LETTER
    if unicodedata.category(ch)[0] == "N":
        return _NUMBER
    return _SKIP if ch.isspace() or ch == _YPOGEGRAMMENI else _OTHER


def _starting_literal(text: str, i: int) -> str | None:
    """A special token or contraction starting at ``i``: the pattern's first alternatives."""
    if text[i] == "<":
        return next((s for s in SPECIAL_TOKENS if text.startswith(s, i)), None)
    if text[i] == "'":
        return next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
    return None


def pre_tokenize(text: str) -> Iterator[str]:
    """Yield the pieces ``regex.findall`` of CLIP's pattern yields (leftmost-first alternation)."""
    i, n = 0, len(text)
    while i < n:
        literal = _starting_literal(text, i)
        kind = _char_class(text[i])
        if literal is not None:
            j = i + len(literal)
        elif kind == _SKIP:  # no alternative matches: findall moves on
            i += 1
            continue
        elif kind == _NUMBER:  # [\p{N}]: one character
            j = i + 1
        else:  # [\p{L}]+ or [^\s\p{L}\p{N}]+: a run of the same class
            j = i + 1
            while j < n and _char_class(text[j]) == kind:
                j += 1
        yield text[i:j]
        i = j


class CLIPTokenizer:
    """Text -> CLIP token ids. ``__call__`` gives the reference (B, 77) ids, truncated like
    HF/open_clip (BOS + 75 tokens + EOS); ``tokenize_chunks`` keeps long prompts in 75-token chunks.
    """

    def __init__(
        self,
        pad_token_id: int = EOS_TOKEN_ID,
        html_unescape: bool = False,
        context_length: int = CONTEXT_LENGTH,
        bpe_path: str | Path = DEFAULT_BPE_PATH,
    ) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (BOS, token, EOS), got {context_length}")
        self.encoder, self.decoder, self.bpe_ranks = _tables(bpe_path)
        if not 0 <= pad_token_id < len(self.encoder):
            raise ValueError(
                f"pad_token_id must be in [0, {len(self.encoder)}), got {pad_token_id}"
            )
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bos_token_id, self.eos_token_id = BOS_TOKEN_ID, EOS_TOKEN_ID
        self.pad_token_id = pad_token_id
        self.html_unescape = html_unescape
        self.context_length = context_length
        self.comma_token_id = self.encoder[",</w>"]
        self._cache: dict[str, list[str]] = {}
        self.added_words: dict[str, list[int]] = {}
        self._added: re.Pattern[str] | None = None

    def set_added_words(self, words: Mapping[str, Sequence[int]]) -> None:
        """Words that encode to fixed ids (textual-inversion embeddings, ids past the
        vocabulary): matched whole-word and case-insensitively in the cleaned text, before BPE,
        as A1111 finds an embedding's name among the prompt's tokens."""
        self.added_words = {clean_text(w): list(ids) for w, ids in words.items() if w.strip()}
        names = sorted(self.added_words, key=len, reverse=True)
        alternatives = "|".join(map(re.escape, names))
        self._added = re.compile(rf"(?<!\w)({alternatives})(?!\w)") if names else None

    def find_added_words(self, text: str) -> list[str]:
        """The added words that ``text`` uses, in order of appearance."""
        if self._added is None:
            return []
        return self._added.findall(clean_text(text, self.html_unescape))

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> list[str]:
        """Merge a byte-mapped piece, lowest merge rank first; the last symbol carries ``</w>``."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: self.bpe_ranks.get(p, NUM_MERGES))
            if pair not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100_000:
            self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS."""
        if not isinstance(text, str):
            raise ValueError(f"prompt must be a str, got {type(text).__name__}")
        cleaned = clean_text(text, self.html_unescape)
        if self._added is None:
            return self._encode_clean(cleaned)
        ids: list[int] = []
        for i, part in enumerate(self._added.split(cleaned)):  # odd parts: added words
            ids.extend(self.added_words[part] if i % 2 else self._encode_clean(part))
        return ids

    def _encode_clean(self, cleaned: str) -> list[int]:
        ids: list[int] = []
        for piece in pre_tokenize(cleaned):
            if piece in SPECIAL_TOKENS:
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text; ``</w>`` becomes a space, special tokens are kept verbatim."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytes(self.byte_decoder[ch] for ch in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def wrap(self, ids: list[int]) -> list[int]:
        """BOS + ids + EOS, padded with ``pad_token_id`` to ``context_length`` (ids must fit)."""
        if len(ids) > self.context_length - 2:
            raise ValueError(f"{len(ids)} tokens do not fit in {self.context_length - 2}")
        out = [self.bos_token_id, *ids, self.eos_token_id]
        return out + [self.pad_token_id] * (self.context_length - len(out))

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """(B, context_length) ids, truncated to BOS + first 75 tokens + EOS like the references."""
        texts = [texts] if isinstance(texts, str) else _check_prompts(texts)
        keep = self.context_length - 2
        return torch.tensor([self.wrap(self.encode(t)[:keep]) for t in texts], dtype=torch.long)

    def tokenize_chunks(self, text: str, comma_backtrack: int = 20) -> torch.Tensor:
        """(n_chunks, context_length) ids: the prompt split into 75-token chunks, each wrapped in
        BOS/EOS and padded (A1111 ``tokenize_line``). With ``comma_backtrack`` > 0 a full chunk
        is broken after its last comma when that comma is within ``comma_backtrack`` tokens of
        the end, moving the tail to the next chunk (A1111 ``comma_padding_backtrack``, default 20);
        0 gives plain 75-token chunks. An empty prompt gives one chunk."""
        chunks = split_chunks(
            self.encode(text), self.context_length - 2, self.comma_token_id, comma_backtrack
        )
        return torch.tensor([self.wrap(c) for c in chunks], dtype=torch.long)


def _added_run(ids: list[int], i: int, vocab_size: int) -> int:
    """Length of the added-word run starting at ``i`` (0 for a vocabulary token): consecutive
    ids past the vocabulary. Embeddings get id ranges with a gap between them
    (``adapters.embeddings``), so one run is one embedding."""
    if ids[i] < vocab_size:
        return 0
    j = i + 1
    while j < len(ids) and ids[j] == ids[j - 1] + 1:
        j += 1
    return j - i


def split_chunks(
    ids: list[int],
    chunk_length: int,
    comma_id: int,
    comma_backtrack: int = 20,
    vocab_size: int = VOCAB_SIZE,
) -> list[list[int]]:
    """Split ids into chunks of at most ``chunk_length`` (A1111 rules, see ``tokenize_chunks``).
    An added word (a textual-inversion embedding: ids from ``vocab_size`` on) that does not fit
    in the current chunk starts the next one whole, as A1111's ``tokenize_line``."""
    if comma_backtrack < 0:
        raise ValueError(f"comma_backtrack must be >= 0, got {comma_backtrack}")
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1
    i = 0
    while i < len(ids):
        tok = ids[i]
        if tok == comma_id:
            last_comma = len(chunk)
        elif (
            comma_backtrack
            and len(chunk) == chunk_length
            and last_comma != -1
            and len(chunk) - last_comma <= comma_backtrack
        ):
            chunks.append(chunk[: last_comma + 1])
            chunk, last_comma = chunk[last_comma + 1 :], -1
        if len(chunk) == chunk_length:
            chunks.append(chunk)
            chunk, last_comma = [], -1
        run = _added_run(ids, i, vocab_size)
        if 1 < run <= chunk_length:  # an embedding: kept whole
            if len(chunk) + run > chunk_length:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk.extend(ids[i : i + run])
            i += run
            continue
        chunk.append(tok)
        i += 1
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def _check_prompts(texts: object) -> list[str]:
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"prompts must be a str or a list of str, got {texts!r:.80}")
    return list(texts)
