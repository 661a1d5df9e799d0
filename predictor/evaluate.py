"""How good a predictor is at what a search needs: ranking candidates (Kendall tau,
Spearman rho) and, secondarily, the values themselves (MAE), by k-fold cross-validation.

Why pooled out-of-fold predictions: with tens of rows, a per-fold tau over a handful of
points is mostly noise; pooling predicts every row once from a model that never saw it.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.model_selection import KFold

from nars.errors import UserError


class Predictor(Protocol):
    name: str

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Predictor": ...

    def predict(self, x: np.ndarray, return_std: bool = False) -> np.ndarray: ...


def rank_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Kendall tau, Spearman rho and mean absolute error of one target."""
    y_true, y_pred = np.ravel(y_true), np.ravel(y_pred)
    return {
        "tau": float(kendalltau(y_true, y_pred).statistic),
        "rho": float(spearmanr(y_true, y_pred).statistic),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
    }


def out_of_fold(
    make: Callable[[], Predictor], x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Predictions [N, targets] where each row comes from the model fitted on the other folds."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not 2 <= folds <= len(y):
        raise UserError(f"cross-validation needs 2 <= folds <= rows, got {folds} folds for {len(y)} rows")
    pred = np.zeros_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        pred[test] = make().fit(x[train], y[train]).predict(x[test])
    return pred


def cross_validate(
    make: Callable[[], Predictor],
    x: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    folds: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per target name: tau, rho and MAE of the pooled out-of-fold predictions."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    pred = out_of_fold(make, x, y, folds, seed)
    return {name: rank_metrics(y[:, j], pred[:, j]) for j, name in enumerate(names)}
