"""``nars search``: the two-stage NARS search, resumable at any point.

Every decision is written to the run store before it is acted on: a round's candidates are
stored (pending) before they train, stage 2's predicted front before verification starts.
Resuming after a kill therefore re-runs only the trials that had not finished; every
finished trial stays as it was. Proposals are deterministic per seed and results, so a
resumed run makes the same choices the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from nars.config import load_config, set_key
from nars.data.shapes import generate_shapes
from nars.deploy.latency import measure_latencies
from nars.engine.trainer import train
from nars.errors import UserError
from nars.fileio import atomic_write_text
from nars.interrupts import stopped
from nars.model.cost import config_cost
from nars.model.weights import FINAL_WEIGHTS, checkpoint_arch, named_checkpoint, read_checkpoint, resolve_weights
from nars.search.budget import scale_schedule, stage_iterations
from nars.search.cluster import check_reachable, ray_session, storage_path
from nars.search.evolution import evolve
from nars.search.fronts import seed_offset, tuned_parent
from nars.search.paired import per_image_at
from nars.search.experiment import load_experiment, uses_latency
from nars.search.stage1 import (METRIC, as_sample, by_measurement, distinct, fit_predictor, measured, predictor_gate,
                                pretrained_encoder, propose, zero_shot_encoder, zero_shot_search)
from nars.search.store import FINAL, LOCK_FILE, STORE_FILE, RunLock, RunStore, open_run
from nars.search.halving import milestones, rung_gate, survivors, versus_leader
from nars.search.tensorboard_log import SUPERNET_DIR, log_run
from nars.search.trials import TrialSpec, run_trials
from nars.search.warm_start import FINGERPRINT_KEY, fingerprint, warm_results
from predictor.latency import fit_measurements, measure_space
from search_spaces import SearchSpace, load_space, sample
from search_spaces.sampling import Sample, neighbours

logger = logging.getLogger(__name__)
EXPERIMENT_FILE = "experiment.json"
LATENCY_FILE = "latency.json"  # the measurements the run's latency predictor was fitted on


def _shapes(s: Mapping[str, Any], root: Path) -> dict[str, tuple[Path, Path]]:
    """A generated shapes dataset (made when absent): its splits' (json, images)."""
    out = (root / s["out"]).resolve()
    generate_shapes(out, train=s["train"], val=s["val"], size=s["size"], seed=s["seed"], domain=s["domain"])
    return {"train": (out / "train.json", out / "train"), "val": (out / "val.json", out / "val")}


def _keys(files: Mapping[str, tuple[Path, Path]]) -> dict[str, str]:
    return {
        "DATASETS.TRAIN.JSON": str(files["train"][0]), "DATASETS.TRAIN.IMAGES": str(files["train"][1]),
        "DATASETS.TEST.JSON": str(files["val"][0]), "DATASETS.TEST.IMAGES": str(files["val"][1]),
    }


def _dataset_keys(exp: Mapping[str, Any], root: Path) -> dict[str, str]:
    """DATASETS.* for the experiment; generates the shapes data when absent."""
    data = exp["dataset"]
    if data["shapes"]["out"]:
        files = _shapes(data["shapes"], root)
    else:
        files = {k: (Path(data[k]["json"]).resolve(), Path(data[k]["images"]).resolve()) for k in ("train", "val")}
        for split, (js, images) in files.items():
            if not js.is_file():
                raise UserError(f"dataset.{split}.json: {js} does not exist")
            if not images.is_dir():
                raise UserError(f"dataset.{split}.images: {images} is not a folder")
    return _keys(files)


