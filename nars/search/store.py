"""The experiment store: one SQLite file (WAL) per search run.

One row per trial (candidate, status, metric history, final metrics, costs, wall time,
error; for a trial paused between rungs of successive halving, the iteration it reached and
its checkpoint in Ray's storage) plus a key/value table for the resolved experiment, seeds,
stage progress and the early-stopping decisions.
Only the search driver writes, holding the run's lock (``RunLock``); readers (``nars
pareto``, ``report``, ``export``, notebooks) open it read-only any time. Every command opens a
run folder through ``open_run``, which refuses a folder that is not a run or whose store is
damaged before anything reads or writes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from nars.errors import UserError

STATUSES = ("pending", "running", "done", "failed", "pruned")
FINAL = ("done", "failed", "pruned")
STORE_FILE = "nars.sqlite"
LOCK_FILE = "nars.lock"
# PRAGMA user_version of the store's layout: 1 lacked the _ADDED_COLUMNS (and the number), 2 has them
SCHEMA_VERSION = 2
# meta rows a search writes (in one transaction) before its first trial: a store without them never started
START_META = ("experiment",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    candidate_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    round INTEGER NOT NULL,
    candidate TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'pruned')),
    history TEXT NOT NULL DEFAULT '[]',
    metrics TEXT,
    mflops REAL,
    params INTEGER,
    latency_ms REAL,
    measured_latency_ms REAL,
    max_iter INTEGER,
    reached INTEGER,
    checkpoint TEXT,
    retries INTEGER NOT NULL DEFAULT 0,
    wall_time REAL,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_stage ON trials (stage, round);
"""
_JSON_COLUMNS = ("candidate", "history", "metrics")
# columns added since the first stores: (name, type), added to an older store when opened
_ADDED_COLUMNS = (("latency_ms", "REAL"), ("measured_latency_ms", "REAL"), ("reached", "INTEGER"),
                  ("checkpoint", "TEXT"), ("retries", "INTEGER NOT NULL DEFAULT 0"))


