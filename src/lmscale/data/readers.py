"""Reading corpora the same way everywhere, streamed, with errors that name the file and the byte offset.

Every path a user can give goes through here, so tokenizer training, shard preparation and
evaluation all read and reject the same inputs the same way:

- text (`.txt`, `.raw`, `.tokens`, `.md`), cut into documents by a document format;
- JSON Lines (`.jsonl`, or `.json` holding one record per line, or one JSON array of records),
  the document in the record's `text_field` (default `text`; a dotted path such as
  `meta.body` reaches into nested objects);
- GLUE-style `.tsv` (the `sentence` column);
- any of these compressed with gzip (`.gz`) or Zstandard (`.zst`, extra `lmscale[data]`);
- Parquet (`.parquet`, pyarrow, extra `lmscale[data]`), the `text_field` column (dotted paths
  reach into struct columns), read one record batch at a time;
- a directory of any of these.

Files are read in blocks and line by line (`iter_file_documents`), so no file is ever held in
memory whole (except a `.json` file that is one JSON array, and a text file read with the `file`
document format, which is one document by definition). Missing paths, empty files, binary files,
invalid UTF-8 and truncated gzip streams fail naming the file; with `errors="replace"`
undecodable bytes become U+FFFD and are counted.
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import gzip
import importlib
import io
import json
import os
import re
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional

from lmscale.errors import DataError, one_line

_PLAIN_SUFFIXES = (".txt", ".jsonl", ".json", ".raw", ".tokens", ".md", ".tsv")
TEXT_SUFFIXES = _PLAIN_SUFFIXES + tuple(f"{s}{c}" for s in _PLAIN_SUFFIXES for c in (".gz", ".zst")) + (".parquet",)
ERRORS = ("strict", "replace")
DEFAULT_TEXT_FIELD = "text"
BLOCK_BYTES = 1 << 20  # bytes read at a time
NUL_SCAN_BYTES = 1 << 16  # a NUL byte this early means a binary file

_count = threading.local()
# where each command takes the choice to replace undecodable bytes
REPLACE_HINT = "--errors replace; in pretrain --data.errors replace"


def _counting_replace(exc: UnicodeDecodeError):
    _count.n = getattr(_count, "n", 0) + 1
    return "\ufffd", exc.end


codecs.register_error("lmscale-count-replace", _counting_replace)


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def existing_file(path: str | os.PathLike) -> Path:
    """`path` as a Path when it is a file; otherwise an error that names it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    return path


def read_bytes(path: Path) -> bytes:
    path = existing_file(path)
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
                            f"re-encode the file as UTF-8, or replace undecodable bytes ({REPLACE_HINT})") from None
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


def text_rows(text: str, keepends: bool = False) -> list[str]:
    """The rows of a task, input or records file: split at `\n` only (a `\r` before it is part of
    the line end). `str.splitlines` also splits at form feeds, U+2028 and other characters that
    JSON strings and text fields may hold raw, which would make one row two."""
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    if keepends:
        return [r + "\n" for r in rows[:-1]] + ([rows[-1] + ("\n" if text.endswith("\n") else "")] if rows else [])
    return [r[:-1] if r.endswith("\r") else r for r in rows]


def one_line_rows(path: str | Path, text: str | Iterable[str], delimiter: str,
                  at: Optional[Callable[[int], str]] = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a TSV/CSV whose every row is one line: `text` is the file's text or
    its lines, each with its `\n`. Lines end at `\n` only; fields may be quoted, but a quoted field
    that runs past the end of its line (an unbalanced quote swallowing the rows after it) is an
    error naming the line (`at(n)`, by default "PATH: line n"), never rows merged."""
    at = at or (lambda n: f"{path}: line {n}")
    rows = csv.reader(text_rows(text, keepends=True) if isinstance(text, str) else text, delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    previous = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{at(rows.line_num)}: not readable as {kind} ({exc})") from None
        lineno, first, previous = rows.line_num, previous + 1, rows.line_num
        if lineno != first:
            raise DataError(f"{at(first)}: a quoted field runs from line {first} to line {lineno} "
                            "(an unbalanced quote?); each row must be on one line: close or remove the quote")
        yield lineno, row


def tsv_texts(path: Path, text: str | Iterable[str], field: str = "sentence") -> Iterator[str]:
    """The `sentence` column of a GLUE-style TSV (the first column when there is no such header);
    `text` is the file's text or its lines, each with its `\n` (`iter_lines`). A row is one line:
    lines end at `\n` only (a form feed or U+2028 in a sentence is text), blank lines are skipped,
    and a quoted field that runs past the end of its line is an error, never rows merged."""
    col = None
    for lineno, row in one_line_rows(path, text, "\t"):
        if not any(f.strip() for f in row):
            continue
        if col is None:
            col = row.index(field) if field in row else 0
            continue
        if len(row) <= col:
            raise DataError(f"{path}: line {lineno}: missing column {col + 1}")
        yield row[col]


def expand_paths(path: str | Path) -> list[Path]:
    """A file as itself; a `datasets` save_to_disk directory as its split directories; a directory
    as its corpus files (recursively, sorted, hidden files skipped)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_file():
        return [p]
    if is_saved_dataset(p):
        return [d for ds in saved_dataset_splits(p).values() for d in ds]
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
                   stats: dict | None = None, text_field: str = DEFAULT_TEXT_FIELD) -> list[str]:
    """Documents of one file: records' text fields, or text cut by `doc_format` (default paragraphs)."""
    return list(iter_file_documents(path, errors, doc_format, stats, text_field))