def parent_weights(exp: Mapping[str, Any], root: Path, progress: bool) -> str:
    """``parent.weights`` as the MODEL.WEIGHTS of every trial (a path made absolute), checked
    to be a readable checkpoint of a known architecture; first trained from ``parent.config``
    when its folder holds no checkpoint yet ("" when the experiment has no parent)."""
    p = exp["parent"]
    value = p["weights"]
    if not value:
        return ""
    if named_checkpoint(value) is None:
        path = (root / value).resolve()
        if p["config"] and not path.is_file() and not (path / FINAL_WEIGHTS).is_file():
            cfg = load_config(p["config"])
            if p["shapes"]["out"]:
                for key, v in _keys(_shapes(p["shapes"], root)).items():
                    set_key(cfg, key, v, "experiment parent.shapes")
            logger.info("training the parent (%s) into %s; later searches reuse it", p["config"], path)
            train(cfg, path, resume=path.is_dir(), progress=progress)
        value = str(path)
    try:
        resolved, named_arch = resolve_weights(value)
    except UserError as e:
        raise UserError(f"parent.weights: {e}") from None
    if checkpoint_arch(resolved, read_checkpoint(resolved), named_arch, p["arch"]) is None:
        raise UserError(f"parent.weights {resolved}: the checkpoint does not say which architecture it is of; "
                        "set parent.arch (a reference name or an inline MODEL.FBNET_V2.ARCH)")
    return value


