"""scikit-learn baselines behind the MLP predictor's interface: gradient boosting, random
forest and a Gaussian process.

Why: a predictor is only worth its complexity if it beats these on the same folds.
``encoder`` (a pretrained ``ProxyEncoder``) swaps the arch columns for the pretrained
embedding, so "with pretraining" means the same thing for every model.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.multioutput import MultiOutputRegressor

from predictor.mlp import ProxyEncoder

KINDS = ("gbm", "rf", "gp")


class SklearnPredictor:
    """``fit(x, y)`` / ``predict(x, return_std=False)`` on [N, targets] arrays, like MLPPredictor."""

    def __init__(self, kind: str, *, encoder: ProxyEncoder | None = None, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown baseline {kind!r}; expected one of {KINDS}")
        self.name, self.encoder, self.seed = kind, encoder, seed
        self.model: Any = None

    def _features(self, x: np.ndarray) -> np.ndarray:
        return self.encoder.transform(x) if self.encoder is not None else np.asarray(x, dtype=np.float64)

    def _new(self) -> Any:
        if self.name == "gbm":
            gbm = GradientBoostingRegressor(n_estimators=200, learning_rate=0.05, max_depth=3, subsample=0.8,
                                            random_state=self.seed)
            return MultiOutputRegressor(gbm)
        if self.name == "rf":
            return RandomForestRegressor(n_estimators=200, max_features=0.5, random_state=self.seed)
        kernel = ConstantKernel() * RBF(length_scale=3.0, length_scale_bounds=(1e-2, 1e3)) + WhiteKernel(1e-2)
        return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=self.seed)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "SklearnPredictor":
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        with warnings.catch_warnings():  # the GP's kernel bounds; not actionable for a user
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = self._new().fit(self._features(x), y if self.name == "gbm" or y.shape[1] > 1 else y[:, 0])
        return self

    def predict(self, x: np.ndarray, return_std: bool = False) -> Any:
        """Mean [N, targets]; ``return_std``: the GP's posterior std or the forest's spread over trees."""
        f = self._features(x)
        if not return_std:
            return self.model.predict(f).reshape(len(f), -1)
        if self.name == "gp":
            mean, std = self.model.predict(f, return_std=True)
            return mean.reshape(len(f), -1), std.reshape(len(f), -1)
        if self.name == "rf":
            trees = np.stack([t.predict(f).reshape(len(f), -1) for t in self.model.estimators_])
            return trees.mean(0), trees.std(0)
        raise ValueError("gradient boosting gives no uncertainty estimate; use mlp, rf or gp")
