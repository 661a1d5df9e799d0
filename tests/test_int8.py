"""int8 deployment (nars.deploy.quantize) and the onnxruntime engine of ``nars eval`` / ``nars predict``.

The model is the d2go golden checkpoint (FBNetV3_A_dsmask trained on the shapes, 4 classes,
test size 128), on generated shapes scenes. How much AP int8 costs on trained models is a
measurement (bench/bench_int8.py, BENCHMARKS.md); here: which nodes are quantized and which
stay float, that the file describes itself, that both engines score an fp32 graph as
PyTorch scores the checkpoint, and the one-line errors for bad calibration input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from engine_helpers import data_overrides, make_shapes, one_thread
from nars.cli import main
from nars.config import load_config
from nars.deploy.onnx import OnnxDetector, export_onnx, image_array, synthetic_image
from nars.deploy.quantize import QUANTIZED_SCOPES, quantize_graph
from nars.engine.inference import load_predictor

GOLDEN = Path(__file__).parent / "data" / "d2go_golden"
CONFIG = str(GOLDEN / "nars_config.yaml")
WEIGHTS = str(GOLDEN / "golden_model.pth")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Shapes data, its config overrides, and the golden checkpoint deployed as fp32; the
    int8 graph's path."""
    root = tmp_path_factory.mktemp("int8")
    shapes = make_shapes(root / "shapes", train=6, val=4, size=128)
    data = data_overrides(shapes)
    assert main(["deploy", CONFIG, "--weights", WEIGHTS, "--onnx", str(root / "fp32.onnx"), *data]) == 0
    return root, data, root / "int8.onnx"


def _all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph``, the branches of its If nodes included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def _deploy_int8(root: Path, data: list[str], capsys, *extra: str) -> str:
    assert main(["deploy", CONFIG, "--weights", WEIGHTS, "--onnx", str(root / "int8.onnx"), "--int8",
                 "--calibration-count", "3", *extra, *data]) == 0
    return capsys.readouterr().out


def test_int8_quantizes_the_network_and_keeps_the_rest_float(deployed, capsys):
    root, data, int8 = deployed
    printed = _deploy_int8(root, data, capsys)
    model = onnx.load(str(int8))
    nodes = model.graph.node
    made = {n.output[0]: n for n in nodes}
    quantized = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(quantized) > 50
    # every tensor that is quantized is one the network's blocks read or write
    consumers = {name: [n for n in nodes if name in n.input] for n in nodes for name in n.output}
    for q in quantized:
        touching = [made.get(q.input[0])] + [c for dq in consumers[q.output[0]] for c in consumers[dq.output[0]]]
        assert any(n is not None and n.name.startswith(QUANTIZED_SCOPES) for n in touching), q.name
    # the predictors stay float: float weights, outputs not quantized
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for prefix in ("/roi_heads/box_predictor/cls_score", "/roi_heads/box_predictor/bbox_pred",
                   "/roi_heads/mask_head/predictor/mask_fcn_logits", "/rpn/head/rpn_regressor/cls_logits"):
        node = next(n for n in nodes if n.name.startswith(prefix) and n.op_type in ("Conv", "Gemm"))
        assert str(weights[node.input[1]].dtype) == "float32", node.name
        assert all(c.op_type != "QuantizeLinear" for c in consumers[node.output[0]]), node.name
    every = list(_all_nodes(model.graph))  # NMS is in the branch of an If (no boxes: no NMS)
    for op in ("RoiAlign", "NonMaxSuppression"):
        assert any(n.op_type == op for n in every) and all(n.op_type != f"QLinear{op}" for n in every)
    # the file says what it is, and keeps the checkpoint's categories and threshold
    detector = OnnxDetector(int8, threads=1)
    assert detector.precision == "int8" and detector.metadata["nars.calibration_images"] == "3"
    assert detector.score_threshold == pytest.approx(0.05)
    assert [c["id"] for c in detector.categories] == [1, 2, 3, 4]
    assert "int8:" in printed and "calibrated on 3 images" in printed
    table = re.search(r"fp32 +([\d.]+) +([\d.]+).*\nint8 +([\d.]+) +([\d.]+)", printed)
    assert table, printed
    assert re.search(r"int8 - fp32: bbox [+-][\d.]+, segm [+-][\d.]+", printed)
    assert not list(root.glob(".int8.onnx.*")), "the temporary fp32 graph is removed"


