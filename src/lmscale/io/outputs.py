"""Where a command may write: output paths are checked before any work starts.

A command never deletes or replaces what lmscale did not write. An output directory must be
missing, empty, or one lmscale wrote: it holds the `.lmscale` marker, whose manifest names every
entry lmscale wrote there (or the caller recognises an older layout). A file where a directory is
asked for is refused; so is a directory holding an entry the manifest does not name (a user's
file put beside lmscale's output), even with `--overwrite`, because a command may replace its
output directory as a whole. `--overwrite` lets a command replace lmscale's output of another
kind. An output file may replace a file lmscale wrote in that format, never a directory, and
another file only with `--overwrite`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_text, temporary_of
from lmscale.io.locks import LOCK_FILE as LOCK

# in every output directory lmscale writes: {"written_by": "lmscale", "kind": ..., "entries": [names it wrote]}
MARKER = ".lmscale"
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


def _marker(path: str | os.PathLike) -> Optional[dict]:
    """The marker of directory `path` when lmscale wrote it (a regular file, never a link), else None."""
    m = Path(path) / MARKER
    try:
        if m.is_symlink() or not m.is_file() or m.stat().st_size > 1 << 20:
            return None
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "lmscale" else None


def marked_kind(path: str | os.PathLike) -> Optional[str]:
    """The kind of output lmscale wrote in directory `path` (its marker says), or None."""
    data = _marker(path)
    return None if data is None else str(data.get("kind"))


def recorded_entries(path: str | os.PathLike) -> Optional[frozenset[str]]:
    """The names the marker's manifest says lmscale wrote in `path`; None for no marker, a marker
    from before manifests, or a manifest that is not a list of names."""
    data = _marker(path)
    entries = None if data is None else data.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return frozenset(entries)


def _temporary_of(name: str) -> Optional[str]:
    """The name a temporary of `atomic_path`/`atomic_directory` (`.NAME.*.tmp`) or a swapped-out
    directory (`.NAME.old`) stands for (None for another name)."""
    if name.startswith(".") and name.endswith(".old"):
        return name[1:-4]
    return temporary_of(name)


def _owned_name(name: str, owned: frozenset[str]) -> bool:
    """`name` is lmscale's in a directory whose manifest is `owned`: recorded, the lock, or a
    temporary (`.NAME.*.tmp`, `.NAME.old`) of a recorded name, the marker or the lock."""
    if name in owned or name == LOCK:
        return True
    of = _temporary_of(name)
    return of is not None and (of in owned or of in (MARKER, LOCK))


def foreign_entries(path: str | os.PathLike, ours: Optional[Callable[[Path], bool]] = None,
                    names: Optional[Iterable[str]] = None) -> list[str]:
    """The entries of directory `path` that lmscale did not write. With a manifest, those it does
    not name; with a marker from before manifests, or an unmarked older layout that `ours(path)`
    recognises, those outside `names` (what the writer's layout can hold: None, nothing); with
    neither, all of them. A `.lmscale` that is not lmscale's marker file is foreign too."""
    p = Path(path)
    present = sorted(e.name for e in p.iterdir())
    marker = _marker(p)
    owned = recorded_entries(p)
    if owned is None:
        legacy = marker is not None or (ours is not None and bool(present) and ours(p))
        owned = frozenset(names or ()) - {MARKER} if legacy else frozenset()
    return [n for n in present if not (_owned_name(n, owned) or (n == MARKER and marker is not None))]


def is_marked(path: str | os.PathLike, kinds: Optional[tuple[str, ...]] = None) -> bool:
    """Whether `path` is a directory lmscale wrote (it holds the marker), of one of `kinds` if given."""
    kind = marked_kind(path)
    return kind is not None and (kinds is None or kind in kinds)


def mark_output_dir(path: str | os.PathLike, kind: str, names: Iterable[str] = (), whole: bool = False) -> None:
    """Put or update the marker in `path` (created if missing): lmscale writes this directory as
    `kind`, and its manifest names what lmscale wrote there: the names recorded before, and
    `names`, claimed before the command writes them so that a kill leaves nothing of lmscale's
    unrecorded. Never what merely is there (a file a user adds while a command runs stays theirs),
    except with `whole`, for a directory lmscale has just built as a whole (`atomic_directory`)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    m = p / MARKER
    if (m.exists() or m.is_symlink()) and _marker(p) is None:
        raise OutputError(f"{p}: its {MARKER} is not lmscale's marker file; lmscale will not replace it, so "
                          "move it away or choose another output directory")
    present = {e.name for e in p.iterdir() if e.name not in (MARKER, LOCK) and _temporary_of(e.name) is None}
    if whole:
        entries = present
    else:
        claimed = set(names) - {MARKER, LOCK}  # the marker and the lock are lmscale's by themselves
        entries = ((recorded_entries(p) or frozenset()) & present) | claimed
    data = {"written_by": "lmscale", "kind": kind, "entries": sorted(entries)}
    if _marker(p) != data:
        atomic_write_text(m, json.dumps(data) + "\n")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_output_dir(path: str | os.PathLike, flag: str = "--out", overwrite: bool = False,
                     ours: Optional[Callable[[Path], bool]] = None, kinds: Optional[tuple[str, ...]] = None,
                     names: Optional[Iterable[str]] = None) -> Path:
    """Refuse `path` as an output directory when it is a file, holds an entry lmscale did not write
    (`foreign_entries` with the writer's layout `names`; not even with `overwrite`), or is
    lmscale's output of a kind other than `kinds` (unless `overwrite`)."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{flag} {p}: a dangling symbolic link; choose another {flag}")
    if p.exists():
        if not p.is_dir():
            raise OutputError(f"{flag} {p}: is a file, not a directory; choose another {flag} "
                              "(lmscale never replaces a file by a directory)")
        foreign = foreign_entries(p, ours, names)
        kind = marked_kind(p)
        if foreign and kind is None:
            raise OutputError(f"{flag} {p}: a non-empty directory that lmscale did not write (holds "
                              f"{_shown(foreign)}); lmscale never replaces or deletes what it did not write, "
                              f"not even with --overwrite, so choose another {flag}")
        if foreign:
            raise OutputError(f"{flag} {p}: holds {_shown(foreign)}, which lmscale did not write there (its "
                              f"{MARKER} manifest does not name them); move them away or choose another {flag}")
        if kind is not None and kinds is not None and kind not in kinds and not overwrite:
            raise OutputError(f"{flag} {p}: holds lmscale's {kind} output, not this command's; choose another "
                              f"{flag}, or pass --overwrite to replace it")
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
