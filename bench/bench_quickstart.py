"""Wall time and peak memory of the README's main job, ``nars search`` with no arguments.

    .venv/bin/python bench/bench_quickstart.py [--quick] [--work DIR] [KEY VALUE ...]

Runs the search in a fresh folder (its own session, so that every Ray process it starts is
counted), samples the memory of all of them once a second, and prints the measured front
with the reference FBNetV3_A_dsmask trained on the same budget. Memory is reported two ways:
summed PSS (proportional set size: a page shared by k processes, such as torch's libraries
mapped by every Ray worker, counts 1/k in each, so the sum is what the machine holds) and
summed RSS (every shared page counted once per process: an overestimate). The largest
processes at the PSS peak are listed, to show where the memory goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


QUICK = [  # --quick: the quickstart's machinery at a fraction of its budget (its APs mean little)
    "stage1.rounds", "1", "stage1.trials_per_round", "2", "stage1.max_iter", "20", "stage1.eval_period", "20",
    "stage1.early_stop.grace_period", "20", "stage2.budget", "4000", "verify.top_k", "1", "verify.max_iter", "40",
]


def session_memory(sid: int) -> list[tuple[str, int, int]]:
    """(name, PSS, RSS in bytes) of every process in session ``sid`` (Linux /proc)."""
    rows = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getsid(int(pid)) != sid:
                continue
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1:] == ["kB"]}
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60] or pid
            rows.append((name, fields["Pss"] * 1024, fields["Rss"] * 1024))
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder to run in (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller search (1 round of 2 stage-1 trials, short budgets): a few minutes")
    parser.add_argument("overrides", nargs="*", help="experiment overrides, e.g. stage1.rounds 1")
    args = parser.parse_args()
    if args.quick:  # the user's own overrides go on top
        args.overrides = [*QUICK, *args.overrides]
    work = Path(args.work or tempfile.mkdtemp(prefix="nars-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nars.cli", "search", "--out", str(work / "run"), *args.overrides]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=work, start_new_session=True, stdout=open(work / "search.log", "w"),
                            stderr=subprocess.STDOUT)
    peak_pss = peak_rss = 0
    at_peak: tuple[float, list[tuple[str, int, int]]] = (0.0, [])
    while proc.poll() is None:
        rows = session_memory(proc.pid)
        pss, rss = sum(r[1] for r in rows), sum(r[2] for r in rows)
        if pss > peak_pss:
            at_peak = (time.time() - start, rows)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(1.0)
    wall = time.time() - start
    print(f"command: nars search --out {work / 'run'} {' '.join(args.overrides)} (in {work})")
    print(f"exit code {proc.returncode}; wall time {wall / 60:.1f} min; peak memory of all processes: "
          f"PSS {peak_pss / 2**30:.2f} GiB, RSS {peak_rss / 2**30:.2f} GiB")
    print(f"at the PSS peak ({at_peak[0] / 60:.1f} min in), the largest processes:")
    for name, pss, rss in sorted(at_peak[1], key=lambda r: -r[1])[:6]:
        print(f"  PSS {pss / 2**30:5.2f} GiB  RSS {rss / 2**30:5.2f} GiB  {name}")
    if proc.returncode:
        print((work / "search.log").read_text()[-3000:])
        sys.exit(1)
    front = subprocess.run([sys.executable, "-m", "nars.cli", "pareto", str(work / "run")], capture_output=True,
                           text=True, check=True)
    print(front.stdout)


if __name__ == "__main__":
    main()
