"""Successive halving's rung decisions: ranked by AP, and with the per-image comparison."""

from __future__ import annotations

import json

import numpy as np

from nars.search.halving import ranked, survivors, versus_leader
from nars.search.paired import per_image_at

IMAGES = [str(i) for i in range(30)]


def _trial(tid: str, ap: float, loss: float = 1.0) -> dict:
    return {"id": tid, "metrics": {"segm_AP": ap, "loss": loss}}


def _images(values: np.ndarray) -> dict[str, float]:
    return dict(zip(IMAGES, values.tolist()))


def test_a_rung_keeps_its_best_by_ap_then_lower_loss_in_a_stable_order():
    rung = [_trial("a", 0.1), _trial("b", 0.3, 2.0), _trial("c", 0.3, 1.0), _trial("d", 0.0)]
    assert [rung[i]["id"] for i in ranked(rung)] == ["c", "b", "a", "d"]
    assert survivors(rung, 2) == ["b", "c"]  # the rung's order, not the ranking's
    assert survivors(rung, 4) == ["c"]


def test_paired_halving_stops_only_trials_shown_worse_than_the_leader_image_by_image():
    """Four trials, the best two by AP go on anyway. Of the others, one the paired test cannot
    tell from the leader goes on too; one worse on every image, and one without per-image
    results (ranked only), stop."""
    rng = np.random.default_rng(0)
    leader = rng.uniform(0.2, 0.6, len(IMAGES))
    per_image = {
        "lead": _images(leader),
        "second": _images(leader - 0.01),
        "tied": _images(leader + np.tile([0.05, -0.05], len(IMAGES) // 2)),  # its AP is lower, by chance
        "worse": _images(leader - rng.uniform(0.05, 0.15, len(IMAGES))),
        "blind": None,
    }
    rung = [_trial("worse", 0.20), _trial("tied", 0.25), _trial("lead", 0.40), _trial("second", 0.39),
            _trial("blind", 0.10)]
    paired = versus_leader(rung, per_image)
    assert set(paired) == {"second", "tied", "worse", "blind"} and paired["blind"] is None
    assert paired["worse"]["mean"] < 0 and paired["worse"]["p"] < 0.001 and paired["worse"]["worse"] == len(IMAGES)
    assert abs(paired["tied"]["mean"]) < 1e-12 and paired["tied"]["p"] > 0.5
    assert survivors(rung, 2) == survivors(rung, 2, paired, max_p=0.05) == ["tied", "lead", "second"]
    assert survivors(rung, 4) == ["lead", "second"]
    assert survivors(rung, 4, paired, max_p=0.05) == ["tied", "lead", "second"]  # "tied" goes on as well
    # 0.01 lower on every image: a difference its AP could not show, the paired test can
    assert paired["second"]["p"] < 0.001 and survivors(rung, 5, paired, max_p=0.05) == ["tied", "lead"]


def test_a_rungs_per_image_results_are_read_from_the_trials_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint_000000"
    ckpt.mkdir()
    aps = {"1": 0.5, "2": 0.25}
    (ckpt / "per_image.json").write_text(json.dumps({"iteration": 40, "segm_AP": aps}))
    assert per_image_at(str(ckpt), 40) == aps
    assert per_image_at(str(ckpt), 80) is None  # another rung's: not comparable
    assert per_image_at(str(tmp_path / "gone"), 40) is None
