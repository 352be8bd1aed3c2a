"""One writer per directory: an OS file lock held for the writer's life.

`DirectoryLock(path)` takes an exclusive `flock` on `path/.lock` and writes its holder's pid and
host there. The operating system releases the lock when the holder exits in any way (even
`kill -9`), so a lock file left by a dead process never blocks anyone: its pid is only reported.
On filesystems without working `flock`, the pid in the file decides (a live pid on this host holds it).
Taking the lock rewrites the file, so a `.lock` that is a symbolic link, a hard link or not a
regular file is refused instead of opened: writing through it would change a file lmscale did not write.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Optional

from lmscale.errors import LmscaleError

try:
    import fcntl
except ImportError:  # not POSIX: the pid file alone
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class LockedError(LmscaleError):
    """The directory is being written by another live process."""


class UnsafeLockError(LmscaleError):
    """A lock path that is not a plain file of its own (a link, a directory, a device)."""


def _open_lock_file(path: Path, create: bool) -> int:
    """Open `path` for reading and writing without following a symbolic link at it."""
    if path.is_symlink():
        raise UnsafeLockError(f"{path} is a symbolic link; lmscale never writes its lock through one: "
                              "remove it (it is not a lock lmscale made), then try again")
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0) | _OPEN_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link after the check above
            raise UnsafeLockError(f"{path} is a symbolic link; lmscale never writes its lock through one: "
                                  "remove it (it is not a lock lmscale made), then try again") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise UnsafeLockError(f"{path} is {what}; lmscale never writes its lock there: remove it (it is not "
                              "a lock lmscale made), then try again")
    return fd


def pid_alive(pid: int | None) -> bool:
    """Is a process with this id running on this machine? (One that is not ours to signal is.)"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 512).decode("utf-8", "replace").split()
        return {"pid": int(text[0]), "host": text[1] if len(text) > 1 else ""}
    except (OSError, ValueError, IndexError):
        return {"pid": None, "host": ""}


def _describe(holder: dict[str, Any]) -> str:
    if holder.get("pid") is None:
        return "another process"
    host = holder.get("host") or ""
    return f"process {holder['pid']}" + (f" on {host}" if host and host != socket.gethostname() else "")


class DirectoryLock:
    """An exclusive lock on `directory` (created when missing) for one writer."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self.fd: Optional[int] = None

    def acquire(self) -> "DirectoryLock":
        if self.fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = _open_lock_file(self.path, create=True)
        try:
            holder = _read_holder(fd)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._busy(holder) from None
                except OSError as exc:
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    self._check_pid_file(holder)
            else:
                self._check_pid_file(holder)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def acquire_waiting(self, poll_s: float = 0.5) -> "DirectoryLock":
        """Take the lock, waiting while another process holds it (for short shared steps)."""
        while True:
            try:
                return self.acquire()
            except LockedError:
                time.sleep(poll_s)

    def _check_pid_file(self, holder: dict[str, Any]) -> None:
        pid = holder.get("pid")
        same_host = holder.get("host") in ("", socket.gethostname())
        if pid and pid != os.getpid() and (not same_host or pid_alive(pid)):
            raise self._busy(holder)

    def _busy(self, holder: dict[str, Any]) -> LockedError:
        return LockedError(f"{self.directory} is in use: {_describe(holder)} is writing this {self.what} "
                           f"(lock {self.path}); wait for it to finish, or stop it, then try again")

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(directory: str | os.PathLike) -> Optional[dict[str, Any]]:
    """Who holds `directory`'s lock ({"pid", "host"}), or None when it is free (nothing is created)."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = _open_lock_file(path, create=False)
    except (OSError, UnsafeLockError):
        return None
    try:
        holder = _read_holder(fd)
        if fcntl is None:
            pid = holder.get("pid")
            return holder if pid and pid_alive(pid) else None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder
        except OSError:
            pid = holder.get("pid")
            return holder if pid and pid_alive(pid) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

