"""nars search on a real Ray cluster, and a trial's worker killed mid-training (that a search
decides the same at any concurrency is tests/test_run_integrity.py's: its interrupted runs at
concurrency 1 and 2 must both match one uninterrupted run).

The cluster is started as users start one: ``ray start --head`` (no CPUs, so every trial runs
on the other node) and ``ray start --address`` for a worker node with its own temp folder, both
on 127.0.0.1, stopped at the end. Trials reach the run only through Ray's storage.

Other Ray clusters may run on the same machine: every port is one the OS just gave out (none of
Ray's defaults, such as the client server's 10001), and the tests signal only processes they
started: the nodes' process groups, and a trial's worker found below the worker node's
``ray start`` (Ray's state API would need the dashboard, which minimal Ray lacks).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from nars.search.store import RunStore

DATA = Path(__file__).parent / "data"
NARS = [sys.executable, "-m", "nars.cli"]
RAY = str(Path(sys.executable).parent / "ray")


def _experiment(tmp: Path, **changes: object) -> Path:
    exp = yaml.safe_load((DATA / "tiny_search.yaml").read_text())
    exp["dataset"]["shapes"]["out"] = str(tmp / "shapes")
    for key, value in changes.items():
        section, _, name = key.partition(".")
        exp[section][name] = value
    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trials(run: Path) -> list[dict]:
    store = RunStore(run / "nars.sqlite")
    try:
        return store.trials()
    finally:
        store.close()


def _node(args: list[str], temp: str) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group, so that stopping it stops only it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([RAY, "start", *args, "--temp-dir", temp, "--block", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(node: subprocess.Popen) -> None:
    """SIGTERM to the node's process group, SIGKILL after 5 s (``ray start --block`` took about
    20 s to finish a SIGTERM, and nothing of a test's node needs a graceful end)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 20)):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@dataclass(frozen=True)
class Cluster:
    address: str
    worker: subprocess.Popen  # the worker node's ``ray start``: every trial runs below it


# OS-assigned ports (0) where Ray takes them, free ones where it wants a number
_NODE_PORTS = ["--min-worker-port", "0", "--max-worker-port", "0", "--dashboard-agent-listen-port", "0"]


@pytest.fixture(scope="module")
def cluster():
    """A head (0 CPUs) and a 2-CPU worker node on 127.0.0.1."""
    port = _free_port()
    # unix socket paths must stay short: not under pytest's long tmp paths
    head_tmp, worker_tmp = tempfile.mkdtemp(prefix="nars-h-"), tempfile.mkdtemp(prefix="nars-w-")
    head = _node(["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false",
                  "--ray-client-server-port", str(_free_port()), *_NODE_PORTS], head_tmp)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    worker = _node(["--address", f"127.0.0.1:{port}", "--num-cpus", "2", *_NODE_PORTS], worker_tmp)
    time.sleep(5)
    try:
        assert head.poll() is None and worker.poll() is None, (head.stderr.read() + worker.stderr.read())[-2000:]
        yield Cluster(f"127.0.0.1:{port}", worker)
    finally:
        _stop(worker)
        _stop(head)
        for temp in (head_tmp, worker_tmp):
            shutil.rmtree(temp, ignore_errors=True)


def test_a_search_on_a_cluster_keeps_its_trials_through_ray_storage(cluster, tmp_path):
    storage = tmp_path / "ray-storage"  # what every node must share (an NFS mount or s3://... in real use)
    exp = _experiment(tmp_path, **{"stage1.rounds": 1, "ray.storage_path": str(storage)})
    run = tmp_path / "run"
    done = subprocess.run([*NARS, "search", str(exp), "--out", str(run), "--ray-address", cluster.address],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(run)
    assert {t["stage"] for t in trials} == {"stage1", "verify", "reference"}
    assert all(t["status"] in ("done", "pruned") for t in trials), [(t["id"], t["error"]) for t in trials]
    for t in trials:  # every trial's checkpoint lies in the storage, done ones also in the run
        assert t["checkpoint"].startswith(str(storage)) and Path(t["checkpoint"], "config.yaml").is_file()
        assert (run / "trials" / t["id"] / "model_final.pth").is_file() == (t["status"] == "done")
    assert not (run / "ray").exists()

    out = tmp_path / "exported"
    export = subprocess.run([*NARS, "export", str(run), "--best", "--out", str(out)], capture_output=True, text=True)
    assert export.returncode == 0, export.stderr[-2000:]
    evaluated = subprocess.run([*NARS, "eval", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                                "--json"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert '"segm"' in evaluated.stdout


def _descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (from Linux's /proc: ppid is the 4th field of
    ``/proc/PID/stat``, after the parenthesised command, which may hold spaces)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _trial_processes(node: subprocess.Popen) -> list[int]:
    """Pids of the processes running a trial on ``node`` (a ``ray start`` this module started;
    its raylet titles a trial's worker ``ray::ImplicitFunc...``)."""
    pids = []
    for pid in _descendants(node.pid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_trial_whose_worker_dies_is_retried_not_failed(cluster, tmp_path):
    exp = _experiment(tmp_path, **{"stage1.rounds": 1, "stage1.max_iter": 40, "stage1.early_stop":
                                   {"grace_period": 40, "reduction_factor": 2}, "ray.max_concurrent": 1})
    run = tmp_path / "run"
    proc = subprocess.Popen([*NARS, "search", str(exp), "--out", str(run), "--ray-address", cluster.address],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (run / "nars.sqlite").is_file():
            continue
        reporting = [t for t in _trials(run) if t["stage"] == "stage1" and t["history"] and t["status"] == "running"]
        pids = _trial_processes(cluster.worker)
        if reporting and len(pids) == 1:
            os.kill(pids[0], signal.SIGKILL)  # the trial's process, mid-training
            killed = reporting[0]["id"]
    _, err = proc.communicate(timeout=600)
    assert killed, f"no trial was seen training: {err[-2000:]}"
    assert proc.returncode == 0, err[-3000:]
    trials = {t["id"]: t for t in _trials(run)}
    assert trials[killed]["retries"] == 1 and trials[killed]["status"] in ("done", "pruned")
    assert not [t for t in trials.values() if t["status"] == "failed"]
