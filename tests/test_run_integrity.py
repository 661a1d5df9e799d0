"""Nothing lost, nothing silently different: interrupts, run-folder integrity, locking.

The interrupt test stops a search with SIGINT (to its process group, as a terminal's Ctrl-C
does) at a random point of stage 1 and with SIGTERM during verification, resumes it, and
compares every decision with an uninterrupted run of the same seed. The random point and
the concurrency (1 or 2 trials at once) are drawn afresh each run and printed on failure.
The other tests damage copies of that uninterrupted run's folder, or hold its lock, and check
that every command refuses with one line and writes nothing. Every process a test signals is
one it started itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nars.cli import main
from nars.errors import UserError
from nars.search.store import LOCK_FILE, RunLock, RunStore

DATA = Path(__file__).parent / "data"
NARS = [sys.executable, "-m", "nars.cli"]
FINAL = ("done", "failed", "pruned")


def _experiment(tmp: Path, concurrency: int) -> Path:
    exp = yaml.safe_load((DATA / "tiny_search.yaml").read_text())
    exp["dataset"]["shapes"]["out"] = str(tmp / "shapes")
    exp["ray"]["max_concurrent"] = concurrency
    exp["stage1"]["early_stop"]["min_tau"] = None  # every rung decides: halving's decisions are what resume must repeat
    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _read(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    store = RunStore(run / "nars.sqlite", readonly=True)
    try:
        return store.trials(), {k: store.get_meta(k) for k in ("state", "halving", "stage2_front")}
    finally:
        store.close()


def _decisions(run: Path) -> dict[str, Any]:
    """Everything a search decided and measured, none of what varies by timing (wall times)."""
    trials, meta = _read(run)
    rows = [(t["id"], t["stage"], t["round"], t["status"], t["reached"], t["metrics"],
             [{k: v for k, v in h.items() if k != "wall_time"} for h in t["history"]]) for t in trials]
    verified = sorted(t["candidate_id"] for t in trials if t["stage"] == "verify")
    return {"trials": sorted(rows, key=str), "halving": meta["halving"], "state": meta["state"],
            "front": [f["id"] for f in meta["stage2_front"] or []], "verified": verified}


def _stage1_events(trials: list[dict[str, Any]]) -> int:
    """How far stage 1 has got: its trials' reports plus its ended trials."""
    stage1 = [t for t in trials if t["stage"] == "stage1"]
    return sum(len(t["history"]) for t in stage1) + sum(t["status"] in FINAL for t in stage1)


def _check_left_resumable(run: Path, why: str) -> None:
    """What an interrupted search must leave: no trial running, no later stage on a partial one."""
    trials, meta = _read(run)
    assert not [t["id"] for t in trials if t["status"] == "running"], why
    if any(t["status"] not in FINAL for t in trials if t["stage"] == "stage1"):
        assert meta["stage2_front"] is None and not [t for t in trials if t["stage"] not in ("stage1", "reference")], why
    assert meta["state"] != "finished", why


