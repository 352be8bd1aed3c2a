"""Effective data transferred (Hernandez et al. 2021, "Scaling Laws for Transfer").

Pretraining is worth as many labelled examples as a model trained from random weights needs to
reach the pretrained model's score: with D_F labels fine-tuned from pretrained weights, read the
random-init curve (score against labels, interpolated in log labels) at the pretrained score to
get D_E, and D_T = D_E - D_F is the data transferred. ULMFiT's claim (Howard & Ruder 2018) is a
ratio D_E / D_F of 10 to 100 at 100 labels.

A score above every random-init point can only be extrapolated, and a score below the random
curve at the same number of labels means nothing was transferred; both are said, never hidden.
Across pretraining budgets or model sizes, `fit_transfer_law` fits D_T = k * D_F^alpha * N^beta
in log space with t intervals and says which exponents the points do not determine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from lmscale.errors import LmscaleError

# how an equivalent label count was read off the random-init curve
INTERPOLATED, EXTRAPOLATED, NONE_TRANSFERRED, NOT_IDENTIFIED = (
    "interpolated", "extrapolated", "none transferred", "not identified")


@dataclass
class TransferPoint:
    """One fine-tuning size: the pretrained score and the random-init labels that match it."""

    labels: int
    score: float
    random_score: Optional[float]  # random init at the same number of labels, when measured
    equivalent_labels: Optional[float]  # D_E: labels random init needs for `score`
    transferred: Optional[float]  # D_T = D_E - D_F (None when not identified)
    factor: Optional[float]  # D_E / D_F
    how: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.factor is None:
            return f"{self.labels}: {self.how}"
        approx = " (extrapolated)" if self.how == EXTRAPOLATED else ""
        if self.how == NONE_TRANSFERRED:
            return f"{self.labels}: none transferred (pretrained at or below random)"
        return f"{self.labels}: x{self.factor:.1f}{approx}"


def _curve(sizes: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.asarray(scores, dtype=np.float64)
    if x.shape != y.shape or len(x) < 2:
        raise LmscaleError("the random-init curve needs scores at two or more label counts")
    order = np.argsort(x)
    x, y = x[order], y[order]
    if not np.all(np.isfinite(y)) or np.any(np.diff(x) <= 0):
        raise LmscaleError("the random-init curve needs finite scores at distinct label counts")
    # more labels never make the best reachable score worse: read the curve's running maximum
    return x, np.maximum.accumulate(y)


def equivalent_labels(score: float, random_sizes: Sequence[float], random_scores: Sequence[float]
                      ) -> tuple[Optional[float], str]:
    """Labels random init needs to reach `score`, and how that number was obtained.

    Between measured points: linear in log labels. Above the last point: the straight line in log
    labels through the last two distinct scores, flagged as an extrapolation (not identified when
    the curve is flat there). Below the first point: not identified (fewer labels than measured).
    """
    x, y = _curve(random_sizes, random_scores)
    if score < y[0]:
        return None, NOT_IDENTIFIED
    if score <= y[-1]:
        i = int(np.searchsorted(y, score, side="left"))
        if i == 0 or y[i] == y[i - 1]:
            return float(math.exp(x[i])), INTERPOLATED
        t = (score - y[i - 1]) / (y[i] - y[i - 1])
        return float(math.exp(x[i - 1] + t * (x[i] - x[i - 1]))), INTERPOLATED
    j = len(y) - 2
    while j >= 0 and y[j] == y[-1]:
        j -= 1
    if j < 0:
        return None, NOT_IDENTIFIED
    slope = (y[-1] - y[j]) / (x[-1] - x[j])
    return float(math.exp(x[-1] + (score - y[-1]) / slope)), EXTRAPOLATED


def effective_data(random_sizes: Sequence[float], random_scores: Sequence[float],
                   pretrained_sizes: Sequence[int], pretrained_scores: Sequence[float]) -> list[TransferPoint]:
    """A `TransferPoint` per pretrained fine-tuning size (Hernandez et al.'s D_E, D_T and D_E/D_F)."""
    measured = dict(zip([int(s) for s in random_sizes], [float(s) for s in random_scores]))
    points = []
    for n, score in zip(pretrained_sizes, pretrained_scores):
        n = int(n)
        rand = measured.get(n)
        if rand is not None and score <= rand:
            points.append(TransferPoint(n, float(score), rand, float(n), 0.0, 1.0, NONE_TRANSFERRED))
            continue
        d_e, how = equivalent_labels(float(score), random_sizes, random_scores)
        if d_e is not None and d_e <= n:  # under the curve's running maximum: no gain over random
            points.append(TransferPoint(n, float(score), rand, float(n), 0.0, 1.0, NONE_TRANSFERRED))
            continue
        points.append(TransferPoint(n, float(score), rand, d_e, None if d_e is None else d_e - n,
                                    None if d_e is None else d_e / n, how))
    return points


@dataclass
class TransferLaw:
    """D_T = k * D_F^alpha * N^beta, fitted by least squares on log D_T (95% t intervals)."""

    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_points: int
    not_identified: dict[str, str] = field(default_factory=dict)

    @property
    def identified(self) -> bool:
        return not self.not_identified

    def predict(self, labels: Any, n: Any = None) -> np.ndarray:
        out = self.params["k"] * np.asarray(labels, dtype=np.float64) ** self.params["alpha"]
        if "beta" in self.params:
            out = out * np.asarray(n, dtype=np.float64) ** self.params["beta"]
        return out

    def describe(self) -> str:
        def fmt(name: str) -> str:
            lo, hi = self.intervals[name]
            return f"{name} {self.params[name]:.3g} [{lo:.3g}, {hi:.3g}]"
        text = "D_T = k * D_F^alpha" + (" * N^beta" if "beta" in self.params else "") + ": "
        text += ", ".join(fmt(p) for p in self.params)
        if self.not_identified:
            text += "; not identified: " + "; ".join(f"{k} ({v})" for k, v in self.not_identified.items())
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "intervals": {k: list(v) for k, v in self.intervals.items()},
                "n_points": self.n_points, "identified": self.identified, "not_identified": self.not_identified,
                "formula": self.describe()}


