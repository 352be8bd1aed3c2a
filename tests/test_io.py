"""Atomic writes: a failure inside the writer leaves the old file untouched and no temp files."""
from __future__ import annotations

import os
import stat

import pytest

from lmscale.io import atomic_directory, atomic_path, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644


def test_atomic_directory_replaces_only_when_complete(tmp_path):
    d = tmp_path / "shards"
    with atomic_directory(d) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(d) as tmp:
            (tmp / "b.bin").write_bytes(b"2")
            raise KeyboardInterrupt
    assert [p.name for p in d.iterdir()] == ["a.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]