def _interrupt(cmd: list[str], cwd: Path, run: Path, ready, sig: int, group: bool, why: str) -> None:
    """Run ``cmd`` in a session of its own; once ``ready(trials, meta)`` holds, send it ``sig``
    (to its whole process group with ``group``, as Ctrl-C in a terminal does) and check that it
    stops with one line naming the resume command."""
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            if (run / "nars.sqlite").is_file():
                try:
                    trials, meta = _read(run)
                except (sqlite3.Error, UserError):  # the store is being created
                    continue
                if ready(trials, meta):
                    (os.killpg if group else os.kill)(proc.pid, sig)
                    break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the stopped session left (its own group only)
        except ProcessLookupError:
            pass
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, f"{why}: exit {proc.returncode}: {err[-3000:]}"
    last = err.strip().splitlines()[-1]
    assert last == f"nars search: interrupted ({name}); continue with: nars search --resume {run}", why
    assert "Traceback" not in err, f"{why}: {err[-3000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """The tiny search, uninterrupted (concurrency 2)."""
    tmp = tmp_path_factory.mktemp("reference")
    run = tmp / "run"
    done = subprocess.run([*NARS, "search", str(_experiment(tmp, 2)), "--out", str(run)], cwd=tmp,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials, _ = _read(run)
    return {"run": run, "decisions": _decisions(run), "stage1_events": _stage1_events(trials)}


def test_an_interrupted_search_resumes_to_the_uninterrupted_runs_decisions(reference, tmp_path):
    """Successive halving's decisions do not depend on which trial reports first, so one
    uninterrupted run (concurrency 2) is the reference for either concurrency, drawn with the
    interruption point (one interrupted search per test run: three searches' worth of time)."""
    halving = reference["decisions"]["halving"]
    assert {r: [len(kept) for kept in rungs] for r, rungs in halving.items()} == {"0": [1], "1": [1]}  # 2 -> 1
    rng = random.Random()
    concurrency = rng.choice([1, 2])
    point, jitter = rng.randrange(reference["stage1_events"]), rng.uniform(0.0, 1.5)
    why = f"SIGINT after {point} stage-1 events + {jitter:.2f} s, concurrency {concurrency}"
    run = tmp_path / "run"
    exp = _experiment(tmp_path, concurrency)

    at_point: dict[str, float] = {}

    def in_stage1(trials: list[dict[str, Any]], meta: dict[str, Any]) -> bool:
        if "t" not in at_point:  # once reached, the jitter runs out wherever the search is by then
            if _stage1_events(trials) < point:  # (the last events may come with stage 2 already begun)
                return False
            at_point["t"] = time.time()
        return time.time() - at_point["t"] >= jitter

    _interrupt([*NARS, "search", str(exp), "--out", str(run)], tmp_path, run, in_stage1, signal.SIGINT, True, why)
    _check_left_resumable(run, why)

    def verifying(trials: list[dict[str, Any]], meta: dict[str, Any]) -> bool:
        return any(t["stage"] == "verify" and t["status"] == "running" for t in trials)

    _interrupt([*NARS, "search", "--resume", str(run)], tmp_path, run, verifying, signal.SIGTERM, False,
               f"{why}; then SIGTERM in verification")
    _check_left_resumable(run, why)
    trials, _ = _read(run)
    assert any(t["stage"] == "verify" and t["status"] == "pending" for t in trials), why

    done = subprocess.run([*NARS, "search", "--resume", str(run)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{why}: {done.stderr[-3000:]}"
    assert _decisions(run) == reference["decisions"], why


# -- run folders: damaged, locked, edited, read-only ---------------------------------------------------------

def _digest(run: Path) -> dict[str, str]:
    """Every file of a run folder, by content; but SQLite's ``-shm``, the WAL's shared-memory
    index, which every reader updates (it holds no data: a store's content is the file and its WAL)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and not p.name.endswith("-shm")}


def _copy(reference: dict[str, Any], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run, ignore=shutil.ignore_patterns("ray", "tensorboard"))
    return run


def _one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    said = [line for line in err.splitlines() if line.startswith("nars ")]  # progress bars aside
    assert len(said) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _commands(run: Path, tmp_path: Path) -> list[list[str]]:
    return [["pareto", str(run)], ["pareto", str(run), "--json"], ["report", str(run), "--out", str(tmp_path / "r.html")],
            ["export", str(run), "--best", "--out", str(tmp_path / "exported")], ["search", "--resume", str(run)]]


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "no experiment"])
def test_a_damaged_store_is_refused_by_every_command_and_nothing_is_written(reference, tmp_path, capsys, damage):
    run = _copy(reference, tmp_path)
    store = run / "nars.sqlite"
    if damage == "empty":  # a crash or a full disk can leave one
        store.write_bytes(b"")
    elif damage == "garbage":
        store.write_bytes(os.urandom(8192))
    elif damage == "truncated":  # half its pages: a header that promises more than the file holds
        data = store.read_bytes()
        store.write_bytes(data[: len(data) // 2])
    else:  # a store whose search never wrote its first rows
        with sqlite3.connect(store) as db:
            db.execute("DELETE FROM meta")
    before = _digest(run)
    for argv in _commands(run, tmp_path):
        _one_line_error(capsys, main(argv), "nars.sqlite")
        assert _digest(run) == before, argv
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "exported").exists()


def test_read_only_commands_never_write_to_the_run(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    before = _digest(run)
    assert main(["pareto", str(run), "--json"]) == 0
    assert main(["pareto", str(run), "--plot", str(tmp_path / "front.png")]) == 0
    assert main(["export", str(run), "--best", "--out", str(tmp_path / "exported")]) == 0
    assert _digest(run) == before


def test_a_run_in_use_is_refused_naming_its_holder_and_the_lock_dies_with_its_process(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    before = _digest(run)
    with RunLock(run):
        _one_line_error(capsys, main(["search", "--resume", str(run)]), "is in use by nars search (pid "
                        f"{os.getpid()}")
    assert _digest(run) == {**before, LOCK_FILE: _digest(run)[LOCK_FILE]}
    empty = tmp_path / "new"  # a new run's folder claimed by a search started beside this one
    empty.mkdir()
    with RunLock(empty):
        _one_line_error(capsys, main(["search", str(_experiment(tmp_path, 2)), "--out", str(empty)]), "is in use by")
    # a holder killed with SIGKILL (no cleanup at all) leaves no stale lock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nars.search.store import RunLock\n"
                               f"with RunLock({str(run)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(capsys, main(["search", "--resume", str(run)]), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):
        pass


def test_resume_refuses_an_edited_experiment_naming_the_key(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    exp = json.loads((run / "experiment.json").read_text())
    exp["stage1"]["max_iter"] = 40
    (run / "experiment.json").write_text(json.dumps(exp, indent=2))
    before = _digest(run)
    _one_line_error(capsys, main(["search", "--resume", str(run)]), "experiment.json was changed at stage1.max_iter")
    after = _digest(run)  # the lock file names the last holder; nothing else changes
    assert after.pop(LOCK_FILE) and before.pop(LOCK_FILE) and after == before


def test_export_refuses_a_truncated_checkpoint_and_leaves_nothing(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    trials, _ = _read(run)
    best = next(t for t in trials if t["stage"] == "verify")
    weights = run / "trials" / best["id"] / "model_final.pth"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) * 2 // 3])
    out = tmp_path / "exported"
    _one_line_error(capsys, main(["export", str(run), "--id", best["id"], "--out", str(out)]), "model_final.pth")
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".exported")]
    weights.write_bytes(intact)  # the retry is not blocked by anything the failed one left
    assert main(["export", str(run), "--id", best["id"], "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model_final.pth", "summary.json"]


def test_a_stores_several_rows_are_written_in_one_transaction(tmp_path):
    """A failure in the middle of a multi-row write leaves none of it (the connection
    autocommits each statement, so this needs an explicit transaction)."""
    store = RunStore(tmp_path / "nars.sqlite")
    row = {"id": "a-stage1", "candidate_id": "a", "stage": "stage1", "round": 0, "candidate": {}}
    with pytest.raises(sqlite3.Error):  # the second row cannot be bound, after the first was inserted
        store.add_trials([row, {**row, "id": "b-stage1", "mflops": {"not": "a number"}}])
    assert store.trials() == []
    store.add_trials([row])  # and the store takes the next write
    assert [t["id"] for t in store.trials()] == ["a-stage1"]
    store.close()
