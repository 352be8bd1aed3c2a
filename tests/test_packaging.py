"""The wheel and sdist carry every data file, and an installed wheel runs without the source tree.

Built offline (`--no-isolation`, with the setuptools already installed) from a copy of the tree, then
installed with `--no-deps` into a fresh venv that borrows this interpreter's site-packages for
torch and friends: what is checked is the package as `pip install .` lays it down.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "lmscale"
DATA_SUFFIXES = {".yaml", ".yml", ".json", ".html", ".j2", ".jinja", ".css", ".js"}

pytestmark = pytest.mark.slow


def _data_files() -> list[str]:
    """Every non-Python file in the package, as `lmscale/...` paths: what a wheel must carry."""
    return sorted(
        "lmscale/" + p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix in DATA_SUFFIXES and "__pycache__" not in p.parts
    )


def test_package_data_globs_cover_every_data_file():
    """A new kind of data file under src/lmscale fails here until pyproject.toml ships it."""
    strays = sorted(
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in DATA_SUFFIXES | {".py", ".pyc", ".typed"}
        and "__pycache__" not in p.parts
    )
    assert strays == []
    assert any(f.startswith("lmscale/presets/quickstart/") for f in _data_files())


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (pip install build)")
    if Version(version("setuptools")) < Version("77"):
        pytest.skip("an offline build needs setuptools>=77 installed (PEP 639 licence metadata)")
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tree / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True, text=True, cwd=tree,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the licence as an SPDX expression: setuptools warns about the old table form
    assert "License classifiers are deprecated" not in proc.stderr + proc.stdout
    assert "`project.license` as a TOML table is deprecated" not in proc.stderr + proc.stdout
    return out


def test_wheel_and_sdist_carry_every_data_file(dist):
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in _data_files() if f not in names]
    assert missing == []
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [f for f in _data_files() if "src/" + f not in in_sdist]
    assert missing == []
    assert "LICENSE" in in_sdist


def test_installed_wheel_runs_and_lists_presets(dist, tmp_path):
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True,
    )
    # dependencies (torch, yaml, rich, ...) from this interpreter's site-packages, after the venv's own;
    # a path line in a .pth file is not a site dir, so the editable lmscale found here is not loaded
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    lmscale = venv / "bin" / "lmscale"
    where = subprocess.run([str(py), "-c", "import lmscale; print(lmscale.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    ver = subprocess.run([str(lmscale), "--version"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert ver.stdout.strip() == f"lmscale {version('lmscale')}"
    listed = subprocess.run([str(lmscale), "presets", "--json"], capture_output=True, text=True, check=True,
                            cwd=tmp_path).stdout
    names = {row["name"] for row in json.loads(listed)}
    assert names == {p.stem for p in (PACKAGE / "presets").glob("*.yaml")}
    profiles = subprocess.run(
        [str(py), "-c", "from lmscale.experiments.quickstart import PROFILES, load_profile; "
                        "print(sorted(k for p in PROFILES for k in load_profile(p)))"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    assert profiles.stdout.strip() not in ("", "[]")


def test_the_cache_follows_xdg_cache_home_and_lmscale_cache_dir(monkeypatch, tmp_path):
    from lmscale.io import cache_dir

    monkeypatch.delenv("LMSCALE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "lmscale"
    monkeypatch.setenv("LMSCALE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_tables_written_to_a_log_keep_their_words(monkeypatch):
    from lmscale.io import LOG_WIDTH, console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert console().width == LOG_WIDTH  # pytest's stdout is no terminal
    monkeypatch.setenv("COLUMNS", "100")
    assert console().width == 100
