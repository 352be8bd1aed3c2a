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
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import platformdirs

from lmscale.errors import DataError

CACHE_DIR_ENV = "LMSCALE_CACHE_DIR"


def default_cache_dir() -> Path:
    """The platform's cache directory for lmscale: `$XDG_CACHE_HOME/lmscale` (else
    `~/.cache/lmscale`) on Linux, `~/Library/Caches/lmscale` on macOS, the local app data on Windows."""
    return Path(platformdirs.user_cache_dir("lmscale", appauthor=False))


LOG_WIDTH = 160  # columns of rich tables written to a file or pipe (rich's default there is 80)


def console(stderr: bool = False) -> Any:
    """A rich console for a command's output: the terminal's width on a terminal; in a log file or
    pipe `LOG_WIDTH` columns (or `$COLUMNS`), so tables keep their words instead of "encod…"."""
    from rich.console import Console  # noqa: PLC0415  (rich is heavy; most io users never print)

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, width=width)


@contextlib.contextmanager
def heartbeat(what: str, every_s: float = 15.0) -> Iterator[None]:
    """While the block runs, a line on stderr every `every_s` seconds saying it still does (for work
    with no progress of its own, such as a tokenizer's training, written to a log); a block that
    ends sooner prints nothing. Nothing on a terminal, where the work draws its own bar."""
    if sys.stderr.isatty():
        yield
        return
    done = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not done.wait(every_s):
            print(f"lmscale: {what} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def cache_dir() -> Path:
    """Where fetched corpora, unpacked models and machine probes are kept: `$LMSCALE_CACHE_DIR`,
    else the platform's cache directory (`default_cache_dir`)."""
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


def read_json_file(path: str | os.PathLike, what: str = "JSON file", kind: type = dict,
                   max_bytes: int = 256 << 20) -> Any:
    """A JSON document a user hands us, whole and of the expected top-level `kind`; anything else
    (missing, a directory, too big, not UTF-8, not JSON, nested too deeply, a list where a mapping
    belongs) is a one-line `DataError` naming the file, never a traceback."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p}: " + ("is a directory" if p.is_dir() else "does not exist"))
    if p.stat().st_size > max_bytes:
        raise DataError(f"{what} {p}: {p.stat().st_size:,} bytes, more than a {what} can be ({max_bytes:,})")
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{what} {p}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p} is not UTF-8 text (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise DataError(f"{what} {p} is not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{what} {p}: its JSON is nested too deeply") from None
    if not isinstance(obj, kind):
        expected = {dict: "an object {...}", list: "a list [...]"}.get(kind, kind.__name__)
        raise DataError(f"{what} {p} must hold {expected}, not {type(obj).__name__}")
    return obj


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


def temporary_of(name: str) -> Optional[str]:
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
            of = temporary_of(p.name)
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
