"""The SQLite index of runs and jobs.

One short-lived connection per call (sqlite3 connections are not shareable across threads) plus a
process-wide write lock; WAL mode lets readers proceed while a writer commits, and busy_timeout
covers a second process using the same store.

Several server processes may share one store (Claude Code starts one stdio server per session). Each
registers as an *owner* with a heartbeat; jobs and running runs carry their owner, so a server starting
up interrupts only what belongs to owners that are dead (heartbeat older than the lease, or a process
on this host that no longer exists), and a job key is claimed atomically (BEGIN IMMEDIATE), so identical
requests sent to different servers join one job.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .fsutil import dumps
from .records import JobRecord, RunRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, tool TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL,
    params_hash TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, finished TEXT,
    seconds REAL, rel_path TEXT NOT NULL, key_metrics TEXT, summary TEXT,
    task_hash TEXT, weight_hash TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS runs_lookup ON runs (tool, task, model, params_hash, status);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, description TEXT, key TEXT, status TEXT NOT NULL,
    progress REAL, message TEXT, created TEXT NOT NULL, started TEXT, finished TEXT,
    result TEXT, error TEXT, error_type TEXT);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL);
"""
# columns added after the first release: (table, column, declaration)
_MIGRATIONS = (("jobs", "owner", "TEXT"), ("jobs", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
               ("runs", "owner", "TEXT"))
LEASE_SECONDS = 15.0  # an owner whose heartbeat is older than this is dead
HOST = socket.gethostname()


SAME_HOST_LEASE_SECONDS = 600.0


def pid_alive(pid: int) -> bool:
    """Whether a process of this host exists and is not a zombie (a kill -9'd child not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True

_RUN_COLS = tuple(RunRecord.model_fields)
_JOB_COLS = tuple(JobRecord.model_fields)


class SqliteIndex:
    """The store's SQLite index of runs and jobs (one file beside the runs, WAL mode): queries for list_runs and
    the run cache, job records with their owner process, and the claim that lets two servers on one store run an
    identical request once. Every call opens its own connection; writes are serialised by a lock."""

    def __init__(self, path: Path):
        self.path = path
        self._write_lock = threading.Lock()
        with self._write_lock, self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            for table, col, decl in _MIGRATIONS:
                have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                if col not in have:
                    try:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
                    except sqlite3.OperationalError:  # another process added it first
                        pass
            con.execute("CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key, status)")
            # stores written before the job vocabulary was unified called a finished job "succeeded"
            con.execute("UPDATE jobs SET status = 'complete' WHERE status = 'succeeded'")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout=30000")
            con.row_factory = sqlite3.Row
            yield con
        finally:
            con.close()

    def _write(self, sql: str, args: tuple | list = ()) -> int:
        with self._write_lock, self._connect() as con:
            return con.execute(sql, args).rowcount

    def _read(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        with self._connect() as con:
            return con.execute(sql, args).fetchall()

    # -- runs ---------------------------------------------------------------------------------
    def upsert_run(self, rec: RunRecord, owner: str | None = None) -> None:
        """Insert or update a run (its owner column is set when given, kept otherwise)."""
        row = rec.model_dump()
        row["key_metrics"] = dumps(row["key_metrics"], indent=None)
        cols = [*_RUN_COLS, *(["owner"] if owner else [])]
        row["owner"] = owner
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "run_id")
        self._write(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
                    f"ON CONFLICT(run_id) DO UPDATE SET {updates}", [row[c] for c in cols])

    def running_runs_owned(self) -> dict[str, str | None]:
        """run_id -> owner of every run still marked running."""
        return {r["run_id"]: r["owner"] for r in self._read("SELECT run_id, owner FROM runs WHERE status = 'running'")}

    def run_owner(self, run_id: str) -> tuple[bool, str | None, str | None]:
        """(exists, status, owner) of one run, read now."""
        rows = self._read("SELECT status, owner FROM runs WHERE run_id = ?", (run_id,))
        return (True, rows[0]["status"], rows[0]["owner"]) if rows else (False, None, None)

    def run_exists(self, run_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)))

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def query_runs(self, limit: int | None = 50, **filters: Any) -> list[RunRecord]:
        where, args = [], []
        for col, val in filters.items():
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC, run_id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_run(r) for r in self._read(sql, args)]

    def set_run_status(self, run_id: str, status: str, error: str | None = None) -> None:
        self._write("UPDATE runs SET status = ?, error = ? WHERE run_id = ?", (status, error, run_id))

    def replace_all_runs(self, records: list[RunRecord]) -> None:
        with self._write_lock, self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM runs")
                for rec in records:
                    row = rec.model_dump()
                    row["key_metrics"] = dumps(row["key_metrics"], indent=None)
                    con.execute(f"INSERT OR REPLACE INTO runs ({', '.join(_RUN_COLS)}) VALUES "
                                f"({', '.join('?' for _ in _RUN_COLS)})", [row[c] for c in _RUN_COLS])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # -- jobs ---------------------------------------------------------------------------------
    def save_job(self, rec: JobRecord) -> None:
        row = _job_row(rec)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLS if c != "job_id")
        self._write(f"INSERT INTO jobs ({', '.join(_JOB_COLS)}) VALUES ({', '.join('?' for _ in _JOB_COLS)}) "
                    f"ON CONFLICT(job_id) DO UPDATE SET {updates}", [row[c] for c in _JOB_COLS])

    def claim_job(self, rec: JobRecord, alive: set[str]) -> JobRecord | None:
        """Atomically (across processes): the queued/running job with `rec.key` whose owner is alive, or else
        insert `rec` and return None. Identical requests sent to two servers thus share one job."""
        row = _job_row(rec)
        with self._write_lock, self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for r in con.execute("SELECT * FROM jobs WHERE key = ? AND status IN ('queued', 'running') "
                                     "AND cancel_requested = 0 ORDER BY created DESC", (rec.key,)).fetchall():
                    if r["owner"] in alive:
                        con.execute("COMMIT")
                        return _job(r)
                con.execute(f"INSERT INTO jobs ({', '.join(_JOB_COLS)}) VALUES ({', '.join('?' for _ in _JOB_COLS)})",
                            [row[c] for c in _JOB_COLS])
                con.execute("COMMIT")
                return None
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def request_cancel(self, job_id: str) -> None:
        self._write("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))

    def cancel_requests(self, owner: str) -> list[str]:
        rows = self._read("SELECT job_id FROM jobs WHERE owner = ? AND cancel_requested = 1 AND status IN "
                          "('queued', 'running')", (owner,))
        return [r["job_id"] for r in rows]

    # -- owners (server processes sharing this store) -------------------------------------------
    def heartbeat(self, owner: str, pid: int | None = None) -> None:
        self._write("INSERT OR REPLACE INTO owners (owner, host, pid, heartbeat) VALUES (?, ?, ?, ?)",
                    (owner, HOST, os.getpid() if pid is None else pid, time.time()))

    def remove_owner(self, owner: str) -> None:
        self._write("DELETE FROM owners WHERE owner = ?", (owner,))

    def alive_owners(self, lease: float = LEASE_SECONDS, same_host_lease: float = SAME_HOST_LEASE_SECONDS) -> set[str]:
        """Owners with a fresh heartbeat whose process (when on this host) still exists."""
        now, out = time.time(), set()
        for r in self._read("SELECT owner, host, pid, heartbeat FROM owners"):
            age = now - r["heartbeat"]
            if r["host"] == HOST:
                # the process is the truth on this host: a heartbeat can go stale while it lives (a long C call
                # holding the GIL, a busy index); the long bound only guards against a reused pid
                if pid_alive(r["pid"]) and age <= max(lease, same_host_lease):
                    out.add(r["owner"])
            elif age <= lease:
                out.add(r["owner"])
        return out

    def interrupt_job_if_running(self, job_id: str, message: str, finished: str) -> None:
        self._write("UPDATE jobs SET status = 'interrupted', message = ?, error = ?, error_type = 'Interrupted', "
                    "finished = ? WHERE job_id = ? AND status IN ('queued', 'running')",
                    (message, message, finished, job_id))

    def load_job(self, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def load_jobs(self, status: str | None = None, limit: int | None = 100) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs", []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY created DESC, job_id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_job(r) for r in self._read(sql, args)]

    def interrupt_jobs(self, message: str, finished: str, alive: set[str] | None = None) -> int:
        """Mark queued/running jobs interrupted, except those of the `alive` owners."""
        keep = sorted(alive or ())
        cond = f" AND (owner IS NULL OR owner NOT IN ({', '.join('?' for _ in keep)}))" if keep else ""
        return self._write(
            "UPDATE jobs SET status = 'interrupted', message = ?, error = ?, "
            f"error_type = 'Interrupted', finished = ? WHERE status IN ('queued', 'running'){cond}",
            (message, message, finished, *keep))


def _run(row: sqlite3.Row) -> RunRecord:
    d = {k: row[k] for k in row.keys() if k in _RUN_COLS}
    d["key_metrics"] = json.loads(d["key_metrics"]) if d.get("key_metrics") else {}
    return RunRecord(**d)


def _job_row(rec: JobRecord) -> dict:
    row = rec.model_dump()
    row["result"] = None if row["result"] is None else dumps(row["result"], indent=None)
    return row


def _job(row: sqlite3.Row) -> JobRecord:
    d = {k: row[k] for k in row.keys() if k in _JOB_COLS}
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    d["progress"] = d.get("progress") or 0.0
    d["message"] = d.get("message") or ""
    d["description"] = d.get("description") or ""
    return JobRecord(**d)
