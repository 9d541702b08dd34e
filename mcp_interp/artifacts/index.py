"""The SQLite index of runs and jobs.

One short-lived connection per call (sqlite3 connections are not shareable across threads) plus a
process-wide write lock; WAL mode lets readers proceed while a writer commits, and busy_timeout
covers a second process using the same store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
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
"""

_RUN_COLS = tuple(RunRecord.model_fields)
_JOB_COLS = tuple(JobRecord.model_fields)


class SqliteIndex:
    def __init__(self, path: Path):
        self.path = path
        self._write_lock = threading.Lock()
        with self._write_lock, self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
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
    def upsert_run(self, rec: RunRecord) -> None:
        row = rec.model_dump()
        row["key_metrics"] = dumps(row["key_metrics"], indent=None)
        cols = ", ".join(_RUN_COLS)
        marks = ", ".join("?" for _ in _RUN_COLS)
        self._write(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                    [row[c] for c in _RUN_COLS])

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
        row = rec.model_dump()
        row["result"] = None if row["result"] is None else dumps(row["result"], indent=None)
        self._write(f"INSERT OR REPLACE INTO jobs ({', '.join(_JOB_COLS)}) VALUES "
                    f"({', '.join('?' for _ in _JOB_COLS)})", [row[c] for c in _JOB_COLS])

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

    def interrupt_jobs(self, message: str, finished: str) -> int:
        return self._write(
            "UPDATE jobs SET status = 'interrupted', message = ?, error = ?, "
            "error_type = 'Interrupted', finished = ? WHERE status IN ('queued', 'running')",
            (message, message, finished))


def _run(row: sqlite3.Row) -> RunRecord:
    d = dict(row)
    d["key_metrics"] = json.loads(d["key_metrics"]) if d.get("key_metrics") else {}
    return RunRecord(**d)


def _job(row: sqlite3.Row) -> JobRecord:
    d = dict(row)
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    d["progress"] = d.get("progress") or 0.0
    d["message"] = d.get("message") or ""
    d["description"] = d.get("description") or ""
    return JobRecord(**d)
