"""Warm-starting stage 1 (``stage1.warm_start``): earlier runs' measured trials feed the
predictor from round 0, so a new search does not spend its first round rediscovering them.

Their APs only mean the same thing here if the trials measured the same thing, so every
run has a *fingerprint* (``fingerprint``), compared part by part:

- ``space``: its name and a hash of its parameters (domains, conditions), arch and config
  templates (resolved ``extends`` included): the same file renamed or edited is caught;
- ``setup``: what every candidate trains in besides its own values: the base config with
  the experiment's pinned ``config`` over it, less what differs between runs of one search
  (data paths, seed, device, output folder, the evaluation and checkpoint periods the
  driver sets);
- ``parent``: the SHA-256 of the checkpoint every trial inherits from ("" from scratch);
- ``dataset``: the shapes generator's parameters, or the SHA-256 of the train and val
  annotation files: the same data at another path matches, other data does not;
- ``fidelity``: ``stage1.fidelity``: with ``supernet``, stage-1 trials start from the run's
  supernet, not from the parent, so their APs are not the parent-started trials' APs.

A run stores its fingerprint in its meta when it starts (the driver), so later runs compare
against what it really trained; for a run without one it is recomputed from its stored
experiment, with today's space and config files.

Budgets: a trial's AP depends on how long it trained, and a verified trial (the verify
budget) or a trial of a run with another ``stage1.max_iter`` would read as a better or worse
candidate than it is. So only trials that trained exactly this run's stage-1 iterations
(``SOLVER.MAX_ITER``) for their candidate are used, whatever their stage; trials pruned by
early stopping count as this run's own do (their AP at the rung). Only the trials a run
trained itself are read, not those it was warm-started from (list those runs too).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from nars.config import CONFIG_SCHEMA, load_config, set_key
from nars.errors import UserError
from nars.model.weights import named_checkpoint, resolve_weights
from nars.search.stage1 import METRIC
from nars.search.store import open_run
from search_spaces import SearchSpace, load_space

FINGERPRINT_KEY = "fingerprint"  # the run's meta key the driver stores ``fingerprint`` under
# config sections and keys that differ between runs of one search without changing what a trial measures
_PER_RUN_SECTIONS = ("DATASETS.", "DATALOADER.")
_PER_RUN_KEYS = {"SEED", "OUTPUT_DIR", "MODEL.DEVICE", "MODEL.WEIGHTS", "MODEL.WEIGHTS_ARCH", "MODEL.FBNET_V2.ARCH",
                 "TEST.EVAL_PERIOD", "SOLVER.CHECKPOINT_PERIOD"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """As it reads back from the store's JSON (tuples as lists), so fresh and stored compare."""
    return json.loads(json.dumps(value, sort_keys=True))


def _at(exp: Mapping[str, Any], value: str) -> str:
    """A path of the experiment, relative to the folder its search started in (a shipped
    name, or a path that is not there, is left as it is)."""
    path = Path(exp.get("workdir", ".")) / value
    return str(path) if value and path.exists() else value


