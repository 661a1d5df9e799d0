"""How close FBNetV3IS comes to d2go's own outputs, field by field (the figures behind
``tests/test_d2go_golden.py``, which asserts the reference's tolerances).

    python bench/bench_d2go_golden.py [--golden tests/data/d2go_golden]

The checkpoint and images are loaded and run as ``nars predict`` does (channels-last on
CPU, one thread); detections are paired by class and best box IoU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nars.config import load_config
from nars.engine.inference import load_predictor, read_rgb, run_image
from nars.model.transform import binary_masks
from torchvision.ops import box_iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=Path(__file__).parents[1] / "tests" / "data" / "d2go_golden")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.golden / "nars_config.yaml")
    model, device = load_predictor(cfg, str(args.golden / "golden_model.pth"))
    rec: dict = {}
    model.transform.register_forward_hook(lambda m, a, o: rec.update(batch=o[0]))
    model.backbone.register_forward_hook(lambda m, a, o: rec.update(trunk3=o["trunk3"]))
    model.rpn.register_forward_hook(lambda m, a, o: rec.update(proposals=o[0][0]))
    mean = torch.tensor(cfg["MODEL"]["PIXEL_MEAN"])[:, None, None]
    print(f"{'image':<16}{'input':>7}{'trunk3':>10}{'proposal':>10}{'dets':>6}{'box':>10}{'score':>10}{'mask IoU':>10}")
    for item in json.loads((args.golden / "manifest.json").read_text())["images"]:
        g = dict(np.load(args.golden / item["npz"]))
        out = run_image(model, read_rgb(args.golden / item["file"]), device)
        pixels = rec["batch"].tensors[0] * torch.tensor(cfg["MODEL"]["PIXEL_STD"])[:, None, None] + mean
        same_size = list(rec["batch"].tensors.shape[-2:]) == g["resized_hw"].tolist()
        d_input = np.abs(pixels.numpy() - g["resized_image"]).max() if same_size else float("inf")
        d_trunk = np.abs(rec["trunk3"].contiguous().numpy() - g["trunk3"]).max() if same_size else float("inf")
        props = torch.from_numpy(g["proposal_boxes"])
        d_prop = (props[:, None] - rec["proposals"][None]).abs().amax(-1).min(1).values.max().item()
        iou = box_iou(torch.from_numpy(g["pred_boxes"]), out["boxes"])
        iou[torch.from_numpy(g["pred_classes"])[:, None] != (out["labels"] - 1)[None]] = 0
        pairs = [(i, int(iou[i].argmax())) for i in range(len(iou)) if iou[i].max() >= 0.5]
        masks = binary_masks(out["masks"]).numpy()
        d_box = max(np.abs(out["boxes"][j].numpy() - g["pred_boxes"][i]).max() for i, j in pairs)
        d_score = max(abs(out["scores"][j].item() - g["scores"][i]) for i, j in pairs)
        m_iou = min(((masks[j] & g["pred_masks"][i].astype(bool)).sum() /
                     max((masks[j] | g["pred_masks"][i].astype(bool)).sum(), 1)) for i, j in pairs)
        print(f"{item['file']:<16}{d_input:>7.1f}{d_trunk:>10.1e}{d_prop:>10.1e}{len(pairs):>3}/{len(g['scores']):<2}"
              f"{d_box:>10.1e}{d_score:>10.1e}{m_iou:>10.4f}")


if __name__ == "__main__":
    main()
