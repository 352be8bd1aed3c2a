"""Reading text files the same way everywhere, with errors that name the file and the byte offset.

Every path a user can give (.txt, .txt.gz, .jsonl with a `text` field, a directory of those)
goes through `read_text`, so tokenizer training, shard preparation and evaluation all reject the
same bad inputs the same way: missing paths, empty files, binary files, invalid UTF-8, truncated
gzip streams. With `errors="replace"` undecodable bytes become U+FFFD and are counted.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import json
import os
import re
import threading
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from lmscale.errors import DataError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".raw", ".tokens", ".md", ".tsv")
ERRORS = ("strict", "replace")

_count = threading.local()


def _counting_replace(exc: UnicodeDecodeError):
    _count.n = getattr(_count, "n", 0) + 1
    return "\ufffd", exc.end


codecs.register_error("lmscale-count-replace", _counting_replace)


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if _is_gzip(path):
        try:
            raw = gzip.decompress(raw)
        except EOFError as exc:
            raise DataError(f"{path}: truncated gzip file (compressed stream ends early; re-download it)") from exc
        except (OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from exc
    return raw


def decode_text(raw: bytes, path: Path, errors: str = "strict", compressed: bool = False) -> tuple[str, int]:
    """UTF-8 decode; returns (text, number of replaced byte sequences)."""
    if errors not in ERRORS:
        raise DataError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    where = " of the decompressed text" if compressed else ""
    nul = raw.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        raise DataError(f"{path}: looks like a binary file (NUL byte at byte offset {nul}{where}), not text")
    if errors == "strict":
        try:
            return raw.decode("utf-8"), 0
        except UnicodeDecodeError as exc:
            bad = raw[exc.start:exc.start + 4]
            raise DataError(f"{path}: invalid UTF-8 at byte offset {exc.start}{where} (bytes {bad!r}); "
                            f"re-encode the file as UTF-8 or use --errors replace") from None
    _count.n = 0
    text = raw.decode("utf-8", errors="lmscale-count-replace")
    n = _count.n
    if n:
        warnings.warn(f"{path}: replaced {n} undecodable byte sequence(s) with U+FFFD", stacklevel=3)
    return text, n


def read_text(path: str | Path, errors: str = "strict", allow_empty: bool = False) -> tuple[str, int]:
    """Whole file as text (gzip transparently). Returns (text, replaced count)."""
    path = Path(path)
    raw = read_bytes(path)
    if not raw.strip() and not allow_empty:
        raise DataError(f"{path}: empty file (no text to read)")
    return decode_text(raw, path, errors, compressed=_is_gzip(path))


def is_jsonl(path: Path) -> bool:
    return path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")


def jsonl_texts(path: Path, text: str, field: str = "text") -> Iterator[str]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or field not in rec:
            raise DataError(f"{path}: line {lineno}: record has no {field!r} field")
        if not isinstance(rec[field], str):
            raise DataError(f"{path}: line {lineno}: field {field!r} is not a string")
        yield rec[field]


def tsv_texts(path: Path, text: str, field: str = "sentence") -> Iterator[str]:
    """The `sentence` column of a GLUE-style TSV (the first column when there is no such header)."""
    rows = csv.reader(text.splitlines(), delimiter="\t")
    header = next(rows, None)
    if header is None:
        return
    col = header.index(field) if field in header else 0
    for lineno, row in enumerate(rows, 2):
        if len(row) <= col:
            raise DataError(f"{path}: line {lineno}: missing column {col + 1}")
        yield row[col]


def expand_paths(path: str | Path) -> list[Path]:
    """A file as itself; a directory as its text files (recursively, sorted, hidden files skipped)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(TEXT_SUFFIXES)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise DataError(f"{p}: directory has no text files ({', '.join(TEXT_SUFFIXES)})")
    return files


_WIKITEXT_HEADER = re.compile(r"^ = (?!=)[^\n]* = \n", re.M)
_HEADER = re.compile(r"^= [^=].* =[ \t]*$", re.M)
_BLANK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def _slices(text: str, starts: list[int]) -> list[str]:
    bounds = [0] + [s for s in starts if s > 0] + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def split_documents(text: str, doc_format: str = "paragraphs") -> list[str]:
    """Cut a file's text into documents (contiguous slices; whitespace-only pieces dropped).

    - `wikitext`: an article starts at each top-level ` = Title = ` line (WikiText's own layout);
    - `headers`: a document starts at each `= name =` line (the State of the Union mirror);
    - `paragraphs`: documents are separated by blank lines; a file without blank lines has one
      document per line;
    - `file`: the whole text is one document.
    """
    if doc_format == "file":
        docs = [text]
    elif doc_format == "wikitext":
        docs = _slices(text, [m.start() for m in _WIKITEXT_HEADER.finditer(text)])
    elif doc_format == "headers":
        docs = _slices(text, [m.start() for m in _HEADER.finditer(text)])
    elif doc_format == "lines":
        docs = text.splitlines()
    elif doc_format == "paragraphs":
        ends = [m.end() for m in _BLANK.finditer(text)]
        docs = _slices(text, ends) if ends else text.splitlines()
    else:
        raise DataError(f"unknown document format {doc_format!r}")
    return [d for d in docs if d.strip()]


def file_documents(path: Path, errors: str = "strict", doc_format: str | None = None,
                   stats: dict | None = None) -> list[str]:
    """Documents of one file: JSONL records, or text cut by `doc_format` (default paragraphs)."""
    text, replaced = read_text(path, errors=errors)
    if stats is not None:
        stats["replaced"] = stats.get("replaced", 0) + replaced
    if is_jsonl(path):
        docs = [t for t in jsonl_texts(path, text) if t.strip()]
    elif path.name.endswith((".tsv", ".tsv.gz")):
        docs = [t for t in tsv_texts(path, text) if t.strip()]
    else:
        docs = split_documents(text, doc_format or "paragraphs")
    if not docs:
        raise DataError(f"{path}: no documents (only whitespace)")
    return docs


def iter_texts(source: str | os.PathLike | Iterable[str | os.PathLike], errors: str = "strict") -> Iterator[str]:
    """The texts under one path or several, as `lmscale.tokenization.train_tokenizer` takes them:
    the lines of each text file, the `text` of each JSONL record, the sentences of a TSV, for every
    file of a directory (`expand_paths`). Every path is checked before the first text is read."""
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = [f for p in paths for f in expand_paths(p)]
    return _file_texts(files, errors)


def _file_texts(files: list[Path], errors: str) -> Iterator[str]:
    for f in files:
        text, _ = read_text(f, errors=errors)
        if is_jsonl(f):
            yield from jsonl_texts(f, text)
        elif f.name.endswith((".tsv", ".tsv.gz")):
            yield from tsv_texts(f, text)
        else:
            yield from text.splitlines()
