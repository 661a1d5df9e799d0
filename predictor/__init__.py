"""The accuracy predictor of NARS (FBNetV3): an MLP with an architecture encoder pretrained
on free proxies (MFLOPs, params), an ensemble for uncertainty, scikit-learn baselines behind
the same ``fit`` / ``predict`` interface, and k-fold evaluation by rank correlation.
"""

from predictor.baselines import KINDS, SklearnPredictor
from predictor.evaluate import Predictor, cross_validate, out_of_fold, rank_metrics
from predictor.mlp import MLPPredictor, ProxyEncoder, pretrain_encoder
from predictor.proxies import PROXIES, proxy_data
from predictor.table import METRICS, read_table

PREDICTORS = ("mlp",) + KINDS


def make_predictor(kind: str, arch_dims: int, *, encoder: ProxyEncoder | None = None, seed: int = 0) -> Predictor:
    """A fresh predictor by name (``PREDICTORS``); ``encoder`` makes it the pretrained variant."""
    if kind == "mlp":
        return MLPPredictor(arch_dims, encoder=encoder, seed=seed)
    return SklearnPredictor(kind, encoder=encoder, seed=seed)


__all__ = [
    "METRICS", "PREDICTORS", "PROXIES", "KINDS", "MLPPredictor", "Predictor", "ProxyEncoder", "SklearnPredictor",
    "cross_validate", "make_predictor", "out_of_fold", "pretrain_encoder", "proxy_data", "rank_metrics", "read_table",
]
