"""The marker's manifest: what lmscale records as its own in an output directory, and what it
refuses there (lmscale.io.outputs)."""
from __future__ import annotations

import json

import pytest

from lmscale.io.outputs import MARKER, OutputError, check_output_dir, foreign_entries, mark_output_dir


def manifest(d):
    return json.loads((d / MARKER).read_text())["entries"]


def test_the_manifest_names_what_was_claimed_never_what_merely_is_there(tmp_path):
    d = tmp_path / "out"
    mark_output_dir(d, "icl", names=("icl.json", "icl.png"))
    (d / "icl.json").write_text("{}")
    (d / "notes.txt").write_text("a user's file, added while the command ran")
    mark_output_dir(d, "icl", names=("icl.json", "icl.png"))
    assert manifest(d) == ["icl.json", "icl.png"]
    assert foreign_entries(d) == ["notes.txt"]
    with pytest.raises(OutputError, match="notes.txt"):
        check_output_dir(d, "--out", overwrite=True, kinds=("icl",))


def test_a_directory_built_whole_records_everything_in_it(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    mark_output_dir(d, "model", whole=True)
    assert manifest(d) == ["config.json", "model.safetensors"]
    check_output_dir(d, "--out", kinds=("model",))


@pytest.mark.parametrize("entries", [None, "x", {"a": 1}, 5, [1, "a"]])
def test_an_old_or_damaged_manifest_owns_only_the_writers_own_names(tmp_path, entries):
    d = tmp_path / "figs"
    d.mkdir()
    marker = {"written_by": "lmscale", "kind": "figures"}
    if entries is not None:
        marker["entries"] = entries
    (d / MARKER).write_text(json.dumps(marker))
    (d / "loss.png").write_bytes(b"png")
    (d / "notes.txt").write_text("mine")
    assert foreign_entries(d, names=("loss.png",)) == ["notes.txt"]
    assert foreign_entries(d) == ["loss.png", "notes.txt"]  # a writer without a fixed layout owns nothing
    with pytest.raises(OutputError, match="notes.txt"):
        check_output_dir(d, "--out", overwrite=True, names=("loss.png",))


def test_temporaries_of_the_marker_and_of_recorded_names_are_lmscales(tmp_path):
    d = tmp_path / "out"
    mark_output_dir(d, "sweep", names=("runs", "registry.sqlite"))
    for name in (".runs.old", ".registry.sqlite.ab12cd34.tmp", "..lmscale.ab12cd34.tmp", ".lock"):
        (d / name).write_text("")
    assert foreign_entries(d) == []
    (d / ".photos.old").mkdir()
    assert foreign_entries(d) == [".photos.old"]


def test_a_marker_that_is_not_lmscales_file_is_refused_not_replaced(tmp_path):
    d = tmp_path / "run"
    (d / MARKER).mkdir(parents=True)
    assert foreign_entries(d) == [MARKER]
    with pytest.raises(OutputError, match=MARKER):
        mark_output_dir(d, "run", names=("config.yaml",))
    (d / MARKER).rmdir()
    (d / MARKER).write_text('{"mine": true}')
    with pytest.raises(OutputError, match=MARKER):
        mark_output_dir(d, "run", names=("config.yaml",))
    assert json.loads((d / MARKER).read_text()) == {"mine": True}
