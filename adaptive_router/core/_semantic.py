"""Sentence embeddings of all-MiniLM-L6-v2 in a static form, and the cells they fall into.

    embedder = StaticEmbedder.load()          # the table that ships in adaptive_router/data
    vector = embedder.embed("Write a haiku")  # float32, unit length, 128 dimensions
    cells = SemanticCells(embedder.dims, bits=4)
    cells.cell(vector)                        # 0 .. 15, the same on every replica

The table is the real model run once offline over its vocabulary (``tools/distill_minilm.py``:
one token per sentence, PCA to 128 dimensions, SIF weights), so an embedding is the normalised
sum of the rows of the prompt's WordPiece tokens: no torch, no network, tens of microseconds.
The tokenizer is BERT's (uncased: clean, lower-case, strip accents, split on whitespace and
punctuation, greedy longest-match WordPiece), written here in plain Python with a cache of
words already seen. all-MiniLM-L6-v2 is Apache-2.0 (sentence-transformers, on
``nreimers/MiniLM-L6-H384-uncased``); how closely the static form agrees with it is measured by
the distillation script and reported in the README.

Cells: the signs of ``bits`` fixed random projections of the embedding less a fixed centre.
The projections come from a seeded generator and the centre from the table's own metadata, so
every replica computes the same cell for the same text without talking to any other.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_TABLE", "MAX_TOKENS", "SemanticCells", "StaticEmbedder", "wordpiece_basic_tokens"]

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "data" / "minilm_static.npz"
FloatArray = npt.NDArray[np.float32]
_UNK = "[UNK]"
_MAX_WORD = 100  # BERT's WordPiece: a longer "word" is [UNK]
_CACHE_MAX = 1 << 16
# all-MiniLM-L6-v2 reads at most 256 word pieces, [CLS] and [SEP] included; so does the static form.
MAX_TOKENS = 254
_HEAD_CHARS = 1536  # tokenised first: enough for MAX_TOKENS pieces of ordinary text
_CELL_SEED = 20_240_917  # fixed: every replica draws the same projections
# ASCII fast path: control characters go (BERT's _clean_text), every other non-alphanumeric
# printable character is punctuation and a token of its own.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # the same set


def _has_control(text: str) -> bool:
    """Whether ASCII ``text`` holds a character ``_ASCII_CONTROL`` matches: bytes.translate drops
    them in C at a few instructions a character, where the regex tests its set per character."""
    return len(text.encode("ascii").translate(None, _CONTROL_BYTES)) != len(text)


_ASCII_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B81F
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _clean(text: str) -> str:
    """BERT's _clean_text and _tokenize_chinese_chars: drop controls, space out CJK characters."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return "".join(out)


