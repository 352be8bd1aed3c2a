"""Compute-optimal allocation: how to split a FLOP budget C = 6ND between parameters and tokens.

From a fitted Chinchilla law L = E + A/N^alpha + B/D^beta, minimising L subject to 6ND = C gives
(Hoffmann et al. 2022, eq. 4)

    N_opt = G (C/6)^a,  D_opt = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta),  b = alpha/(alpha+beta).

`compute_optimal` returns the closed form and an independent numeric minimisation side by side
(they must agree), intervals from the law's bootstrap, and the "20 tokens per parameter" rule of
thumb for comparison. `inference_aware` follows Sardana et al. 2023: minimise training plus
lifetime inference FLOPs (6 N D_train + 2 N D_inference) for the quality of a given model.
`repeated_data` chooses N and epochs when only U unique tokens exist (Muennighoff et al. 2023).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from lmscale.errors import LmscaleError
from lmscale.scaling.identify import allocation_at_budget, allocation_warning, identification
from lmscale.scaling.laws import DataConstrainedLaw

CHINCHILLA_KEYS = ("E", "A", "B", "alpha", "beta")


def _params(law_or_params: Any) -> dict[str, float]:
    p = getattr(law_or_params, "params_", law_or_params)
    if isinstance(p, dict) and "params" in p and isinstance(p["params"], dict):
        p = p["params"]
    if not isinstance(p, dict) or any(k not in p for k in CHINCHILLA_KEYS):
        raise LmscaleError(f"allocation needs a Chinchilla fit with parameters {', '.join(CHINCHILLA_KEYS)}")
    out = {k: float(p[k]) for k in p if isinstance(p[k], (int, float))}
    if out["alpha"] <= 0 or out["beta"] <= 0 or out["A"] <= 0 or out["B"] <= 0:
        raise LmscaleError("allocation needs alpha, beta, A, B > 0 (the fit is degenerate)")
    return out


def _budget(C: float, name: str = "flops") -> float:
    if C is None or not isinstance(C, (int, float)) or not math.isfinite(C) or C <= 0:
        raise LmscaleError(f"{name}={C!r} must be a positive number")
    if C < 6.0:  # 6 FLOPs train one parameter on one token: no allocation exists below that
        raise LmscaleError(f"{name}={C!r} is less than 6, the FLOPs of one parameter trained on one token")
    return float(C)


def loss_at(p: dict[str, Any], N: Any, D: Any) -> Any:
    return p["E"] + p["A"] / np.power(N, p["alpha"]) + p["B"] / np.power(D, p["beta"])


def closed_form(p: dict[str, Any], C: Any) -> dict[str, Any]:
    """Hoffmann et al. eq. 4 (numpy-broadcasting over parameter samples and budgets)."""
    al, be = p["alpha"], p["beta"]
    G = np.power(al * p["A"] / (be * p["B"]), 1.0 / (al + be))
    a, b = be / (al + be), al / (al + be)
    N = G * np.power(np.asarray(C, dtype=np.float64) / 6.0, a)
    D = np.asarray(C, dtype=np.float64) / (6.0 * N)
    return {"N_opt": N, "D_opt": D, "tokens_per_param": D / N, "loss": loss_at(p, N, D), "a": a, "b": b, "G": G}


def numeric(p: dict[str, float], C: float) -> dict[str, float]:
    """Minimise L(N, C/6N) over log N directly (no closed form used)."""
    def f(logn: float) -> float:
        n = math.exp(logn)
        return float(loss_at(p, n, C / (6.0 * n)))

    lo, hi = math.log(1e-3), math.log(C / 6.0 / 1e-3)
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10, "maxiter": 500})
    n = math.exp(res.x)
    return {"N_opt": n, "D_opt": C / (6.0 * n), "tokens_per_param": C / (6.0 * n) / n, "loss": float(res.fun),
            "converged": bool(res.success)}


def rule_of_thumb(p: dict[str, float] | None, C: float, tokens_per_param: float = 20.0) -> dict[str, float]:
    """D = 20 N (Hoffmann et al.'s headline ratio): N = sqrt(C / (6 * 20))."""
    n = math.sqrt(C / (6.0 * tokens_per_param))
    d = tokens_per_param * n
    out = {"N": n, "D": d, "tokens_per_param": tokens_per_param}
    if p is not None:
        out["loss"] = float(loss_at(p, n, d))
    return out


def _samples(law_or_params: Any) -> dict[str, np.ndarray] | None:
    b = getattr(law_or_params, "bootstrap_", None)
    if b is not None:
        return b.samples
    if isinstance(law_or_params, dict) and isinstance(law_or_params.get("bootstrap"), dict):
        s = law_or_params["bootstrap"].get("samples")
        if s:
            return {k: np.asarray(v, dtype=np.float64) for k, v in s.items()}
    return None


def compute_optimal(law_or_params: Any, C: float, level: float = 0.95) -> dict[str, Any]:
    """N_opt, D_opt, tokens/param and predicted loss at budget C: closed form, numeric, intervals.

    Accepts a fitted `ChinchillaLaw`, its `to_dict()` (a fit JSON), or a parameter dict.
    Intervals come from the bootstrap samples when the law carries them. For a fitted law or a
    fit's JSON, `identified` says whether the runs determine what the allocation rests on (A, B,
    alpha, beta); when they do not, `warning` says so, and the numbers are no recommendation.
    """
    C = _budget(C)
    p = _params(law_or_params)
    cf = closed_form(p, C)
    num = numeric(p, C)
    out: dict[str, Any] = {
        "flops": C,
        "N_opt": float(cf["N_opt"]), "D_opt": float(cf["D_opt"]),
        "tokens_per_param": float(cf["tokens_per_param"]), "loss": float(cf["loss"]),
        "exponents": {"a": float(cf["a"]), "b": float(cf["b"])},
        "numeric": num,
        "rule_of_thumb_20": rule_of_thumb(p, C),
    }
    s = _samples(law_or_params)
    if s is not None and all(k in s for k in CHINCHILLA_KEYS):
        bs = closed_form({k: s[k] for k in CHINCHILLA_KEYS}, C)
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        out["ci"] = {k: [float(np.nanpercentile(bs[k], lo)), float(np.nanpercentile(bs[k], hi))]
                     for k in ("N_opt", "D_opt", "tokens_per_param", "loss")}
        out["ci_level"] = level
    if not isinstance(law_or_params, dict) or "params" in law_or_params:  # a fitted law or a fit's JSON
        # judged on what is reported here: N_opt's and D_opt's intervals, not those of A, B or G
        ident = allocation_at_budget(identification(law_or_params), out.get("ci") or {})
        out["identified"] = bool(ident["allocation_identified"])
        if not ident["allocation_identified"]:
            out["warning"] = allocation_warning(ident)
            out["unidentified"] = ident["unidentified"]
    return out


def inference_aware(law_or_params: Any, *, inference_tokens: float, loss: float | None = None,
                    flops: float | None = None) -> dict[str, Any]:
    """Sardana et al. 2023: the cheapest (N, D_train) reaching a loss, counting inference.

    Total cost = 6 N D_train + 2 N D_inference. The target loss is `loss`, or the
    Chinchilla-optimal loss at `flops`. Returns the optimum beside the Chinchilla-optimal model of
    the same loss (which ignores inference) and their total costs.
    """
    p = _params(law_or_params)
    if not (isinstance(inference_tokens, (int, float)) and inference_tokens >= 0 and math.isfinite(inference_tokens)):
        raise LmscaleError(f"inference_tokens={inference_tokens!r} must be a non-negative number")
    if loss is None:
        if flops is None:
            raise LmscaleError("inference-aware allocation needs a target loss or a FLOP budget")
        loss = float(closed_form(p, _budget(flops))["loss"])
    if not loss > p["E"]:
        raise LmscaleError(f"target loss {loss} is not above the irreducible loss E={p['E']:.4g}")

    def d_train(n: float) -> float:
        excess = loss - p["E"] - p["A"] / n ** p["alpha"]
        return (p["B"] / excess) ** (1.0 / p["beta"]) if excess > 0 else math.inf

    n_min = (p["A"] / (loss - p["E"])) ** (1.0 / p["alpha"])

    def total(logn: float) -> float:
        n = math.exp(logn)
        return math.log(6.0 * n * d_train(n) + 2.0 * n * inference_tokens)

    res = minimize_scalar(total, bounds=(math.log(n_min) + 1e-9, math.log(n_min) + 30.0), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    n = math.exp(res.x)
    d = d_train(n)
    # Chinchilla-optimal model with the same loss: minimise training FLOPs alone
    res0 = minimize_scalar(lambda ln: math.log(6.0 * math.exp(ln) * d_train(math.exp(ln))),
                           bounds=(math.log(n_min) + 1e-9, math.log(n_min) + 30.0), method="bounded",
                           options={"xatol": 1e-10, "maxiter": 500})
    n0 = math.exp(res0.x)
    d0 = d_train(n0)
    return {
        "loss": loss, "inference_tokens": float(inference_tokens),
        "N": n, "D_train": d, "tokens_per_param": d / n,
        "train_flops": 6.0 * n * d, "inference_flops": 2.0 * n * inference_tokens,
        "total_flops": 6.0 * n * d + 2.0 * n * inference_tokens,
        "chinchilla": {"N": n0, "D_train": d0, "train_flops": 6.0 * n0 * d0,
                       "total_flops": 6.0 * n0 * d0 + 2.0 * n0 * inference_tokens},
    }


def repeated_data(law_or_params: Any, C: float, unique_tokens: float) -> dict[str, Any]:
    """Best N and epochs for budget C when only `unique_tokens` exist (Muennighoff et al. 2023).

    Needs the data-constrained parameters R_D_star and R_N_star (a `DataConstrainedLaw` fit);
    minimises the predicted loss over N with D = C/(6N) tokens drawn from `unique_tokens`.
    """
    C = _budget(C)
    U = _budget(unique_tokens, "unique_tokens")
    p = _params(law_or_params)
    for k in ("R_D_star", "R_N_star"):
        if k not in p:
            raise LmscaleError("repeated-data allocation needs a data-constrained fit (R_D_star, R_N_star)")
    law = DataConstrainedLaw(base=p)

    def f(logn: float) -> float:
        n = math.exp(logn)
        return float(law._predict(p, np.array(n), np.array(C / (6.0 * n)), np.array(U)))

    res = minimize_scalar(f, bounds=(math.log(1e3), math.log(C / 6.0 / 1e3)), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    n = math.exp(res.x)
    d = C / (6.0 * n)
    single = compute_optimal({k: p[k] for k in CHINCHILLA_KEYS}, C)
    return {"flops": C, "unique_tokens": U, "N_opt": n, "D_opt": d, "epochs": d / U, "loss": float(res.fun),
            "unlimited_data": {"N_opt": single["N_opt"], "D_opt": single["D_opt"], "loss": single["loss"]}}
