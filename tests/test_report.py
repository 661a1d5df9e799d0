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
from nars.search.store import RunStore
from nars.search.tensorboard_log import TENSORBOARD_DIR, log_run, log_trial


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


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_the_report_is_one_self_contained_page_with_every_plot(tmp_path, capsys):
    run = _run(tmp_path, finished=True)
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--watch", "1"]) == 0  # finished: written once, returns
    page = _parse(out)
    assert page.rows == 7 and page.refresh is None  # one row per trial; a finished run does not reload
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
