"""CLIP's byte-level BPE tokenizer, computing the ids open_clip's tokenizer computes.

The merges file (engines/data/bpe_simple_vocab_16e6.txt.gz, MIT, see the LICENSE file beside it) lists
the merges in rank order after a header line. The vocabulary is built from it:
ids 0-255 are the 256 byte symbols (GPT-2's byte -> character table: printable Latin-1 characters stand
for themselves, the other 68 bytes become chr(256 + n)), 256-511 the same symbols ending a word (`</w>`),
then one id per merge, then `<start_of_text>` and `<end_of_text>`.

Text is cleaned as open_clip cleans it (ftfy, HTML entities unescaped twice, whitespace collapsed,
lowercase), split into words, contractions, single digits and punctuation runs, and each piece is
merged lowest rank first. A sequence is start, ids, end, zero padding; a longer one keeps its first
`context_length` ids with the last overwritten by the end token.
"""
from __future__ import annotations

import gzip
import html
import itertools
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from engines.errors import MissingDependency

VOCAB_FILE = Path(__file__).resolve().parents[1] / "data" / "bpe_simple_vocab_16e6.txt.gz"
START, END = "<start_of_text>", "<end_of_text>"
_NUM_MERGES = 49152 - 256 - 2  # the merges open_clip reads after the header line
_WORD_END = "</w>"
# Specials, contractions, letter runs, single digits, runs of anything else that is not a space.
_SPLIT = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


def byte_symbols() -> list[str]:
    """The character standing for each byte value 0..255 (GPT-2's reversible table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return [table[b] for b in range(256)]


def _vocabulary_order() -> list[int]:
    """Byte values in id order: the printable ones first, then the others (as the table lists them)."""
    symbols = byte_symbols()
    return sorted(range(256), key=lambda b: (ord(symbols[b]) >= 256, ord(symbols[b])))


def _import_text_libs():
    try:
        import ftfy
        import regex
    except ImportError as err:
        raise MissingDependency(f"the CLIP tokenizer needs the '{err.name}' package: "
                                "pip install ftfy regex (both are project dependencies)") from None
    return ftfy, regex


class ClipTokenizer:
    """`tokenizer(["a face"]) -> LongTensor [N, context_length]`, open_clip's ids and padding."""

    def __init__(self, vocab_file: Path = VOCAB_FILE, context_length: int = 77) -> None:
        self.context_length = context_length
        self._ftfy, regex = _import_text_libs()
        self._split = regex.compile(_SPLIT, regex.IGNORECASE)
        with gzip.open(vocab_file, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")[1:_NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = byte_symbols()
        self._byte_symbol = symbols
        ordered = [symbols[b] for b in _vocabulary_order()]
        vocab = ordered + [s + _WORD_END for s in ordered] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id, self.end_id = self.encoder[START], self.encoder[END]
        # the specials are their own single "word" (open_clip's quirk: typed literally, they become the id)
        self._cache: dict[str, list[str]] = {START: [START], END: [END]}

    @cached_property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._ftfy.fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def _bpe(self, piece: str) -> list[str]:
        """One pre-split piece (already byte symbols) -> its BPE tokens, lowest-ranked pair merged first."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + _WORD_END]
        while len(word) > 1:
            pairs = {(a, b) for a, b in itertools.pairwise(word)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned text, without the start and end tokens."""
        ids: list[int] = []
        for piece in self._split.findall(self.clean(text)):
            symbols = "".join(self._byte_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(symbols))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.end_id
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
