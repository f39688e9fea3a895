"""L2-regularised logistic regression on standardised features, by Newton's method (numpy only): what the
topic combiner (monitor.signal.relevance) and the alert model (monitor.signal.newsworthy) are fitted with.
Pure: no I/O, no state."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Logistic:
    """A logistic model over standardised named features."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def probability(self, x: Sequence[float] | np.ndarray) -> float:
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = self.bias + float(z @ np.asarray(self.weights))
        return float(1.0 / (1.0 + math.exp(-min(max(logit, -30.0), 30.0))))

    def evidence(self, x: Sequence[float] | np.ndarray) -> list[tuple[str, float]]:
        """Each feature's contribution in log-odds against an average item, largest first."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        parts = [(n, float(w * v)) for n, w, v in zip(self.names, self.weights, z, strict=True)]
        return sorted(parts, key=lambda p: -abs(p[1]))


def fit_logistic(x: np.ndarray, y: np.ndarray, names: Sequence[str], *, l2: float = 5.0,
                 iterations: int = 60) -> Logistic:
    """Fit on the columns of `x` (named `names`), standardised; `l2` penalises the sum of squared weights (the
    bias is not penalised)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != (len(y), len(names)):
        raise ValueError(f"x must be (n, {len(names)}) and y (n,)")
    if not 0 < y.sum() < len(y):
        raise ValueError("fitting needs both positive and negative examples")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], float(l2))
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Logistic(names=tuple(names), mean=tuple(round(float(v), 6) for v in mean),
                    scale=tuple(round(float(v), 6) for v in scale), weights=tuple(round(float(v), 6) for v in w[1:]),
                    bias=round(float(w[0]), 6))