def _space_hash(space: SearchSpace) -> str:
    text = repr((sorted(map(repr, space.params)), space.arch_template, sorted(space.config_template.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _setup(exp: Mapping[str, Any]) -> dict[str, Any]:
    cfg = load_config(_at(exp, exp["base_config"]))
    for key, value in exp.get("config", {}).items():
        set_key(cfg, key, value, "experiment config")
    return _plain({k: v for k, v in CONFIG_SCHEMA.flat_keys(cfg)
                   if k not in _PER_RUN_KEYS and not k.startswith(_PER_RUN_SECTIONS)})


def _parent(exp: Mapping[str, Any]) -> str:
    weights = exp.get("parent", {}).get("weights", "")
    if not weights:
        return ""
    try:
        path, _ = resolve_weights(weights if named_checkpoint(weights) else _at(exp, weights))
    except UserError:
        return f"missing {weights}"
    return _sha256(path)


def _dataset(exp: Mapping[str, Any]) -> dict[str, Any]:
    data = exp["dataset"]
    if data["shapes"]["out"]:
        return {"shapes": {k: v for k, v in data["shapes"].items() if k != "out"}}
    files = {split: Path(_at(exp, data[split]["json"])) for split in ("train", "val")}
    return {split: _sha256(path) if path.is_file() else f"missing {path}" for split, path in files.items()}


def fingerprint(exp: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """What a run's trials measured (module docstring): JSON, for the run's meta."""
    return _plain({"space": {"name": space.name, "hash": _space_hash(space)}, "setup": _setup(exp),
                   "parent": _parent(exp), "dataset": _dataset(exp), "fidelity": exp["stage1"]["fidelity"]})


def _describe_dataset(d: Mapping[str, Any]) -> str:
    if "shapes" in d:
        return "shapes " + ", ".join(f"{k}={v}" for k, v in d["shapes"].items())
    return f"files with train.json sha256 {d['train'][:12]}, val.json {d['val'][:12]}"


def difference(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str | None:
    """What differs between an earlier run's fingerprint and this run's, in words (None: nothing)."""
    a, b = theirs["space"], ours["space"]
    if a["name"] != b["name"]:
        return f"searched space {a['name']}, this run searches {b['name']}"
    if a["hash"] != b["hash"]:
        return f"searched another version of space {a['name']} (its parameters, arch or config templates differ)"
    if theirs["dataset"] != ours["dataset"]:
        return (f"trained on dataset {_describe_dataset(theirs['dataset'])}, "
                f"this run on {_describe_dataset(ours['dataset'])}")
    keys = sorted(k for k in {*theirs["setup"], *ours["setup"]} if theirs["setup"].get(k) != ours["setup"].get(k))
    if keys:
        more = f" (and {len(keys) - 1} more config keys)" if len(keys) > 1 else ""
        return (f"its trials trained with {keys[0]} = {theirs['setup'].get(keys[0])!r}, this run's with "
                f"{ours['setup'].get(keys[0])!r}{more} (base_config and config)")
    if theirs["parent"] != ours["parent"]:
        return "its trials started from another parent checkpoint (parent.weights) than this run's"
    if theirs.get("fidelity", "trials") != ours["fidelity"]:  # runs from before the key measured trials
        return (f"its stage 1 measured with stage1.fidelity {theirs.get('fidelity', 'trials')}, this run's with "
                f"{ours['fidelity']} (supernet trials start from the run's supernet, not the parent)")
    return None


def _read_run(run_dir: Path, where: str) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """(experiment, stored fingerprint or None, measured trials) of a run folder, opened
    read-only (the run may be running, or belong to someone else)."""
    store = open_run(run_dir, where=where)
    try:
        experiment, stored = store.get_meta("experiment"), store.get_meta(FINGERPRINT_KEY)
        trials = store.trials(status=("done", "pruned"))
    finally:
        store.close()
    names = ("id", "candidate_id", "stage", "status", "candidate", "metrics", "mflops", "params", "max_iter")
    return experiment, stored, [{k: t[k] for k in names} for t in trials if METRIC in (t["metrics"] or {})]


def warm_results(
    exp: Mapping[str, Any],
    space: SearchSpace,
    stage1_iters: Callable[[Mapping[str, Any]], int],
    *,
    ours: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The measured trials of the runs ``exp["stage1"]["warm_start"]`` lists (paths relative
    to ``exp["workdir"]``), as ``stage1.measured`` rows plus ``run`` (the source folder): one
    per candidate (a done trial over a pruned one, then the first listed), only those that
    trained ``stage1_iters(candidate)`` iterations (this run's stage-1 budget for it).
    ``ours``: this run's ``fingerprint`` when already computed. A UserError names the run and
    what differs, for a run of another space, setup, parent or dataset, a folder that is not
    a run, or a run with no trial measured at this budget."""
    ours = ours if ours is not None else fingerprint(exp, space)
    best: dict[str, dict[str, Any]] = {}
    seen: set[Path] = set()
    for name in exp["stage1"]["warm_start"]:
        where = f"stage1.warm_start {name}"
        run_dir = Path(exp.get("workdir", ".")) / name
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        theirs_exp, theirs, trials = _read_run(run_dir, where)
        if theirs is None:  # a run from before fingerprints: recomputed from its experiment
            try:
                theirs = fingerprint(theirs_exp, load_space(_at(theirs_exp, theirs_exp["space"])))
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
        why = difference(theirs, ours)
        if why:
            raise UserError(f"{where}: {why}")
        for t in trials:
            t["candidate"] = space.canonical(t["candidate"], f"{where}: trial {t['id']}")
        usable = [t for t in trials if t["max_iter"] == stage1_iters(t["candidate"])]
        if not usable:
            trained = sorted({t["max_iter"] for t in trials})
            raise UserError(f"{where}: none of its {len(trials)} measured trials trained this run's stage-1 budget "
                            f"(they trained {trained} iterations; see stage1.max_iter and verify.max_iter)")
        for t in usable:
            t["candidate_id"], t["run"] = space.candidate_id(t["candidate"]), str(run_dir.resolve())
            kept = best.get(t["candidate_id"])
            if kept is None or (kept["status"] == "pruned" and t["status"] == "done"):
                best[t["candidate_id"]] = t
    return list(best.values())