class Search:
    """One run folder: its experiment, store, space and base config."""

    def __init__(self, exp: dict[str, Any], run_dir: Path, progress: bool = True, latency: bool = True):
        """Checks everything the run needs (space, configs, dataset, constraints) before it starts;
        ``latency=False``: without the latency predictor (a supernet trains every architecture)."""
        self.exp, self.run_dir, self.progress = exp, run_dir, progress
        self.base = load_config(exp["base_config"])
        self.space: SearchSpace = load_space(exp["space"]).bind(self.base, exp["config"])  # trials' true costs
        limits = {k: exp["constraints"][k] for k in ("max_mflops", "max_params")}
        sample(self.space, exp["stage1"]["trials_per_round"], **limits)  # feasible, or a clear error
        root = Path(exp.get("workdir", "."))
        weights = parent_weights(exp, root, progress)
        if weights:  # every trial starts from the parent (inherited onto its architecture)
            set_key(self.base, "MODEL.WEIGHTS", weights, "experiment parent.weights")
            set_key(self.base, "MODEL.WEIGHTS_ARCH", exp["parent"]["arch"], "experiment parent.arch")
        for key, value in _dataset_keys(exp, root).items():
            set_key(self.base, key, value, "experiment dataset")
        ray = exp["ray"]
        self.base["MODEL"]["DEVICE"] = "cuda" if ray["gpus_per_trial"] > 0 else "cpu"
        self.base["DATALOADER"]["NUM_WORKERS"] = 0  # a trial is one process on its own CPU share
        self.base["SEED"] = exp["seed"]
        self._encoder = None
        self.store: RunStore | None = None  # the run's, from run(); None for a supernet's own setup
        self.latency_measurements: list[dict[str, Any]] | None = None
        if latency and uses_latency(exp):
            self.space = self.space.with_latency(self._latency_model())
            sample(self.space, exp["stage1"]["trials_per_round"], **exp["constraints"])  # latency limit feasible?

    # -- helpers ------------------------------------------------------------------------
    def _latency_model(self) -> Any:
        """The latency predictor: refitted from the run's own measurements when resuming (the
        same predictor, so the same choices), else fitted on this machine's cached ones plus
        ``latency.samples`` candidates measured now."""
        saved = self.run_dir / LATENCY_FILE
        if saved.is_file():
            self.latency_measurements = json.loads(saved.read_text())
        else:
            c, lat = self.exp["constraints"], self.exp["latency"]
            self.latency_measurements, info = measure_space(
                self.space, lambda candidate: self.trial_config(candidate, "verify"), samples=lat["samples"],
                threads=lat["threads"], seed=self.exp["seed"], max_mflops=c["max_mflops"], max_params=c["max_params"],
                engine=lat["engine"], progress=self.progress)
            logger.info("latency predictor: %d candidates measured in %.0f s, %d from the cache (%s)",
                        info["measured"], info["seconds"], info["cached"], info["path"])
        return fit_measurements(self.latency_measurements, seed=self.exp["seed"])

    @property
    def encoder(self):
        if self._encoder is None:
            zero_shot = self.zero_shot()
            if zero_shot:
                logger.info("pretraining the predictor's encoder on %d zero-shot APs (and MFLOPs, params)", len(zero_shot))
                self._encoder = zero_shot_encoder(self.space, zero_shot, self.supernet().base, self.exp["seed"])
            else:
                logger.info("pretraining the predictor's encoder on proxies (MFLOPs, params)")
                self._encoder = pretrained_encoder(self.space, self.exp["stage1"]["pretrain_samples"],
                                                   self.exp["seed"])
        return self._encoder

    def zero_shot(self) -> list[dict[str, Any]]:
        """The supernet's zero-shot results this run measured (stage1.fidelity supernet)."""
        return [] if self.store is None else self.store.get_meta("zero_shot", [])

    def supernet(self) -> Any:
        from nars.supernet.setup import of_search

        return of_search(self)

    def supernet_stage(self) -> None:
        """``stage1.fidelity supernet``: train the supernet in ``RUN/supernet`` (resumable),
        then measure ``supernet.samples`` sub-networks of the constrained space zero-shot, as
        Ray tasks, in ``supernet.rounds`` (``stage1.zero_shot_search``: random, then the
        predictor's picks); each round is stored (meta ``zero_shot_rounds``) before the next
        is chosen, and all of them (meta ``zero_shot``) before anything else uses them."""
        from nars.supernet.train import train_supernet
        from nars.supernet.zero_shot import evaluate_archs

        if self.store.get_meta("zero_shot") is not None:
            return
        net, net_dir = self.supernet(), self.run_dir / SUPERNET_DIR
        if not (net_dir / FINAL_WEIGHTS).is_file():
            train_supernet(net, net_dir, resume=net_dir.is_dir(), progress=self.progress)
        sn, s1 = self.exp["supernet"], self.exp["stage1"]
        rounds = sn.get("rounds", 1)  # absent: a run begun before the rounds, all at random
        records = zero_shot_search(
            self.space, lambda archs: evaluate_archs(net_dir, archs, progress=self.progress, net=net),
            samples=sn["samples"], rounds=rounds, seed=self.exp["seed"], base=net.base,
            encoder=pretrained_encoder(self.space, s1["pretrain_samples"], self.exp["seed"]) if rounds > 1 else None,
            constraints={k: self.exp["constraints"][k] for k in ("max_mflops", "max_params")},
            pool_size=s1["pool_size"], explore=s1["explore"], done=self.store.get_meta("zero_shot_rounds", []),
            on_round=lambda rounds: self.store.set_meta("zero_shot_rounds", rounds))
        self.store.set_meta("zero_shot", records)

    def trial_config(self, candidate: Mapping[str, Any], stage: str, seed_offset: int = 0) -> dict[str, Any]:
        """The candidate's complete config at the stage's budget (``budget.stage_iterations``),
        trained with the run's seed plus ``seed_offset`` (re-scoring's other seeds)."""
        v, s1 = self.exp["verify"], self.exp["stage1"]
        cfg = self.space.to_config(candidate, base=self.base)
        cfg["SEED"] = self.base["SEED"] + seed_offset
        for key, value in self.exp["config"].items():  # pinned for every trial, over the candidate's values
            set_key(cfg, key, value, f"{self.exp['source']}: config")
        if stage == "stage1" and s1["fidelity"] == "supernet":  # the recipe search starts from the supernet
            cfg["MODEL"]["WEIGHTS"] = str(self.run_dir / SUPERNET_DIR / FINAL_WEIGHTS)
            cfg["MODEL"]["WEIGHTS_ARCH"] = ""
        iters = stage_iterations(cfg["SOLVER"]["MAX_ITER"], stage, s1["max_iter"], v["max_iter"])
        scale_schedule(cfg, iters)
        cfg["TEST"]["EVAL_PERIOD"] = s1["eval_period"] if stage == "stage1" else 0
        cfg["SOLVER"]["CHECKPOINT_PERIOD"] = iters + 1  # trials keep only model_final.pth
        return cfg

    def run_pending(self, trials: list[dict[str, Any]], label: str, stop_at: int | None = None,
                    to_end: Sequence[dict[str, Any]] = ()) -> None:
        """Train stored trials on Ray to ``stop_at`` (a rung; default: to the end), and ``to_end``
        to their end beside them, each from the rung it reached; outcomes land in the store."""
        ray = self.exp["ray"]
        best = max([t["metrics"].get(METRIC, 0.0) for t in measured(self.store.trials())] + [0.0])
        specs = []
        for t, stop_here in [(t, None) for t in to_end] + [(t, stop_at) for t in trials]:  # the longest first
            cfg = self.trial_config(t["candidate"], t["stage"], seed_offset(t))
            stop = cfg["SOLVER"]["MAX_ITER"] if stop_here is None else min(stop_here, cfg["SOLVER"]["MAX_ITER"])
            specs.append(TrialSpec(t["id"], cfg, str(self.run_dir / "trials" / t["id"]), stop, t["checkpoint"]))
        run_trials(self.store, specs, label=label, storage_path=storage_path(ray, self.run_dir),
                   cpus_per_trial=ray["cpus_per_trial"], gpus_per_trial=ray["gpus_per_trial"],
                   max_concurrent=ray["max_concurrent"], max_failures=ray["max_failures"], best=best)
        now = {t["id"]: t for t in self.store.trials()}
        unfinished = [s.id for s in specs if now[s.id]["status"] not in FINAL and (now[s.id]["reached"] or 0) < s.stop_at]
        if unfinished:  # never decide, or start a later stage, on a partial one
            raise self._partial(label, unfinished)

    def halve(self, round_index: int, label: str) -> None:
        """Stage 1's early stopping for one round: synchronous successive halving
        (``nars.search.halving``). Each rung trains the round's remaining trials to its
        iteration, then keeps the best; the decisions go to the store (meta ``halving``)
        before they are acted on, so a resumed run makes the same ones. Round 0's first rung
        also trains the pending reference to its end, on the workers its trials leave free."""
        es = self.exp["stage1"]["early_stop"]
        trials = self.store.trials(stage="stage1", round=round_index)
        rungs = self.rungs(round_index, milestones(es["grace_period"], es["reduction_factor"],
                                                   max(t["max_iter"] for t in trials)))
        alive = [t["id"] for t in trials]
        for k, m in enumerate(rungs):
            decided = self.store.get_meta("halving", {}).get(str(round_index), [])
            if k >= len(decided):
                todo = [t for t in self.store.trials(stage="stage1", round=round_index, status="pending")
                        if t["id"] in alive and (t["reached"] or 0) < min(m, t["max_iter"])]
                beside = self.store.trials(stage="reference", status="pending") if round_index == k == 0 else []
                self.run_pending(todo, f"{label} rung {k + 1}/{len(rungs)}", stop_at=m, to_end=beside)
            if k == len(rungs) - 1:
                break
            now = {t["id"]: t for t in self.store.trials(stage="stage1", round=round_index)}
            rung = [now[i] for i in alive if now[i]["status"] != "failed"]
            if k >= len(decided):
                paired = None
                if es.get("wilcoxon_p") is not None:  # absent: a run begun before paired halving
                    paired = versus_leader(rung, {t["id"]: per_image_at(t["checkpoint"], t["reached"])
                                                  if t["checkpoint"] else None for t in rung})
                    self._store_paired(round_index, k, paired)
                halving = self.store.get_meta("halving", {})
                halving.setdefault(str(round_index), []).append(
                    survivors(rung, es["reduction_factor"], paired, es.get("wilcoxon_p")))
                self.store.set_meta("halving", halving)
                decided = halving[str(round_index)]
            alive = decided[k]
            for t in rung:  # the rung's others stop here, with their results at the rung
                if t["id"] not in alive and t["status"] == "pending":
                    self.store.finish(t["id"], "pruned", t["metrics"], wall_time=t["wall_time"])
            log_run(self.run_dir)  # the pruned trials, in TensorBoard

    def _store_paired(self, round_index: int, k: int, paired: Mapping[str, Any]) -> None:
        """A rung's per-image comparisons with its leader (meta ``halving_paired``), stored with
        the decision they feed, for the report."""
        stored = self.store.get_meta("halving_paired", {})
        rungs = stored.setdefault(str(round_index), [])
        del rungs[k:]
        rungs.append(paired)
        self.store.set_meta("halving_paired", stored)
        for tid, d in paired.items():
            if d is not None:
                logger.info("round %d rung %d: %s against the leader, per image %+.4f [%+.4f, %+.4f], Wilcoxon p %.3f",
                            round_index, k + 1, tid, d["mean"], d["ci"][0], d["ci"][1], d["p"])

    def rungs(self, round_index: int, rungs: list[int]) -> list[int]:
        """The round's rungs that decide (``halving.rung_gate`` over earlier rounds' trials), then
        its end; the gate is stored (meta ``rung_gate``) before the round trains."""
        gates = self.store.get_meta("rung_gate", {})
        if str(round_index) not in gates:
            earlier = [t for t in self.store.trials(stage="stage1") if t["round"] < round_index]
            gates[str(round_index)] = rung_gate(earlier, rungs[:-1], self.exp["stage1"]["early_stop"]["min_tau"])
            self.store.set_meta("rung_gate", gates)
            for g in gates[str(round_index)]:
                if not g["used"]:
                    logger.info("round %d: rung %d trained through, not decided at (Kendall tau %s over %d pairs)",
                                round_index + 1, g["iteration"], "unmeasured" if g["tau"] is None else f"{g['tau']:.2f}",
                                g["pairs"])
        return [g["iteration"] for g in gates[str(round_index)] if g["used"]] + rungs[-1:]

    def add(self, samples: Mapping[str, list[Sample]], round_index: int) -> None:
        """Store samples (by stage) as pending trials, in one transaction (id: candidate id +
        stage; known ids are kept), with the cost of the model each trial trains (its config,
        pinned keys included) and, with a latency predictor, its predicted latency."""
        rows = []
        for stage, stage_samples in samples.items():
            for s in stage_samples:
                cfg = self.trial_config(s.candidate, stage)
                cost = config_cost(cfg)
                model = self.space.latency_model
                # re-scoring trains a finalist once per round (seed): the round is part of its id
                tid = f"{s.id}-{stage}" if stage != "rescore" else f"{s.id}-{stage}-{round_index}"
                rows.append({"id": tid, "candidate_id": s.id, "stage": stage, "round": round_index,
                             "candidate": s.candidate, "mflops": cost.mflops["total"], "params": cost.params["total"],
                             "latency_ms": None if model is None else model.predict_config(cfg),
                             "max_iter": cfg["SOLVER"]["MAX_ITER"]})
        self.store.add_trials(rows)

    # -- stages -------------------------------------------------------------------------
    @property
    def reference(self) -> dict[str, Any] | None:
        """``verify.reference``'s candidate (with a parent: the parent's architecture and the base
        recipe), when the space has it."""
        return self.space.references.get(self.exp["verify"]["reference"])

    def add_reference(self) -> None:
        """The reference, stored first and trained at the verify budget beside stage 1's first
        rung (``halve``): the incumbent every candidate has to beat is known before
        verification, and a search cut short still has it."""
        ref = self.reference
        if ref is not None and not self.store.trials(stage="reference"):
            self.add({"reference": [Sample(ref, self.space.candidate_id(ref), *self.space.cost(ref))]}, 0)

    def recipe_stage(self) -> None:
        """``recipe.trials`` other recipes on the reference's architecture, trained like the
        reference and beside it (FBNetV3 searches the recipe with the architecture, PriorBand starts
        from the default: a few hundred iterations are a sliver of a schedule, so the recipe
        decides much of a trial's AP)."""
        ref = self.reference
        if ref is None or not self.exp["recipe"]["trials"]:
            return
        if not self.store.trials(stage="recipe"):
            self.add({"recipe": self.recipes(ref, self.exp["recipe"]["trials"])}, 0)
        pending = [t for t in self.store.trials(status="pending") if t["stage"] in ("reference", "recipe")]
        self.run_pending(pending, "recipe stage")

    def recipes(self, ref: Mapping[str, Any], n: int) -> list[Sample]:
        """``n`` neighbours of the reference's recipe on its architecture: one or two recipe
        parameters moved one step (no constraints: the parent's cost is what it is). Measured on
        the main job: Sobol draws of the whole recipe, which move a dozen parameters at once, each
        lost 0.04-0.07 segm AP to the parent's own recipe."""
        return neighbours(self.space, ref, n, seed=self.exp["seed"], only=self.space.recipe_names)

    def stage1(self) -> None:
        s1 = self.exp["stage1"]
        warm = self.store.get_meta("warm_results", [])  # earlier runs' trials (stage1.warm_start)
        for r in range(s1["rounds"]):
            if not self.store.trials(stage="stage1", round=r):
                history = self.store.trials(stage="stage1")
                results = warm + measured(history)
                best = max(results, key=lambda t: t["metrics"][METRIC], default=None) or tuned_parent(self.store.trials())
                best_zero_shot = sorted(self.zero_shot(), key=lambda z: -z["segm_AP"])
                samples = propose(
                    self.space, r, s1["trials_per_round"], constraints=self.exp["constraints"], seed=self.exp["seed"],
                    encoder=self.encoder, results=results, tried={t["candidate_id"] for t in warm + history},
                    pool_size=s1["pool_size"], explore=s1["explore"], archs=[z["choices"] for z in best_zero_shot],
                    incumbent=self.reference if best is None else best["candidate"], local=s1["local"],
                )
                self.add({"stage1": samples}, r)
            self.halve(r, f"stage 1 round {r + 1}/{s1['rounds']}")
            round_trials = self.store.trials(stage="stage1", round=r)
            if all(t["status"] == "failed" for t in round_trials):
                raise UserError(f"every trial of stage 1 round {r + 1} failed; the first error: {round_trials[0]['error']}")

    def stage2(self) -> list[dict[str, Any]]:
        front = self.store.get_meta("stage2_front")
        if front is None:
            results = self.store.get_meta("warm_results", []) + measured(self.store.trials(stage="stage1"))
            model = fit_predictor(self.space, self.encoder, results, self.exp["seed"])
            model.save(self.run_dir / "predictor.pt")
            s2 = self.exp["stage2"]
            front = evolve(self.space, model, optimizer=s2["optimizer"], budget=s2["budget"],
                           batch_size=s2["batch_size"], constraints=self.exp["constraints"],
                           use_params=s2["use_params"], seed=self.exp["seed"], objective=s2["objective"],
                           progress=self.progress)
            self.store.set_meta("stage2_front", front)
        return front

    def verify(self, front: list[dict[str, Any]]) -> None:
        """Verification's candidates: the predictor's picks along its front when its out-of-fold
        tau passes ``verify.min_tau`` (``stage1.predictor_gate``), else stage 1's best measured.
        The gate (meta ``verify_gate``) and the picks are stored before any trains."""
        v = self.exp["verify"]
        if not self.store.trials(stage="verify"):
            gate = self.store.get_meta("verify_gate")
            if gate is None:
                results = self.store.get_meta("warm_results", []) + measured(self.store.trials(stage="stage1"))
                gate = predictor_gate(self.space, self.encoder, results, self.exp["seed"],
                                      v.get("min_tau"))  # absent: a run begun before the gate trusted the front
                self.store.set_meta("verify_gate", gate)
            ranked = by_measurement(self.store.trials(stage="stage1"))
            predicted = [Sample.from_dict(e) for e in front]
            if gate["trusted"]:
                key = "latency_ms" if self.exp["stage2"]["objective"] == "latency" else "mflops"
                picks = _picks(predicted, ranked[0] if ranked else None, v["top_k"], key)
            else:  # the predicted front only fills what stage 1 did not measure
                picks = distinct([*ranked, *predicted])[:v["top_k"]]
            self.add({"verify": picks}, 0)
        self.run_pending(self.store.trials(stage="verify", status="pending"), "verification")

    def rescore(self) -> None:
        """``verify.rescore`` more seeds of every finalist (the verified candidates, the reference,
        the tuned parent), round j training each with the run's seed + j: a searched child's
        verified AP moved by 0.06 between two seeds on the main job, more than finalists usually
        differ. The winner is then the best mean (``fronts.seed_means``)."""
        self.add_rescore_rounds()
        self.run_pending(self.store.trials(stage="rescore", status="pending"), "re-scoring")

    def add_rescore_rounds(self) -> None:
        """Every re-scoring round's trials, stored before any trains (a resumed run adds none twice)."""
        finalists = [t for t in self.store.trials(status="done") if t["stage"] in ("verify", "reference")]
        tuned = tuned_parent(self.store.trials())
        finalists += [tuned] if tuned is not None and tuned["stage"] == "recipe" else []
        samples = distinct([as_sample(t) for t in finalists])
        for j in range(1, self.exp["verify"]["rescore"] + 1):
            if samples and not self.store.trials(stage="rescore", round=j):
                self.add({"rescore": samples}, j)

    def measure_verified(self) -> None:
        """The measured latency of every verified trial (and the reference) not measured yet,
        timed together once no trial trains, as the predictor's measurements were."""
        todo = [t for t in self.store.trials(status="done") if t["stage"] in ("verify", "reference")
                and t["measured_latency_ms"] is None]
        if not todo:
            return
        results = measure_latencies([self.trial_config(t["candidate"], t["stage"]) for t in todo],
                                    threads=self.exp["latency"]["threads"], engine=self.exp["latency"]["engine"],
                                    progress=self.progress)
        for t, r in zip(todo, results):
            self.store.set_measured_latency(t["id"], r.median_ms)

    def _complete(self, *stages: str) -> None:
        """The stages' trials all ended (done, failed or pruned): what runs next may use them."""
        partial = [t["id"] for t in self.store.trials() if t["stage"] in stages and t["status"] not in FINAL]
        if partial:
            raise self._partial("/".join(stages), partial)

    def _partial(self, what: str, trial_ids: list[str]) -> UserError:
        return UserError(f"{what}: {len(trial_ids)} trial(s) did not finish ({', '.join(trial_ids[:3])}); the run "
                         f"is kept: continue it with nars search --resume {self.run_dir}")

    def run(self, store: RunStore) -> None:
        self.store = store
        saved = self.run_dir / LATENCY_FILE
        if self.latency_measurements is not None and not saved.is_file():
            atomic_write_text(saved, json.dumps(self.latency_measurements) + "\n")
        if self.exp["stage1"]["fidelity"] == "supernet":
            self.store.set_meta("state", "supernet")
            self.supernet_stage()
        self.store.set_meta("state", "stage1")
        self.add_reference()
        self.recipe_stage()
        self.stage1()
        self.run_pending(self.store.trials(stage="reference", status="pending"), "reference")  # resumed late
        self._complete("stage1", "reference", "recipe")
        self.store.set_meta("state", "stage2")
        front = self.stage2()
        self.store.set_meta("state", "verify")
        self.verify(front)
        self._complete("verify")
        if self.exp["verify"]["rescore"]:
            self.store.set_meta("state", "rescore")
            self.rescore()
            self._complete("rescore")
        if self.space.latency_model is not None:
            self.store.set_meta("state", "latency")
            self.measure_verified()
        self.store.set_meta("state", "finished")


