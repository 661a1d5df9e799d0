"""int8 against fp32 FBNetV3IS in onnxruntime: latency side by side, and the AP quantization costs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_int8.py [--skip-latency] [--skip-ap]
        [--trained NAME=RUN_DIR ...] [--work DIR] [--out bench/results/int8]

Latency (2 threads, models and engines interleaved round-robin in one run, the median of
``--runs``): ``nars.deploy.latency.measure_latencies`` with one engine per entry, for
FBNetV3_A_dsmask (the shipped config, 80 classes) and a searched model (``--searched``: the
coins search's seed-0 winner by default), random weights, one 240x320 image kept at its size,
score threshold 0 so exactly 10 or 100 detections reach the mask head (as
bench_model_cost.py). The int8 graph is calibrated on the timing image (the ranges do not
change the kernels). PyTorch's path is timed in the same rounds for reference.

AP (``nars deploy --int8``'s steps: export, quantize calibrated on 64 of the model's training
images, evaluate both graphs on its DATASETS.TEST in onnxruntime):

- ``golden``: the d2go golden checkpoint (FBNetV3_A_dsmask trained on the shapes) on the
  built-in shapes (``nars data shapes``: 300 training, 50 validation images at 128 px), and
  detection by detection on its own 4 images;
- ``parent``: the shipped parent (experiments/parents/shapes_dsmask) on the same data;
- each ``--trained NAME=RUN_DIR``: a trained run folder (config.yaml + model_final.pth) on its
  own config's data, e.g. the coins retrains of bench_retrain.py.

Per model: bbox and segm AP of both graphs, and int8 minus fp32 per image (segm, with a 95%
bootstrap interval over images and Wilcoxon's p); over the trained models, the mean
difference with a bootstrap interval over models. Raw figures: ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import printed_difference  # noqa: E402

from nars.config import load_config  # noqa: E402
from nars.data.shapes import generate_shapes  # noqa: E402
from nars.deploy.latency import measure_latencies  # noqa: E402
from nars.deploy.onnx import OnnxDetector, compare_detections, export_onnx  # noqa: E402
from nars.deploy.quantize import CALIBRATION_COUNT, calibration_images, quantize_graph, training_images  # noqa: E402
from nars.engine.evaluator import evaluation_setup, run_on_dataset  # noqa: E402
from nars.engine.inference import load_predictor, read_rgb  # noqa: E402
from nars.search.paired import paired_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "d2go_golden"
PARENT = ROOT / "experiments" / "parents" / "shapes_dsmask"
SEARCHED = ROOT / "bench" / "results" / "int8" / "searched_coins_seed0.yaml"
THREADS = 2
SIZE = (240, 320)
ENGINES = ("onnxruntime", "onnxruntime-int8", "torch")


def latency_rows(searched: Path, runs: int) -> list[dict[str, Any]]:
    """Both models x the three engines, at 10 and 100 detections, timed together per count."""
    models = {"FBNetV3_A_dsmask": load_config("fbnetv3a_dsmask_C4"), "searched (coins, seed 0)": load_config(searched)}
    rows = []
    for detections in (10, 100):
        entries = [(name, engine) for name in models for engine in ENGINES]
        results = measure_latencies([models[name] for name, _ in entries], engine=[e for _, e in entries],
                                    threads=THREADS, input_size=SIZE, detections=detections, runs=runs, warmup=3,
                                    progress=True)
        for (name, engine), r in zip(entries, results):
            rows.append({"model": name, "engine": engine, "detections": detections, "returned": r.detections,
                         "median_ms": r.median_ms, "p90_ms": r.p90_ms, "min_ms": r.min_ms})
    return rows


def print_latency(rows: list[dict[str, Any]]) -> None:
    print("\n| model | detections | onnxruntime fp32 ms | onnxruntime int8 ms | int8 speed-up | PyTorch ms |\n"
          "|---|---|---|---|---|---|")
    by = {(r["model"], r["detections"], r["engine"]): r["median_ms"] for r in rows}
    for model, detections in dict.fromkeys((r["model"], r["detections"]) for r in rows):
        fp32, int8 = by[model, detections, "onnxruntime"], by[model, detections, "onnxruntime-int8"]
        print(f"| {model} | {detections} | {fp32:.1f} | {int8:.1f} | **{fp32 / int8:.2f}x** | "
              f"{by[model, detections, 'torch']:.1f} |")


def shapes_data(work: Path) -> list[str]:
    """The built-in shapes (as ``nars data shapes`` makes them by default) and their overrides."""
    out = work / "shapes"
    if not (out / "val.json").is_file():
        generate_shapes(out, train=300, val=50, size=128, seed=0, progress=False)
    return ["DATASETS.TRAIN.JSON", str(out / "train.json"), "DATASETS.TRAIN.IMAGES", str(out / "train"),
            "DATASETS.TEST.JSON", str(out / "val.json"), "DATASETS.TEST.IMAGES", str(out / "val")]


def evaluate_graph(cfg: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[int, float], float]:
    """Metrics, per-image segm AP and images per second of one graph on DATASETS.TEST."""
    loader, evaluator = evaluation_setup(cfg)
    result = run_on_dataset(OnnxDetector(path, THREADS), loader, evaluator, torch.device("cpu"))
    return result.metrics, evaluator.per_image("segm"), result.images_per_second


def deploy_and_evaluate(cfg: dict[str, Any], weights: str, folder: Path) -> dict[str, Any]:
    """``nars deploy --int8``'s steps into ``folder`` (fp32.onnx, int8.onnx: 64 calibration
    images from the training set), then both graphs on DATASETS.TEST: per precision its
    metrics, per-image segm AP and images per second, and the quantization's seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    model, _ = load_predictor(cfg, weights)
    export_onnx(model, folder / "fp32.onnx")
    start = time.perf_counter()
    quantize_graph(folder / "fp32.onnx", folder / "int8.onnx",
                   calibration_images(training_images(cfg), CALIBRATION_COUNT))
    out: dict[str, Any] = {"quantize_s": time.perf_counter() - start}
    for precision in ("fp32", "int8"):
        metrics, per_image, speed = evaluate_graph(cfg, folder / f"{precision}.onnx")
        out[precision] = {"metrics": metrics, "per_image": per_image, "images_per_s": speed}
    return out


