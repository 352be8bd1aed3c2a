"""Token shards: a corpus tokenized once into memory-mapped arrays plus a JSON index.

Layout of a shard directory:

- `index.json`: format, tokenizer hash and special ids, dtype, a fingerprint of the inputs
  (source files' sizes and sha256, tokenizer hash, split settings) and per split the token and
  document counts, UTF-8 bytes and whitespace words of the text (for bits-per-byte and
  word-level perplexity);
- `<split>.bin`: every document's tokens followed by the tokenizer's document separator, as raw
  `uint16` (vocabularies up to 65,536) or `uint32`;
- `<split>.docs.npy`: int64 document boundaries into `<split>.bin` (n_docs + 1 entries).

The directory is built under a temporary name and renamed into place when complete, so a crash
or Ctrl-C never leaves shards that a later run trusts. Re-running with the same inputs returns
the existing index without work; a different tokenizer or changed source files rebuild.
"""
from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from tokenizers import Tokenizer as Backend

from lmscale.data.catalog import Corpus, held_out_indices, resolve_corpus, source_fingerprint, source_size
from lmscale.data.readers import DEFAULT_TEXT_FIELD
from lmscale.errors import DataError
from lmscale.io import atomic_directory, atomic_write_json
from lmscale.io.outputs import MARKER, foreign_entries, is_marked, mark_output_dir, only_known_entries
from lmscale.tokenization import Tokenizer, fast_bpe
from lmscale.tokenization.tokenizer import DOC_SEPARATORS

FORMAT = "lmscale-shards"
VERSION = 1
CHUNK_BYTES = 256 * 1024
MIN_PARALLEL_BYTES = 1 << 20
IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker process: memory stays bounded
PIECE_CHARS = 1 << 20  # a longer document is tokenized a piece at a time (`_pieces`), where that is exact
HOLD_OUT_BLOCK_TOKENS = 1 << 21  # tokens copied at a time when the held-out share is split off


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- dataset


