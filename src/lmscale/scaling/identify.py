"""Whether a fitted law is identified by its runs, parameter by parameter, and why not.

A fit always returns numbers; they mean something only when the runs determine them. A parameter
is reported as unidentified when

- the design cannot determine it: the runs leave a direction of the parameters along which the
  predicted losses do not change (the Jacobian of the log-predictions is rank deficient; e.g.
  every run has the same N, so A and alpha trade off freely), or it has no effect at all;
- it sits at a bound: E pinned at (effectively) zero, an exponent at zero or beyond 10;
- its bootstrap interval is degenerate (zero width while the runs are resampled: pinned, not
  measured) or spans more than `max_ratio` (default 10x: the runs do not pin it down).

`identification` works on a fitted law or on a fit's JSON (what `lmscale fit --out` writes and
`lmscale allocate` reads). A compute-optimal allocation depends on A, B, alpha and beta; when any
of them is unidentified the allocation is not drawn without saying so (`allocation_identified`).
A wide interval of an intermediate (G in N_opt = G (C/6)^a) does not make the allocation
unidentified: G trades off against the exponent a, so its interval can span 30x while N_opt's
spans +-15% (Epoch's Chinchilla points). An allocation is judged on what it reports, the
intervals of N_opt and D_opt at the budget (`allocation_at_budget`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

SCALES = ("E", "A", "B", "G", "L0")  # positive, compared by ratio
EXPONENTS = ("alpha", "beta", "a", "b")
ALLOCATION_PARAMS = ("A", "B", "alpha", "beta")
MAX_INTERVAL_RATIO = 10.0
MAX_EXPONENT = 10.0
RANK_TOL = 1e-7


def design_problems(names: Sequence[str], arrays: Sequence[Any], law: str = "law") -> list[str]:
    """Inputs the law needs that do not vary across the runs (a fit cannot separate their terms)."""
    out = []
    for name, a in zip(names, arrays):
        a = np.asarray(a, dtype=float)
        distinct = np.unique(a[np.isfinite(a)])
        if distinct.size < 2:
            value = f" = {distinct[0]:.4g}" if distinct.size else ""
            out.append(f"every run has the same {name}{value}: law {law} needs at least 2 (better 3 or more) "
                       f"distinct values of {name} to fit how the loss depends on it")
    return out


def _jacobian_problems(law: Any) -> dict[str, str]:
    """Parameters the fitted law's log-predictions cannot separate (rank of the design's Jacobian)."""
    try:
        f, J = law._log_pred(law.theta_, law._F)
    except (AttributeError, TypeError, ValueError):
        return {}
    names = list(law.param_names)
    M = np.column_stack([np.broadcast_to(np.asarray(j, dtype=float), np.shape(f)) for j in J])
    if M.shape[1] != len(names) or not np.all(np.isfinite(M)):
        return {}
    norms = np.linalg.norm(M, axis=0)
    out: dict[str, str] = {}
    scale = float(norms.max()) if norms.size else 0.0
    for k, n in zip(names, norms):
        if scale == 0.0 or n <= RANK_TOL * scale:
            out[k] = "has no effect on the fitted losses (the runs cannot measure it)"
    keep = [i for i, k in enumerate(names) if k not in out]
    if len(keep) >= 2:
        Mk = M[:, keep] / norms[keep]
        _, s, vt = np.linalg.svd(Mk, full_matrices=False)
        if s[-1] <= 1e-6 * s[0]:
            v = vt[-1]
            tied = [names[keep[i]] for i in np.flatnonzero(np.abs(v) > 0.2)]
            for k in tied:
                others = [o for o in tied if o != k]
                out.setdefault(k, "trades off against " + ", ".join(others) + " with no change in the predicted "
                               "losses: the runs do not separate them")
    return out


def _value_problems(params: Mapping[str, float], min_loss: float | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            out[k] = f"is not a finite number ({v})"
    E = params.get("E")
    if isinstance(E, (int, float)) and min_loss and math.isfinite(E) and 0 <= E < 1e-3 * min_loss:
        out.setdefault("E", f"is pinned at its bound 0 (E = {E:.2g}): the runs cannot tell the irreducible loss "
                            "from zero")
    for k in ("alpha", "beta"):
        v = params.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v) and not 1e-3 < v < MAX_EXPONENT:
            out.setdefault(k, f"is at an extreme ({k} = {v:.3g}; a plausible exponent lies in (0, {MAX_EXPONENT:g}))")
    return out


def _interval_problems(params: Mapping[str, float], ci: Mapping[str, Sequence[float]],
                       max_ratio: float, exact: bool) -> dict[str, str]:
    """Degenerate or absurdly wide bootstrap intervals (a zero width is expected, and fine, only
    when the law passes exactly through every run: `exact`)."""
    out: dict[str, str] = {}
    for k, bounds in ci.items():
        try:
            lo, hi = float(bounds[0]), float(bounds[1])
        except (TypeError, ValueError, IndexError):
            continue
        if not (math.isfinite(lo) and math.isfinite(hi)):
            out[k] = "has a 95% interval with no finite end"
            continue
        width = hi - lo
        ref = max(abs(lo), abs(hi), 1e-300)
        if width <= 1e-6 * ref:  # no real resampling of noisy runs moves a measured value by less
            if exact:
                continue
            out[k] = (f"has a zero-width 95% interval [{lo:.4g}, {hi:.4g}]: every resample gives the same value, "
                      "so it is pinned by the fit, not measured by the runs")
        elif k in SCALES or k in EXPONENTS:
            if lo > 0 and hi > 0:
                ratio = hi / lo
            elif lo < 0 and hi < 0:
                ratio = lo / hi
            else:
                ratio = math.inf
            if ratio > max_ratio:
                span = "changes sign" if math.isinf(ratio) else f"spans a factor {ratio:.3g}"
                out[k] = f"has a 95% interval [{lo:.4g}, {hi:.4g}] that {span} (more than {max_ratio:g}x)"
    return out


def identification(fit: Any, max_ratio: float = MAX_INTERVAL_RATIO, min_loss: float | None = None,
                   ) -> dict[str, Any]:
    """Which parameters (and derived quantities) of a fit the runs do not identify, and why.

    `fit` is a fitted law (with or without a bootstrap) or a fit's dict: its `params`, `derived`
    and `ci95`. Returns `{"identified", "unidentified": {name: reason}, "allocation_identified",
    "summary"}`; a fit's dict that already carries an `identification` (made at the default
    threshold) is taken as it is when asked at that threshold, and judged again at any other.
    """
    if isinstance(fit, Mapping):
        stored = fit.get("identification")
        if (max_ratio == MAX_INTERVAL_RATIO and isinstance(stored, Mapping) and "unidentified" in stored
                and "wide_intermediates" in stored):
            return dict(stored)
        params = dict(fit.get("params") or {})
        derived = dict(fit.get("derived") or {})
        ci = dict(fit.get("ci95") or {})
        problems: dict[str, str] = {}
        if min_loss is None and isinstance(fit.get("min_loss"), (int, float)):
            min_loss = float(fit["min_loss"])
        residual = fit.get("residual_std_log")
    else:
        params = dict(getattr(fit, "params_", {}) or {})
        try:
            derived = dict(fit.derived(params))
        except (AttributeError, TypeError, ValueError):
            derived = {}
        b = getattr(fit, "bootstrap_", None)
        ci = {k: list(v) for k, v in b.ci(0.95).items()} if b is not None else {}
        problems = _jacobian_problems(fit)
        if min_loss is None and getattr(fit, "_y", None) is not None:
            min_loss = float(np.exp(np.min(fit._y)))
        res = getattr(fit, "residuals_", None)
        residual = float(np.std(res)) if res is not None else None
    exact = isinstance(residual, (int, float)) and residual < 1e-6
    for source in (_value_problems(params, min_loss),
                   _interval_problems({**params, **derived}, ci, max_ratio, exact)):
        for k, reason in source.items():
            problems.setdefault(k, reason)
    if all(k in params for k in ALLOCATION_PARAMS):  # the allocation's exponents and scale follow A, B, alpha, beta
        bad = [k for k in ALLOCATION_PARAMS if k in problems]
        for k in ("a", "b", "G"):
            if bad and k in derived:
                problems.setdefault(k, f"follows from {', '.join(bad)}, which the runs do not identify")
    names = [k for k in (*params, *derived) if k in problems] + [k for k in problems if k not in params
                                                                 and k not in derived]
    unidentified = {k: problems[k] for k in dict.fromkeys(names)}
    # an intermediate whose only problem is a wide interval is shown as such, not called
    # unidentified: what it feeds (N_opt, D_opt at a compute) is judged on its own intervals
    wide = {k: unidentified.pop(k) for k in INTERMEDIATES if k in unidentified and _only_wide(unidentified[k])}
    chinchilla = all(k in params for k in ALLOCATION_PARAMS)
    return {
        "identified": not unidentified,
        "unidentified": unidentified,
        "wide_intermediates": wide,
        "allocation_identified": chinchilla and not _allocation_problems(unidentified),
        "summary": summary(unidentified),
    }


INTERMEDIATES = ("G",)  # derived only on the way to N_opt and D_opt (Hoffmann et al.'s G)


def _only_wide(reason: str) -> bool:
    """A reason that is a wide (not degenerate, not infinite) bootstrap interval and nothing else."""
    return reason.startswith("has a 95% interval [") and ("spans a factor" in reason or "changes sign" in reason)


def _allocation_problems(unidentified: Mapping[str, str], intermediates: Sequence[str] = ("G",)) -> dict[str, str]:
    """The problems an allocation rests on: those of A, B, alpha, beta, a and b, and of the
    `intermediates` unless their only problem is a wide interval (the allocation's own intervals
    judge that)."""
    return {k: r for k, r in unidentified.items()
            if k in (*ALLOCATION_PARAMS, "a", "b", "G") and not (k in intermediates and _only_wide(r))}


def allocation_at_budget(ident: Mapping[str, Any], ci: Mapping[str, Sequence[float]],
                         max_ratio: float = MAX_INTERVAL_RATIO) -> dict[str, Any]:
    """Whether the allocation at one budget is identified, judged on the quantities it reports.

    With the bootstrap intervals of N_opt and D_opt in `ci`, those decide instead of the
    intervals of the parameters they come from (A, B, G can be wide together while N_opt is
    narrow); problems of another kind (a design that cannot determine a parameter, one at a
    bound) still count. Returns `{"allocation_identified", "unidentified"}` for `allocation_warning`.
    """
    unidentified = dict(ident.get("unidentified") or {})
    reported = {k: ci[k] for k in ("N_opt", "D_opt") if k in ci}
    if not reported:
        problems = _allocation_problems(unidentified)
        return {"allocation_identified": bool(ident.get("allocation_identified", not problems)),
                "unidentified": problems}
    problems = {k: r for k, r in _allocation_problems(unidentified, (*ALLOCATION_PARAMS, "a", "b", "G")).items()
                if not r.startswith("follows from")}
    if any(k in ALLOCATION_PARAMS for k in problems):  # what follows from an unidentified parameter
        problems.update({k: r for k, r in unidentified.items() if k in ("a", "b", "G") and r.startswith("follows")})
    for k, (lo, hi) in reported.items():
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo > 0):
            problems[k] = f"has a 95% interval [{lo:.4g}, {hi:.4g}] with no finite positive end"
        elif hi / lo > max_ratio:
            problems[k] = (f"has a 95% interval [{lo:.4g}, {hi:.4g}] that spans a factor {hi / lo:.3g} "
                           f"(more than {max_ratio:g}x)")
    return {"allocation_identified": not problems, "unidentified": problems}


def summary(unidentified: Mapping[str, str]) -> str:
    """One line: 'not identified by these runs: A (reason); alpha (reason)', or ''."""
    if not unidentified:
        return ""
    return "not identified by these runs: " + "; ".join(f"{k} {r}" for k, r in unidentified.items())


def allocation_warning(ident: Mapping[str, Any]) -> str:
    """What to print above an allocation drawn from a law that does not identify it ('' if it does)."""
    if ident.get("allocation_identified", True):
        return ""
    keys = [k for k in ident.get("unidentified", {}) if k in (*ALLOCATION_PARAMS, "a", "b", "G", "N_opt", "D_opt")]
    return (f"UNIDENTIFIED LAW: {', '.join(keys) or 'its parameters'} "
            f"{'is' if len(keys) == 1 else 'are'} not determined by the runs, so the compute-optimal "
            "allocation below (N_opt, D_opt and their exponents) is not a recommendation, only what these "
            "numbers would imply")


__all__ = ["ALLOCATION_PARAMS", "MAX_INTERVAL_RATIO", "allocation_at_budget", "allocation_warning", "design_problems",
           "identification", "summary"]
