"""A linear probe: how much of the real action a ridge regression can read off the latent action.

Closed-form ridge (numpy), scored by R^2 on episodes the probe did not fit (grouped k-fold by episode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 1e-3
MAX_FOLDS = 5


@dataclass
class Ridge:
    weights: np.ndarray  # [in, out]
    bias: np.ndarray  # [out]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weights + self.bias


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = DEFAULT_ALPHA) -> Ridge:
    """min ||y - x W - b||^2 + alpha * n * ||W||^2, inputs standardised so alpha means the same on any scale."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    x_scale = x.std(0)
    x_scale[x_scale < 1e-12] = 1.0
    xs = (x - x_mean) / x_scale
    gram = xs.T @ xs + alpha * len(x) * np.eye(x.shape[1])
    w_scaled = np.linalg.solve(gram, xs.T @ (y - y_mean))
    weights = w_scaled / x_scale[:, None]
    return Ridge(weights, y_mean - x_mean @ weights)


def r2_per_dim(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """1 - SSE/SST per column; NaN for a column that never varies (R^2 is undefined there)."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    sse = np.square(truth - predicted).sum(0)
    sst = np.square(truth - truth.mean(0)).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 1e-12, 1.0 - sse / sst, np.nan)


def mean_r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The mean of per-dimension R^2 over the dimensions that vary, so each action dim counts the same whatever its units."""
    per_dim = r2_per_dim(truth, predicted)
    return float(np.nanmean(per_dim)) if np.isfinite(per_dim).any() else float("nan")


def cross_validated_predictions(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Out-of-fold ridge predictions, folds made of whole groups (episodes): no episode is scored by a probe fit on it."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("the probe needs at least two episodes with actions to hold one out")
    folds = np.array_split(unique, min(MAX_FOLDS, len(unique)))
    predicted = np.zeros(np.shape(y), np.float64)
    for fold in folds:
        test = np.isin(groups, fold)
        predicted[test] = fit_ridge(x[~test], y[~test], alpha).predict(x[test])
    return predicted
