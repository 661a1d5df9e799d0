"""Free proxy targets for pretraining the architecture encoder: log MFLOPs and log params.

Why logs: costs span orders of magnitude across a space, and what matters to an accuracy
predictor is relative size. Candidates are drawn uniformly (no constraint) so the encoder
sees the whole space.
"""

from __future__ import annotations

import numpy as np

from search_spaces import SearchSpace, sample

PROXIES = ("log_mflops", "log_params")


def proxy_data(space: SearchSpace, n: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(arch part of the encodings [n, arch_dims], log costs [n, 2]) of n sampled candidates."""
    samples = sample(space, n, method="uniform", seed=seed)
    x = space.encode([s.candidate for s in samples])[:, space.arch_slice]
    return x, np.log([[s.mflops, s.params] for s in samples])