def fit_transfer_law(labels: Sequence[float], transferred: Sequence[float],
                     n: Optional[Sequence[float]] = None, max_ratio: float = 3.0) -> TransferLaw:
    """Fit D_T = k D_F^alpha (N^beta when `n`, a pretraining size or budget per point, varies).

    Only points with D_T > 0 enter (the law is a power law). An exponent whose covariate does not
    vary, or with fewer points than parameters plus one, or whose interval on k spans more than
    `max_ratio` either way, is reported as not identified.
    """
    d_f = np.asarray(labels, dtype=np.float64)
    d_t = np.asarray(transferred, dtype=np.float64)
    keep = np.isfinite(d_t) & (d_t > 0) & (d_f > 0)
    problems: dict[str, str] = {}
    cols = [np.ones(int(keep.sum())), np.log(d_f[keep])]
    names = ["k", "alpha"]
    if n is not None:
        nn = np.asarray(n, dtype=np.float64)[keep]
        if len(np.unique(nn)) > 1:
            cols.append(np.log(nn))
            names.append("beta")
        else:
            problems["beta"] = "every point has the same pretraining size or budget"
    X = np.stack(cols, axis=1)
    y = np.log(d_t[keep])
    if len(np.unique(X[:, 1])) < 2:
        problems["alpha"] = "fewer than two distinct label counts with data transferred"
    dof = len(y) - len(names)
    if dof < 1 or np.linalg.matrix_rank(X) < len(names):
        params = {name: float("nan") for name in names}
        intervals = {name: (float("nan"), float("nan")) for name in names}
        problems.setdefault("law", f"{len(y)} points with data transferred for {len(names)} parameters")
        return TransferLaw(params, intervals, int(len(y)), problems)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    sigma2 = float(resid @ resid) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
    t = float(stats.t.ppf(0.975, dof))
    params = {"k": float(math.exp(coef[0]))}
    intervals = {"k": (float(math.exp(coef[0] - t * se[0])), float(math.exp(coef[0] + t * se[0])))}
    for i, name in enumerate(names[1:], start=1):
        params[name] = float(coef[i])
        intervals[name] = (float(coef[i] - t * se[i]), float(coef[i] + t * se[i]))
        if not (intervals[name][0] > 0 or intervals[name][1] < 0):
            problems.setdefault(name, "its 95% interval includes 0")
    if intervals["k"][1] / params["k"] > max_ratio:
        problems.setdefault("k", f"its 95% interval spans more than x{max_ratio:g}")
    return TransferLaw(params, intervals, int(len(y)), problems)
