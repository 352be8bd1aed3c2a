"""The SQLite run registry under real concurrent writer processes."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time

import pytest

from lmscale.scaling.registry import Registry, RunRecord


def _writer(db: str, wid: int, n: int) -> None:
    reg = Registry(db)
    for i in range(n):
        reg.add_run(RunRecord(run_id=f"w{wid}-{i}", name=f"w{wid}-{i}", sweep="s", idx=i,
                              config={"worker": wid, "i": i}, tokens=1e6 * (i + 1)))
        reg.update(f"w{wid}-{i}", final_val_loss=float(i), loss_curve=[[i, i * 10, 5.0 - i * 0.01]])
    reg.close()


def _claimer(db: str, wid: int, out) -> None:
    reg = Registry(db)
    got = []
    while True:
        claimed = reg.claim_next(worker=f"p{wid}", sweep="c")
        if claimed is None:
            break
        rec, _ = claimed
        got.append(rec.run_id)
        reg.finish(rec.run_id, final_val_loss=1.0, wall_s=0.0)
    reg.close()
    out.put(got)


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    db = str(tmp_path / "reg.sqlite")
    Registry(db).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry(db)
    assert reg.journal_mode == "wal"
    runs = reg.runs("s")
    assert len(runs) == 100
    assert all(r.final_val_loss == float(r.config["i"]) for r in runs)
    assert all(r.loss_curve == [[r.config["i"], r.config["i"] * 10, 5.0 - r.config["i"] * 0.01]] for r in runs)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_claims_are_exclusive(tmp_path):
    db = str(tmp_path / "reg.sqlite")
    reg = Registry(db)
    for i in range(40):
        reg.add_run(RunRecord(run_id=f"r{i}", name=f"r{i}", sweep="c", idx=i))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db, w, q)) for w in range(4)]
    for p in procs:
        p.start()
    claimed = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    flat = [r for got in claimed for r in got]
    assert sorted(flat) == sorted(f"r{i}" for i in range(40))
    assert len(set(flat)) == 40
    assert reg.counts("c")["finished"] == 40
    assert all(r.attempts == 1 for r in reg.runs("c"))


def test_dead_worker_run_is_reclaimed_and_finished_runs_are_not(tmp_path):
    db = tmp_path / "reg.sqlite"
    reg = Registry(db)
    reg.add_run(RunRecord(run_id="a", name="a", idx=0))
    reg.add_run(RunRecord(run_id="b", name="b", idx=1))
    # a real process claims run "a" and exits without finishing it (a killed worker)
    code = ("from lmscale.scaling.registry import Registry; r = Registry(%r); "
            "print(r.claim('a', worker='gone'))" % str(db))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pending"
    assert reg.get("a").status == "running"
    assert reg.claim("a", worker="me") == "running"  # the claimer's pid is dead: interrupted
    reg.finish("a", final_val_loss=3.0)
    assert reg.claim("a", worker="me") is None
    # a live worker's run is not stolen until its heartbeat goes stale
    assert reg.claim("b", worker="me") == "pending"
    assert reg.claim("b", worker="other") is None
    reg.update("b", heartbeat_at=time.time() - 3600, pid=None)
    assert reg.claim("b", worker="other", stale_after_s=60) == "running"


def test_failed_runs_keep_error_and_are_retried_only_when_asked(tmp_path):
    reg = Registry(tmp_path / "reg.sqlite")
    reg.add_run(RunRecord(run_id="x", name="x"))
    assert reg.claim("x", worker="w") == "pending"
    reg.fail("x", error="ConfigError: vocabulary mismatch")
    rec = reg.get("x")
    assert rec.status == "failed" and "vocabulary" in rec.error
    assert reg.claim_next(worker="w") is None
    assert reg.claim_next(worker="w", retry_failed=True)[1] == "failed"
    assert reg.get("x").error is None and reg.get("x").attempts == 2


def test_add_run_keeps_results_and_delete_journal_for_shared_filesystems(tmp_path):
    reg = Registry(tmp_path / "d.sqlite", journal_mode="delete")
    assert reg.journal_mode == "delete"
    reg.add_run(RunRecord(run_id="x", name="x", tokens=1.0))
    reg.finish("x", final_val_loss=2.5)
    assert not reg.add_run(RunRecord(run_id="x", name="x", tokens=9.0), replace_plan=True)
    assert reg.get("x").final_val_loss == 2.5 and reg.get("x").tokens == 1.0
    reg.close()
    assert Registry(tmp_path / "d.sqlite").journal_mode == "delete"  # reopening keeps the mode
    text = Registry(tmp_path / "d.sqlite").to_csv(tmp_path / "runs.csv")
    assert text.splitlines()[0].startswith("run_id,name") and (tmp_path / "runs.csv").exists()


def test_unknown_column_is_a_clear_error(tmp_path):
    from lmscale.errors import LmscaleError

    reg = Registry(tmp_path / "r.sqlite")
    reg.add_run(RunRecord(run_id="x", name="x"))
    with pytest.raises(LmscaleError, match="unknown registry columns"):
        reg.update("x", losss=1.0)
