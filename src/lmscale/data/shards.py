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

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from tokenizers import Tokenizer as Backend

from lmscale.data.catalog import Corpus, resolve_corpus
from lmscale.errors import DataError
from lmscale.io import atomic_directory, atomic_write_json, sha256_file
from lmscale.tokenization import Tokenizer, fast_bpe

FORMAT = "lmscale-shards"
VERSION = 1
CHUNK_BYTES = 256 * 1024
MIN_PARALLEL_BYTES = 1 << 20


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


def _init_worker(tokenizer_json: str | None, kind: str, tok_hash: str, use_fast: bool) -> None:
    """Pool initializer. Forked workers already hold the parent's tokenizer (`tokenizer_json` is None)."""
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if tokenizer_json is not None:
        _worker_tok = Tokenizer(Backend.from_str(tokenizer_json), kind=kind)
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


def encode_chunk(tok, docs: Sequence[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Tokens of `docs`, each followed by the document separator; each document's length; and the
    chunk's UTF-8 bytes and whitespace words (counted here so that workers share that work too)."""
    sep = tok.doc_separator_id
    fast = _fast_encoder(tok)
    if fast is not None:
        id_lists = fast.encode_batch(list(docs))
    else:
        enc = getattr(tok.backend, "encode_batch_fast", tok.backend.encode_batch)
        id_lists = [e.ids for e in enc(list(docs), add_special_tokens=False)]
    flat: list[int] = []
    lens = np.empty(len(id_lists), np.int64)
    for k, ids in enumerate(id_lists):
        ids.append(sep)
        flat.extend(ids)
        lens[k] = len(ids)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_words = sum(len(d.split()) for d in docs)
    return np.array(flat, dtype=dtype), lens, n_bytes, n_words


def _work(args: tuple[list[str], str]) -> tuple[np.ndarray, np.ndarray, int, int]:
    docs, dtype = args
    return encode_chunk(_worker_tok, docs, np.dtype(dtype))


def _chunks(docs: list[str], chunk_bytes: int) -> Iterator[list[str]]:
    cur: list[str] = []
    size = 0
    for d in docs:
        cur.append(d)
        size += len(d)
        if size >= chunk_bytes:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


def _pool_context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


class _Tokenizing:
    """Tokenize lists of documents in order, with a process pool when it pays off."""

    def __init__(self, tok, workers: int, total_bytes: int):
        self.tok = tok
        self.workers = workers if total_bytes >= MIN_PARALLEL_BYTES else 1
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
                                     initargs=(payload, self.tok.kind, self.tok.hash, use_fast))
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

    def map(self, chunks: list[list[str]], dtype: np.dtype) -> Iterator[tuple[int, tuple]]:
        if self.pool is None:
            for c in chunks:
                yield sum(len(d) for d in c), encode_chunk(self.tok, c, dtype)
            return
        results = self.pool.imap(_work, [(c, dtype.str) for c in chunks])
        for c, r in zip(chunks, results):
            yield sum(len(d) for d in c), r


# ----------------------------------------------------------------------------- prepare


def _fingerprint(corpus: Corpus, tok, valid_fraction: float, split_seed: int, errors: str) -> dict:
    sources = [{"path": str(f), "size": f.stat().st_size, "sha256": sha256_file(f)} for f in corpus.files()]
    fp = {"format_version": VERSION, "tokenizer_hash": tok.hash, "corpus": corpus.name,
          "doc_format": corpus.doc_format, "errors": errors, "sources": sources}
    if corpus.derived_valid:
        fp.update(valid_fraction=float(valid_fraction), split_seed=int(split_seed))
    return fp


def _progress(enabled: bool | None, total: int) -> Progress:
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=not show, transient=True, console=Console(stderr=True))


def prepare(corpus: Corpus | str | os.PathLike, tokenizer, out_dir: str | os.PathLike,
            valid_fraction: float = 0.02, split_seed: int = 1234, errors: str = "strict",
            workers: int | None = None, progress: bool | None = None, force: bool = False) -> ShardIndex:
    """Tokenize every split of `corpus` into `out_dir`; a no-op when the inputs are unchanged.

    `tokenizer` is a `Tokenizer` or a path to one. Corpora without their own validation split
    hold out `valid_fraction` of their documents (chosen with `split_seed`). `workers` processes
    tokenize in parallel (default: all cores).
    """
    t0 = time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    if isinstance(corpus, Corpus):
        corpus = Corpus(**{**corpus.__dict__, "errors": errors, "valid_fraction": valid_fraction,
                           "split_seed": split_seed, "stats": {}})
    else:
        corpus = resolve_corpus(corpus, errors=errors, valid_fraction=valid_fraction, split_seed=split_seed)
    if corpus.kind == "tasks":
        raise DataError(f"{corpus.name} is a collection of few-shot tasks, not a text corpus to tokenize")
    if tok.doc_separator_id is None:
        raise DataError("the tokenizer has no document separator token (<|endoftext|>, [SEP] or </s>)")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "index.json").is_file())):
        raise DataError(f"{out}: exists and is not a shard directory; the output directory is replaced "
                        f"as a whole, so give a new or empty directory")
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
    split_docs = {s: d for s, d in corpus.all_documents().items() if d}
    if "train" not in split_docs:
        raise DataError(f"corpus {corpus.name!r} has no training documents")
    total_chars = sum(len(d) for docs in split_docs.values() for d in docs)
    specials = {k: getattr(tok, k) for k in ("pad_id", "unk_id", "eos_id", "bos_id", "mask_id", "cls_id", "sep_id")}
    index = {"format": FORMAT, "version": VERSION, "corpus": corpus.name, "tokenizer_hash": tok.hash,
             "tokenizer_kind": tok.kind, "vocab_size": tok.vocab_size, "dtype": dtype.name,
             "doc_separator_id": tok.doc_separator_id, **specials, "fingerprint": fp, "splits": {}}
    workers = default_workers() if workers is None else max(1, int(workers))
    with atomic_directory(out) as tmp, _Tokenizing(tok, workers, total_chars) as pool, \
            _progress(progress, total_chars) as bar:
        task = bar.add_task(f"tokenizing {corpus.name}", total=total_chars)
        for split, docs in split_docs.items():
            lens_parts = []
            n_tokens = n_bytes = n_words = 0
            with open(tmp / f"{split}.bin", "wb") as fh:
                for done, (arr, lens, nb, nw) in pool.map(list(_chunks(docs, CHUNK_BYTES)), dtype):
                    fh.write(arr.tobytes())
                    n_tokens += int(arr.shape[0])
                    n_bytes += nb
                    n_words += nw
                    lens_parts.append(lens)
                    bar.update(task, advance=done)
                fh.flush()
                os.fsync(fh.fileno())
            offsets = np.zeros(len(docs) + 1, np.int64)
            offsets[1:] = np.cumsum(np.concatenate(lens_parts))
            np.save(tmp / f"{split}.docs.npy", offsets)
            index["splits"][split] = {
                "file": f"{split}.bin", "docs_file": f"{split}.docs.npy", "num_tokens": n_tokens,
                "num_docs": len(docs), "n_bytes": n_bytes, "n_words": n_words,
                "own_split": not (split == "valid" and corpus.derived_valid),
            }
        index["replaced_sequences"] = int(corpus.stats.get("replaced", 0))
        index["workers"] = pool.workers
        index["encoder"] = "cached-byte-level-bpe" if _fast_encoder(tok) is not None else "tokenizers"
        atomic_write_json(tmp / "index.json", index)
    result = ShardIndex(out, index, reused=False, seconds=time.perf_counter() - t0)
    return result
