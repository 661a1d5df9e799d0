"""Ctrl-C during the Ray session's start: is it ever lost, or does the process crash?

    .venv/bin/python bench/bench_ray_start_interrupts.py --start 0.2 --stop 3.0 --step 0.1 [--repeat 1]

For each delay d, a child process runs what ``nars search`` runs around Ray (the CLI's
``raising``, then ``nars.search.cluster.ray_session``, then work) and gets SIGINT at its
process group d seconds after it starts the session, as a terminal's Ctrl-C. Outcomes: exit
130 (stopped, as it should), 0 (the signal was lost and the work ran to its end), or anything
else (a crash, e.g. -11 for SIGSEGV). ``ray.init`` takes 2-5 s here, so the default delays
cover it. Run it from a checkout with ``PYTHONPATH`` set to that checkout to measure that
version. Prints one line per delay and a tally.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time

CHILD = """
import sys, time
from nars.interrupts import Interrupted, raising
from nars.search.cluster import ray_session

try:
    with raising():
        print("starting", flush=True)
        with ray_session({"address": None, "num_cpus": 1}):
            time.sleep(5)  # the work a lost signal lets run
    print("finished", flush=True)
except KeyboardInterrupt as e:
    print("stopped", flush=True)
    sys.exit(getattr(e, "exit_code", 130))
"""


def trial(delay: float) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdout.readline()  # "starting"
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the child left (its own group only)
        except ProcessLookupError:
            pass
    return proc.returncode, out.strip().replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=float, default=0.2)
    parser.add_argument("--stop", type=float, default=3.0)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tally: collections.Counter[str] = collections.Counter()
    n = int(round((args.stop - args.start) / args.step)) + 1
    for i in range(n * args.repeat):
        delay = round(args.start + (i % n) * args.step, 3)
        code, out = trial(delay)
        outcome = {130: "stopped (130)", 0: "LOST (exit 0)"}.get(code, f"CRASH ({code})")
        tally[outcome] += 1
        print(f"{delay:.2f} s: {outcome}: {out}", flush=True)
    print(", ".join(f"{k}: {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()
