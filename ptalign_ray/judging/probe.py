"""Linear probes on sentence embeddings: the offline judge's learned part.

A class-balanced, ridge-regularised logistic regression, fitted exactly by Newton's method at judge
construction (a few hundred texts, well under a second). Balanced classes make its logit a
likelihood ratio, so the judge can add its own prior on top.
"""

from __future__ import annotations

import numpy as np


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of a class-balanced L2 logistic regression (bias not penalised)."""
    n, d = x.shape
    pos = max(float(y.sum()), 1.0)
    neg = max(n - float(y.sum()), 1.0)
    sample_w = np.where(y > 0, n / (2 * pos), n / (2 * neg))
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (sample_w * (p - y)) + reg * w
        hess = (xb * (sample_w * p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def loo_log_likelihood(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...]) -> dict[float, float]:
    """Mean leave-one-out log-likelihood per ridge strength, to choose ``l2`` without eval data."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    scores = {}
    for l2 in grid:
        total = 0.0
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            w, b = fit_logistic(x[keep], y[keep], l2)
            p = 1.0 / (1.0 + np.exp(-(x[i] @ w + b)))
            total += float(np.log(max(p if y[i] else 1.0 - p, 1e-12)))
        scores[l2] = total / len(y)
    return scores


class LinearProbe:
    """``logit(embeddings)`` of a fitted logistic regression."""

    def __init__(self, weights: np.ndarray, bias: float) -> None:
        self.weights = weights.astype(np.float32)
        self.bias = float(bias)

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, l2: float) -> "LinearProbe":
        w, b = fit_logistic(embeddings.astype(np.float64), labels.astype(np.float64), l2)
        return cls(w, b)

    def logit(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.weights + self.bias
