"""Files: atomic writes, the cache directory, content hashes.

Every file the tool writes goes through here, so a crash or Ctrl-C leaves either the old file or
the new one, never a half-written file that a later run would trust. `lmscale.io.packages` fetches
release files from a package index, verified by their sha256.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

CACHE_DIR_ENV = "LMSCALE_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "lmscale"


def cache_dir() -> Path:
    """Where fetched corpora, unpacked models and machine probes are kept: `$LMSCALE_CACHE_DIR`,
    else `~/.cache/lmscale`."""
    return Path(os.environ.get(CACHE_DIR_ENV) or default_cache_dir())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    Use it for writers that insist on a filename (safetensors, torch.save, sqlite backups).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


NON_FINITE_KEY = "non_finite"


def json_safe(obj: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """`obj` with every NaN or infinite float replaced by None, and where each one was
    (`{"params.E": "nan"}`): JSON has no NaN or Infinity, and a file that holds them is not JSON."""
    found: dict[str, str] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
            return x
        if isinstance(x, float):
            f = float(x)
            if math.isfinite(f):
                return f
            found[path or "."] = repr(f)
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if hasattr(x, "tolist") and callable(x.tolist):  # numpy scalars and arrays
            return walk(x.tolist(), path)
        return x

    return walk(obj, where), found


def dumps_json(obj: Any, indent: int | None = None, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity: such values become null, and a dict
    document lists them under "non_finite" (path -> the value it was), so the reader knows why."""
    clean, found = json_safe(obj)
    if found and isinstance(clean, dict) and NON_FINITE_KEY not in clean:
        clean[NON_FINITE_KEY] = found
    return json.dumps(clean, indent=indent, allow_nan=False, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (NaN and infinities as null, see `dumps_json`), atomically."""
    return atomic_write_text(path, dumps_json(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when complete.

    An existing directory at `path` is replaced only after the new one is fully written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.is_symlink() or old.is_file():
                old.unlink()
            elif old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temporary_of(name: str) -> Optional[str]:
    """The file a `.NAME.XXXXXXXX.tmp` temporary of `atomic_path` or `atomic_directory` was for, or None."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    base, sep, _ = name[1:-4].rpartition(".")
    return base if sep and base else None


def clean_stale_temporaries(directory: str | os.PathLike, subdirs: tuple[str, ...] = (),
                            owned: Optional[Callable[[str], bool]] = None) -> None:
    """Remove what a killed writer left half-written in `directory` (and its `subdirs`): the
    `.NAME.*.tmp` files and directories of `atomic_path` and `atomic_directory`, and put back a
    directory that a kill took away between the two renames of `atomic_directory`'s swap. Only
    temporaries of names `owned(NAME)` accepts are touched (all of them when None): a user's own
    `.notes.tmp` or `.backup.old` is never lmscale's to delete. Links are removed, never followed.
    Call it only while holding the directory's lock (`lmscale.io.locks`): nobody else is writing then."""
    directory = Path(directory)
    for parent in (directory, *(directory / s for s in subdirs)):
        if not parent.is_dir() or (parent != directory and parent.is_symlink()):
            continue
        for p in parent.glob(".*.tmp"):
            of = _temporary_of(p.name)
            if of is None or (owned is not None and not owned(of)):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for old in parent.glob(".*.old"):
            target = old.with_name(old.name[1:-4])
            if not target.name or (owned is not None and not owned(target.name)):
                continue
            if old.is_symlink():  # never followed: only the link is removed
                old.unlink()
            elif old.is_dir() and not target.exists() and not target.is_symlink():
                os.replace(old, target)  # killed between the two renames of an atomic directory swap
            else:
                shutil.rmtree(old, ignore_errors=True)