def ap_row(name: str, cfg: dict[str, Any], weights: str, work: Path) -> dict[str, Any]:
    """Export, quantize, evaluate both graphs: one model's row."""
    d = deploy_and_evaluate(cfg, weights, work / name)
    fp32, int8 = d["fp32"]["metrics"], d["int8"]["metrics"]
    row = {"model": name, "weights": weights, "quantize_s": d["quantize_s"], "fp32": fp32, "int8": int8,
           "images_per_s": {p: d[p]["images_per_s"] for p in ("fp32", "int8")},
           "per_image_segm": paired_images(d["int8"]["per_image"], d["fp32"]["per_image"])}
    print(f"{name}: segm {fp32['segm']['AP']:.4f} -> {int8['segm']['AP']:.4f}, bbox {fp32['bbox']['AP']:.4f} -> "
          f"{int8['bbox']['AP']:.4f} (quantized in {d['quantize_s']:.0f} s)", flush=True)
    return row


def golden_images(work: Path) -> list[dict[str, Any]]:
    """The golden checkpoint's fp32 and int8 graphs, detection by detection on its images."""
    fp32, int8 = (OnnxDetector(work / "golden" / f"{p}.onnx", THREADS) for p in ("fp32", "int8"))
    rows = []
    for png in sorted(GOLDEN.glob("*.png")):
        image = read_rgb(png)
        rows.append({"image": png.name, **compare_detections(fp32([image])[0], int8([image])[0]).to_dict()})
    return rows


def print_ap(rows: list[dict[str, Any]]) -> None:
    print("\n| model | test images | bbox AP fp32 | int8 | segm AP fp32 | int8 | int8 - fp32 segm, per image "
          "[95% CI] | Wilcoxon p |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["per_image_segm"]
        ci = f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]" if d else "n/a"
        print(f"| {r['model']} | {d['images'] if d else '?'} | {r['fp32']['bbox']['AP']:.4f} | "
              f"{r['int8']['bbox']['AP']:.4f} | {r['fp32']['segm']['AP']:.4f} | **{r['int8']['segm']['AP']:.4f}** | "
              f"{ci} | {d['p'] if d else float('nan'):.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ap", action="store_true")
    parser.add_argument("--searched", type=Path, default=SEARCHED, help="the searched model's config (latency)")
    parser.add_argument("--runs", type=int, default=15, help="timed rounds per detection count")
    parser.add_argument("--trained", nargs="*", default=[], metavar="NAME=RUN_DIR",
                        help="trained run folders (config.yaml, model_final.pth) to quantize and evaluate")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_int8"), help="data and graphs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    results: dict[str, Any] = {"commit": commit.strip(), "threads": THREADS}
    print(f"torch {torch.__version__}, commit {results['commit']}, {THREADS} threads", flush=True)
    start = time.perf_counter()
    if not args.skip_latency:
        results["latency"] = latency_rows(args.searched, args.runs)
        print_latency(results["latency"])
    if not args.skip_ap:
        shapes = shapes_data(args.work)
        models = [("golden", load_config(GOLDEN / "nars_config.yaml", shapes), str(GOLDEN / "golden_model.pth")),
                  ("parent", load_config(PARENT / "config.yaml", shapes), str(PARENT / "model_final.pth"))]
        for entry in args.trained:
            name, run = entry.split("=", 1)
            models.append((name, load_config(Path(run) / "config.yaml"), str(Path(run) / "model_final.pth")))
        rows = [ap_row(name, cfg, weights, args.work) for name, cfg, weights in models]
        results["ap"] = rows
        results["golden_images"] = golden_images(args.work)
        print_ap(rows)
        print("\ngolden images, int8 against fp32:")
        for g in results["golden_images"]:
            print(f"  {g['image']}: detections {g['detections']}, labels {'equal' if g['labels_equal'] else 'DIFFER'}, "
                  f"box {g['box_px']:.2f} px, score {g['score']:.3f}, mask IoU >= {g['mask_iou']:.3f}")
        trained = [r for r in rows if r["model"] not in ("golden", "parent")]
        if trained:
            results["over_trained"] = printed_difference(
                f"int8 - fp32 segm AP over the {len(trained)} trained models",
                {r["model"]: r["int8"]["segm"]["AP"] for r in trained}, {r["model"]: r["fp32"]["segm"]["AP"] for r in trained})
    results["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results.json" if not (args.skip_latency or args.skip_ap) else ("ap.json" if args.skip_latency else "latency.json")
    (args.out / name).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwall time {results['seconds']:.0f} s; raw figures in {args.out / name}")


if __name__ == "__main__":
    main()