def _split_word(word: str) -> list[str]:
    word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
    pieces: list[str] = []
    current = ""
    for ch in word:
        if _is_punctuation(ch):
            if current:
                pieces.append(current)
            pieces.append(ch)
            current = ""
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def wordpiece_basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer (uncased): the words WordPiece then splits."""
    if text.isascii():
        if _has_control(text):  # rare: a scan in C first, the copy only when needed
            text = _ASCII_CONTROL.sub("", text)
        return _ASCII_TOKEN.findall(text.lower())
    return [piece for word in _clean(text).split() for piece in _split_word(word)]


class StaticEmbedder:
    """A static MiniLM: WordPiece tokens, one table row each, summed and normalised."""

    def __init__(
        self,
        table: npt.NDArray[np.floating],
        vocab: list[str],
        meta: Mapping[str, object],
        centre: npt.NDArray[np.floating] | None = None,
    ) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.centre = (
            np.zeros(table.shape[1], np.float32) if centre is None else np.asarray(centre, np.float32)
        )
        self.vocab = {token: i for i, token in enumerate(vocab)}
        self.meta = dict(meta)
        self.dims = int(self.table.shape[1])
        self._unk = self.vocab[_UNK]
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> StaticEmbedder:
        """The table at ``path`` (default: the one that ships with the package)."""
        with np.load(Path(path) if path is not None else DEFAULT_TABLE, allow_pickle=False) as data:
            centre = data["centre"] if "centre" in data.files else None
            return cls(
                data["embeddings"], [str(v) for v in data["vocab"]], json.loads(str(data["meta"])), centre
            )

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > _MAX_WORD:
            return (self._unk,)
        vocab, ids, start = self.vocab, [], 0
        while start < len(word):
            end, found = len(word), -1
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = vocab.get(piece, -1)
                if found >= 0:
                    break
                end -= 1
            if found < 0:
                return (self._unk,)
            ids.append(found)
            start = end
        return tuple(ids)

    def token_ids(self, text: str, limit: int | None = None) -> list[int]:
        """The WordPiece ids of ``text`` (no [CLS]/[SEP]), as BERT's uncased tokenizer gives them;
        the first ``limit`` of them when given."""
        return self._ids(text, limit, cut=False)

    def _ids(self, text: str, limit: int | None, cut: bool) -> list[int]:
        """``cut``: ``text`` is the head of a longer one, so its last chunk may be partial and is
        left out. ASCII text (nearly all) is split on whitespace only and each chunk's pieces are
        cached whole: one dict look-up per word of a text seen before."""
        if text.isascii():
            if _has_control(text):  # rare: a scan in C first, the copy only when needed
                text = _ASCII_CONTROL.sub("", text)
            chunks = text.lower().split()
        else:
            chunks = wordpiece_basic_tokens(text)
        if cut:
            chunks = chunks[:-1]
        cache, get, ids = self._cache, self._cache.get, list[int]()
        stop = sys.maxsize if limit is None else limit
        for chunk in chunks:
            pieces = get(chunk)
            if pieces is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()  # bounded; the common words come back at once
                pieces = cache[chunk] = self._pieces(chunk)
            ids += pieces
            if len(ids) >= stop:
                return ids[:stop]
        return ids

    def _pieces(self, chunk: str) -> tuple[int, ...]:
        if chunk.isalnum() or not chunk.isascii():  # a word already (non-ASCII: split before)
            return self._wordpiece(chunk)
        return tuple(i for word in _ASCII_TOKEN.findall(chunk) for i in self._wordpiece(word))

    def model_ids(self, text: str) -> list[int]:
        """The ids the model reads: the first ``MAX_TOKENS``. Only the head of a long text is
        tokenised when it holds enough of them."""
        if len(text) > _HEAD_CHARS:
            ids = self._ids(text[:_HEAD_CHARS], MAX_TOKENS, cut=True)
            if len(ids) >= MAX_TOKENS:
                return ids
        return self._ids(text, MAX_TOKENS, cut=False)

    def embed(self, text: str) -> FloatArray:
        """Unit-length embedding of ``text`` (all zeros for a text with no tokens)."""
        ids = self.model_ids(text)
        if not ids:
            return np.zeros(self.dims, dtype=np.float32)
        # take() and add.reduce(): the fancy index and .sum() less their Python overhead.
        vector: FloatArray = np.add.reduce(self.table.take(ids, axis=0), axis=0)
        # float32 rounding of a double square root is the float32 square root (53 >= 2 * 24 + 2
        # bits), and in-place division casts the norm to float32: exactly np.sqrt's result.
        norm = math.sqrt(float(vector @ vector))
        if norm > 0:
            vector /= norm
        return vector


class SemanticCells:
    """``bits`` fixed random hyperplanes through ``centre``: a cell is the pattern of signs.

    ``2 ** bits`` cells; texts close in the embedding fall into the same cell more often the
    closer they are. The projections depend only on ``dims``, ``bits`` and ``seed``.
    """

    def __init__(
        self, dims: int, bits: int = 4, centre: npt.NDArray[np.floating] | None = None, seed: int = _CELL_SEED
    ) -> None:
        if not 0 <= bits <= 16:
            raise ValueError(f"bits must be in 0..16, not {bits}")
        self.bits = bits
        self.count = 1 << bits
        self.planes = _planes(dims, bits, seed)
        self.centre = np.zeros(dims, np.float32) if centre is None else np.asarray(centre, np.float32)
        self._offset = self.planes @ self.centre
        # The same comparison in Python floats (float32 values convert exactly): one NumPy call.
        self._bit_offsets = list(zip((1 << np.arange(bits)).tolist(), self._offset.tolist(), strict=True))

    def cell(self, vector: FloatArray) -> int:
        if self.bits == 0:
            return 0
        projection = (self.planes @ vector).tolist()
        return sum(bit for (bit, offset), x in zip(self._bit_offsets, projection, strict=True) if x > offset)


@lru_cache(maxsize=8)
def _planes(dims: int, bits: int, seed: int) -> FloatArray:
    planes: FloatArray = np.random.default_rng(seed).standard_normal((bits, dims)).astype(np.float32)
    planes.setflags(write=False)
    return planes
