"""The sweep run registry: one SQLite file that every worker reads and writes.

A scaling sweep is dozens of runs that outlive any one process: a worker can be killed, a
sweep re-launched, or several workers (threads, processes, Slurm array tasks) can work on the
same sweep at once. The registry is the one place where "which runs exist, which are done, and
what did they measure" lives, so it must stay consistent under all of that:

- WAL journal (readers never block the writer) and a busy timeout, so concurrent processes on
  one machine wait for each other instead of failing with "database is locked";
- every change is one `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two
  workers can never both claim the same run);
- a claimed run carries its worker's host, pid and a heartbeat, so a run whose worker died is
  recognised as interrupted and can be claimed again (and resumed from its checkpoints).

WAL needs shared memory, i.e. all processes on one host. A registry used from several nodes
(Slurm) is created with the rollback journal (`journal_mode="delete"`), which is safe on a shared
filesystem whose POSIX locks work (NFSv4 with lockd, Lustre/GPFS with locking enabled).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_text
from lmscale.io.locks import pid_alive

STATUSES = ("pending", "running", "finished", "failed", "stopped")
SCHEMA_VERSION = 2
ROLES = ("stable", "branch")  # a WSD sweep's stable runs (not fit points) and their cooldown branches
# columns added after v1, with their types; a v1 registry gains them empty (unknown) when opened
_ADDED_COLUMNS = {"role": "TEXT", "parent": "TEXT", "lineage": "TEXT", "unique_tokens": "REAL", "epochs": "REAL"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    sweep TEXT NOT NULL DEFAULT '',
    idx INTEGER NOT NULL DEFAULT 0,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    config TEXT NOT NULL DEFAULT '{}',
    family TEXT,
    params_total INTEGER,
    params_embedding INTEGER,
    params_non_embedding INTEGER,
    tokens REAL,
    flops REAL,
    seed INTEGER,
    final_val_loss REAL,
    best_val_loss REAL,
    loss_curve TEXT NOT NULL DEFAULT '[]',
    train_curve TEXT NOT NULL DEFAULT '[]',
    wall_s REAL,
    steps INTEGER,
    tokens_trained REAL,
    flops_trained REAL,
    run_dir TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    host TEXT,
    pid INTEGER,
    created_at REAL,
    started_at REAL,
    heartbeat_at REAL,
    finished_at REAL,
    updated_at REAL,
    role TEXT,
    parent TEXT,
    lineage TEXT,
    unique_tokens REAL,
    epochs REAL
);
CREATE INDEX IF NOT EXISTS runs_sweep_idx ON runs (sweep, idx);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
"""


@dataclass
class RunRecord:
    """One row of the registry. `tokens` is the planned budget D, `flops` the planned C."""

    run_id: str
    name: str
    sweep: str = ""
    idx: int = 0
    status: str = "pending"
    config: dict[str, Any] = field(default_factory=dict)
    family: str | None = None
    params_total: int | None = None
    params_embedding: int | None = None
    params_non_embedding: int | None = None
    tokens: float | None = None
    flops: float | None = None
    seed: int | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)  # [step, tokens, val_loss]
    train_curve: list[list[float]] = field(default_factory=list)  # [step, tokens, train_loss]
    wall_s: float | None = None
    steps: int | None = None
    tokens_trained: float | None = None
    flops_trained: float | None = None
    run_dir: str | None = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    role: str | None = None  # None: an ordinary run; "stable" or "branch" in a WSD sweep
    parent: str | None = None  # a branch's stable run (its run_id): claimed only once that has finished
    lineage: dict[str, Any] | None = None  # a branch's {parent, at_tokens, decay_fraction}
    unique_tokens: float | None = None  # distinct training tokens the run could see (None: unknown)
    epochs: float | None = None  # tokens trained / unique tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_JSON_COLUMNS = ("config", "loss_curve", "train_curve", "lineage")
_COLUMNS = tuple(f.name for f in fields(RunRecord))


def _from_row(row: sqlite3.Row) -> RunRecord:
    data = {k: row[k] for k in row.keys() if k in _COLUMNS}
    for k in _JSON_COLUMNS:
        data[k] = json.loads(data[k]) if data.get(k) else ({} if k == "config" else None if k == "lineage" else [])
    return RunRecord(**data)


def _to_db(key: str, value: Any) -> Any:
    if key == "lineage":
        return None if value is None else json.dumps(value)
    if key in _JSON_COLUMNS:
        return json.dumps(value if value is not None else ({} if key == "config" else []))
    return value


