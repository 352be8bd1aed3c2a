"""Shared fixtures: real data when present beside the repo, and an isolated cache per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    env = os.environ.get("LMSCALE_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def shared_data() -> Path:
    """The read-only real-data mirror (WikiText-2, sentiment, BIG-bench, ...); skip when absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("real-data mirror ../shared/data is not present")
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LMSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("lmscale-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Start the long end-to-end tests first, so that with two workers they overlap the rest."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
