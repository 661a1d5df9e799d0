"""The experiment store: one SQLite file (WAL) per search run.

One row per trial (candidate, status, metric history, final metrics, costs, wall time,
error; for a trial paused between rungs of successive halving, the iteration it reached and
its checkpoint in Ray's storage) plus a key/value table for the resolved experiment, seeds,
stage progress and the early-stopping decisions.
Only the search driver writes; readers (``nars pareto``, notebooks) may open it any time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from nars.errors import UserError

STATUSES = ("pending", "running", "done", "failed", "pruned")
FINAL = ("done", "failed", "pruned")
STORE_FILE = "nars.sqlite"

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
    """Read/write access to a run's SQLite store."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        present = {row[1] for row in self.db.execute("PRAGMA table_info(trials)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in present:
                self.db.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.db.close()

    # -- meta -------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- trials -----------------------------------------------------------------------
    def add_trials(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert pending trials (``id, candidate_id, stage, round, candidate, mflops, params,
        latency_ms, max_iter``; latency_ms: predicted); ids already present are left as they
        are, so re-adding is harmless."""
        now = time.time()
        with self.db:
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
        with self.db:
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
        with self.db:
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
        with self.db:
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
        with self.db:
            cur = self.db.execute(f"UPDATE trials SET {assignments} WHERE id = ?", (*fields.values(), trial_id))
        if cur.rowcount != 1:
            raise KeyError(f"no trial {trial_id!r} in {self.path}")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in _JSON_COLUMNS:
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    return row


def measured_trials(run_dir: str | Path) -> pd.DataFrame:
    """A run's trials that were measured (done, or pruned by early stopping), as a table
    ``predictor.read_table`` reads."""
    trials = load_run(run_dir)["trials"]
    return trials[trials["status"].isin(["done", "pruned"])] if "status" in trials else trials


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """A run as DataFrames: ``trials`` (one row per trial, final metrics as columns),
    ``history`` (one row per intermediate report) and ``meta``."""
    path = Path(run_dir) / STORE_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {STORE_FILE} here, not a NARS run folder")
    store = RunStore(path)
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
