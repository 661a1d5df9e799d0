"""``nars data info``'s statistics; ``nars experiment new``: experiments derived from a dataset, that ``nars search``
loads as they are."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import pytest

from nars.cli import main
from nars.data.shapes import generate_shapes
from nars.search.driver import Search
from nars.search.experiment import load_experiment
from nars.search.new_experiment import BASE_CONFIG, SPACE, anchor_sizes, budget, detections_per_image


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "d"
    generate_shapes(root, train=6, val=3, size=96, seed=0, progress=False)
    return root


def _splits(root: Path) -> list[str]:
    return [arg for s in ("train", "val") for arg in (f"--{s}", str(root / f"{s}.json"), str(root / s))]


def _new(root: Path, out: Path, *extra: str) -> int:
    return main(["experiment", "new", *_splits(root), "--out", str(out), "--cpus", "2", *extra])


def _crowded(root: Path, counts: list[int], side: tuple[int, int] = (420, 450), box: float = 12.0) -> Path:
    """A COCO JSON with many small square objects per image; the image files exist but are empty
    (nothing here reads pixels)."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, count in enumerate(counts, start=1):
        (root / "images" / f"{i}.png").touch()
        images.append({"id": i, "file_name": f"{i}.png", "height": side[0], "width": side[1]})
        for k in range(count):
            x, y, s = 2 + (k % 30) * 14, 2 + (k // 30) * 14, box + k % 3
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                "bbox": [x, y, s, s], "area": s * s,
                                "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]]})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}
    (root / "coco.json").write_text(json.dumps(coco))
    return root


def _trial_config(exp: dict, run_dir: Path) -> dict:
    """The stage-1 config ``nars search`` would train the reference with (its checks pass first)."""
    search = Search(exp, run_dir, progress=False)
    return search.trial_config(search.space.references[exp["verify"]["reference"]], "stage1")


# --- nars data info ---------------------------------------------------------------------------


def test_data_info_json_matches_the_json(shapes, capsys):
    path = shapes / "train.json"
    assert main(["data", "info", str(path), str(shapes / "train"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    coco = json.loads(path.read_text())
    widths = [img["width"] for img in coco["images"]]
    shorter = [min(img["width"], img["height"]) for img in coco["images"]]
    per_image = Counter(a["image_id"] for a in coco["annotations"] if not a["iscrowd"])
    counts = [per_image[img["id"]] for img in coco["images"]]
    sizes = [math.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"] if not a["iscrowd"]]
    percentiles = statistics.quantiles(sizes, n=100, method="inclusive")
    assert stats["images"] == len(coco["images"]) and stats["instances"] == len(sizes)
    assert stats["width"] == {"min": min(widths), "median": statistics.median(widths), "max": max(widths)}
    assert stats["shorter_side"]["median"] == statistics.median(shorter)
    assert stats["instances_per_image"]["max"] == max(counts)
    assert stats["instances_per_image"]["median"] == statistics.median(counts)
    assert stats["instances_per_image_mean"] == pytest.approx(statistics.mean(counts))
    assert list(stats["box_size"]) == ["5", "25", "50", "75", "95"]
    for q, value in stats["box_size"].items():
        assert value == pytest.approx(percentiles[int(q) - 1])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_id = sorted(Counter(a["category_id"] for a in coco["annotations"]).items())
    assert stats["classes"] == {names[i]: n for i, n in by_id}


def test_data_info_text_without_images(shapes, capsys):
    assert main(["data", "info", str(shapes / "val.json")]) == 0
    out = capsys.readouterr().out
    assert "give IMAGES" in out and "objects per image: mean" in out and "box size sqrt(w*h)" in out


# --- nars experiment new ------------------------------------------------------------------------


def test_experiment_from_shapes_loads_and_follows_the_data(shapes, tmp_path, capsys):
    out = tmp_path / "my.yaml"
    assert _new(shapes, out) == 0
    assert f"nars search {out}" in capsys.readouterr().out
    exp = load_experiment(out)
    cfg, train = exp["config"], json.loads((shapes / "train.json").read_text())
    assert exp["name"] == "my" and exp["space"] == SPACE and exp["base_config"] == BASE_CONFIG
    assert exp["dataset"]["train"] == {"json": str(shapes / "train.json"), "images": str(shapes / "train")}
    assert Path(exp["dataset"]["val"]["json"]).is_absolute() and exp["dataset"]["shapes"]["out"] == ""
    assert cfg["MODEL.ROI_HEADS.NUM_CLASSES"] == len(train["categories"])
    assert cfg["INPUT.MIN_SIZE_TRAIN"] == [96] and cfg["INPUT.MIN_SIZE_TEST"] == 96 and cfg["INPUT.MAX_SIZE_TEST"] == 96
    (anchors,) = cfg["MODEL.ANCHOR_GENERATOR.SIZES"]
    assert len(anchors) == 5 and all(4 <= a < b <= 96 for a, b in zip(anchors, anchors[1:]))
    most = max(Counter(a["image_id"] for a in train["annotations"]).values())
    rpn = {k.split(".")[-1]: v for k, v in cfg.items() if k.startswith("MODEL.RPN.")}
    assert rpn["POST_NMS_TOPK_TEST"] >= cfg["TEST.DETECTIONS_PER_IMAGE"] >= most
    assert rpn["PRE_NMS_TOPK_TRAIN"] >= rpn["POST_NMS_TOPK_TRAIN"] >= rpn["POST_NMS_TOPK_TEST"]
    assert exp["constraints"] == {"max_mflops": None, "max_params": None, "max_latency_ms": None}
    assert (exp["parent"]["weights"], exp["parent"]["arch"], exp["space"]) == ("", "", "fbnetv3is_quick")
    assert exp["ray"]["num_cpus"] == 2 and exp["ray"]["max_concurrent"] * exp["ray"]["cpus_per_trial"] <= 2
    assert exp["stage1"]["max_iter"] % exp["stage1"]["eval_period"] == 0
    assert exp["stage1"]["early_stop"]["grace_period"] == exp["stage1"]["eval_period"]
    assert exp["stage1"]["max_iter"] < exp["verify"]["max_iter"] <= 400  # the quick space's recipes: 400 iterations
    trial = _trial_config(exp, tmp_path / "run")
    assert trial["TEST"]["DETECTIONS_PER_IMAGE"] == cfg["TEST.DETECTIONS_PER_IMAGE"]
    assert trial["MODEL"]["ANCHOR_GENERATOR"]["SIZES"] == [anchors] and trial["INPUT"]["MIN_SIZE_TRAIN"] == [96]
    assert trial["SOLVER"]["MAX_ITER"] == exp["stage1"]["max_iter"]
    lines = out.read_text().splitlines()
    config_lines = [line for line in lines if line.startswith("  ") and "." in line[:line.find(":")]]
    assert len(config_lines) == len(cfg) and all("  # " in line for line in config_lines)


def test_flags_land_in_their_keys(shapes, tmp_path):
    ckpt = tmp_path / "parent.pth"
    ckpt.touch()
    out = tmp_path / "sub" / "flags.yaml"
    assert _new(shapes, out, "--parent", str(ckpt), "--parent-arch", "FBNetV3_A_dsmask", "--max-mflops", "500",
                "--max-params", "1000000", "--name", "cells") == 0
    exp = load_experiment(out)
    assert exp["name"] == "cells"
    assert (exp["parent"]["weights"], exp["parent"]["arch"]) == (str(ckpt), "FBNetV3_A_dsmask")
    assert exp["space"] == "fbnetv3is_finetune"  # a parent: the fine-tuning recipes
    assert exp["constraints"] == {"max_mflops": 500.0, "max_params": 1000000, "max_latency_ms": None}
    assert _new(shapes, tmp_path / "named.yaml", "--parent", "FBNetV3a-DSMask-C4 COCO") == 0  # a named checkpoint stays
    assert load_experiment(tmp_path / "named.yaml")["parent"]["weights"] == "FBNetV3a-DSMask-C4 COCO"


def test_crowded_small_objects(tmp_path):
    train, val = _crowded(tmp_path / "train", [130, 60]), _crowded(tmp_path / "val", [140])
    out = tmp_path / "cells.yaml"
    assert main(["experiment", "new", "--train", str(train / "coco.json"), str(train / "images"),
                 "--val", str(val / "coco.json"), str(val / "images"), "--out", str(out), "--cpus", "16"]) == 0
    exp = load_experiment(out)
    cfg = exp["config"]
    assert cfg["MODEL.ROI_HEADS.NUM_CLASSES"] == 1 and "nucleus (190)" in out.read_text()
    assert (cfg["INPUT.MIN_SIZE_TEST"], cfg["INPUT.MAX_SIZE_TEST"]) == (416, 448)
    assert cfg["TEST.DETECTIONS_PER_IMAGE"] == 170  # val's 140 x 1.2, up in tens
    assert cfg["MODEL.RPN.POST_NMS_TOPK_TEST"] >= 2 * 170
    (anchors,) = cfg["MODEL.ANCHOR_GENERATOR.SIZES"]
    assert anchors[0] >= 11 and anchors[-1] <= 17 and anchors == sorted(set(anchors))  # 12-14 px boxes x ~0.99
    assert "below the RPN's 16 px stride" in out.read_text()
    assert (exp["ray"]["num_cpus"], exp["ray"]["max_concurrent"], exp["ray"]["cpus_per_trial"]) == (16, 8, 2)
    assert exp["stage1"]["trials_per_round"] == 8
    trial = _trial_config(exp, tmp_path / "run")
    assert trial["MODEL"]["RPN"]["POST_NMS_TOPK_TEST"] == cfg["MODEL.RPN.POST_NMS_TOPK_TEST"]


def test_anchor_sizes_increase_within_bounds():
    assert anchor_sizes({5: 2, 25: 2, 50: 2, 75: 2, 95: 2}, 1.0, 64) == [4, 5, 6, 7, 8]
    assert anchor_sizes({5: 50, 25: 80, 50: 90, 75: 90, 95: 200}, 1.0, 64) == [50, 61, 62, 63, 64]
    assert anchor_sizes({5: 10, 25: 20, 50: 30, 75: 40, 95: 50}, 0.5, 64) == [5, 10, 15, 20, 25]


def test_detections_and_budgets():
    assert [detections_per_image(n) for n in (0, 4, 9, 137)] == [10, 10, 20, 170]
    small, large = budget(2, 96 * 96, 8, 400, 2, 2), budget(2, 416 * 448, 8, 400, 2, 2)
    assert small.eval_period == 100 and large.eval_period < small.eval_period and large.eval_period % 10 == 0
    assert budget(64, 416 * 448, 8, 400, 2, 2).cpus_per_trial == 8


@pytest.mark.parametrize("case, message", [
    ("missing json", "{root}/nope.json: no such COCO JSON file"),
    ("not coco", "{root}/train.json: not a COCO instances file"),
    ("no annotations", "{root}/train.json: has no (non-crowd) annotations"),
    ("other classes", "{root}/val.json: categories"),
    ("out exists", "{out}: exists; choose another --out, or add --force"),
    ("arch alone", "--parent-arch names the architecture of --parent"),
])
def test_bad_input_one_line_errors(shapes, tmp_path, capsys, case, message):
    root = tmp_path / "d"
    root.mkdir()
    for name in ("train.json", "val.json"):
        (root / name).write_text((shapes / name).read_text())
    for name in ("train", "val"):
        (root / name).symlink_to(shapes / name)
    out, extra = tmp_path / "my.yaml", []
    argv = ["experiment", "new", *_splits(root)]
    if case == "missing json":
        argv[3] = str(root / "nope.json")
    elif case == "not coco":
        (root / "train.json").write_text("[]")
    elif case == "no annotations":
        coco = json.loads((root / "train.json").read_text())
        (root / "train.json").write_text(json.dumps({**coco, "annotations": []}))
    elif case == "other classes":
        coco = json.loads((root / "val.json").read_text())
        coco["categories"][0]["name"] = "disc"
        (root / "val.json").write_text(json.dumps(coco))
    elif case == "out exists":
        out.write_text("mine\n")
    else:
        extra = ["--parent-arch", "FBNetV3_A"]
    assert main([*argv, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nars experiment: error: " + message.format(root=root, out=out)) and err.count("\n") == 1
    assert "Traceback" not in err
    if case == "out exists":
        assert out.read_text() == "mine\n"
        assert main([*argv, "--out", str(out), "--force"]) == 0 and load_experiment(out)["name"] == "my"
    else:
        assert not out.exists()
