"""The README's test command on a fresh clone, with a ``nars search`` running beside it.

    python3.11 bench/bench_suite_under_load.py [--work DIR] [--repo .]

What a new user on a shared machine does (issue 21): clone main into ``DIR/clone``, run the
README's setup command there exactly (install plus the main job), then run the README's
test command while another search keeps the CPUs busy: the quickstart searching in
``DIR/beside`` on its own local Ray, started again whenever it ends, until the tests end.
It reports the setup's and the suite's wall time and pytest's closing line. The search
beside is started in a process group of its own and only that group is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def readme_block(readme: Path, name: str) -> str:
    """The command between ``<!-- name -->`` markers, as .ci/run reads it."""
    text = readme.read_text()
    block = text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]
    return "\n".join(line for line in block.splitlines() if line.strip() and not line.startswith("```"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nars-suite-under-load")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    clone, beside = args.work / "clone", args.work / "beside"
    beside.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}

    start = time.time()
    subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block(clone / "README.md", "setup")], cwd=clone,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    setup_s = time.time() - start

    loop = (f"n=0; while true; do {clone}/.venv/bin/nars search --out run-$n > search-$n.log 2>&1; "
            "n=$((n+1)); done")
    load = subprocess.Popen(["bash", "-c", loop], cwd=beside, env=env, start_new_session=True)
    try:
        time.sleep(60)  # the search beside has its Ray up and trials training
        start = time.time()
        tests = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block(clone / "README.md", "test")],
                               cwd=clone, env=env, capture_output=True, text=True)
        suite_s = time.time() - start
    finally:
        os.killpg(load.pid, signal.SIGINT)  # the search stops as on Ctrl-C, then its loop
        time.sleep(20)
        os.killpg(load.pid, signal.SIGKILL)
    searches = sorted(beside.glob("run-*"))
    last = next((line for line in reversed(tests.stdout.splitlines()) if re.search(r"passed|failed", line)), "")
    (args.work / "pytest.log").write_text(tests.stdout + tests.stderr)
    print(json.dumps({"commit": commit, "setup_s": round(setup_s), "suite_s": round(suite_s),
                      "exit": tests.returncode, "pytest": last.strip("= "), "searches_beside": len(searches),
                      "log": str(args.work / "pytest.log")}, indent=2))


if __name__ == "__main__":
    main()
