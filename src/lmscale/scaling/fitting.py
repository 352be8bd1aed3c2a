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


EPOCHS_WARN = 4.0  # Muennighoff et al. 2023: up to ~4 epochs, repeated tokens are worth about as much as new ones
LAW_CHOICES = ("auto", "chinchilla", "data-constrained")


def choose_law(requested: str, D, U=None) -> tuple[str, str]:
    """The law a fit of runs with tokens `D` (and unique tokens `U`, when recorded) uses, and one
    line saying why ("" when there is nothing to say). `auto` takes Muennighoff et al.'s
    data-constrained law when some run repeated its data past ~4 epochs and enough single-epoch
    runs exist to fit its base law (more than 5), else Chinchilla's; a Chinchilla fit over runs
    past 4 epochs comes with a warning, because it counts a repeated token as a new one."""
    if requested not in LAW_CHOICES:
        raise ValueError(f"unknown law choice {requested!r}")
    D = np.asarray(D, dtype=float)
    U = None if U is None else np.asarray(U, dtype=float)
    if U is None or U.shape != D.shape or not (np.isfinite(U) & (U > 0)).all():
        if requested == "auto":
            return "chinchilla", "no unique-token count for every run, so every token is taken as new"
        return requested, ""
    epochs = D / U
    over = int((epochs > EPOCHS_WARN).sum())
    single = int((epochs <= 1.0 + 1e-9).sum())
    if over and requested != "data-constrained":
        if requested == "auto" and single > 5:
            return "data-constrained", (f"{over} of {len(D)} runs trained past {EPOCHS_WARN:g} epochs of their "
                                        f"unique tokens (up to {epochs.max():.1f}), so Muennighoff et al.'s "
                                        f"data-constrained law, its base law fitted on the {single} single-epoch runs")
        return "chinchilla", (f"warning: {over} of {len(D)} runs trained past {EPOCHS_WARN:g} epochs of their unique "
                              f"tokens (up to {epochs.max():.1f}); the chinchilla law counts a repeated token as a new "
                              "one, so its D terms are not a measurement of unique data"
                              + ("" if single > 5 else f" (the data-constrained law needs more than 5 single-epoch "
                                 f"runs for its base law; these have {single})"))
    if requested == "auto":
        return "chinchilla", (f"no run trained past {EPOCHS_WARN:g} epochs of its unique tokens "
                              f"(at most {epochs.max():.2f})")
    return requested, ""


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