def iter_texts(source: str | os.PathLike | Iterable[str | os.PathLike], errors: str = "strict",
               text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """The texts under one path or several, as `lmscale.tokenization.train_tokenizer` takes them:
    the lines of each text file, the text field of each JSON / Parquet record, the sentences of a
    TSV, for every file of a directory (`expand_paths`), streamed. Every path is checked before the
    first text is read."""
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = [f for p in paths for f in expand_paths(p)]
    return _file_texts(files, errors, text_field)


def _file_texts(files: list[Path], errors: str, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    for f in files:
        kind = record_format(f)
        if f.is_dir():  # a saved Dataset's split directory
            yield from _saved_dataset_texts(f, text_field.split("."), text_field, None)
        elif kind in ("json", "parquet"):
            yield from iter_records(f, text_field, errors)
        elif kind == "tsv":
            yield from tsv_texts(f, iter_lines(f, errors))
        else:
            yield from _split_lines(iter_lines(f, errors))


# ----------------------------------------------------------------------------- streaming


def compression(path: Path) -> str | None:
    name = path.name
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else None


def record_format(path: Path) -> str:
    """`json`, `parquet`, `tsv` or `text`, from the file name (a .gz / .zst suffix looked through)."""
    name = path.name
    for c in (".gz", ".zst"):
        if name.endswith(c):
            name = name[: -len(c)]
    if name.endswith((".jsonl", ".json")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".tsv"):
        return "tsv"
    return "text"


def optional_import(module: str, extra: str, what: str):
    """An optional dependency, or a one-line DataError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what} needs the {module} package: pip install 'lmscale[{extra}]'") from None


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read from disk (progress of compressed files too)."""

    def __init__(self, fh, stats: dict | None) -> None:
        self.fh = fh
        self.stats = stats

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.fh.readinto(b)
        if self.stats is not None and n:
            self.stats["bytes_read"] = self.stats.get("bytes_read", 0) + n
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a Zstandard file, frame after frame. A file that ends inside a
    frame is an error: zstandard's stream reader just stops there, which would read a file cut in
    half as a whole one with fewer documents."""

    CHUNK = 1 << 16  # compressed bytes fed at a time

    def __init__(self, fh: BinaryIO, dctx: Any, path: Path) -> None:
        super().__init__()
        self.fh, self.dctx, self.path = fh, dctx, path
        self.obj: Any = None
        self.out = b""
        self.unused = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.out:
            chunk = self.unused or self.fh.read(self.CHUNK)
            self.unused = b""
            if not chunk:
                if self.obj is not None and not self.obj.eof:
                    raise DataError(f"{self.path}: truncated Zstandard file (the last frame ends early; "
                                    "re-download it)")
                return 0
            if self.obj is None or self.obj.eof:
                self.obj = self.dctx.decompressobj()
            self.out = self.obj.decompress(chunk)
            if self.obj.eof:
                self.unused = self.obj.unused_data
        n = min(len(b), len(self.out))
        b[:n] = self.out[:n]
        self.out = self.out[n:]
        return n


@contextlib.contextmanager
def open_binary(path: Path, stats: dict | None = None) -> Iterator[BinaryIO]:
    """The file's (decompressed) bytes as a stream; missing paths and directories fail naming the file."""
    path = existing_file(path)
    try:
        raw = open(path, "rb", buffering=0)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    counted = io.BufferedReader(_Counted(raw, stats), BLOCK_BYTES)
    kind = compression(path)
    try:
        if kind == "gzip":
            yield gzip.GzipFile(fileobj=counted, mode="rb")
        elif kind == "zstd":
            zstd = optional_import("zstandard", "data", f"{path.name} (Zstandard)")
            yield io.BufferedReader(_ZstdFrames(counted, zstd.ZstdDecompressor(), path), BLOCK_BYTES)
        else:
            yield counted
    finally:
        counted.close()


def _read_blocks(path: Path, fh: BinaryIO) -> Iterator[bytes]:
    while True:
        try:
            b = fh.read(BLOCK_BYTES)
        except EOFError as exc:
            raise DataError(f"{path}: truncated gzip file (compressed stream ends early; re-download it)") from exc
        except DataError:
            raise
        except (OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt {compression(path) or ''} file ({exc})") from exc
        except Exception as exc:  # zstandard.ZstdError and friends name no file
            raise DataError(f"{path}: corrupt or truncated compressed file ({exc})") from exc
        if not b:
            return
        yield b


def iter_lines(path: Path, errors: str = "strict", stats: dict | None = None,
               allow_empty: bool = False) -> Iterator[str]:
    """The file's decoded lines, each with its `\n` (the last one may lack it), read in blocks.

    The same checks as `read_text`: a NUL byte in the first 64 KiB is a binary file, invalid
    UTF-8 fails naming its byte offset (or is replaced and counted in `stats["replaced"]`), a file
    of whitespace only is empty."""
    if errors not in ERRORS:
        raise DataError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    path = Path(path)
    where = " of the decompressed text" if compression(path) else ""
    offset = scanned = 0
    tally = [0]  # undecodable byte sequences replaced
    content = False
    pending: list[bytes] = []  # the pieces of a line whose end is not read yet
    ready: collections.deque[bytes] = collections.deque()  # whole lines, each with its \n
    with open_binary(path, stats) as fh:
        for block in _read_blocks(path, fh):
            if scanned < NUL_SCAN_BYTES:
                nul = block.find(b"\x00", 0, NUL_SCAN_BYTES - scanned)
                if nul >= 0:
                    raise DataError(f"{path}: looks like a binary file (NUL byte at byte offset "
                                    f"{scanned + nul}{where}), not text")
            scanned += len(block)
            parts = block.split(b"\n")
            if len(parts) > 1:  # a line of many blocks is joined once, not block by block
                ready.append(b"".join([*pending, parts[0], b"\n"]) if pending else parts[0] + b"\n")
                pending.clear()
                ready.extend(raw + b"\n" for raw in parts[1:-1])
            if parts[-1]:
                pending.append(parts[-1])
            del parts
            while ready:
                n = len(ready[0])
                content = content or not ready[0].isspace()
                # nothing in this frame keeps the line, bytes or text, while the reader holds it
                yield _decode_line(ready.popleft(), path, errors, offset, where, tally)
                offset += n
        if pending:
            ready.append(b"".join(pending))
            pending.clear()
            content = content or not ready[0].isspace()
            yield _decode_line(ready.popleft(), path, errors, offset, where, tally)
    if not content and not allow_empty:
        raise DataError(f"{path}: empty file (no text to read)")
    if tally[0]:
        warnings.warn(f"{path}: replaced {tally[0]} undecodable byte sequence(s) with U+FFFD", stacklevel=2)
        if stats is not None:
            stats["replaced"] = stats.get("replaced", 0) + tally[0]


def _decode_line(raw: bytes, path: Path, errors: str, offset: int, where: str, tally: list[int]) -> str:
    """One line's text; replaced byte sequences are added to `tally[0]`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if errors == "strict":
            bad = raw[exc.start:exc.start + 4]
            raise DataError(f"{path}: invalid UTF-8 at byte offset {offset + exc.start}{where} (bytes {bad!r}); "
                            f"re-encode the file as UTF-8, or replace undecodable bytes ({REPLACE_HINT})") from None
    _count.n = 0
    text = raw.decode("utf-8", errors="lmscale-count-replace")
    tally[0] += _count.n
    return text


def _split_lines(lines: Iterable[str]) -> Iterator[str]:
    """`text.splitlines()` of the text these lines make up, one line at a time."""
    for line in lines:  # every line but the last ends with its \n, so no \r\n pair is cut
        yield from line.splitlines()


_BLANK_LINE = re.compile(r"[ \t]*\n")
_WIKITEXT_LINE = re.compile(r" = (?!=)[^\n]* = \n")
_HEADER_LINE = re.compile(r"= [^=].* =[ \t]*\n?")


def has_paragraph_break(lines: Iterable[str]) -> bool:
    """Whether a text has a blank line after its first line (so `paragraphs` cuts at blank lines
    rather than at every line); stops at the first one."""
    return any(j >= 1 and _BLANK_LINE.fullmatch(line) for j, line in enumerate(lines))


def iter_split_documents(lines: Iterable[str], doc_format: str = "paragraphs",
                         paragraph_breaks: bool = True) -> Iterator[str]:
    """`split_documents` of the text these lines make up, one document at a time (whitespace-only
    documents dropped). For `paragraphs`, `paragraph_breaks` says whether the text has a blank line
    after its first (`has_paragraph_break`): without one, every line is a document."""
    if doc_format == "file":
        docs: Iterable[str] = ["".join(lines)]
    elif doc_format == "lines" or (doc_format == "paragraphs" and not paragraph_breaks):
        docs = _split_lines(lines)
    elif doc_format == "paragraphs":
        docs = _paragraphs(lines)
    elif doc_format == "wikitext":
        docs = _starting_at(lines, _WIKITEXT_LINE)
    elif doc_format == "headers":
        docs = _starting_at(lines, _HEADER_LINE)
    else:
        raise DataError(f"unknown document format {doc_format!r}")
    return (d for d in docs if d and not d.isspace())


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    buf: list[str] = []
    in_break = False
    for j, line in enumerate(lines):
        blank = bool(_BLANK_LINE.fullmatch(line))
        if in_break and not blank:
            yield "".join(buf)
            buf, in_break = [], False
        buf.append(line)
        if blank and j >= 1:
            in_break = True
    if buf:
        yield "".join(buf)


def _starting_at(lines: Iterable[str], header: re.Pattern) -> Iterator[str]:
    buf: list[str] = []
    for line in lines:
        if buf and header.fullmatch(line):
            yield "".join(buf)
            buf = []
        buf.append(line)
    if buf:
        yield "".join(buf)


def _field(rec: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(rec, dict) or key not in rec:
            return _MISSING
        rec = rec[key]
    return rec


_MISSING = object()


def _record_text(rec: Any, path: list[str], field: str, where: str) -> str:
    v = _field(rec, path)
    if v is _MISSING:
        raise DataError(f"{where}: record has no {field!r} field")
    if not isinstance(v, str):
        raise DataError(f"{where}: field {field!r} is not a string")
    return v


def iter_records(path: Path, text_field: str = DEFAULT_TEXT_FIELD, errors: str = "strict",
                 stats: dict | None = None) -> Iterator[str]:
    """The text field of every record of a JSON Lines / JSON array / Parquet file, streamed."""
    path = Path(path)
    keys = text_field.split(".")
    if record_format(path) == "parquet":
        yield from _parquet_texts(path, keys, text_field, stats)
        return
    lines = iter_lines(path, errors, stats)
    first = True
    for lineno, line in enumerate(lines, start=1):
        if line.isspace():  # str.strip()'s whitespace, without copying a long line
            continue
        if first and _ARRAY_START.match(line):  # one JSON array of records (not streamed)
            data = _json(line + "".join(lines), str(path), str)
            if not isinstance(data, list):
                raise DataError(f"{path}: expected JSON Lines or one JSON array of records")
            for i, rec in enumerate(data):
                yield _record_text(rec, keys, text_field, f"{path}: record {i}")
            return
        first = False
        rec = _json(line, f"{path}: line {lineno}", lambda exc: getattr(exc, "msg", exc))
        del line  # a long record's line is not kept beside its text while that is used
        yield _record_text(rec, keys, text_field, f"{path}: line {lineno}")


_ARRAY_START = re.compile(r"\s*\[")


def _json(text: str, where: str, detail: Callable[[ValueError], Any]) -> Any:
    """`json.loads(text)`; invalid or too deeply nested JSON is a `DataError` at `where`."""
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise DataError(f"{where}: invalid JSON ({detail(exc)})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON (nested too deeply)") from None


def _parquet_texts(path: Path, keys: list[str], field: str, stats: dict | None) -> Iterator[str]:
    pq = optional_import("pyarrow.parquet", "data", f"{path.name} (Parquet)")
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    try:
        f = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = f.schema_arrow.names
    if keys[0] not in names:
        raise DataError(f"{path}: no column {keys[0]!r} for text field {field!r} (columns: {', '.join(names)})")
    size = path.stat().st_size
    rows = max(1, f.metadata.num_rows)
    done = 0
    row = 0
    for batch in f.iter_batches(columns=[keys[0]], batch_size=4096):
        for v in batch.column(0).to_pylist():
            row += 1
            yield _record_text({keys[0]: v}, keys, field, f"{path}: row {row}")
        if stats is not None:
            new = size * row // rows
            stats["bytes_read"] = stats.get("bytes_read", 0) + new - done
            done = new


def iter_file_documents(path: Path, errors: str = "strict", doc_format: str | None = None,
                        stats: dict | None = None, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str]:
    """Documents of one file, streamed: records' text fields (JSON, Parquet), TSV sentences, or
    text cut by `doc_format` (default paragraphs). Whitespace-only documents are dropped; a file
    with none fails."""
    path = Path(path)
    kind = record_format(path)
    if path.is_dir() and (path / "state.json").is_file():
        docs: Iterable[str] = _saved_dataset_texts(path, text_field.split("."), text_field, stats)
    elif kind in ("json", "parquet"):
        docs = iter_records(path, text_field, errors, stats)
    elif kind == "tsv":
        docs = tsv_texts(path, iter_lines(path, errors, stats))
    else:
        fmt = doc_format or "paragraphs"
        breaks = True
        if fmt == "paragraphs":
            with warnings.catch_warnings():  # the reading pass below reports replaced bytes, once
                warnings.simplefilter("ignore")
                breaks = has_paragraph_break(iter_lines(path, errors, allow_empty=True))
        docs = iter_split_documents(iter_lines(path, errors, stats), fmt, breaks)
    n = 0
    for d in docs:
        if d and not d.isspace():  # `d.strip()` without copying a long document
            n += 1
            yield d
    if n == 0:
        raise DataError(f"{path}: no documents (only whitespace)")


# ----------------------------------------------------------------------------- datasets' save_to_disk


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' `Dataset.save_to_disk` (state.json + Arrow files) or
    `DatasetDict.save_to_disk` (dataset_dict.json + one such directory per split)."""
    p = Path(path)
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def saved_dataset_splits(path: Path) -> dict[str, list[Path]]:
    """Split name -> [its directory] of a saved dataset (`train` for a single saved Dataset)."""
    p = Path(path)
    if (p / "dataset_dict.json").is_file():
        try:
            names = json.loads((p / "dataset_dict.json").read_text("utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise DataError(f"{p / 'dataset_dict.json'}: unreadable ({exc})") from None
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) and n and "/" not in n and n not in (".", "..") for n in names):
            raise DataError(f"{p / 'dataset_dict.json'}: splits must be a list of split names, got {names!r}")
        return {n: [p / n] for n in names}
    return {"train": [p]}


def saved_dataset_files(path: Path) -> list[Path]:
    """The Arrow files of one saved Dataset directory, in row order (its state.json)."""
    p = Path(path)
    try:
        state = json.loads((p / "state.json").read_text("utf-8"))
        files = [p / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{p}: not a datasets save_to_disk directory ({exc})") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{p}: missing Arrow file(s) {', '.join(missing)}")
    return files


def _saved_dataset_texts(path: Path, keys: list[str], field: str, stats: dict | None) -> Iterator[str]:
    """The text field of every row of a saved Dataset, one Arrow record batch at a time (memory-mapped)."""
    ipc = optional_import("pyarrow.ipc", "data", f"{path} (a datasets save_to_disk directory)")
    pa = optional_import("pyarrow", "data", f"{path} (a datasets save_to_disk directory)")
    row = 0
    for f in saved_dataset_files(path):
        with pa.memory_map(str(f), "r") as source:
            try:
                reader = ipc.open_stream(source)
            except Exception as exc:  # pyarrow.ArrowInvalid
                raise DataError(f"{f}: not an Arrow stream file ({exc})") from None
            if keys[0] not in reader.schema.names:
                raise DataError(f"{path}: no column {keys[0]!r} for text field {field!r} "
                                f"(columns: {', '.join(reader.schema.names)})")
            i = reader.schema.get_field_index(keys[0])
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except Exception as exc:  # pyarrow.ArrowInvalid: a truncated or damaged file
                    raise DataError(f"{f}: damaged Arrow file after row {row} ({one_line(exc)})") from None
                for v in batch.column(i).to_pylist():
                    row += 1
                    yield _record_text({keys[0]: v}, keys, field, f"{path}: row {row}")
        if stats is not None:
            stats["bytes_read"] = stats.get("bytes_read", 0) + f.stat().st_size
