"""The ONNX export's parity with PyTorch on the d2go golden checkpoint.

    .venv/bin/python bench/bench_onnx.py

The golden checkpoint (``tests/data/d2go_golden``) is exported once and run on its 4 images
(one of an odd size, resized) by both engines: ``nars.deploy.onnx.compare_detections``.
onnxruntime's latency, side by side with PyTorch and torchvision's models, is a row of
bench_model_cost.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nars.config import load_config
from nars.deploy.onnx import compare_detections, export_onnx, onnx_session, run_onnx
from nars.engine.inference import load_predictor, read_rgb, run_image

GOLDEN = Path(__file__).parent.parent / "tests" / "data" / "d2go_golden"
THREADS = 2


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
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
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
