"""Bulk byte-level BPE encoding with a word cache, for tokenizing whole corpora.

The `tokenizers` pipeline spends most of its time per character in pre-tokenization (it tracks
alignments for offsets nobody asks for when preparing shards). GPT-2's own encoder took a
shorter road: split the text with the GPT-2 regular expression, and look each piece up in a
cache, running the BPE merges only for pieces not seen before. Natural text repeats its words,
so after the first few hundred kilobytes nearly every piece is a cache hit.

This module does that, and stays exactly equal to the library's output: it applies only to
byte-level BPE tokenizers wired as GPT-2's (no normalizer, a plain ByteLevel pre-tokenizer),
checks every distinct character it meets against the library's own pre-tokenizer (so a
difference in Unicode tables between the two regex engines can only send a document back to the
library, never change its tokens), and leaves documents containing added tokens to the library.
"""
from __future__ import annotations

from itertools import chain

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_CACHE = 500_000


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = [""] * 256
    for b, c in zip(bs, cs):
        table[b] = chr(c)
    return table


_B2U = BYTE_TO_UNICODE = _bytes_to_unicode()  # byte value -> its ByteLevel character
_LATIN1_TO_B2U = {b: c for b, c in enumerate(_B2U)}


def applicable(tok) -> bool:
    """True when `tok` is a byte-level BPE that this encoder reproduces exactly."""
    if tok.kind != "bpe":
        return False
    b = tok.backend
    pre, model = b.pre_tokenizer, b.model
    return (b.normalizer is None and type(pre).__name__ == "ByteLevel" and not pre.add_prefix_space
            and pre.use_regex and type(model).__name__ == "BPE" and not model.dropout)


class CachedByteLevelEncoder:
    def __init__(self, tok) -> None:
        self.tok = tok
        self.model = tok.backend.model
        self.pre = tok.backend.pre_tokenizer
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: dict[str, list[int]] = {}
        self.char_ok: dict[str, bool] = {}
        self.bad_chars: set[str] = set()
        self.added = [t.content for t in tok.backend.get_added_tokens_decoder().values()]
        self.fallback_docs = 0

    @staticmethod
    def _map(piece: str) -> str:
        return piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_B2U)

    def _check_chars(self, chars: set[str]) -> None:
        """Compare this regex with the library's pre-tokenizer on probes around each new character."""
        for c in chars:
            probe = f"a{c} 1{c} !{c} {c}{c}a {c}\n{c} x{c}{c}"
            ours = [self._map(p) for p in self.pattern.findall(probe)]
            theirs = [p for p, _ in self.pre.pre_tokenize_str(probe)]
            self.char_ok[c] = ok = ours == theirs and "".join(self.pattern.findall(probe)) == probe
            if not ok:
                self.bad_chars.add(c)

    def _usable(self, doc: str) -> bool:
        if any(a in doc for a in self.added):
            return False
        chars = set(doc)
        new = chars.difference(self.char_ok)
        if new:
            self._check_chars(new)
        return chars.isdisjoint(self.bad_chars)

    def encode(self, doc: str) -> list[int]:
        pieces = self.pattern.findall(doc)
        cache = self.cache
        missing = set(pieces).difference(cache)
        if missing:
            if len(cache) + len(missing) > MAX_CACHE:
                cache.clear()
                missing = set(pieces)
            tokenize, to_bytes = self.model.tokenize, self._map
            for piece in missing:
                cache[piece] = [t.id for t in tokenize(to_bytes(piece))]
        return list(chain.from_iterable(map(cache.__getitem__, pieces)))

    def encode_batch(self, docs: list[str]) -> list[list[int]]:
        out: list[list[int] | None] = []
        slow: list[int] = []
        for i, d in enumerate(docs):
            if self._usable(d):
                out.append(self.encode(d))
            else:
                out.append(None)
                slow.append(i)
        if slow:
            self.fallback_docs += len(slow)
            enc = getattr(self.tok.backend, "encode_batch_fast", self.tok.backend.encode_batch)
            for i, e in zip(slow, enc([docs[i] for i in slow], add_special_tokens=False)):
                out[i] = e.ids
        return out  # type: ignore[return-value]
