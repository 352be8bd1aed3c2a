"""The run directory object: its layout and step names, the summary file, the lock, the resume
policy every caller shares, and the refusals that keep files lmscale did not write."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmscale.cli.main import main
from lmscale.config import ConfigError, load_run_config
from lmscale.errors import LmscaleError
from lmscale.io.locks import DirectoryLock, UnsafeLockError, lock_holder
from lmscale.io.rundir import RunDirError, RunLayout, RunSummary, parse_step_dir, step_dir_name
from lmscale.models.serialization import resolve_model_dir
from lmscale.training import checkpoint as ckpt
from lmscale.training.loop import pretrain
from lmscale.training.rundir import RESUME_MAY_CHANGE, RunDir

FINISHED = {"status": "finished", "steps": 6, "tokens": 1536, "flops": 1.0e9, "wall_s": 1.5,
            "final_val_loss": 4.2, "best_val_loss": 4.1, "params": {"total": 10}, "tokens_per_s": 900.0,
            "error": None}


def _cfg(run: Path, **overrides):
    ov = {"out": str(run), "data.corpus": str(run.parent / "no-corpus.txt"), "train.max_steps": 6,
          "train.device": "cpu"}
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_run_config(preset="gpt-tiny", overrides=ov)


def _run_dir(tmp_path: Path, summary: dict | None = None, **overrides) -> Path:
    """A run directory as a run leaves it (config, marker, a checkpoint dir), without training."""
    run = tmp_path / "run"
    rd = RunDir(run)
    rd.save_config(_cfg(run, **overrides))
    (run / ".lmscale").write_text(json.dumps({"written_by": "lmscale", "kind": "run"}))
    rd.step_dir(2).mkdir(parents=True)
    if summary is not None:
        rd.summary_path.write_text(json.dumps(summary))
    return run


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path and its bytes, but an empty lock file (what taking and releasing the lock leaves)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if not (p.name == ".lock" and not p.is_symlink() and p.stat().st_size == 0)}


def test_step_names_parse_back_and_only_step_directories_count(tmp_path):
    assert step_dir_name(100) == "step_00000100" and parse_step_dir("step_00000100") == 100
    assert parse_step_dir("best") is None and parse_step_dir("step_") is None and parse_step_dir("step_1x") is None
    layout = RunLayout(tmp_path)
    for step in (10, 2, 300):
        layout.step_dir(step).mkdir(parents=True)
    (layout.checkpoints / "step_00000007").write_text("a file, not a checkpoint")
    (layout.checkpoints / "step_00000009").symlink_to(layout.step_dir(10))
    layout.best.mkdir()
    assert [s for s, _ in layout.step_dirs()] == [2, 10, 300]
    assert layout.step_dirs()[-1][1] == tmp_path / "checkpoints" / "step_00000300"


def test_a_model_loads_from_the_checkpoint_the_layout_names(tmp_path):
    """`models` reads the same names `training` writes: best first, else the newest step."""
    layout = RunLayout(tmp_path)
    for step in (2, 10):
        layout.step_dir(step).mkdir(parents=True)
        (layout.step_dir(step) / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == layout.step_dir(10)
    layout.best.mkdir()
    (layout.best / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == layout.best


def test_summary_reads_back_and_a_broken_one_reads_as_none(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.read_summary() is None
    layout.write_summary(RunSummary.from_dict({**FINISHED, "written_by_someone_else": 1}))
    back = layout.read_summary()
    assert back == RunSummary(**FINISHED) and back.is_outcome
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporaries left
    assert RunSummary.from_dict({"status": "failed", "error": "x"}).steps is None
    for text in ("{not json", "[1, 2]"):
        layout.summary_path.write_text(text)
        assert layout.read_summary() is None


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "dir"
    d.mkdir()
    (os.symlink if kind == "symlink" else os.link)(victim, d / ".lock")
    with pytest.raises(UnsafeLockError, match=r"\.lock is a") as err:
        DirectoryLock(d).acquire()
    assert "\n" not in str(err.value)
    assert lock_holder(d) is None
    assert victim.read_text() == "precious"


def test_pretrain_refuses_a_lock_symlink_with_one_line(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = _run_dir(tmp_path, FINISHED)
    (run / ".lock").symlink_to(victim)
    before = _snapshot(run)
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".lock is a symbolic link" in err
    assert victim.read_text() == "precious" and _snapshot(run) == before


@pytest.mark.parametrize("where", ["checkpoints", "step", "best"])
def test_checkpoints_reached_through_a_link_are_refused_before_anything_is_deleted(tmp_path, where):
    """A fresh start clears the old run's checkpoints: through a link that would delete elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    for name in ("step_00000004", "best"):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "important.txt").write_text("mine")
    (elsewhere / ".step_00000006.old").mkdir()
    run = _run_dir(tmp_path)
    layout = RunLayout(run)
    if where == "checkpoints":
        (run / "checkpoints" / "step_00000002").rmdir()
        (run / "checkpoints").rmdir()
        (run / "checkpoints").symlink_to(elsewhere)
    elif where == "step":
        layout.step_dir(4).symlink_to(elsewhere / "step_00000004")
    else:
        layout.best.symlink_to(elsewhere / "best")
    before = _snapshot(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link") as err:
        pretrain(_cfg(run, train__seed=1), progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(RunDirError):
        ckpt.clear_checkpoints(run)
    assert _snapshot(elsewhere) == before
    assert not (run / "summary.json").exists()


def test_every_resume_gets_the_same_policy(tmp_path):
    """In-process callers (the quickstart, sweeps) are refused what `--resume` refuses."""
    run = _run_dir(tmp_path, {"status": "stopped", "error": "interrupted"})
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"--train\.lr 0\.5: --resume continues the run exactly"):
        pretrain(_cfg(run, train__lr=0.5), resume=True, progress=False)
    with pytest.raises(ConfigError, match="--max-steps 60"):
        RunDir(run).check_resume(_cfg(run, train__max_steps=60))
    assert _snapshot(run) == before
    # what a resume may change passes
    assert "train.device" in RESUME_MAY_CHANGE and "train.lr" not in RESUME_MAY_CHANGE
    RunDir(run).check_resume(_cfg(tmp_path / "moved", train__time_cap_s=5.0, train__log_every=3))


def test_the_cli_keeps_its_resume_message(tmp_path, capsys):
    run = _run_dir(tmp_path, {"status": "stopped", "error": "interrupted"})
    assert main(["pretrain", "--resume", str(run), "--max-steps", "60", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-steps 60: --resume continues the run exactly" in err


def test_a_failed_resume_keeps_the_summary_of_a_finished_run(tmp_path, capsys):
    """A resume that fails to start (a device this machine lacks) leaves the finished run's record;
    one of a stopped run records the failure, so a sweep sees why."""
    run = _run_dir(tmp_path, FINISHED)
    before = (run / "summary.json").read_bytes()
    assert main(["pretrain", "--resume", str(run), "--device", "cuda:99", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cuda:99" in err
    assert (run / "summary.json").read_bytes() == before
    (run / "summary.json").write_text(json.dumps({"status": "stopped", "error": "interrupted"}))
    with pytest.raises(LmscaleError, match="cuda:99"):
        pretrain(_cfg(run, train__device="cuda:99"), resume=True, progress=False)
    summary = RunLayout(run).read_summary()
    assert summary.status == "failed" and "cuda:99" in summary.error