def test_an_int8_graph_runs_an_image_without_detections(tmp_path):
    """An image none of whose detections pass the threshold gives empty outputs, as the fp32
    graph does (onnxruntime once rewrote the box clipping's Reshape so that it failed)."""
    cfg = load_config(CONFIG, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01"])
    with one_thread():
        model, _ = load_predictor(cfg, WEIGHTS)
        export_onnx(model, tmp_path / "fp32.onnx")
    image = synthetic_image(128, 128)
    quantize_graph(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [image_array(image)])
    out = OnnxDetector(tmp_path / "int8.onnx", threads=1)([image])[0]
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 1, 128, 128)


def test_onnxruntime_engine_scores_as_pytorch_does(deployed, capsys):
    root, data, _ = deployed
    assert main(["eval", CONFIG, "--weights", WEIGHTS, "--json", *data]) == 0
    torch_ap = json.loads(capsys.readouterr().out)
    assert main(["eval", CONFIG, "--weights", str(root / "fp32.onnx"), "--engine", "onnxruntime", "--json", *data]) == 0
    onnx_ap = json.loads(capsys.readouterr().out)
    assert set(onnx_ap) == {"bbox", "segm"}
    for kind in ("bbox", "segm"):
        for name, value in torch_ap[kind].items():  # the same detections up to float32 rounding (test_onnx.py)
            assert (value is None) == (onnx_ap[kind][name] is None)
            assert value is None or abs(value - onnx_ap[kind][name]) <= 1e-3, (kind, name)
    images = str(root / "shapes" / "val")
    outs = {}
    for engine, weights in (("torch", WEIGHTS), ("onnxruntime", str(root / "fp32.onnx"))):
        out = root / f"pred_{engine}"
        assert main(["predict", CONFIG, "--weights", weights, "--engine", engine, images, "--out", str(out),
                     "--score-threshold", "0.1"]) == 0
        outs[engine] = json.loads((out / "predictions.json").read_text())
        assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in Path(images).glob("*.png"))
    capsys.readouterr()
    assert len(outs["torch"]) == len(outs["onnxruntime"]) > 0
    for a, b in zip(outs["torch"], outs["onnxruntime"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4) and b["score"] > 0.1
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.02)


def test_engine_and_calibration_errors(deployed, capsys, tmp_path):
    root, data, _ = deployed
    fp32 = str(root / "fp32.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    out = ["--onnx", str(tmp_path / "q.onnx")]
    cases = [
        (["deploy", CONFIG, "--weights", WEIGHTS, *out, "--int8", "--calibration-count", "0", *data],
         "--calibration-count must be >= 1, got 0"),
        (["deploy", CONFIG, "--weights", WEIGHTS, *out, "--int8", "--calibration", str(empty), *data],
         "empty: folder holds no images"),
        (["deploy", CONFIG, "--weights", WEIGHTS, *out, "--int8", "--calibration", str(tmp_path / "bad"), *data],
         "broken.png: unreadable calibration image"),
        (["deploy", CONFIG, "--weights", WEIGHTS, *out, "--calibration", str(empty), *data],
         "--calibration applies to --int8 only"),
        (["deploy", CONFIG, "--weights", WEIGHTS, *out, "--int8", "DATASETS.TRAIN.JSON", str(tmp_path / "no.json")],
         "--int8 calibrates on DATASETS.TRAIN's images, which cannot be read"),
        (["eval", CONFIG, "--weights", fp32, *data], "is an ONNX model: add --engine onnxruntime"),
        (["eval", CONFIG, "--weights", WEIGHTS, "--engine", "onnxruntime", *data], "not a loadable ONNX model"),
        (["predict", CONFIG, "--weights", fp32, "--engine", "onnxruntime", str(root / "shapes" / "val"), "--out",
          str(tmp_path / "p"), "--score-threshold", "0.01"], "--score-threshold 0.01 is below the 0.05"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()  # data logs may come first
        assert message in lines[-1] and "Traceback" not in err and sum("error" in line for line in lines) == 1, err
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "p").exists()
