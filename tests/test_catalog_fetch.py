"""Nothing large is downloaded before the arguments are checked; a fetch says what it downloads."""
from __future__ import annotations

import pytest

from lmscale.data import catalog
from lmscale.errors import DataError


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """No mirror, an empty cache, and any download attempt is a test failure."""
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(tmp_path / "no-mirror"))

    def forbidden(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(catalog, "fetch_package_file", forbidden)
    monkeypatch.setattr(catalog, "_fetch_hub", forbidden)


def test_eval_fewshot_checks_checkpoint_and_task_before_any_download(no_downloads, tmp_path, capsys):
    from lmscale.cli import main

    assert main(["eval", "fewshot", str(tmp_path / "nope"), "--task", "arithmetc"]) != 0
    assert "nope: no such checkpoint" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["eval", "fewshot", str(ckpt), "--task", "arithmetc"]) != 0
    err = capsys.readouterr().err
    assert "'arithmetc'" in err and "358 MB" in err and "--download" in err
    # a malformed local task file is reported before the model is even read
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": 3}\n')
    assert main(["eval", "fewshot", str(ckpt), "--task", str(bad), "--task", "arithmetic"]) != 0
    assert "bad.jsonl" in capsys.readouterr().err


def test_fetch_states_size_and_source_before_downloading(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(tmp_path / "no-mirror"))
    seen = []

    def fake_fetch(src, dest):
        seen.append(capsys.readouterr().err)
        raise DataError("offline")

    monkeypatch.setattr(catalog, "fetch_package_file", fake_fetch)
    with pytest.raises(DataError, match="cannot fetch bigbench"):
        catalog.fetch("bigbench")
    assert "fetching bigbench (358 MB download) from PyPI bigbench==1.0.0" in seen[0]
    with pytest.raises(DataError, match=r"not here yet \(358 MB download\).*lmscale data fetch bigbench"):
        catalog.fetch("bigbench", download=False)
    assert not catalog.is_local("bigbench")
    assert {e["name"]: e["size"] for e in catalog.list_corpora()}["bigbench"] == "358 MB download"


def test_direct_downloads_retry_what_can_pass_and_nothing_else(monkeypatch):
    import urllib.error

    from lmscale.io import packages

    monkeypatch.setattr(packages.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise urllib.error.HTTPError("https://x", 503, "busy", {}, None)
        return "page"

    assert packages._with_retries("https://x/simple/p/", flaky) == "page" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise urllib.error.HTTPError("https://x", 404, "gone", {}, None)

    with pytest.raises(urllib.error.HTTPError):
        packages._with_retries("https://x/simple/p/", missing)
    assert len(calls) == 1
    calls.clear()

    def down():
        calls.append(1)
        raise urllib.error.URLError("connection refused")

    with pytest.raises(urllib.error.URLError):
        packages._with_retries("https://x/simple/p/", down)
    assert len(calls) == packages.RETRIES
    calls.clear()
    with pytest.raises(urllib.error.URLError):
        packages._with_retries("file:///nowhere/index.html", down)
    assert len(calls) == 1