def _picks(front: list[Sample], incumbent: Sample | None, k: int, key: str = "mflops") -> list[Sample]:
    """What verification trains: the best predicted AP; from k = 2 the incumbent (stage 1's best
    measured candidate, which a predictor fitted on a handful of trials can rank below its own
    extrapolations); the rest spread evenly along the front's cost ``key`` (stage 2's objective)."""
    picks = front[:1]
    if k > 1 and incumbent is not None and incumbent.id not in {p.id for p in picks}:
        picks.append(incumbent)
    rest = sorted((s for s in front if s.id not in {p.id for p in picks}), key=lambda s: getattr(s, key))
    n = min(k - len(picks), len(rest))
    return picks + [rest[int(i * len(rest) / n)] for i in range(n)]


def default_run_dir(exp: Mapping[str, Any]) -> Path:
    base = Path("runs") / exp["name"]
    n = 0
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def search(
    experiment: str | None,
    overrides: list[str],
    *,
    out: str | None = None,
    resume: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) a search; returns the run folder. Nothing is written before every
    input has been checked; an existing run is only ever continued (``resume``), by one
    process at a time (``RunLock``). SIGINT or SIGTERM (``nars.interrupts``) stop it at once:
    the interrupted trials are left pending, nothing later runs, and ``Interrupted`` says how to
    resume, which then makes exactly the decisions the uninterrupted run makes."""
    with contextlib.ExitStack() as held:
        if resume:
            run_dir = Path(resume).resolve()
            where = f"--resume {resume}"
            open_run(run_dir, where=where).close()  # a run, intact, before its lock file is touched
            held.enter_context(RunLock(run_dir, where))
            exp = _stored_experiment(run_dir, where)
        else:
            exp = load_experiment(experiment, overrides)
            exp["workdir"] = os.getcwd()
            if ray_address:
                exp["ray"]["address"] = ray_address
            run_dir = Path(out).resolve() if out else default_run_dir(exp).resolve()
            where = f"--out {run_dir}"
            _check_new(run_dir)
        check_reachable(exp["ray"]["address"])
        job = Search(copy.deepcopy(exp), run_dir, progress)
        if not resume:  # what this run measures, and the earlier runs' trials it starts from (checked here)
            ours = fingerprint(exp, job.space)
            warm = warm_results(exp, job.space, lambda c: job.trial_config(c, "stage1")["SOLVER"]["MAX_ITER"],
                                ours=ours)
            if warm:
                logger.info("warm start: %d measured trials from %s", len(warm), ", ".join(exp["stage1"]["warm_start"]))
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(run_dir, where))
            _check_new(run_dir)  # again, holding the lock: a search started beside this one may have claimed it
        store: RunStore | None = None
        try:  # from here on, a run to resume
            if resume:
                store = held.enter_context(contextlib.closing(open_run(run_dir, write=True, where=where)))
                logger.info("resuming %s: %d interrupted trial(s) will run again", run_dir, store.requeue_interrupted())
            else:
                store = held.enter_context(contextlib.closing(RunStore(run_dir / STORE_FILE)))
                store.set_metas({"experiment": exp, "seed": exp["seed"], FINGERPRINT_KEY: ours, "warm_results": warm})
                _write_experiment(run_dir, exp)
            with ray_session(exp["ray"]):
                job.run(store)
        except KeyboardInterrupt as e:
            if store is None or store.get_meta("experiment") is None:  # stopped before the run began
                raise stopped(e) from None
            store.requeue_interrupted()  # the trials it stopped wait, pending, for the resume
            raise stopped(e, f"nars search --resume {run_dir}") from None
    return run_dir


def _check_new(run_dir: Path) -> None:
    """A new run's folder is absent or empty (its lock file aside)."""
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UserError(f"--out {run_dir} is not empty; pick a new folder, or continue it with --resume {run_dir}")