class TokenDataset:
    """One split of a shard directory: `.tokens` (memmap), `.doc_offsets`, `.num_tokens`, `.meta`."""

    def __init__(self, tokens: np.ndarray, doc_offsets: np.ndarray, meta: dict, path: Path | None = None):
        self.tokens = tokens
        self.doc_offsets = doc_offsets
        self.meta = meta
        self.path = path

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    def __len__(self) -> int:
        return self.num_tokens

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` including its trailing separator."""
        return self.tokens[self.doc_offsets[i]:self.doc_offsets[i + 1]]

    @classmethod
    def open(cls, shard_dir: str | Path, split: str) -> "TokenDataset":
        return ShardIndex.load(shard_dir).open(split)

    @classmethod
    def from_arrays(cls, docs: Sequence[Sequence[int]], separator_id: int, vocab_size: int | None = None,
                    meta: dict | None = None) -> "TokenDataset":
        """An in-memory dataset from token lists (tests, small experiments)."""
        parts = [np.asarray(list(d) + [separator_id], dtype=np.int64) for d in docs]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        vs = int(vocab_size if vocab_size is not None else (flat.max() + 1 if flat.size else 1))
        offsets = np.zeros(len(parts) + 1, np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        m = {"vocab_size": vs, "doc_separator_id": separator_id, "num_tokens": int(flat.size), "num_docs": len(parts)}
        m.update(meta or {})
        return cls(flat.astype(token_dtype(vs)), offsets, m)


@dataclass
class ShardIndex:
    path: Path
    data: dict
    reused: bool = False
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        return list(self.data["splits"])

    @property
    def tokenizer_hash(self) -> str:
        return self.data["tokenizer_hash"]

    def split_info(self, split: str) -> dict:
        split = {"validation": "valid", "dev": "valid"}.get(split, split)
        if split not in self.data["splits"]:
            raise DataError(f"{self.path}: no split {split!r} (has {', '.join(self.splits)})")
        return self.data["splits"][split]

    def open(self, split: str) -> TokenDataset:
        info = self.split_info(split)
        dtype = np.dtype(self.data["dtype"])
        f = self.path / info["file"]
        expected = info["num_tokens"] * dtype.itemsize
        if not f.is_file() or f.stat().st_size != expected:
            raise DataError(f"{f}: missing or wrong size (expected {expected} bytes); re-run lmscale data prepare")
        if info["num_tokens"]:
            tokens = np.memmap(f, dtype=dtype, mode="r", shape=(info["num_tokens"],))
        else:
            tokens = np.zeros(0, dtype)
        offsets = np.load(self.path / info["docs_file"], mmap_mode="r")
        meta = {k: v for k, v in self.data.items() if k not in ("splits", "fingerprint")}
        meta.update(info)
        meta["split"] = split
        meta["sources"] = self.data["fingerprint"]["sources"]
        return TokenDataset(tokens, np.asarray(offsets, dtype=np.int64), meta, path=f)

    @classmethod
    def load(cls, shard_dir: str | Path) -> "ShardIndex":
        d = Path(shard_dir)
        f = d / "index.json"
        if not f.is_file():
            raise DataError(f"{d}: not a shard directory (no index.json); run lmscale data prepare")
        try:
            data = json.loads(f.read_text("utf-8"))
        except ValueError as exc:
            raise DataError(f"{f}: corrupt index ({exc})") from exc
        if data.get("format") != FORMAT:
            raise DataError(f"{f}: not an lmscale shard index")
        return cls(d, data)

    def is_complete(self) -> bool:
        dtype = np.dtype(self.data["dtype"])
        for info in self.data["splits"].values():
            f = self.path / info["file"]
            if not f.is_file() or f.stat().st_size != info["num_tokens"] * dtype.itemsize:
                return False
            if not (self.path / info["docs_file"]).is_file():
                return False
        return True


# ----------------------------------------------------------------------------- tokenizing

_worker_tok = None


def _init_worker(tokenizer_json: str | None, kind: str, tok_hash: str, use_fast: bool, meta: dict) -> None:
    """Pool initializer. Forked workers already hold the parent's tokenizer (`tokenizer_json` is
    None); others rebuild it with its meta, which holds a chosen end-of-text token."""
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if tokenizer_json is not None:
        _worker_tok = Tokenizer(Backend.from_str(tokenizer_json), kind=kind, meta=meta)
        _worker_tok._hash = tok_hash  # the parent's; saves re-serializing a large vocabulary per worker
    _encoders.clear()
    _encoders[tok_hash] = fast_bpe.CachedByteLevelEncoder(_worker_tok) if use_fast else None


_encoders: dict[str, object] = {}


def _fast_encoder(tok):
    """The cached byte-level encoder for `tok` when it reproduces the library exactly, else None."""
    key = tok.hash
    if key not in _encoders:
        _encoders.clear()
        _encoders[key] = fast_bpe.CachedByteLevelEncoder(tok) if fast_bpe.applicable(tok) else None
    return _encoders[key]


def encode_chunk(tok, docs: Sequence[str], dtype: np.dtype,
                 open_end: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of `docs`, each followed by the document separator; and per document its number of
    tokens, UTF-8 bytes and whitespace words (counted here so that workers share that work too).
    With `open_end` the last text is a piece of a document that goes on in the next chunk: no
    separator after it."""
    sep = tok.doc_separator_id
    fast = _fast_encoder(tok)
    if fast is not None:
        id_lists = fast.encode_batch(list(docs))
    else:
        enc = getattr(tok.backend, "encode_batch_fast", tok.backend.encode_batch)
        id_lists = [e.ids for e in enc(list(docs), add_special_tokens=False)]
    flat: list[int] = []
    lens = np.empty(len(id_lists), np.int64)
    last = len(id_lists) - 1 if open_end else -1
    for k, ids in enumerate(id_lists):
        if k != last:
            ids.append(sep)
        flat.extend(ids)
        lens[k] = len(ids)
    n_bytes = np.fromiter((len(d.encode("utf-8")) for d in docs), np.int64, len(docs))
    n_words = np.fromiter((len(d.split()) for d in docs), np.int64, len(docs))
    return np.array(flat, dtype=dtype), lens, n_bytes, n_words


def _work(args: tuple[list[str], str, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    docs, dtype, open_end = args
    return encode_chunk(_worker_tok, docs, np.dtype(dtype), open_end)


class _Open(list):
    """A chunk whose last text is a piece of a document that the next chunk goes on with."""


def _chunks(docs: Iterable[str], chunk_bytes: int, piece_chars: int | None = None) -> Iterator[list[str]]:
    """The documents in lists of about `chunk_bytes` characters. With `piece_chars`, a longer
    document is cut into pieces (`_pieces`), each ending an `_Open` chunk but the last: workers
    then hold a piece, never the whole document with its tokens as Python ints."""
    cur: list[str] = []
    size = 0
    for d in docs:
        if piece_chars is not None and len(d) > piece_chars:
            pieces = _pieces(d, piece_chars)
            d = next(pieces)
            for following in pieces:
                cur.append(d)
                yield _Open(cur)
                cur, size, d = [], 0, following
        cur.append(d)
        size += len(d)
        if size >= chunk_bytes:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


# a space between two letters or digits: every tokenizer `_cuts_are_exact` accepts ends a pre-token there
_CUT = re.compile(r"(?<=[^\W_]) (?=[^\W_])")


def _pieces(doc: str, size: int) -> Iterator[str]:
    """`doc` in pieces of at least `size` characters, each cut before a space between two letters
    or digits (the space starts the next piece); a stretch without such a space stays whole."""
    start = 0
    while len(doc) - start > size:
        m = _CUT.search(doc, start + size)
        if m is None:
            break
        yield doc[start:m.start()]
        start = m.start()
    yield doc[start:] if start else doc


_NORMALIZERS_PER_CHARACTER = frozenset({"Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "StripAccents",
                                        "BertNormalizer"})
_SPLIT_AT_SPACES = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_PER_PRE_TOKEN = frozenset({"ByteLevel", "BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Digits",
                            "Punctuation", "UnicodeScripts", "Split"})


def _normalizer_ok(n: dict | None) -> bool:
    """A normalizer that changes each character on its own, or runs of spaces (the unigram's)."""
    if n is None:
        return True
    kind = n.get("type")
    if kind == "Sequence":
        return all(_normalizer_ok(m) for m in n.get("normalizers") or [])
    if kind == "Replace":
        pattern = n.get("pattern") or {}
        return pattern.get("Regex") in (" {2,}", " +") or set(pattern.get("String") or "x") == {" "}
    return kind in _NORMALIZERS_PER_CHARACTER


def _splits_at_spaces(p: dict | None) -> bool:
    """A pre-tokenizer that always ends a pre-token before a space that follows a letter or digit
    (GPT-2's regex, BERT's, whitespace, SentencePiece's metaspace), then works per pre-token."""
    if p is None:
        return False
    kind = p.get("type")
    if kind == "ByteLevel":
        return bool(p.get("use_regex", True))
    if kind == "Metaspace":
        return bool(p.get("split", True))
    if kind == "Sequence":
        members = p.get("pretokenizers") or []
        return bool(members) and _splits_at_spaces(members[0]) and all(
            m.get("type") in _PER_PRE_TOKEN for m in members[1:])
    return kind in _SPLIT_AT_SPACES


_exact: dict[str, bool] = {}


def _cuts_are_exact(tok) -> bool:
    """Whether `tok` gives a document's tokens as the tokens of its `_pieces`, one after another.

    True for the pipelines lmscale trains and GPT-2's: a normalizer per character, a pre-tokenizer
    that splits where a piece is cut, no added token that holds a space or eats the space after a
    letter or digit, and no truncation or padding. Other tokenizers see every document whole."""
    key = tok.hash
    if key not in _exact:
        b = tok.backend

        def spec(part: Any) -> dict | None:  # one component of tokenizer.json, not the vocabulary too
            return None if part is None else json.loads(part.__getstate__())

        added = b.get_added_tokens_decoder().values()
        _exact[key] = (_normalizer_ok(spec(b.normalizer)) and _splits_at_spaces(spec(b.pre_tokenizer))
                       and b.truncation is None and b.padding is None
                       and not any(any(c.isspace() for c in t.content) or (t.rstrip and t.content[-1:].isalnum())
                                   for t in added))
    return _exact[key]


def _pool_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


class _Tokenizing:
    """Tokenize a stream of document chunks in order, with a process pool when it pays off; at
    most `IN_FLIGHT_PER_WORKER` chunks per worker are queued, so memory stays bounded whatever the
    corpus size."""

    def __init__(self, tok, workers: int, total_bytes: int | None):
        self.tok = tok
        self.workers = workers if total_bytes is None or total_bytes >= MIN_PARALLEL_BYTES else 1
        self.pool = None

    def __enter__(self) -> "_Tokenizing":
        global _worker_tok
        if self.workers > 1:
            old = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # children inherit it at fork: no Rayon warning
            try:
                ctx = _pool_context()
                use_fast = _fast_encoder(self.tok) is not None
                if ctx.get_start_method() == "fork":
                    _worker_tok, payload = self.tok, None  # inherited by the children: nothing to parse
                else:
                    payload = self.tok.backend.to_str()
                self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                     initargs=(payload, self.tok.kind, self.tok.hash, use_fast,
                                               self.tok.meta))
            finally:
                if old is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = old
        return self

    def __exit__(self, *exc) -> None:
        global _worker_tok
        if self.pool is not None:
            if exc[0] is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            _worker_tok = None

    def map(self, chunks: Iterable[list[str]], dtype: np.dtype) -> Iterator[tuple]:
        """(tokens, tokens per doc, bytes per doc, words per doc) of each chunk, in order; a
        document cut into pieces (`_Open` chunks) is counted once, in the chunk where it ends."""
        carry = None
        for (tokens, lens, n_bytes, n_words), open_end in self._encoded(chunks, dtype):
            if carry is not None:
                lens[0], n_bytes[0], n_words[0] = lens[0] + carry[0], n_bytes[0] + carry[1], n_words[0] + carry[2]
                carry = None
            if open_end:
                carry = (lens[-1], n_bytes[-1], n_words[-1])
                lens, n_bytes, n_words = lens[:-1], n_bytes[:-1], n_words[:-1]
            yield tokens, lens, n_bytes, n_words

    def _encoded(self, chunks: Iterable[list[str]], dtype: np.dtype) -> Iterator[tuple[tuple, bool]]:
        if self.pool is None:
            for c in chunks:
                open_end = isinstance(c, _Open)
                yield encode_chunk(self.tok, c, dtype, open_end), open_end
            return
        pending: collections.deque = collections.deque()
        for c in chunks:
            open_end = isinstance(c, _Open)
            pending.append((self.pool.apply_async(_work, ((list(c), dtype.str, open_end),)), open_end))
            while len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:
                result, open_end = pending.popleft()
                yield result.get(), open_end
        while pending:
            result, open_end = pending.popleft()
            yield result.get(), open_end


# ----------------------------------------------------------------------------- prepare


def _fingerprint(corpus: Corpus, tok, valid_fraction: float, split_seed: int, errors: str) -> dict:
    sources = [source_fingerprint(f) for f in corpus.files()]
    fp = {"format_version": VERSION, "tokenizer_hash": tok.hash, "corpus": corpus.name,
          "doc_format": corpus.doc_format, "errors": errors, "sources": sources}
    if corpus.text_field != DEFAULT_TEXT_FIELD:
        fp["text_field"] = corpus.text_field
    if tok.meta.get("eos_token"):
        fp["eos_token"] = tok.meta["eos_token"]
    if corpus.derived_valid:
        fp.update(valid_fraction=float(valid_fraction), split_seed=int(split_seed))
    return fp


def _progress(enabled: bool | None) -> Progress:
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not show, transient=True, console=Console(stderr=True))


class _LogLines:
    """Without a terminal (a log file, CI) the bar is not drawn: a line every `every_s` seconds says
    how far tokenizing is instead, so a long preparation is never silent; a quick one prints nothing."""

    def __init__(self, enabled: bool | None, what: str, total: int | None, every_s: float = 15.0) -> None:
        self.on = enabled is None and not sys.stderr.isatty()
        self.what, self.total, self.every_s = what, total, every_s
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.on or now - self.last < self.every_s:
            return
        self.last = now
        share = f" of {self.total / 1e6:,.1f} MB ({done / self.total:.0%})" if self.total else " MB"
        print(f"lmscale: {self.what}: {done / 1e6:,.1f}{share} after {now - self.t0:.0f} s", file=sys.stderr,
              flush=True)


@dataclass
class _SplitWriter:
    """One split's token file, document lengths and byte/word counts, written as chunks arrive."""

    path: Path
    dtype: np.dtype
    fh: Any = None
    lens: list = field(default_factory=list)
    n_bytes: int = 0
    n_words: int = 0

    def __post_init__(self) -> None:
        self.fh = open(self.path, "wb")

    def write(self, tokens: np.ndarray, lens: np.ndarray, n_bytes: int, n_words: int) -> None:
        self.fh.write(memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)))  # no bytes copy
        self.lens.append(np.asarray(lens, np.int64))
        self.n_bytes += int(n_bytes)
        self.n_words += int(n_words)

    def finish(self) -> np.ndarray:
        """Close the token file; the documents' start offsets (and the end)."""
        self.fh.close()
        lens = np.concatenate(self.lens) if self.lens else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, np.int64)
        offsets[1:] = np.cumsum(lens)
        return offsets

    def close(self, docs_file: Path) -> dict:
        """Finish a split that is kept: synced to disk, its offsets saved beside it."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        offsets = self.finish()
        np.save(docs_file, offsets)
        return {"file": self.path.name, "docs_file": docs_file.name, "num_tokens": int(offsets[-1]),
                "num_docs": len(offsets) - 1, "n_bytes": self.n_bytes, "n_words": self.n_words}


def _hold_out(tmp: Path, whole: _SplitWriter, corpus: Corpus, dtype: np.dtype,
              doc_bytes: np.ndarray, doc_words: np.ndarray) -> dict[str, dict]:
    """Split the tokenized training documents into train and the seeded held-out valid share,
    copying the token file block by block (never whole in memory)."""
    offsets = whole.finish()  # a temporary: read back below, never kept
    n = len(offsets) - 1
    held = np.zeros(n, bool)
    held[sorted(held_out_indices(n, corpus.valid_fraction, corpus.split_seed))] = True
    out = {"train": _SplitWriter(tmp / "train.bin", dtype), "valid": _SplitWriter(tmp / "valid.bin", dtype)}
    lens = np.diff(offsets)
    with open(whole.path, "rb") as fh:
        a = 0
        while a < n:  # blocks of about HOLD_OUT_BLOCK_TOKENS tokens, whole documents
            b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + HOLD_OUT_BLOCK_TOKENS, side="right")) - 1)
            b = min(n, b)
            tokens = np.fromfile(fh, dtype=dtype, count=int(offsets[b] - offsets[a]))
            mask = np.repeat(held[a:b], lens[a:b])
            for split, sel, docs in (("train", ~mask, ~held[a:b]), ("valid", mask, held[a:b])):
                out[split].write(tokens[sel], lens[a:b][docs], doc_bytes[a:b][docs].sum(), doc_words[a:b][docs].sum())
            a = b
    whole.path.unlink()
    return {s: w.close(tmp / f"{s}.docs.npy") for s, w in out.items()}


def prepare(corpus: Corpus | str | os.PathLike, tokenizer, out_dir: str | os.PathLike,
            valid_fraction: float = 0.02, split_seed: int = 1234, errors: str = "strict",
            workers: int | None = None, progress: bool | None = None, force: bool = False,
            text_field: str = DEFAULT_TEXT_FIELD) -> ShardIndex:
    """Tokenize every split of `corpus` into `out_dir`; a no-op when the inputs are unchanged.

    `tokenizer` is a `Tokenizer` or a path to one. Corpora without their own validation split
    hold out `valid_fraction` of their documents (chosen with `split_seed`). `workers` processes
    tokenize in parallel (default: all cores). Documents are streamed from the sources and written
    as they are tokenized, so memory stays bounded by a few chunks per worker whatever the corpus
    size; progress (bytes read, rate, time left) goes to stderr when it is a terminal.
    `text_field` names the document field of JSON / Parquet / `datasets` records (dotted paths
    reach into nested records).
    """
    t0 = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if isinstance(corpus, Corpus):
        corpus = Corpus(**{**corpus.__dict__, "errors": errors, "valid_fraction": valid_fraction,
                           "split_seed": split_seed, "stats": {}})
    else:
        corpus = resolve_corpus(corpus, errors=errors, valid_fraction=valid_fraction, split_seed=split_seed,
                                text_field=text_field)
    if corpus.kind == "tasks":
        raise DataError(f"{corpus.name} is a collection of few-shot tasks, not a text corpus to tokenize")
    if tok.doc_separator_id is None:
        raise DataError(f"the tokenizer has no document separator token ({', '.join(DOC_SEPARATORS)}); "
                        f"set one with `lmscale tokenizer set-eos TOKENIZER --token TOKEN`")
    out = Path(out_dir)
    _check_shard_out(out)
    if "train" not in corpus.splits:
        raise DataError(f"corpus {corpus.name!r} has no training documents")
    fp = _fingerprint(corpus, tok, valid_fraction, split_seed, errors)
    if not force and (out / "index.json").is_file():
        try:
            old = ShardIndex.load(out)
        except DataError:
            old = None
        if old is not None and old.data.get("fingerprint") == fp and old.is_complete():
            old.reused = True
            old.seconds = time.perf_counter() - t0
            return old

    dtype = token_dtype(tok.vocab_size)
    sizes = [source_size(f) for f in corpus.files()]
    total = None if any(x is None for x in sizes) else sum(sizes)
    specials = {k: getattr(tok, k) for k in ("pad_id", "unk_id", "eos_id", "bos_id", "mask_id", "cls_id", "sep_id")}
    index = {"format": FORMAT, "version": VERSION, "corpus": corpus.name, "tokenizer_hash": tok.hash,
             "tokenizer_kind": tok.kind, "vocab_size": tok.vocab_size, "dtype": dtype.name,
             "doc_separator_id": tok.doc_separator_id, **specials, "fingerprint": fp, "splits": {}}
    workers = default_workers() if workers is None else max(1, int(workers))
    stats = corpus.stats
    with atomic_directory(out) as tmp, _Tokenizing(tok, workers, total) as pool, _progress(progress) as bar:
        task = bar.add_task(f"tokenizing {corpus.name}", total=total)
        lines = _LogLines(progress, f"tokenizing {corpus.name} into {out}", total)
        infos: dict[str, dict] = {}
        for split in ("train", "valid", "test"):
            if split not in corpus.splits:
                continue
            hold_out = split == "train" and corpus.derived_valid
            writer = _SplitWriter(tmp / (".all.bin" if hold_out else f"{split}.bin"), dtype)
            doc_bytes: list[np.ndarray] = []
            doc_words: list[np.ndarray] = []
            chunks = _chunks(corpus.stream_split(split), CHUNK_BYTES, PIECE_CHARS if _cuts_are_exact(tok) else None)
            for arr, lens, nb, nw in pool.map(chunks, dtype):
                writer.write(arr, lens, nb.sum(), nw.sum())
                if hold_out:
                    doc_bytes.append(nb)
                    doc_words.append(nw)
                bar.update(task, completed=stats.get("bytes_read", 0))
                lines.update(stats.get("bytes_read", 0))
            if hold_out:
                infos.update(_hold_out(tmp, writer, corpus, dtype, _cat(doc_bytes), _cat(doc_words)))
            else:
                infos[split] = writer.close(tmp / f"{split}.docs.npy")
        for split in ("train", "valid", "test"):
            if split in infos:
                if infos[split]["num_docs"] == 0 and split != "train":
                    for k in ("file", "docs_file"):
                        (tmp / infos[split][k]).unlink()
                    continue
                index["splits"][split] = {**infos[split],
                                          "own_split": not (split == "valid" and corpus.derived_valid)}
        if not index["splits"].get("train", {}).get("num_docs"):
            raise DataError(f"corpus {corpus.name!r} has no training documents")
        index["replaced_sequences"] = int(stats.get("replaced", 0))
        index["workers"] = pool.workers
        index["encoder"] = "cached-byte-level-bpe" if _fast_encoder(tok) is not None else "tokenizers"
        atomic_write_json(tmp / "index.json", index)
        mark_output_dir(tmp, SHARDS_KIND, whole=True)
    result = ShardIndex(out, index, reused=False, seconds=time.perf_counter() - t0)
    return result


SHARDS_KIND = "shards"
_SHARD_FILES = frozenset({"index.json", MARKER} | {f"{s}{x}" for s in ("train", "valid", "test")
                                                    for x in (".bin", ".docs.npy")})


def _owns_shard_dir(out: Path) -> bool:
    """Whether `out` is a shard directory lmscale wrote: its marker says so, or (shards from before
    the marker) it holds only shard files and an index.json in lmscale's format. A directory is
    replaced as a whole, so a user's file beside an index.json makes it theirs."""
    if is_marked(out, (SHARDS_KIND,)):
        return not foreign_entries(out, names=_SHARD_FILES)  # a user's file beside the shards makes it theirs
    if not only_known_entries(out, _SHARD_FILES):
        return False
    try:
        data = json.loads((out / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _check_shard_out(out: Path) -> None:
    """Refuse an output that is a file, lies under a file, or is a non-empty directory lmscale did not write."""
    if out.is_symlink():
        raise DataError(f"--out {out}: is a symbolic link; the shard directory is replaced as a whole and "
                        f"never through a link, so give a new or empty directory")
    for anc in out.parents:
        if anc.exists():
            if not anc.is_dir():
                raise DataError(f"--out {out}: {anc} is a file, so no directory can be made there; "
                                f"give a new or empty directory")
            break
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _owns_shard_dir(out))):
        raise DataError(f"--out {out}: exists and is not a shard directory lmscale wrote; the output directory "
                        f"is replaced as a whole, so give a new or empty directory")


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
