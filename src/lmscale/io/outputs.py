"""Where a command may write: output paths are checked before any work starts.

A command never deletes or replaces what lmscale did not write. An output directory must be
missing, empty, or one lmscale wrote (it holds the `.lmscale` marker, or the caller recognises its
layout); a non-empty directory of anything else, or a file where a directory is asked for, is
refused unless the user passes `--overwrite`. An output file may replace a file lmscale wrote in
that format, never a directory, and never another file without `--overwrite`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_text

MARKER = ".lmscale"  # in every output directory lmscale writes: {"written_by": "lmscale", "kind": ...}
# formats lmscale writes as single files, each recognised by its whole content
FILE_KINDS = ("json", "jsonl", "html", "csv", "yaml")
GENERATOR_TAG = "<meta name='generator' content='lmscale'>"  # in every HTML report lmscale writes


class OutputError(LmscaleError):
    """An output path the command may not write to (a file, a foreign directory, ...)."""


def _check_ancestors(p: Path, flag: str) -> None:
    for anc in p.parents:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(f"{flag} {p}: {anc} is a file, so no directory can be made there; "
                                  f"choose another {flag}")
            return


def only_known_entries(path: str | os.PathLike, allowed: frozenset[str]) -> bool:
    """Whether every entry of directory `path` is in `allowed` or a `.NAME.tmp` temporary: what
    tells a writer's own unmarked output (from before outputs carried the marker) from anything else."""
    return all(e.name in allowed or (e.name.startswith(".") and e.name.endswith(".tmp")) for e in Path(path).iterdir())


def marked_kind(path: str | os.PathLike) -> Optional[str]:
    """The kind of output lmscale wrote in directory `path` (its marker says), or None."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("kind")) if isinstance(data, dict) and data.get("written_by") == "lmscale" else None


def is_marked(path: str | os.PathLike, kinds: Optional[tuple[str, ...]] = None) -> bool:
    """Whether `path` is a directory lmscale wrote (it holds the marker), of one of `kinds` if given."""
    kind = marked_kind(path)
    return kind is not None and (kinds is None or kind in kinds)


def mark_output_dir(path: str | os.PathLike, kind: str) -> None:
    """Put the marker in `path` (created if missing): lmscale wrote this directory."""
    p = Path(path)
    if not (p / MARKER).is_file():
        atomic_write_text(p / MARKER, json.dumps({"written_by": "lmscale", "kind": kind}) + "\n")


def check_output_dir(path: str | os.PathLike, flag: str = "--out", overwrite: bool = False,
                     ours: Optional[Callable[[Path], bool]] = None, kinds: Optional[tuple[str, ...]] = None) -> Path:
    """Refuse `path` as an output directory when it is a file, or a non-empty directory that lmscale
    did not write as one of `kinds` (no such marker, and `ours(path)` is not true), unless
    `overwrite`."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{flag} {p}: a dangling symbolic link; choose another {flag}")
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{flag} {p}: is a file, not a directory; choose another {flag} "
                              "(lmscale never replaces a file by a directory)")
        entries = sorted(e.name for e in p.iterdir())
        if entries and not overwrite and not is_marked(p, kinds) and not (ours is not None and ours(p)):
            kind = marked_kind(p)
            if kind is not None:
                raise OutputError(f"{flag} {p}: holds lmscale's {kind} output, not this command's; choose another "
                                  f"{flag}, or pass --overwrite to write there anyway")
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise OutputError(f"{flag} {p}: a non-empty directory that lmscale did not write (holds {shown}); "
                              f"choose another {flag}, or pass --overwrite to write there anyway")
    else:
        _check_ancestors(p, flag)
    return p


MAX_OWNED_FILE = 256 << 20  # a larger existing file is not read through to decide whose it is


def _is_ours(path: Path, kind: str, keys: tuple[str, ...]) -> bool:
    """Whether the existing file `path` is one lmscale wrote as `kind`: read whole and parsed,
    never judged by its name or first byte (a user's JSON starts with `{` too). JSON is an object
    holding every one of `keys`; JSON lines are such objects, one a line; HTML carries lmscale's
    generator tag; CSV is a registry export."""
    if kind not in FILE_KINDS:
        raise ValueError(f"unknown file kind {kind!r}; one of {', '.join(FILE_KINDS)}")
    try:
        if not path.is_file() or path.stat().st_size > MAX_OWNED_FILE:
            return False
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.strip():
        return True  # an empty file holds nothing to lose
    try:
        if kind == "json":
            docs = [json.loads(text)]
        elif kind == "jsonl":
            docs = [json.loads(line) for line in text.split("\n") if line.strip()]
        elif kind == "html":
            return text.lstrip().startswith("<") and GENERATOR_TAG in text
        elif kind == "csv":
            return text.startswith("run_id,")
        else:
            return False  # no YAML is replaced without --overwrite
    except (ValueError, RecursionError):
        return False
    return bool(keys) and all(isinstance(d, dict) and all(k in d for k in keys) for d in docs)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links, `..` or a second name)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).absolute().resolve() == Path(b).absolute().resolve()


def check_output_file(path: str | os.PathLike, flag: str = "--out", kind: str = "json",
                      overwrite: bool = False, keys: tuple[str, ...] = (),
                      inputs: tuple[tuple[str, str | os.PathLike], ...] = ()) -> Path:
    """Refuse `path` as an output file when it is a directory, lies under a file, is one of the
    command's `inputs` ((flag, path) pairs; not even with `overwrite`), or is an existing file that
    lmscale did not write as `kind` with `keys` (see `_is_ours`), unless `overwrite`."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{flag} {p}: is a directory; name a file to write")
    _check_ancestors(p, flag)
    for in_flag, src in inputs:
        if src is not None and same_file(p, src):
            raise OutputError(f"{flag} {p}: is the command's input ({in_flag} {src}); an output never replaces "
                              f"what it is read from, so choose another {flag}")
    if p.exists() and not overwrite and not _is_ours(p, kind, keys):
        raise OutputError(f"{flag} {p}: an existing file that lmscale did not write (not its {kind} output); "
                          f"choose another {flag}, or pass --overwrite to replace it")
    return p
