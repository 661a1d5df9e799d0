"""onnxruntime against PyTorch on the same FBNetV3IS and image: latency side by side, and the
export's parity on the d2go golden checkpoint.

    .venv/bin/python bench/bench_onnx.py [--runs 12]

Latency: FBNetV3_A_dsmask (``fbnetv3a_dsmask_C4``, 80 classes, random weights with
randomised batch-norm statistics), one 240x320 RGB image, 2 threads, score threshold 0 and
10 or 100 detections (as bench_model_cost.py); PyTorch as ``nars predict`` runs it
(channels-last, fused), onnxruntime on ``nars.deploy.onnx.export_onnx``'s graph with 2
intra-op threads; 3 warm-up runs, then timed runs alternating engines, median.

Parity: the golden checkpoint (``tests/data/d2go_golden``) exported once and run on its 4
images (one of an odd size, resized) by both engines: ``nars.deploy.onnx.compare_detections``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (bench_model_cost.py)

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_model_cost import CPU, H, W, fbnet, image, interleaved, randomise_norms  # noqa: E402

from nars.config import load_config  # noqa: E402
from nars.deploy.onnx import compare_detections, export_onnx, onnx_session, run_onnx  # noqa: E402
from nars.engine.distributed import to_device  # noqa: E402
from nars.engine.inference import load_predictor, read_rgb, run_image  # noqa: E402
from nars.model.fuse import fuse_for_inference  # noqa: E402

GOLDEN = Path(__file__).parent.parent / "tests" / "data" / "d2go_golden"
THREADS = 2


def latency(detections: int, runs: int, folder: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = fuse_for_inference(to_device(randomise_norms(fbnet("fbnetv3a_dsmask_C4", None, detections)), CPU))
    path = folder / f"dsmask_{detections}.onnx"
    export_onnx(model, path)
    session = onnx_session(path, THREADS)
    x = image()
    counts: dict[str, int] = {}

    def run(engine: str) -> None:
        with torch.no_grad():
            out = model([x])[0] if engine == "PyTorch" else run_onnx(session, x)
        counts[engine] = len(out["scores"])

    times = interleaved(["PyTorch", "onnxruntime"], run, 3, runs)
    return {engine: sorted(ts)[len(ts) // 2] * 1e3 for engine, ts in times.items()} | {"counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads, load before {os.getloadavg()[0]:.2f}; image {H}x{W}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        print("\n| detections | PyTorch ms | onnxruntime ms | PyTorch / onnxruntime |\n|---|---|---|---|")
        for detections in (10, 100):
            r = latency(detections, args.runs, Path(tmp))
            print(f"| {r['counts']['PyTorch']} / {r['counts']['onnxruntime']} | {r['PyTorch']:.1f} | "
                  f"{r['onnxruntime']:.1f} | {r['PyTorch'] / r['onnxruntime']:.2f}x |")
        cfg = load_config(GOLDEN / "nars_config.yaml")
        model, device = load_predictor(cfg, str(GOLDEN / "golden_model.pth"))
        path = Path(tmp) / "golden.onnx"
        export_onnx(model, path)
        session = onnx_session(path, THREADS)
        print("\n| golden image | detections (PyTorch, ONNX) | labels | max box diff px | max score diff | "
              "mask mean abs diff | least mask IoU | mask px differing |\n|---|---|---|---|---|---|---|---|")
        for png in sorted(GOLDEN.glob("*.png")):
            img = read_rgb(png)
            p = compare_detections(run_image(model, img, device), run_onnx(session, img))
            print(f"| {png.name} ({img.height}x{img.width}) | {p.detections} | {'equal' if p.labels_equal else 'DIFFER'} "
                  f"| {p.box_px:.1e} | {p.score:.1e} | {p.mask_mean_abs:.1e} | {p.mask_iou:.4f} | {p.mask_px} |")
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
