"""One tokenizer object for the three model families.

The heavy lifting is done by the Rust `tokenizers` library; this wrapper fixes what the rest of
the toolkit needs to know about a tokenizer (its family, its special ids, the id that separates
documents in the token stream, a content hash that invalidates token shards) so that no other
module has to guess from token strings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, models, pre_tokenizers, processors

from lmscale.errors import DataError
from lmscale.io import atomic_write_json, atomic_write_text
from lmscale.tokenization.tiktoken_file import load_tiktoken_file

KINDS = ("bpe", "wordpiece", "unigram")
META_FORMAT = "lmscale-tokenizer"

BPE_EOS = "<|endoftext|>"
# a BPE tokenizer's end-of-text token when its meta names none: the first of these it has
BPE_EOS_CANDIDATES = (BPE_EOS, "</s>", "<eos>", "<|end_of_text|>")
DOC_SEPARATORS = BPE_EOS_CANDIDATES + ("[SEP]",)
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
UNIGRAM_SPECIALS = ["<pad>", "</s>", "<unk>"]
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]

_MODEL_KIND = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}


def _kind_of(backend: _Backend) -> str:
    name = type(backend.model).__name__
    if name not in _MODEL_KIND:
        raise DataError(f"unsupported tokenizer model {name!r}; expected BPE, WordPiece or Unigram")
    return _MODEL_KIND[name]


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the family-specific facts the rest of lmscale relies on."""

    def __init__(self, backend: _Backend, kind: str | None = None, meta: dict | None = None) -> None:
        self.backend = backend
        self.kind = kind or _kind_of(backend)
        if self.kind not in KINDS:
            raise DataError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self.meta = dict(meta or {})
        self._refresh()

    # ------------------------------------------------------------------ special ids
    def _refresh(self) -> None:
        tid = self.backend.token_to_id
        self.vocab_size: int = self.backend.get_vocab_size(with_added_tokens=True)
        if self.kind == "wordpiece":
            self.pad_id, self.unk_id = tid("[PAD]"), tid("[UNK]")
            self.cls_id, self.sep_id, self.mask_id = tid("[CLS]"), tid("[SEP]"), tid("[MASK]")
            self.eos_id, self.bos_id = self.sep_id, self.cls_id
            self.sentinel_ids: list[int] = []
            self.doc_separator_id = self.sep_id
        elif self.kind == "unigram":
            self.pad_id, self.eos_id, self.unk_id = tid("<pad>"), tid("</s>"), tid("<unk>")
            self.bos_id = self.cls_id = self.sep_id = None
            self.mask_id = None
            self.sentinel_ids = [i for i in (tid(s) for s in SENTINELS) if i is not None]
            self.doc_separator_id = self.eos_id
        else:
            self.eos_id = self._bpe_eos_id()
            self.pad_id = self.eos_id
            self.unk_id = self.bos_id = self.cls_id = self.sep_id = self.mask_id = None
            self.sentinel_ids = []
            self.doc_separator_id = self.eos_id
        specials = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        self.special_ids: set[int] = {i for i in (tid(s) for s in specials) if i is not None}
        self._json: str | None = None
        self._hash: str | None = None

    def _bpe_eos_id(self) -> int | None:
        """The configured end-of-text token (`meta["eos_token"]`), else the first candidate present."""
        name = self.meta.get("eos_token")
        if name is not None:
            i = self.backend.token_to_id(name)
            if i is None:
                raise DataError(f"end-of-text token {name!r} is not in this tokenizer's vocabulary")
            return i
        return next((i for i in (self.backend.token_to_id(t) for t in BPE_EOS_CANDIDATES) if i is not None), None)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self.backend.id_to_token(self.eos_id)

    def set_eos(self, token: str) -> None:
        """Make `token` (already in the vocabulary) the end-of-text token that separates documents;
        a BPE tokenizer only (WordPiece uses [SEP], Unigram </s>). Saved in tokenizer_meta.json."""
        if self.kind != "bpe":
            raise DataError(f"only a BPE tokenizer's end-of-text token is configurable ({self.kind} uses "
                            f"{'[SEP]' if self.kind == 'wordpiece' else '</s>'})")
        if self.backend.token_to_id(token) is None:
            raise DataError(f"{token!r} is not in this tokenizer's vocabulary")
        self.meta["eos_token"] = token
        json_text, file_hash = self._json, self._hash
        self._refresh()
        self._json, self._hash = json_text, file_hash  # tokenizer.json itself is unchanged

    @property
    def hash(self) -> str:
        """sha256 of the tokenizer.json content: any change to vocab, merges or specials changes it.

        For a loaded tokenizer it is the hash of the file's bytes, so it survives save/load
        round-trips exactly (re-serializing floats in Unigram scores is not byte-stable).
        """
        if self._hash is None:
            self._hash = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
        return self._hash

    def to_json(self) -> str:
        """The tokenizer.json text (what `save` writes)."""
        if self._json is None:
            self._json = self.backend.to_str(pretty=True)
        return self._json

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode_batch_fast(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Like `encode_batch` without offset tracking: ids only, for bulk tokenization."""
        enc = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in enc(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def tokens(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).tokens

    def word_ids(self, text: str, add_special_tokens: bool = False) -> list[int | None]:
        """Index of the pre-tokenized word each token came from (None for special tokens).

        Whole-word masking needs this: all sub-tokens of a word share one index.
        """
        return self.backend.encode(text, add_special_tokens=add_special_tokens).word_ids

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Add tokens that are never split (fine-tuning delimiters); return their ids."""
        self.backend.add_special_tokens(list(tokens))
        self._refresh()  # also drops the cached json/hash: the vocabulary changed
        return [self.backend.token_to_id(t) for t in tokens]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write `tokenizer.json` (standard format, loadable by transformers) and `tokenizer_meta.json`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "tokenizer.json", self.to_json())
        meta = {**self.meta, "format": META_FORMAT, "version": 1, "kind": self.kind,
                "vocab_size": self.vocab_size, "hash": self.hash,
                "special_ids": {k: getattr(self, k) for k in
                                ("pad_id", "unk_id", "eos_id", "bos_id", "mask_id", "cls_id", "sep_id",
                                 "doc_separator_id")}}
        atomic_write_json(out / "tokenizer_meta.json", meta)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a saved tokenizer dir, a bare tokenizer.json, or a GPT-2 style vocab.json + merges.txt dir."""
        p = Path(path)
        if not p.exists():
            raise DataError(f"{p}: no such tokenizer file or directory")
        if not p.is_dir() and not p.is_file():  # a FIFO or device: reading it could block forever
            raise DataError(f"{p}: not a regular file or directory; give a tokenizer directory or file")
        if p.is_file() and p.name.endswith(".tiktoken"):
            return cls.from_tiktoken_file(p)
        meta: dict = {}
        if p.is_dir():
            if (p / "tokenizer.json").is_file():
                tj = p / "tokenizer.json"
                if (p / "tokenizer_meta.json").is_file():
                    try:
                        meta = json.loads((p / "tokenizer_meta.json").read_text("utf-8"))
                    except (OSError, ValueError) as exc:
                        raise DataError(f"{p / 'tokenizer_meta.json'}: unreadable ({exc})") from exc
            elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
                return cls.from_gpt2_files(p / "vocab.json", p / "merges.txt")
            else:
                raise DataError(f"{p}: no tokenizer.json (nor vocab.json + merges.txt) in this directory")
        else:
            tj = p
        try:
            content = tj.read_bytes()
            backend = _Backend.from_str(content.decode("utf-8"))
        except Exception as exc:  # the Rust error names neither the file nor the cause clearly
            raise DataError(f"{tj}: not a valid tokenizer.json ({exc})") from exc
        meta = {k: v for k, v in meta.items() if k not in ("hash", "special_ids", "vocab_size")}
        tok = cls(backend, kind=meta.get("kind"), meta=meta)
        tok._json = content.decode("utf-8")
        tok._hash = hashlib.sha256(content).hexdigest()
        return tok

    @classmethod
    def from_tiktoken_file(cls, path: str | Path, pattern: str | None = None) -> "Tokenizer":
        """A local tiktoken encoding (`cl100k_base.tiktoken`, ...) as a byte-level BPE tokenizer
        giving tiktoken's ids (`lmscale.tokenization.tiktoken_file`; extra `lmscale[tiktoken]`)."""
        backend, meta = load_tiktoken_file(path, pattern=pattern)
        return cls(backend, kind="bpe", meta=meta)

    @classmethod
    def from_gpt2_files(cls, vocab_file: str | Path, merges_file: str | Path) -> "Tokenizer":
        """GPT-2's byte-level BPE from the original `vocab.json` + `merges.txt`, wired as GPT2TokenizerFast is."""
        try:
            model = models.BPE.from_file(str(vocab_file), str(merges_file))
        except Exception as exc:
            raise DataError(f"{vocab_file} / {merges_file}: not a GPT-2 vocab/merges pair ({exc})") from exc
        backend = _Backend(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        if backend.token_to_id(BPE_EOS) is not None:
            backend.add_special_tokens([BPE_EOS])
        return cls(backend, kind="bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.load(path)