def _stored_experiment(run_dir: Path, where: str) -> dict[str, Any]:
    """The experiment a run started with, checked against ``RUN/experiment.json``: an edited
    file is refused (the run's stored seeds, rounds and decisions belong to the stored one)."""
    store = open_run(run_dir, where=where)
    try:
        stored = store.get_meta("experiment")
    finally:
        store.close()
    path = run_dir / EXPERIMENT_FILE
    if not path.exists():  # a run stopped between its store and this file: the store's copy is the run's
        _write_experiment(run_dir, stored)
    try:
        on_disk = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read {path} ({e})") from None
    key = first_difference(stored, on_disk)
    if key is not None:
        raise UserError(f"{where}: {path} was changed at {key or 'its top level'} since the run started; a run "
                        "resumes only with the experiment it started with: restore it, or start a new run")
    return stored


def _write_experiment(run_dir: Path, exp: Mapping[str, Any]) -> None:
    atomic_write_text(run_dir / EXPERIMENT_FILE, json.dumps(exp, indent=2) + "\n")


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key at which two JSON values differ ("" for the values themselves), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted({*a, *b}):
            if k not in a or k not in b:
                return f"{prefix}{k}"
            found = first_difference(a[k], b[k], f"{prefix}{k}.")
            if found is not None:
                return found
        return None
    return None if a == b and type(a) is type(b) else prefix.rstrip(".")