class RunStore:
    """Access to a run's SQLite store: read-only, or read/write (creating or upgrading the
    schema). Commands open it through ``open_run``; this class alone does not check it."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        try:
            if readonly:  # never creates, migrates or writes the file
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                          isolation_level=None)
                return
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            with self.db:
                self.db.executescript(_SCHEMA)
                present = {row[1] for row in self.db.execute("PRAGMA table_info(trials)")}
                for name, kind in _ADDED_COLUMNS:
                    if name not in present:
                        self.db.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a readable NARS store ({e})") from None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction: a kill leaves all of the block's writes or none. (The connection
        autocommits, ``isolation_level=None``, where ``with self.db`` opens no transaction.)"""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: Mapping[str, Any]) -> None:
        """Several meta rows in one transaction: a kill leaves all of them or none."""
        with self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- trials -----------------------------------------------------------------------
    def add_trials(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert pending trials (``id, candidate_id, stage, round, candidate, mflops, params,
        latency_ms, max_iter``; latency_ms: predicted); ids already present are left as they
        are, so re-adding is harmless."""
        now = time.time()
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO trials (id, candidate_id, stage, round, candidate, status, mflops, params, "
                "latency_ms, max_iter, created, updated) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                [
                    (r["id"], r["candidate_id"], r["stage"], r["round"], json.dumps(r["candidate"], sort_keys=True),
                     r.get("mflops"), r.get("params"), r.get("latency_ms"), r.get("max_iter"), now, now)
                    for r in rows
                ],
            )

    def set_status(self, trial_id: str, status: str) -> None:
        self._update(trial_id, status=status)

    def set_measured_latency(self, trial_id: str, ms: float) -> None:
        self._update(trial_id, measured_latency_ms=ms)

    def append_history(self, trial_id: str, report: dict[str, Any]) -> None:
        """Add one intermediate report (iteration + metrics) to the trial's history; a report
        of an iteration already there (a retried trial repeating it) replaces that one."""
        with self._transaction():
            row = self.db.execute("SELECT history FROM trials WHERE id = ?", (trial_id,)).fetchone()
            history = [h for h in (json.loads(row[0]) if row else []) if h.get("iteration") != report.get("iteration")]
            history.append(report)
            self.db.execute(
                "UPDATE trials SET history = ?, status = 'running', updated = ? WHERE id = ?",
                (json.dumps(history), time.time(), trial_id),
            )

    def pause(self, trial_id: str, reached: int, checkpoint: str, metrics: dict[str, Any],
              wall_time: float | None) -> None:
        """A trial stopped at a rung, waiting for the rung's decision: pending again, with the
        iteration it reached, its checkpoint (a path or URI in Ray's storage) and its metrics there."""
        self._update(trial_id, status="pending", reached=reached, checkpoint=checkpoint, metrics=json.dumps(metrics),
                     wall_time=wall_time)

    def add_retry(self, trial_id: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE trials SET retries = retries + 1, updated = ? WHERE id = ?", (time.time(), trial_id))

    def finish(
        self,
        trial_id: str,
        status: str,
        metrics: dict[str, Any] | None = None,
        wall_time: float | None = None,
        error: str | None = None,
        reached: int | None = None,
        checkpoint: str | None = None,
    ) -> None:
        """A final status; a done trial also records the iteration it reached and its checkpoint."""
        if status not in FINAL:
            raise ValueError(f"final status must be one of {FINAL}, got {status!r}")
        done = {"reached": reached, "checkpoint": checkpoint} if reached is not None else {}
        self._update(trial_id, status=status, metrics=json.dumps(metrics) if metrics is not None else None,
                     wall_time=wall_time, error=error, **done)

    def requeue_interrupted(self) -> int:
        """Trials left running by a killed driver go back to pending; their history keeps only
        the reports up to the rung they had reached (where they continue from)."""
        running = self.trials(status="running")
        with self._transaction():
            for t in running:
                history = [h for h in t["history"] if t["reached"] and h.get("iteration", 0) <= t["reached"]]
                self.db.execute("UPDATE trials SET status = 'pending', history = ?, updated = ? WHERE id = ?",
                                (json.dumps(history), time.time(), t["id"]))
        return len(running)

    def trial(self, trial_id: str) -> dict[str, Any]:
        rows = [t for t in self.trials() if t["id"] == trial_id]
        if not rows:
            raise KeyError(f"no trial {trial_id!r} in {self.path}")
        return rows[0]

    def trials(self, stage: str | None = None, round: int | None = None, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Trials as dicts (JSON columns decoded), in insertion order."""
        sql, args = "SELECT * FROM trials WHERE 1=1", []
        if stage is not None:
            sql, args = sql + " AND stage = ?", args + [stage]
        if round is not None:
            sql, args = sql + " AND round = ?", args + [round]
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += statuses
        cur = self.db.execute(sql + " ORDER BY rowid", args)
        names = [d[0] for d in cur.description]
        return [_decode(dict(zip(names, row))) for row in cur.fetchall()]

    def _update(self, trial_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._transaction():
            cur = self.db.execute(f"UPDATE trials SET {assignments} WHERE id = ?", (*fields.values(), trial_id))
        if cur.rowcount != 1:
            raise KeyError(f"no trial {trial_id!r} in {self.path}")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in _JSON_COLUMNS:
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    for name, kind in _ADDED_COLUMNS:  # a version-1 store read as it is (read-only opens never migrate)
        row.setdefault(name, 0 if "DEFAULT 0" in kind else None)
    return row


def open_run(run_dir: str | Path, *, write: bool = False, where: str = "") -> RunStore:
    """The store of a run folder, checked whole before anything reads it: a NARS store
    (``PRAGMA quick_check``, the schema version, the meta rows a search starts with).
    Read-only unless ``write`` (the search driver, which holds the ``RunLock``). A folder that
    is not a run, or a damaged store, is a UserError naming the file, and nothing is written.
    ``where``: what names the folder in errors (an option such as ``--resume RUN``)."""
    run_dir = Path(run_dir)
    where = where or str(run_dir)
    path = run_dir / STORE_FILE
    if not path.is_file():
        raise UserError(f"{where}: not a NARS run folder (no {STORE_FILE})")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: {path} is empty (0 bytes; a crash or a full disk leaves that): "
                        "the run's results are gone, start a new run")
    store = RunStore(path, readonly=True)
    try:
        problem = _damage(store)
    except sqlite3.DatabaseError as e:
        problem = str(e)
    if problem:
        store.close()
        raise UserError(f"{where}: {path} is damaged ({problem}); nothing was read or written")
    if write:
        store.close()
        store = RunStore(path)
    return store


def _damage(store: RunStore) -> str | None:
    """What is wrong with a store opened read-only, or None."""
    check = [row[0] for row in store.db.execute("PRAGMA quick_check")]
    if check != ["ok"]:
        return "; ".join(check[:3])
    version = store.db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        return f"its schema version is {version}, written by a newer NARS; this one reads up to {SCHEMA_VERSION}"
    tables = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"meta", "trials"} <= tables:
        return "it has no NARS tables"
    keys = {row[0] for row in store.db.execute("SELECT key FROM meta")}
    missing = [k for k in START_META if k not in keys]
    return f"no {', '.join(missing)} in its meta table: the search never started" if missing else None


class RunLock:
    """An exclusive OS lock (``flock``) on ``RUN/nars.lock`` for as long as a search writes the
    run. The OS drops it when the process dies, however it dies, so a crash never leaves a
    stale lock; the file names the holder for the one-line refusal a second search gets."""

    def __init__(self, run_dir: str | Path, where: str = ""):
        self.path, self.where = Path(run_dir) / LOCK_FILE, where or str(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"{self.where}: cannot create {self.path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.where} is in use by {holder}; wait for it to end (or stop it) first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"nars search (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (removing it would race a new holder)
            self.fd = None


def measured_trials(run_dir: str | Path) -> pd.DataFrame:
    """A run's trials that were measured (done, or pruned by early stopping), as a table
    ``predictor.read_table`` reads."""
    trials = load_run(run_dir)["trials"]
    return trials[trials["status"].isin(["done", "pruned"])] if "status" in trials else trials


def read_trials(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial of a run folder (``open_run``'s checks), the store closed again."""
    store = open_run(run_dir)
    try:
        return store.trials()
    finally:
        store.close()


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """A run as DataFrames: ``trials`` (one row per trial, final metrics as columns),
    ``history`` (one row per intermediate report) and ``meta``."""
    store = open_run(run_dir)
    try:
        rows = store.trials()
        meta = pd.read_sql_query("SELECT key, value FROM meta", store.db)
    finally:
        store.close()
    trials = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["id"])
    if rows:
        metrics = pd.json_normalize([r["metrics"] or {} for r in rows])
        trials = pd.concat([trials.reset_index(drop=True), metrics], axis=1)
    history = pd.DataFrame([{"id": r["id"], **report} for r in rows for report in r["history"]])
    meta["value"] = meta["value"].map(json.loads)
    return {"trials": trials, "history": history, "meta": meta}
