"""GLUE metrics in plain numpy: accuracy, F1, Matthews correlation, Pearson and Spearman.

Written out (not taken from sklearn) so the formulas are visible and the package needs no
extra dependency; the tests check them against scipy and hand-computed confusion matrices.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import scipy.stats


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float((t == p).mean()) if len(t) else float("nan")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: Optional[int] = None) -> np.ndarray:
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = num_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: Optional[int] = None,
       positive: int = 1) -> float:
    """Binary F1 of class `positive` (GLUE's MRPC/QQP convention); macro F1 for more classes."""
    m = confusion_matrix(y_true, y_pred, num_classes)
    classes = [positive] if m.shape[0] <= 2 else list(range(m.shape[0]))
    scores = []
    for c in classes:
        if c >= m.shape[0]:
            scores.append(0.0)
            continue
        tp = m[c, c]
        fp = m[:, c].sum() - tp
        fn = m[c, :].sum() - tp
        denom = 2 * tp + fp + fn
        scores.append(float(2 * tp / denom) if denom else 0.0)
    return float(np.mean(scores))


def matthews_corrcoef(y_true: Sequence[int], y_pred: Sequence[int], num_classes: Optional[int] = None) -> float:
    """Matthews correlation (Gorodkin's multi-class R_K); equals (TP·TN − FP·FN)/sqrt(...) for two
    classes. 0 when a marginal is constant (the formula's 0/0), as CoLA's evaluation does."""
    c = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    t_k = c.sum(axis=1)
    p_k = c.sum(axis=0)
    n = c.sum()
    correct = np.trace(c)
    cov_ytyp = correct * n - t_k @ p_k
    cov_ypyp = n * n - p_k @ p_k
    cov_ytyt = n * n - t_k @ t_k
    denom = math.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denom) if denom > 0 else 0.0


def _correlation(stat: Any, x: Sequence[float], y: Sequence[float]) -> float:
    """scipy's coefficient, NaN where it is undefined (a constant input, fewer than 2 points)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stat(a, b)[0])


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(scipy.stats.pearsonr, x, y)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return _correlation(scipy.stats.spearmanr, x, y)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, float]:
    return {
        "accuracy": accuracy(y_true, y_pred),
        "f1": f1(y_true, y_pred, num_classes),
        "mcc": matthews_corrcoef(y_true, y_pred, num_classes),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return {
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
        "mse": float(((t - p) ** 2).mean()) if len(t) else float("nan"),
    }


def main_metric(kind: str) -> str:
    """The dev metric that picks the best checkpoint and drives early stopping."""
    return {"classification": "accuracy", "regression": "pearson", "text-to-text": "exact_match"}[kind]