class Registry:
    """A SQLite run registry; safe to open from many threads (one connection each) and processes.

    Use one `Registry` object per thread; it is a thin wrapper over one connection.
    """

    def __init__(self, path: str | os.PathLike, journal_mode: str | None = None,
                 busy_timeout_s: float = 60.0) -> None:
        try:
            self._open(path, journal_mode, busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self._conn.close()
            raise LmscaleError(f"{path}: not a run registry (SQLite: {exc})") from None

    def _open(self, path: str | os.PathLike, journal_mode: str | None, busy_timeout_s: float) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        current = self._retry(lambda: self._conn.execute("PRAGMA journal_mode").fetchone()[0])
        wanted = journal_mode
        if wanted is None and not self._has_schema():
            wanted = "wal"
        if wanted is not None and current.lower() != wanted.lower():
            got = self._retry(lambda: self._conn.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0])
            if got.lower() != wanted.lower():
                raise LmscaleError(f"{self.path}: could not switch the registry to journal_mode={wanted} (got {got})")
        self._conn.execute("PRAGMA synchronous = NORMAL" if self.journal_mode == "wal" else "PRAGMA synchronous = FULL")
        with self.transaction() as c:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = int(self.get_meta("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise LmscaleError(f"{self.path}: registry schema v{version} is newer than this lmscale "
                               f"(v{SCHEMA_VERSION}); upgrade lmscale")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Add the columns a newer schema has; an old run reads them as unknown (None)."""
        with self.transaction() as c:
            have = {r[1] for r in c.execute("PRAGMA table_info(runs)").fetchall()}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    c.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    # ------------------------------------------------------------------ plumbing
    @property
    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    def _has_schema(self) -> bool:
        row = self._retry(lambda: self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='runs'").fetchone())
        return row is not None

    def _retry(self, fn):
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                msg = str(exc).lower()
                if ("locked" not in msg and "busy" not in msg) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction with the write lock taken up front (no upgrade deadlocks)."""
        self._retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._retry(lambda: self._conn.execute("COMMIT"))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ rows
    def add_run(self, record: RunRecord, replace_plan: bool = False) -> bool:
        """Insert a planned run; an existing run keeps its results. Returns True when new.

        With `replace_plan`, a run that has not started yet gets the new plan (config, N, D, C).
        """
        now = time.time()
        data = record.to_dict()
        data["created_at"] = data["created_at"] or now
        data["updated_at"] = now
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self.transaction() as c:
            cur = c.execute(f"INSERT OR IGNORE INTO runs ({cols}) VALUES ({marks})",
                            [_to_db(k, data[k]) for k in _COLUMNS])
            inserted = cur.rowcount == 1
            if not inserted:
                c.execute("UPDATE runs SET idx = ?, sweep = ? WHERE run_id = ?",
                          (record.idx, record.sweep, record.run_id))
            if not inserted and replace_plan:
                plan = ("name", "config", "family", "params_total", "params_embedding",
                        "params_non_embedding", "tokens", "flops", "seed", "run_dir", "role", "parent", "lineage")
                sets = ", ".join(f"{k} = ?" for k in plan)
                c.execute(f"UPDATE runs SET {sets}, updated_at = ? WHERE run_id = ? AND status = 'pending'",
                          [_to_db(k, data[k]) for k in plan] + [now, record.run_id])
        return inserted

    def get(self, run_id: str) -> RunRecord | None:
        row = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _from_row(row) if row else None

    def runs(self, sweep: str | None = None, status: str | tuple[str, ...] | None = None) -> list[RunRecord]:
        q, args = "SELECT * FROM runs", []
        where = []
        if sweep is not None:
            where.append("sweep = ?")
            args.append(sweep)
        if status is not None:
            sts = (status,) if isinstance(status, str) else tuple(status)
            where.append(f"status IN ({', '.join('?' for _ in sts)})")
            args.extend(sts)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY sweep, idx, run_id"
        return [_from_row(r) for r in self._conn.execute(q, args).fetchall()]

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT sweep FROM runs ORDER BY sweep")]

    def update(self, run_id: str, **values: Any) -> None:
        bad = set(values) - set(_COLUMNS)
        if bad:
            raise LmscaleError(f"unknown registry columns: {', '.join(sorted(bad))}")
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as c:
            c.execute(f"UPDATE runs SET {sets} WHERE run_id = ?",
                      [_to_db(k, v) for k, v in values.items()] + [run_id])

    # ------------------------------------------------------------------ claiming
    def _parent_finished(self, c: sqlite3.Connection, rec: sqlite3.Row) -> bool:
        if not rec["parent"]:
            return True
        row = c.execute("SELECT status FROM runs WHERE run_id = ?", (rec["parent"],)).fetchone()
        return row is not None and row[0] == "finished"

    def waiting(self, sweep: str | None = None, only: set[str] | frozenset[str] | None = None,
                tried: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Runs (of `only`) not yet claimable only because their stable run is still to finish:
        it is running, or pending/stopped and not among the runs this caller `tried` already.
        A worker with nothing to claim waits for these."""
        rows = {r.run_id: r for r in self.runs(sweep)}

        def coming(parent: RunRecord) -> bool:
            return parent.status == "running" or (parent.status in ("pending", "stopped")
                                                  and parent.run_id not in tried)

        return [r.run_id for r in rows.values()
                if r.parent and r.status in ("pending", "stopped") and r.run_id not in tried
                and (only is None or r.run_id in only) and r.parent in rows and coming(rows[r.parent])]

    def _claimable(self, rec: sqlite3.Row, now: float, stale_after_s: float, retry_failed: bool) -> bool:
        if not self._parent_finished(self._conn, rec):
            return False
        st = rec["status"]
        if st in ("pending", "stopped"):
            return True
        if st == "failed":
            return retry_failed
        if st == "running":
            if rec["host"] == socket.gethostname() and rec["pid"] and not pid_alive(rec["pid"]):
                return True
            hb = rec["heartbeat_at"] or rec["started_at"] or 0.0
            return now - hb > stale_after_s
        return False

    def claim(self, run_id: str, worker: str, stale_after_s: float = 600.0,
              retry_failed: bool = False) -> str | None:
        """Mark a run as running by `worker`; returns its previous status, or None if not claimable.

        A previous status of "running" (a dead worker's) or "stopped" means the run was
        interrupted: the caller resumes it from its checkpoints.
        """
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None or not self._claimable(row, now, stale_after_s, retry_failed):
                return None
            c.execute("UPDATE runs SET status = 'running', worker = ?, host = ?, pid = ?, started_at = ?, "
                      "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1, error = NULL WHERE run_id = ?",
                      (worker, socket.gethostname(), os.getpid(), now, now, now, run_id))
            return row["status"]

    def claim_next(self, worker: str, sweep: str | None = None, stale_after_s: float = 600.0,
                   retry_failed: bool = False, exclude: set[str] | frozenset[str] = frozenset(),
                   only: set[str] | frozenset[str] | None = None) -> tuple[RunRecord, str] | None:
        """Claim the first claimable run (by idx) atomically; returns (record, previous status).

        `exclude` lists runs this caller already tried, so one pass never retries a run twice;
        `only` restricts the claim to the runs of the caller's current plan.
        """
        now = time.time()
        with self.transaction() as c:
            q = "SELECT * FROM runs WHERE status != 'finished'"
            args: list[Any] = []
            if sweep is not None:
                q += " AND sweep = ?"
                args.append(sweep)
            for row in c.execute(q + " ORDER BY idx, run_id", args).fetchall():
                if (row["run_id"] not in exclude and (only is None or row["run_id"] in only)
                        and self._claimable(row, now, stale_after_s, retry_failed)):
                    c.execute("UPDATE runs SET status = 'running', worker = ?, host = ?, pid = ?, started_at = ?, "
                              "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1, error = NULL "
                              "WHERE run_id = ?",
                              (worker, socket.gethostname(), os.getpid(), now, now, now, row["run_id"]))
                    rec = _from_row(row)
                    prev = rec.status
                    rec.status = "running"
                    return rec, prev
        return None

    def heartbeat(self, run_id: str, worker: str) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute("UPDATE runs SET heartbeat_at = ?, updated_at = ? WHERE run_id = ? AND worker = ? "
                      "AND status = 'running'", (now, now, run_id, worker))

    def finish(self, run_id: str, **results: Any) -> None:
        self.update(run_id, status="finished", finished_at=time.time(), error=None, **results)

    def fail(self, run_id: str, error: str, **results: Any) -> None:
        self.update(run_id, status="failed", finished_at=time.time(), error=error, **results)

    def release(self, run_id: str, status: str = "stopped", **results: Any) -> None:
        """Give a claimed run back (e.g. on Ctrl-C): it is resumed by the next sweep."""
        self.update(run_id, status=status, **results)

    # ------------------------------------------------------------------ export
    def counts(self, sweep: str | None = None) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.runs(sweep):
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_csv(self, path: str | os.PathLike | None = None, sweep: str | None = None) -> str:
        """Flat CSV of the runs (curves and config as JSON strings) for other tools."""
        buf = io.StringIO()
        cols = [c for c in _COLUMNS]
        w = csv.writer(buf)
        w.writerow(cols)
        for r in self.runs(sweep):
            d = r.to_dict()
            w.writerow([json.dumps(d[c]) if c in _JSON_COLUMNS else ("" if d[c] is None else d[c]) for c in cols])
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text
