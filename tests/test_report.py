"""Watching a search: ``nars report``'s page and the run's TensorBoard folders, on a run
store written directly (no training)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nars.cli import main
from nars.engine.events import EventWriter
from nars.search.store import RunStore
from nars.search.tensorboard_log import SUPERNET_DIR, TENSORBOARD_DIR, log_run, log_trial


def _candidate(i: int) -> dict:
    return {"t4.c": 80 + 16 * i, "norm": "BN", "lr": 0.001 * (i + 1), "blocks": [1, i]}


def _run(tmp: Path, finished: bool) -> Path:
    """Four stage-1 trials (two rounds; one pruned, one failed), two verified, a reference."""
    run = tmp / "run"
    run.mkdir()
    store = RunStore(run / "nars.sqlite")
    rows = [{"id": f"c{i}-stage1", "candidate_id": f"c{i}", "stage": "stage1", "round": i // 2, "candidate": _candidate(i),
             "mflops": 100.0 + 50 * i, "params": 10_000 * (i + 1), "max_iter": 10} for i in range(4)]
    rows += [{"id": f"c{i}-verify", "candidate_id": f"c{i}", "stage": "verify", "round": 0, "candidate": _candidate(i),
              "mflops": 100.0 + 50 * i, "params": 10_000 * (i + 1), "max_iter": 20} for i in (0, 3)]
    rows.append({"id": "ref-reference", "candidate_id": "ref", "stage": "reference", "round": 0,
                 "candidate": _candidate(5), "mflops": 400.0, "params": 90_000, "max_iter": 20})
    store.add_trials(rows)
    for i, status in enumerate(("done", "pruned", "done", "failed")):
        tid = f"c{i}-stage1"
        for it in (5, 10) if status == "done" else (5,):
            store.append_history(tid, {"iteration": it, "segm_AP": 0.01 * i * it, "bbox_AP": 0.02 * i * it, "loss": 1.0})
        if status == "failed":
            store.finish(tid, "failed", None, error="UserError: the recipe diverged")
        else:
            store.finish(tid, status, {"segm_AP": 0.01 * i * 10, "bbox_AP": 0.2, "loss": 1.0}, wall_time=3.0)
    for tid, ap in (("c0-verify", 0.05), ("c3-verify", 0.08), ("ref-reference", 0.07)):
        store.append_history(tid, {"iteration": 20, "segm_AP": ap, "bbox_AP": ap})
        store.finish(tid, "done", {"segm_AP": ap, "bbox_AP": ap}, wall_time=5.0)
    store.set_meta("experiment", {"name": "tiny", "space": "fbnetv3is_quick"})
    store.set_meta("stage2_front", [{"id": f"c{i}", "candidate": _candidate(i), "pred_segm_AP": 0.02 * i,
                                     "mflops": 100.0 + 50 * i, "params": 10_000 * (i + 1)} for i in (0, 2, 3)])
    store.set_meta("state", "finished" if finished else "stage1")
    store.close()
    return run


def _arch(i: int) -> dict:
    """The architecture part of ``_candidate(i)``."""
    return {k: _candidate(i)[k] for k in ("t4.c", "blocks")}


def _supernet_run(tmp: Path) -> Path:
    """``_run`` with a supernet: its training metrics (with distillation), zero-shot records of
    five architectures (four of them also stage-1 trials that finished, their APs ranked as the
    zero-shot ones) and a sub-network no trial has."""
    run = _run(tmp, finished=True)
    store = RunStore(run / "nars.sqlite")
    store.add_trials([{"id": f"c{i}-stage1", "candidate_id": f"c{i}", "stage": "stage1", "round": 1,
                       "candidate": _candidate(i), "mflops": 100.0 + 50 * i, "params": 10_000 * (i + 1), "max_iter": 10}
                      for i in (6, 7)])
    for i in (6, 7):
        store.append_history(f"c{i}-stage1", {"iteration": 10, "segm_AP": 0.1 * i})
        store.finish(f"c{i}-stage1", "done", {"segm_AP": 0.1 * i, "bbox_AP": 0.1 * i}, wall_time=3.0)
    store.set_meta("zero_shot", [{"id": f"z{i}", "choices": _arch(i), "mflops": 500.0 - 40 * i, "params": 1000 * i,
                                  "bbox_AP": 0.004 * i, "segm_AP": 0.005 * i, "seconds": 1.0} for i in (0, 2, 6, 7, 9)])
    store.close()
    (run / SUPERNET_DIR).mkdir()  # as nars.supernet.train makes it
    writer = EventWriter(run / SUPERNET_DIR)
    for it in (9, 19, 29):
        writer.write(it, {"loss": 9.0 - it / 10, "loss_largest": 3.0 - it / 30, "loss_smallest": 3.5 - it / 30,
                          "kd_rpn": 0.2, "kd_cls": 0.1, "kd_mask": 0.3, "lr": 0.01, "time": 0.5, "eta_seconds": 10.0})
    writer.close()
    return run


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows = 0
        self.in_body = False
        self.refresh: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows += 1
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a["content"]
        elif tag in ("link", "script") or (tag == "img" and not a["src"].startswith("data:")):
            raise AssertionError(f"the page fetches something: <{tag} {attrs}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self.in_body = False  # a later table's header row is no row


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_the_report_is_one_self_contained_page_with_every_plot(tmp_path, capsys):
    run = _run(tmp_path, finished=True)
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--watch", "1"]) == 0  # finished: written once, returns
    page = _parse(out)
    assert page.rows == 2 + 7 and page.refresh is None  # rung fidelity (2 looks), one row per trial; no reload once finished
    assert len(page.images) == 3  # fronts, predictor fit, learning curves
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    text = out.read_text()
    assert "c3" in text and "the recipe diverged" in text and "Kendall" in text  # winner, error, fit
    assert (run / TENSORBOARD_DIR / "c0-stage1").is_dir()  # the report also fills TensorBoard's folder
    assert "Supernet" not in text and not (run / TENSORBOARD_DIR / SUPERNET_DIR).exists()  # a run without one


def test_the_report_of_a_supernet_run_has_its_curves_zero_shot_table_and_ranking(tmp_path, capsys):
    run = _supernet_run(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page, text = _parse(out), out.read_text()
    assert "<h2>Supernet</h2>" in text
    assert 'alt="supernet training losses and learning rate"' in text and 'alt="zero-shot segm AP against MFLOPs"' in text
    assert len(page.images) == 5  # fronts, predictor fit, learning curves, supernet training, zero-shot scatter
    table = text[text.index("zero-shot evaluations, by MFLOPs"):]
    assert [table.index(f">z{i}<") for i in (9, 7, 6, 2, 0)] == sorted(table.index(f">z{i}<") for i in (9, 7, 6, 2, 0))
    assert page.rows == 2 + 9 + 5  # rung fidelity, the trials, then the zero-shot records
    # c0, c2, c6, c7 are both: their measured APs rank as their zero-shot ones; c1 (pruned) and z9 (no trial) are not
    assert "Kendall's tau 1.00" in text and "of 4 stage-1 trials" in text
    assert "MFLOPs alone, the proxy that costs nothing, ranks them at Kendall's tau -1.00" in text  # z's MFLOPs fall


def test_a_live_runs_page_reloads_itself(tmp_path, capsys):
    run = _run(tmp_path, finished=False)
    out = tmp_path / "live.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert _parse(out).refresh == "30"
    assert "live: the run is at" in out.read_text()


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "not a NARS run folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_tensorboard_has_every_finished_trial_with_hparams_and_curves(tmp_path):
    run = _run(tmp_path, finished=True)
    assert log_run(run) == 7
    assert log_run(run) == 0  # nothing changed: nothing rewritten
    folder = run / TENSORBOARD_DIR / "c2-stage1"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()
    assert {"segm_AP", "bbox_AP", "MFLOPs", "params"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("segm_AP")] == [5, 10]
    assert events.Scalars("segm_AP")[-1].value == pytest.approx(0.2)
    plugins = events.PluginTagToContent("hparams")
    assert plugins  # one HParams session per trial
    store = RunStore(run / "nars.sqlite")
    row = store.trial("c2-stage1")
    store.close()
    log_trial(run, row)  # again (a resumed run): one copy, not two
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def _scalars(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_tensorboard_has_the_supernets_training_and_zero_shot_scalars(tmp_path):
    run = _supernet_run(tmp_path)
    assert log_run(run) == 9 + 1  # every finished trial, and the supernet's folder
    assert log_run(run) == 0  # nothing changed: nothing rewritten
    folder = run / TENSORBOARD_DIR / SUPERNET_DIR
    events = _scalars(folder)
    assert {"loss_largest", "loss_smallest", "kd_rpn", "kd_cls", "kd_mask", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss_largest")] == [9, 19, 29]
    assert events.Scalars("loss_largest")[-1].value == pytest.approx(3.0 - 29 / 30)
    shots = events.Scalars("zero_shot/segm_AP")
    assert [e.step for e in shots] == [500 - 40 * i for i in (9, 7, 6, 2, 0)]  # by MFLOPs
    assert [e.value for e in shots] == pytest.approx([0.005 * i for i in (9, 7, 6, 2, 0)])
    writer = EventWriter(run / SUPERNET_DIR, start_iter=30)  # the supernet goes on: rewritten, one copy
    writer.write(39, {"loss": 5.0, "loss_largest": 1.5, "loss_smallest": 2.0, "lr": 0.001})
    writer.close()
    assert log_run(run) == 1
    assert [e.step for e in _scalars(folder).Scalars("loss_largest")] == [9, 19, 29, 39]
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_rung_pairs_compare_each_rung_with_where_the_same_trials_ended():
    from nars.search.halving import rung_pairs

    def trial(cid: str, stage: str, status: str, history: list, max_iter: int = 10, metrics=None) -> dict:
        return {"candidate_id": cid, "stage": stage, "status": status, "max_iter": max_iter, "history": history,
                "metrics": metrics}

    h = lambda *aps: [{"iteration": 5 * (k + 1), "segm_AP": ap} for k, ap in enumerate(aps)]  # noqa: E731
    trials = [trial("a", "stage1", "done", h(0.1, 0.3)), trial("b", "stage1", "done", h(0.2, 0.4)),
              trial("c", "stage1", "pruned", h(0.05)),  # stopped at the rung: no end to compare with
              trial("d", "stage1", "failed", h(0.9)),  # failed: not a measurement
              trial("a", "verify", "done", [], 20, {"segm_AP": 0.5}), trial("c", "verify", "done", [], 20, {"segm_AP": 0.6}),
              trial("d", "verify", "done", [], 20, {"segm_AP": 0.7})]
    assert rung_pairs(trials) == {"rung 5 -> 10": [(0.1, 0.3), (0.2, 0.4)],
                                  "stage 1 -> verify": [(0.3, 0.5), (0.05, 0.6)]}


def test_a_rung_decides_when_its_measured_tau_reaches_min_tau():
    from nars.search.halving import rung_gate

    def trial(aps: tuple[float, ...], status: str = "done") -> dict:
        return {"stage": "stage1", "status": status, "max_iter": 20,
                "history": [{"iteration": 5 * (k + 1), "segm_AP": ap} for k, ap in enumerate(aps)]}

    # rung 5 ranks the 4 ended trials as their ends do (tau 1); rung 10 swaps one pair (tau 2/3)
    trials = [trial((0.1, 0.1, 0.2, 0.4)), trial((0.2, 0.3, 0.1, 0.5)), trial((0.3, 0.2, 0.3, 0.6)),
              trial((0.4, 0.4, 0.4, 0.7)), trial((0.9,), "pruned"), trial((0.0, 0.0, 0.9, 0.1), "failed")]
    gate = rung_gate(trials, [5, 10, 15], min_tau=0.8)
    assert [(g["iteration"], g["pairs"], g["used"]) for g in gate] == [(5, 4, True), (10, 4, False), (15, 4, False)]
    assert gate[0]["tau"] == pytest.approx(1.0) and gate[1]["tau"] == pytest.approx(2 / 3)
    assert [g["used"] for g in rung_gate(trials, [5, 10], min_tau=0.6)] == [True, True]
    assert [g["used"] for g in rung_gate(trials[:2], [5], min_tau=-1.0)] == [False]  # 2 pairs: unmeasured
    assert [g["used"] for g in rung_gate([], [5], min_tau=None)] == [True]  # plain halving


def test_the_report_shows_the_runs_own_rung_fidelity(tmp_path):
    run = _run(tmp_path, finished=True)
    store = RunStore(run / "nars.sqlite")  # two more finished stage-1 trials: 4 pairs at rung 5, ranked alike
    store.add_trials([{"id": f"c{i}-stage1", "candidate_id": f"c{i}", "stage": "stage1", "round": 1,
                       "candidate": _candidate(i), "mflops": 100.0, "params": 10_000, "max_iter": 10} for i in (6, 7)])
    for i in (6, 7):
        for it in (5, 10):
            store.append_history(f"c{i}-stage1", {"iteration": it, "segm_AP": 0.01 * i * it})
        store.finish(f"c{i}-stage1", "done", {"segm_AP": 0.1 * i}, wall_time=3.0)
    experiment = store.get_meta("experiment")  # round 1's rung 5 compared its trials per image
    experiment.setdefault("stage1", {}).setdefault("early_stop", {})["wilcoxon_p"] = 0.1
    store.set_meta("experiment", experiment)
    shown_worse = {"images": 8, "mean": -0.05, "ci": [-0.08, -0.02], "p": 0.02, "better": 0, "worse": 7}
    store.set_meta("halving_paired", {"1": [{"c6-stage1": shown_worse}]})
    store.set_meta("halving", {"1": [["c7-stage1"]]})
    store.close()
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    section = page[page.index("<h2>Rung fidelity</h2>"):page.index("<h2>Trials</h2>")]
    assert "rung 5 -&gt; 10" in section and "tau 1.00" in section  # c0, c2, c6, c7: the same order at 5 and 10
    assert "stage 1 -&gt; verify" in section and "too few pairs" in section  # c0 and c3 verified; c3 failed in stage 1
    assert "Wilcoxon p &lt; 0.1" in section
    assert "<td>c6-stage1</td><td>-0.0500 [-0.0800, -0.0200]</td><td class=\"n\">0.020</td><td>stopped</td>" in section


def test_the_tuned_parent_is_the_recipe_stages_best_or_the_reference():
    from nars.search.fronts import tuned_parent

    def trial(tid: str, stage: str, ap: float | None, status: str = "done") -> dict:
        return {"id": tid, "stage": stage, "status": status, "metrics": None if ap is None else {"segm_AP": ap}}

    ref = trial("r", "reference", 0.30)
    assert tuned_parent([ref, trial("s", "stage1", 0.9)]) is None  # no recipe stage
    assert tuned_parent([ref, trial("a", "recipe", 0.25), trial("b", "recipe", 0.35),
                         trial("c", "recipe", 0.9, "failed")])["id"] == "b"
    assert tuned_parent([trial("a", "recipe", 0.30), ref])["id"] == "r"  # a tie keeps the reference's recipe


def test_the_report_pairs_each_verified_trial_with_the_reference_image_by_image(tmp_path):
    import json

    run = _run(tmp_path, finished=True)
    ref = {str(i): 0.5 for i in range(10)}
    better = {str(i): 0.5 + (0.2 if i < 8 else -0.1) for i in range(10)}  # better on 8 images of 10
    for tid, aps in (("ref-reference", ref), ("c3-verify", better)):
        (run / "trials" / tid).mkdir(parents=True)
        (run / "trials" / tid / "per_image.json").write_text(json.dumps({"segm_AP": aps}))
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    section = page[page.index("image by image</h2>"):page.index("<h2>Predictor fit")]
    assert "c3" in section and "8 / 2 of 10" in section and "+0.140" in section
    assert "c0" not in section  # no per-image results: not compared


def test_paired_images_compare_the_common_images():
    from nars.search.paired import paired_images

    a = {str(i): 0.1 * i for i in range(12)}
    b = {**{str(i): 0.1 * i - 0.05 for i in range(12)}, "extra": 1.0}
    d = paired_images(a, b)
    assert d["images"] == 12 and d["mean"] == pytest.approx(0.05) and d["better"] == 12 and d["worse"] == 0
    assert d["ci"][0] == pytest.approx(0.05) and d["p"] < 0.01  # every image better by the same: certain
    assert paired_images(a, a)["p"] == 1.0 and paired_images(a, a)["mean"] == 0.0
    assert paired_images({"1": 0.5}, {"1": 0.4}) is None  # too few images to say anything
