"""Chinchilla fits of a runs table as JSON-ready results: the held-out check and bootstrap intervals.

`fit_chinchilla` is what `lmscale sweep fit` reports; `fit_table` is what the scaling report
draws (a held-out check, then a fit on every run with bootstrap bands).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from lmscale.errors import DataError
from lmscale.io import atomic_write_json
from lmscale.scaling.identify import design_problems, identification
from lmscale.scaling.laws import ChinchillaLaw
from lmscale.scaling.runs import RunsTable


def fit_chinchilla(N, D, loss, holdout: str | None = "largest", n_holdout: int | None = None,
                   n_bootstrap: int = 0, seed: int = 0, grid: Any = None) -> dict[str, Any]:
    """Fit L = E + A/N^alpha + B/D^beta, holding out the largest-compute runs.

    `holdout="largest"` holds out the top fifth of the runs by compute (at least one; or
    `n_holdout`), so the check is an extrapolation in compute, the way the law is used.
    The returned dict is JSON-ready except for `_law`, the fitted `ChinchillaLaw`.
    """
    N, D, loss = (np.asarray(x, dtype=float) for x in (N, D, loss))
    problems = design_problems(("N", "D"), (N, D), "chinchilla")
    if problems:
        raise DataError("; ".join(problems))
    largest = holdout == "largest"
    if largest and n_holdout is None:
        n_holdout = max(1, int(round(0.2 * len(loss))))
    kw = {"grid": grid} if grid is not None else {}
    law = ChinchillaLaw(**kw).fit(N, D, loss, holdout="largest" if largest else None,
                                  n_holdout=n_holdout if largest else None)
    out: dict[str, Any] = {"law": "chinchilla", "params": {k: float(v) for k, v in law.params_.items()},
                           "n_points": int(len(loss)), "n_fit": int(law.n_points_), "holdout": []}
    if law.holdout_ is not None:
        h = law.holdout_
        out["holdout"] = [{"index": int(i), "N": float(N[i]), "D": float(D[i]), "C": float(6 * N[i] * D[i]),
                           "loss": float(a), "predicted": float(p), "rel_error": float(r)}
                          for i, a, p, r in zip(h["indices"], h["actual"], h["predicted"], h["relative_error"])]
        out["max_abs_rel_error"] = float(h["max_abs_relative_error"])
    if n_bootstrap:
        b = law.bootstrap(n_bootstrap, seed=seed)
        out["ci95"] = {k: [float(v[0]), float(v[1])] for k, v in b.ci(0.95).items()}
    out["identification"] = identification(law)
    out["_law"] = law
    return out


def table_problems(t: RunsTable) -> list[str]:
    """Why a runs table cannot carry a Chinchilla fit at all ([] when it can)."""
    if len(t) < 6:
        return [f"{len(t)} runs cannot determine the 5 parameters of the Chinchilla law; it needs at least 6"]
    return design_problems(("N", "D"), (t.N, t.D), "chinchilla")


def law_derived(law: Any) -> dict[str, Any]:
    """Derived quantities of a fitted law (a, b, G for Chinchilla), property or method alike."""
    d = law.derived_
    return d() if callable(d) else d


def fit_table(t: RunsTable, holdout: str | None = "largest", n_holdout: int | None = None,
              n_bootstrap: int = 100, grid: Any = "hoffmann", seed: int = 0) -> dict[str, Any] | None:
    """Chinchilla fit with the held-out check, then a fit on all runs with bootstrap bands.

    None when there are fewer than 6 runs (5 parameters need one more point), or when the runs do
    not vary in N or in D (`table_problems` says why); the check needs 8. The result's
    `identification` says which parameters the runs leave undetermined.
    """
    if table_problems(t):
        return None
    g = grid  # a grid or a name in laws.GRIDS
    res: dict[str, Any] = {}
    if holdout == "largest" and len(t) >= 8:
        check = fit_chinchilla(t.N, t.D, t.loss, holdout="largest", n_holdout=n_holdout, grid=g)
        check.pop("_law")
        res["holdout_check"] = check
    law = ChinchillaLaw(grid=g).fit(t.N, t.D, t.loss)
    if n_bootstrap:
        b = law.bootstrap(n_bootstrap, seed=seed)
        res["ci95"] = {k: [float(v[0]), float(v[1])] for k, v in b.ci(0.95).items()}
    res["params"] = {k: float(v) for k, v in law.params_.items()}
    res["derived"] = {k: float(v) for k, v in law_derived(law).items()}
    res["n_points"] = len(t)
    res["identification"] = identification(law)
    res["_law"] = law
    return res


def save_result(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write a fit result without its private (`_`) entries."""
    atomic_write_json(path, {k: v for k, v in obj.items() if not k.startswith("_")})
