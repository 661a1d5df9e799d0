"""Two trials of a run on the same validation images, compared image by image.

Every trial of a run evaluates on the same images, after the same seed and data order (common
random numbers), so a candidate and the reference pair up per image: the paired differences
separate them with far fewer images than their two dataset APs can, and say how sure the
comparison is (a bootstrap interval and Wilcoxon's signed-rank test, as Optuna's
WilcoxonPruner compares trials). Each trial's final evaluation writes its segm AP per image
(``nars.engine.trainer.PER_IMAGE_FILE``), and so does the evaluation at each rung a trial stops
at, so successive halving can compare a rung's trials the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nars.engine.trainer import PER_IMAGE_FILE

MIN_IMAGES = 5  # fewer paired images say nothing


def per_image(trial_dir: Path) -> dict[str, float] | None:
    """A finished trial's segm AP per validation image (None when it has none recorded)."""
    try:
        return json.loads((Path(trial_dir) / PER_IMAGE_FILE).read_text())["segm_AP"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def per_image_at(checkpoint: str, iteration: int) -> dict[str, float] | None:
    """A trial's segm AP per validation image at the rung ``iteration`` it stopped at, read from
    its checkpoint (a path, or a URI in Ray's storage); None when it has none for that rung."""
    from nars.search.trials import open_checkpoint

    ckpt = open_checkpoint(checkpoint)
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{PER_IMAGE_FILE}") as f:
            data = json.loads(f.read())
        return data["segm_AP"] if data.get("iteration") == iteration else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def paired_images(a: Mapping[str, float], b: Mapping[str, float], resamples: int = 10_000,
                  seed: int = 0) -> dict[str, Any] | None:
    """``a`` minus ``b`` over their common images: the mean per-image difference with its 95%
    bootstrap interval, Wilcoxon's two-sided p-value, and the images each did better on; None
    with fewer than ``MIN_IMAGES`` common images."""
    common = sorted(set(a) & set(b))
    if len(common) < MIN_IMAGES:
        return None
    from scipy.stats import wilcoxon

    d = np.array([a[k] - b[k] for k in common], dtype=float)
    means = np.random.default_rng(seed).choice(d, size=(resamples, len(d))).mean(axis=1)
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"images": len(d), "mean": float(d.mean()), "ci": [float(np.percentile(means, 2.5)),
                                                              float(np.percentile(means, 97.5))],
            "p": p, "better": int((d > 0).sum()), "worse": int((d < 0).sum())}
