"""How far two runs of the same seed drift when their float rounding differs, as on two machines.

    .venv/bin/python bench/bench_seed_drift.py [--work DIR] [KEY VALUE ...]

Runs the quickstart (seed 0, or the overrides given) twice on this machine: ``A`` trains each
trial on 1 thread, 2 trials at a time; ``B`` on 2 threads, 1 trial at a time. Two threads
split convolutions and matrix products differently, so B's losses and APs differ from A's in
the last bits, as another machine's would; its trials also report in another order. Then it
compares what the search decided: the Sobol round, each rung's successive-halving decision,
the later rounds' candidates, stage 2's front and verification picks, and the exported best.
A finished run in ``--work`` is reused (the bench resumes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nars.search.store import RunStore

RUNS = {"A": ["ray.cpus_per_trial", "1", "ray.max_concurrent", "2"],
        "B": ["ray.cpus_per_trial", "2", "ray.max_concurrent", "1"]}


def run(work: Path, name: str, overrides: list[str]) -> Path:
    out = work / name
    if (out / "nars.sqlite").is_file():
        store = RunStore(out / "nars.sqlite")
        state = store.get_meta("state")
        store.close()
        if state == "finished":
            return out
    args = ["--resume", str(out)] if out.exists() else ["--out", str(out), *RUNS[name], *overrides]
    subprocess.run([sys.executable, "-m", "nars.cli", "search", *args], cwd=work, check=True,
                   stdout=subprocess.DEVNULL)
    return out


def summary(run_dir: Path) -> dict[str, Any]:
    store = RunStore(run_dir / "nars.sqlite")
    try:
        trials = store.trials()
        return {"trials": {t["id"]: t for t in trials}, "halving": store.get_meta("halving"),
                "front": [f["id"] for f in store.get_meta("stage2_front")]}
    finally:
        store.close()


def stage1(s: dict[str, Any], r: int) -> list[str]:
    return [t["id"] for t in s["trials"].values() if t["stage"] == "stage1" and t["round"] == r]


def picks(s: dict[str, Any]) -> list[str]:
    return sorted(t["candidate_id"] for t in s["trials"].values() if t["stage"] == "verify")


def best(s: dict[str, Any]) -> tuple[str, float, float]:
    verified = [t for t in s["trials"].values() if t["stage"] == "verify" and t["status"] == "done"]
    t = max(verified, key=lambda t: t["metrics"]["segm_AP"])
    return t["candidate_id"], t["mflops"], t["metrics"]["segm_AP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder to run in (default: a new temporary one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="nars-drift-"))
    work.mkdir(parents=True, exist_ok=True)
    a, b = (summary(run(work, name, args.overrides)) for name in RUNS)
    rounds = max(t["round"] for t in a["trials"].values() if t["stage"] == "stage1") + 1
    print(f"work: {work}")
    for r in range(rounds):
        ra, rb = stage1(a, r), stage1(b, r)
        print(f"stage 1 round {r}: {len(set(ra) & set(rb))} of {len(ra)} candidates the same")
        for tid in [t for t in ra if t in rb]:
            ta, tb = a["trials"][tid], b["trials"][tid]
            ap_a, ap_b = (ta["metrics"] or {}).get("segm_AP"), (tb["metrics"] or {}).get("segm_AP")
            loss_a, loss_b = (ta["metrics"] or {}).get("loss"), (tb["metrics"] or {}).get("loss")
            print(f"  {tid}: A {ta['status']} at {ta['reached']} segm AP {ap_a} loss {loss_a}; "
                  f"B {tb['status']} at {tb['reached']} segm AP {ap_b} loss {loss_b}")
        same = (a["halving"] or {}).get(str(r)) == (b["halving"] or {}).get(str(r))
        print(f"  successive-halving decisions: {'the same' if same else 'DIFFER'}: "
              f"A {(a['halving'] or {}).get(str(r))} B {(b['halving'] or {}).get(str(r))}")
    print(f"stage 2 front: {len(set(a['front']) & set(b['front']))} of {len(a['front'])} (A) / {len(b['front'])} (B) "
          "candidates in both")
    print(f"verification picks: A {picks(a)} B {picks(b)} ({'the same' if picks(a) == picks(b) else 'differ'})")
    for name, s in (("A", a), ("B", b)):
        cid, mflops, ap = best(s)
        print(f"exported best {name}: {cid}, {mflops:.0f} MFLOPs, segm AP {ap:.4f}")


if __name__ == "__main__":
    main()
