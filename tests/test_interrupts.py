"""Ctrl-C where Python loses a signal handler's exception: in a finalizer (``check`` raises it
again) and inside ``ray.init`` (``deferred`` holds it back until Ray is up, and Ray goes down
before the command stops). Each test signals only the child process (group) it started.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMAND = """
import sys, time
from nars.interrupts import Interrupted, check, deferred, raising
from nars.search.cluster import ray_session

def command():
{body}

try:
    with raising():  # as the CLI runs every command
        command()
except Interrupted as e:
    print("stopped", e.name, flush=True)
    sys.exit(e.exit_code)
"""

FINALIZER = """
    class Slow:
        def __del__(self):
            print("finalizing", flush=True)
            time.sleep(60)  # the test's SIGINT ends the sleep; its exception is "ignored" here

    Slow()
    print("carried on", flush=True)
    check()
    print("not stopped", flush=True)
"""

DEFERRED = """
    with deferred():
        print("in the block", flush=True)
        time.sleep(2)  # the signal arrives here: recorded, and the sleep goes on (PEP 475)
        print("block done", flush=True)
    print("not stopped", flush=True)
"""

RAY_START = """
    print("starting", flush=True)
    with ray_session({"address": None, "num_cpus": 1}):
        print("up", flush=True)
        time.sleep(60)
"""


def _child(body: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", COMMAND.format(body=body.strip("\n"))], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the child left (its own group only)
        except ProcessLookupError:
            pass


def test_a_signal_lost_in_a_finalizer_still_stops_the_command():
    proc = _child(FINALIZER)
    assert proc.stdout.readline().strip() == "finalizing"
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert "Exception ignored" in err, err  # Python did lose it ...
    assert out.split() == ["carried", "on", "stopped", "SIGINT"], out + err  # ... and check raised it again
    assert proc.returncode == 128 + signal.SIGINT


def test_a_deferred_block_runs_to_its_end_and_the_signal_stops_the_command_after_it():
    proc = _child(DEFERRED)
    assert proc.stdout.readline().strip() == "in the block"
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert out.split() == ["block", "done", "stopped", "SIGTERM"], out + err
    assert proc.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("window", [(0.0, 1.5), (1.5, 3.0), (3.0, 4.5)])
def test_ctrl_c_anywhere_in_the_ray_sessions_start_stops_cleanly(window):
    """At a random point of ``ray.init`` (printed on failure) the child stops with 130: not lost
    in Ray's at-fork hooks (exit 0 after the work), not a crash of the half-started core worker
    at exit (SIGSEGV). The start takes 2-5 s; the windows spread the points over it."""
    proc = _child(RAY_START)
    assert proc.stdout.readline().strip() == "starting"
    delay = random.Random().uniform(*window)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: Ray's processes get it too
    out, err = _finish(proc)
    why = f"SIGINT {delay:.2f} s into the start: exit {proc.returncode}\n{out}\n{err[-3000:]}"
    assert proc.returncode == 128 + signal.SIGINT, why
    assert out.splitlines()[-1] == "stopped SIGINT", why
