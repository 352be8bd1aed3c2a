"""The compute frontier L(C) = L0 (C / C0)^-alpha: the reduced law for sweeps that cannot identify
the full Chinchilla law.

A small sweep often pins down how loss falls with compute while leaving E, and the split between
the N and D terms, free to trade off against each other (wide bootstrap intervals). The lowest loss
reached at each compute budget still follows a clean power law over the range that was run. With
C0 the geometric mean of the frontier's compute, L0 is the loss there and the two parameters are
nearly uncorrelated, so their intervals say how well the data determine the law. E is fixed at 0:
this is a description of the range measured, not a claim about the irreducible loss.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lmscale.scaling.laws import FitError


def frontier_indices(C: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Runs whose loss is lower than every run's with less or equal compute, by increasing compute."""
    order = np.argsort(C, kind="stable")
    best, keep = np.inf, []
    for i in order:
        if loss[i] < best:
            best = loss[i]
            keep.append(i)
    return np.asarray(keep, dtype=int)


def _fit(logc: np.ndarray, logl: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logc, logl, 1)
    return float(intercept), float(-slope)


def fit_frontier(C: Any, loss: Any, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                 identified_ratio: float = 3.0) -> dict[str, Any]:
    """Least squares of log L on log C over the frontier, with case-bootstrap intervals.

    `identified` is true when every parameter's interval spans at most a factor `identified_ratio`
    (hi / lo, both of one sign)."""
    C, loss = np.asarray(C, dtype=float), np.asarray(loss, dtype=float)
    idx = frontier_indices(C, loss)
    if len(idx) < 3:
        raise FitError(f"the compute frontier has {len(idx)} runs; a power law with intervals needs at least 3")
    c, y = C[idx], loss[idx]
    c0 = float(np.exp(np.log(c).mean()))
    x, ly = np.log(c / c0), np.log(y)
    log_l0, alpha = _fit(x, ly)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(x), len(x))
        if np.ptp(x[pick]) == 0:
            continue
        samples.append(_fit(x[pick], ly[pick]))
    if not samples:
        raise FitError("every bootstrap resample of the frontier has a single compute value")
    s = np.asarray(samples)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    ci = {"L0": [float(v) for v in np.exp(np.percentile(s[:, 0], q))],
          "alpha": [float(v) for v in np.percentile(s[:, 1], q)]}
    ratios = {k: (hi / lo if lo > 0 and hi > 0 else float("inf")) for k, (lo, hi) in ci.items()}
    return {"law": "compute-frontier", "formula": "L(C) = L0 * (C / C0)^-alpha", "C0": c0,
            "params": {"L0": float(np.exp(log_l0)), "alpha": alpha}, "ci95": ci,
            "interval_ratio": ratios, "identified": all(r <= identified_ratio for r in ratios.values()),
            "frontier": [{"C": float(C[i]), "loss": float(loss[i])} for i in idx],
            "n_bootstrap": len(samples)}


def predict_frontier(fit: dict[str, Any], C: Any) -> np.ndarray:
    p = fit["params"]
    return p["L0"] * np.power(np.asarray(C, dtype=float) / fit["C0"], -p["alpha"])
