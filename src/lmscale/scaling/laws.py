"""Scaling-law estimators with a scikit-learn shape: `law = ChinchillaLaw().fit(N, D, loss)`.

Every parametric law here is fitted the way Hoffmann et al. 2022 (Approach 3) describe and
Besiroglu et al. 2024 showed must be done carefully:

- residuals are taken between *log* predicted loss and *log* observed loss, and the prediction is
  written as a log-sum-exp of its terms (``log(E + A/N^a + B/D^b) = LSE(e, a - alpha log N,
  b - beta log D)``), so every parameter is unconstrained and the problem is well scaled;
- the loss on residuals is Huber with delta = 1e-3, summed over runs (averaging shrinks the
  gradient by the number of runs, and L-BFGS then stops early: Besiroglu et al.'s finding);
- L-BFGS with analytic gradients, in float64, from every point of a grid of initialisations
  (Hoffmann et al.'s 5,400-point grid for the Chinchilla law). All starts are advanced together by
  a numpy-vectorised L-BFGS (one objective call moves every start), and the distinct end points
  are then refined to full precision by scipy's L-BFGS-B, whose best converged result is the fit.
  `method="scipy"` runs scipy from every grid point instead (the literal procedure; same optimum,
  several times slower). Inputs are centred in log space first (the grid is mapped accordingly),
  which conditions the intercept/exponent pair without changing the model.

A fit where no start converges raises `FitError`; it is never returned as a result. Uncertainty
comes from a bootstrap over runs (multinomial weights, refits warm-started from the full-data
optimum), giving confidence intervals for every parameter and derived quantity, and prediction
intervals that add the residual scatter.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import minimize

from lmscale.errors import DataError, LmscaleError
from lmscale.scaling.identify import identification

HUBER_DELTA = 1e-3


class FitError(LmscaleError):
    """A fit that did not converge (or cannot be made): reported as such, never as a result."""


# ----------------------------------------------------------------------------- input checks

def _as_array(name: str, x: Any, positive: bool = True) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{name}: values must be numbers") from None
    if a.size == 0:
        raise DataError(f"{name}: no values")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at row {i}")
    if positive and (a <= 0).any():
        i = int(np.flatnonzero(a <= 0)[0])
        raise DataError(f"{name}: values must be positive; row {i} is {a[i]:g}")
    return a


def _check_inputs(names: Sequence[str], arrays: Sequence[Any], n_params: int) -> list[np.ndarray]:
    out = [_as_array(n, a) for n, a in zip(names, arrays)]
    sizes = {a.size for a in out}
    if len(sizes) != 1:
        raise DataError("inputs have different lengths: " + ", ".join(f"{n}={a.size}" for n, a in zip(names, out)))
    n = out[0].size
    if n <= n_params:
        raise DataError(f"{n} points cannot determine {n_params} parameters; need at least {n_params + 1}")
    return out


def _unpack(theta: np.ndarray) -> list[np.ndarray]:
    """Split theta [p] or a batch [K, p] into per-parameter arrays broadcastable against [n] or [K, n]."""
    t = np.asarray(theta, dtype=np.float64)
    return [t[..., i, None] for i in range(t.shape[-1])]


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss of residuals `r`: r^2/2 within `delta`, linear beyond it."""
    return huber_with_grad(r, delta)[0]


def huber_with_grad(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of `r` and its derivative with respect to `r` (r clipped to [-delta, delta])."""
    c = np.clip(r, -delta, delta)
    return c * (r - 0.5 * c), c


def _lse(*terms: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log-sum-exp of broadcastable arrays and the softmax weights of each term."""
    m = terms[0]
    for t in terms[1:]:
        m = np.maximum(m, t)
    exps = [np.exp(t - m) for t in terms]
    s = exps[0]
    for e in exps[1:]:
        s = s + e
    return m + np.log(s), [e / s for e in exps]


# ----------------------------------------------------------------------------- optimisation

def _batched_lbfgs(fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], X0: np.ndarray,
                   maxiter: int = 300, m: int = 8, gtol: float = 1e-4, ftol: float = 1e-7,
                   merge: float = 3e-2) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS run from every row of X0 at once (numpy-vectorised over starts).

    Same algorithm as scipy's (two-loop recursion, memory m, Armijo backtracking), but one
    objective call advances all starts, so a grid of thousands of initialisations costs about as
    much as a few hundred single runs. Starts that meet (same cell of size `merge` in theta), or
    reach the cell of a start that has already converged, are merged, keeping the lower objective.
    The end points are refined with scipy afterwards.
    """
    X = np.array(X0, dtype=np.float64)
    K, p = X.shape
    f, g = fun(X)
    f = np.where(np.isfinite(f), f, np.inf)
    S = np.zeros((K, m, p))
    Y = np.zeros((K, m, p))
    rho = np.zeros((K, m))
    count = np.zeros(K, dtype=np.int64)
    active = np.isfinite(f) & np.all(np.isfinite(g), axis=1)
    finished: set[tuple] = set()
    for it in range(maxiter):
        if merge and it % 5 == 4:
            # starts that have met follow the same path from here on: keep the best of each cell
            _drop_met_starts(X, f, active, finished, merge)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        d, gd = _two_loop_direction(g, S, Y, rho, count, idx)
        Xn, fn, gn, failed = _backtrack(fun, X[idx], f[idx], d, gd)
        done = np.flatnonzero(~failed)
        gi = idx[done]
        _remember_step(S, Y, rho, count, gi, Xn[done] - X[gi], gn[done] - g[gi])
        fold = f[gi]
        X[gi], f[gi], g[gi] = Xn[done], fn[done], gn[done]
        conv = (np.max(np.abs(gn[done]), axis=1) < gtol) | (
            (fold - fn[done]) <= ftol * np.maximum(np.maximum(np.abs(fold), np.abs(fn[done])), 1.0))
        active[gi[conv]] = False
        active[idx[failed]] = False
        if merge:
            finished.update(tuple(k) for k in np.round(X[gi[conv]] / merge).tolist())
    return X, f


def _drop_met_starts(X: np.ndarray, f: np.ndarray, active: np.ndarray, finished: set[tuple],
                     merge: float) -> None:
    """Deactivate (in place) every active start that shares its cell with a lower one or a converged one."""
    idx = np.flatnonzero(active)
    keys = np.round(X[idx] / merge)
    order = np.lexsort((f[idx],) + tuple(keys.T[::-1]))
    ks = keys[order]
    dup = np.zeros(order.size, dtype=bool)
    dup[1:] = np.all(ks[1:] == ks[:-1], axis=1)
    if finished:
        dup |= np.array([tuple(k) in finished for k in ks.tolist()], dtype=bool)
    active[idx[order[dup]]] = False


def _two_loop_direction(g: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, count: np.ndarray,
                        idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search directions of the starts `idx` (two-loop recursion) and their slopes g.d.

    A direction that does not descend is replaced by steepest descent.
    """
    m = S.shape[1]
    k = count[idx]
    q = g[idx].copy()
    alph = np.zeros((idx.size, m))
    for i in range(m):
        j = (k - 1 - i) % m
        valid = i < np.minimum(k, m)
        a_ = np.where(valid, rho[idx, j] * np.sum(S[idx, j] * q, axis=1), 0.0)
        alph[:, i] = a_
        q -= a_[:, None] * Y[idx, j]
    jn = (k - 1) % m
    sy = np.sum(S[idx, jn] * Y[idx, jn], axis=1)
    yy = np.sum(Y[idx, jn] ** 2, axis=1)
    gmax = np.max(np.abs(g[idx]), axis=1)
    gamma = np.where(k > 0, sy / np.maximum(yy, 1e-300), 1.0 / np.maximum(gmax, 1.0))
    r = gamma[:, None] * q
    for i in reversed(range(m)):
        j = (k - 1 - i) % m
        valid = i < np.minimum(k, m)
        b_ = rho[idx, j] * np.sum(Y[idx, j] * r, axis=1)
        r += S[idx, j] * np.where(valid, alph[:, i] - b_, 0.0)[:, None]
    d = -r
    gd = np.sum(g[idx] * d, axis=1)
    bad = ~(gd < 0) | ~np.isfinite(gd)
    d[bad] = -g[idx][bad]
    gd[bad] = -np.sum(g[idx][bad] ** 2, axis=1)
    return d, gd


def _backtrack(fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], X: np.ndarray, f: np.ndarray,
               d: np.ndarray, gd: np.ndarray,
               halvings: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Armijo backtracking from every row of X along d: new points, values, gradients, and which failed."""
    n, p = X.shape
    t = np.ones(n)
    pending = np.ones(n, dtype=bool)
    Xn = np.empty((n, p))
    fn = np.empty(n)
    gn = np.empty((n, p))
    for _ in range(halvings):
        pi = np.flatnonzero(pending)
        if pi.size == 0:
            break
        cand = X[pi] + t[pi, None] * d[pi]
        fc, gc = fun(cand)
        okc = np.isfinite(fc) & (fc <= f[pi] + 1e-4 * t[pi] * gd[pi]) & np.all(np.isfinite(gc), axis=1)
        acc = pi[okc]
        Xn[acc], fn[acc], gn[acc] = cand[okc], fc[okc], gc[okc]
        pending[acc] = False
        t[pi[~okc]] *= 0.5
    return Xn, fn, gn, pending


def _remember_step(S: np.ndarray, Y: np.ndarray, rho: np.ndarray, count: np.ndarray, starts: np.ndarray,
                   s_: np.ndarray, y_: np.ndarray) -> None:
    """Store (in place) each start's step s and gradient change y, when its curvature s.y is positive."""
    m = S.shape[1]
    sy_ = np.sum(s_ * y_, axis=1)
    store = sy_ > 1e-12 * np.sqrt(np.sum(s_ ** 2, axis=1) * np.sum(y_ ** 2, axis=1)) + 1e-300
    slot = count[starts] % m
    si = starts[store]
    S[si, slot[store]] = s_[store]
    Y[si, slot[store]] = y_[store]
    rho[si, slot[store]] = 1.0 / sy_[store]
    count[si] += 1


def _distinct_best(X: np.ndarray, f: np.ndarray, n: int) -> np.ndarray:
    """Up to n end points with the lowest objective, one per distinct basin (rounded position)."""
    order = np.argsort(np.where(np.isfinite(f), f, np.inf), kind="stable")
    seen: set[tuple] = set()
    out = []
    for i in order:
        if not np.isfinite(f[i]):
            break
        key = tuple(np.round(X[i], 3))
        if key in seen:
            continue
        seen.add(key)
        out.append(X[i])
        if len(out) >= n:
            break
    if not out:
        return X[:1]
    return np.array(out)


# ----------------------------------------------------------------------------- bootstrap result

@dataclass
class BootstrapResult:
    """Refits on resampled runs: `samples[name]` holds one value per successful refit."""

    samples: dict[str, np.ndarray]
    n_requested: int
    n_failed: int
    seed: int
    level: float = 0.95
    theta: np.ndarray | None = field(default=None, repr=False)

    def ci(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        """Percentile interval for every parameter and derived quantity."""
        level = self.level if level is None else level
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
                for k, v in self.samples.items() if v.size}

    def std(self) -> dict[str, float]:
        return {k: float(np.std(v, ddof=1)) if v.size > 1 else float("nan") for k, v in self.samples.items()}

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "n_requested": self.n_requested, "n_failed": self.n_failed, "seed": self.seed,
            "level": self.level, "ci": {k: list(v) for k, v in self.ci().items()},
        }
        if include_samples:
            d["samples"] = {k: v.tolist() for k, v in self.samples.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BootstrapResult":
        samples = {k: np.asarray(v, dtype=np.float64) for k, v in (d.get("samples") or {}).items()}
        return cls(samples, int(d["n_requested"]), int(d["n_failed"]), int(d["seed"]), float(d.get("level", 0.95)))


# ----------------------------------------------------------------------------- base estimator

class _LogHuberLaw:
    """Common machinery: Huber objective on log residuals, grid-started L-BFGS, bootstrap.

    Subclasses define `input_names`, `param_names`, `_features(*X)`, `_log_pred(theta, F)`
    returning (log prediction [n], Jacobian [n, p]), `_to_params(theta, F)`, `_to_theta(params, F)`,
    `_grid(F, y)` and `_predict(params, *X)` (numpy-broadcasting on params and X).
    """

    input_names: tuple[str, ...] = ()
    param_names: tuple[str, ...] = ()
    name = "law"

    def __init__(self, delta: float = HUBER_DELTA, grid: Any = None, maxiter: int = 2000,
                 gtol: float = 1e-9, ftol: float = 1e-13, method: str = "batched",
                 n_polish: int = 16, batch_maxiter: int = 300, init: dict[str, float] | None = None) -> None:
        if not delta > 0:
            raise ValueError(f"delta={delta} must be positive")
        if method not in ("batched", "scipy"):
            raise ValueError(f"method={method!r} must be 'batched' or 'scipy'")
        self.method = method
        self.n_polish = int(n_polish)
        self.batch_maxiter = int(batch_maxiter)
        self.init = dict(init) if init is not None else None
        self.delta = float(delta)
        self.grid = grid
        self.maxiter = int(maxiter)
        self.gtol = float(gtol)
        self.ftol = float(ftol)

    # --- subclass hooks
    def _features(self, *X: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def _log_pred(self, theta: np.ndarray, F: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _to_params(self, theta: np.ndarray, F: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def _to_theta(self, params: dict[str, float], F: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _grid(self, F: dict[str, Any], y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _predict(self, params: dict[str, Any], *X: Any) -> np.ndarray:
        raise NotImplementedError

    def derived(self, params: dict[str, Any]) -> dict[str, Any]:
        """Quantities computed from the parameters that also get bootstrap intervals."""
        return {}

    def _compute(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """Compute proxy used to pick the 'largest' runs for holdout validation."""
        return 6.0 * X[0] * X[1] if len(X) >= 2 else X[0]

    # --- objective
    def _objective(self, theta: np.ndarray, F: dict[str, Any], y: np.ndarray,
                   w: np.ndarray | None) -> tuple[float, np.ndarray]:
        f, J = self._log_pred(theta, F)
        h, dh = huber_with_grad(f - y, self.delta)
        if w is not None:
            h = h * w
            dh = dh * w
        g = np.stack([np.sum(dh * j, axis=-1) for j in J], axis=-1)
        if np.ndim(theta) == 2:
            return h.sum(axis=-1), g
        return float(h.sum()), g

    def _minimize(self, theta0: np.ndarray, F: dict[str, Any], y: np.ndarray, w: np.ndarray | None):
        with np.errstate(all="ignore"):
            res = minimize(self._objective, theta0, args=(F, y, w), jac=True, method="L-BFGS-B",
                           options={"maxiter": self.maxiter, "gtol": self.gtol, "ftol": self.ftol})
        # an iteration limit is never convergence; a line-search stop at a vanishing gradient is
        ok = bool(res.success) or (res.status == 2 and bool(np.all(np.isfinite(res.jac)))
                                   and float(np.max(np.abs(res.jac))) < 1e-7)
        ok = ok and bool(np.all(np.isfinite(res.x))) and math.isfinite(float(res.fun))
        return res, ok

    # --- public API
    def fit(self, *X: Any, loss: Any = None, holdout: str | None = None,
            n_holdout: int | None = None) -> "_LogHuberLaw":
        """Fit to runs. Positional inputs as in `input_names`, then `loss` (also positional).

        `holdout="largest"` fits on all but the `n_holdout` largest-compute runs (default 10%,
        at least one) and stores the held-out relative errors in `holdout_`.
        """
        X = list(X)
        if loss is None:
            if len(X) != len(self.input_names) + 1:
                raise DataError(f"{type(self).__name__}.fit needs {', '.join(self.input_names)} and loss")
            loss = X.pop()
        if len(X) != len(self.input_names):
            raise DataError(f"{type(self).__name__}.fit needs {', '.join(self.input_names)} and loss")
        arrays = _check_inputs(list(self.input_names) + ["loss"], X + [loss], len(self.param_names))
        X, loss_a = arrays[:-1], arrays[-1]
        self.holdout_ = None
        if holdout is not None:
            if holdout != "largest":
                raise ValueError(f"holdout={holdout!r}: only 'largest' is supported")
            n = loss_a.size
            k = n_holdout if n_holdout is not None else max(1, int(round(0.1 * n)))
            if not 1 <= k <= n - len(self.param_names) - 1:
                raise DataError(f"cannot hold out {k} of {n} runs and still fit {len(self.param_names)} parameters")
            order = np.argsort(self._compute(X), kind="stable")
            test, train = order[-k:], order[:-k]
            self._fit_arrays([x[train] for x in X], loss_a[train])
            pred = self.predict(*[x[test] for x in X])
            rel = pred / loss_a[test] - 1.0
            self.holdout_ = {
                "n_holdout": int(k), "indices": test.tolist(), "actual": loss_a[test].tolist(),
                "predicted": pred.tolist(), "relative_error": rel.tolist(),
                "mean_abs_relative_error": float(np.mean(np.abs(rel))),
                "max_abs_relative_error": float(np.max(np.abs(rel))),
            }
            return self
        return self._fit_arrays(X, loss_a)

    @classmethod
    def from_params(cls, params: dict[str, float], *X: Any, loss: Any,
                    bootstrap: BootstrapResult | None = None, **kw: Any) -> "_LogHuberLaw":
        """The law at saved parameters (a fit file's), set on runs `X`, `loss` without fitting.

        A report can draw a law fitted elsewhere: predictions and derived values need only the
        parameters, which are kept exactly as given; the runs give the residuals and objective at
        those parameters, and `bootstrap` (the saved refits, when kept) the bands.
        """
        names = list(cls.param_names)
        missing = [k for k in names if k not in params]
        if missing:
            raise DataError(f"{cls.name} law: parameter(s) {', '.join(missing)} missing")
        if len(X) != len(cls.input_names):
            raise DataError(f"{cls.name} law: needs {', '.join(cls.input_names)} and loss")
        law = cls(**kw)
        p = {k: float(params[k]) for k in names}
        arrays = [_as_array(n, a) for n, a in zip([*cls.input_names, "loss"], [*X, loss])]
        if len({a.size for a in arrays}) != 1:
            raise DataError("inputs have different lengths: "
                            + ", ".join(f"{n}={a.size}" for n, a in zip([*cls.input_names, "loss"], arrays)))
        Xa, y = arrays[:-1], np.log(arrays[-1])
        F = law._features(*Xa)
        with np.errstate(all="ignore"):
            theta = np.asarray(law._to_theta(p, F), dtype=np.float64)
        if not np.all(np.isfinite(theta)):
            raise DataError(f"{cls.name} law: parameters {p} are outside the law's domain (scales must be positive)")
        f, _ = law._log_pred(theta, F)
        law._X, law._y, law._F = Xa, y, F
        law.theta_, law.params_ = theta, p
        law.converged_ = True
        law.objective_ = float(law._objective(theta, F, y, None)[0])
        law.n_points_ = int(y.size)
        law.residuals_ = y - f
        law.n_starts_ = law.n_polished_ = law.n_converged_starts_ = 0
        law.holdout_ = None
        law.bootstrap_ = bootstrap
        return law

    def _grid_array(self, F: dict[str, Any], y: np.ndarray) -> np.ndarray:
        g = np.atleast_2d(np.asarray(self._grid(F, y), dtype=np.float64))
        if self.init is not None:  # e.g. a previous fit's parameters, added to the grid
            g = np.vstack([self._to_theta(self.init, F)[None, :], g])
        return g

    def _fit_arrays(self, X: list[np.ndarray], loss: np.ndarray) -> "_LogHuberLaw":
        F = self._features(*X)
        y = np.log(loss)
        starts = self._grid_array(F, y)
        if self.method == "scipy":
            candidates = starts
        else:
            with np.errstate(all="ignore"):
                ends, fends = _batched_lbfgs(lambda T: self._objective(T, F, y, None), starts,
                                             maxiter=self.batch_maxiter)
            candidates = _distinct_best(ends, fends, self.n_polish)
        best = None
        n_ok = 0
        for theta0 in candidates:
            res, ok = self._minimize(theta0, F, y, None)
            if not ok:
                continue
            n_ok += 1
            if best is None or res.fun < best.fun:
                best = res
        self.n_starts_ = int(len(starts))
        self.n_polished_ = int(len(candidates))
        self.n_converged_starts_ = n_ok
        if best is None:
            self.converged_ = False
            raise FitError(f"{self.name}: L-BFGS did not converge from any of {len(starts)} initialisations")
        self._X, self._y, self._F = X, y, F
        self.theta_ = best.x.copy()
        self.converged_ = True
        self.objective_ = float(best.fun)
        self.n_points_ = int(y.size)
        self.params_ = self._to_params(self.theta_, F)
        f, _ = self._log_pred(self.theta_, F)
        self.residuals_ = y - f
        self.bootstrap_ = None
        return self

    def _check_fitted(self) -> None:
        if not getattr(self, "converged_", False):
            raise FitError(f"{self.name}: not fitted (call .fit first, and check it converged)")

    def predict(self, *X: Any) -> np.ndarray:
        self._check_fitted()
        arrs = [np.asarray(x, dtype=np.float64) for x in X]
        return np.asarray(self._predict(self.params_, *arrs), dtype=np.float64)

    @property
    def derived_(self) -> dict[str, Any]:
        """Derived quantities at the fitted parameters."""
        self._check_fitted()
        return self.derived(self.params_)

    def bootstrap(self, n: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
        """Resample runs with replacement `n` times; refit each, warm-started at the full-data fit."""
        self._check_fitted()
        if n < 2:
            raise ValueError(f"n={n}: need at least 2 bootstrap resamples")
        rng = np.random.default_rng(seed)
        m = self._y.size
        thetas, failed = [], 0
        for _ in range(n):
            w = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
            res, ok = self._minimize(self.theta_, self._F, self._y, w)
            if ok:
                thetas.append(res.x)
            else:
                failed += 1
        if not thetas:
            raise FitError(f"{self.name}: none of {n} bootstrap refits converged")
        T = np.array(thetas)
        names = self.param_names
        cols = [self._to_params(t, self._F) for t in T]
        samples = {k: np.array([c[k] for c in cols]) for k in names}
        der = self.derived({k: samples[k] for k in names})
        samples.update({k: np.asarray(v, dtype=np.float64) for k, v in der.items()})
        self.bootstrap_ = BootstrapResult(samples, n, failed, seed, level, theta=T)
        return self.bootstrap_

    def prediction_interval(self, *X: Any, level: float = 0.95) -> dict[str, np.ndarray]:
        """Point prediction, confidence band of the mean, and prediction interval for new runs.

        The prediction interval combines the bootstrap parameter spread with the log-space
        residual scatter of the fit (every bootstrap prediction times every fitted residual).
        """
        self._check_fitted()
        if self.bootstrap_ is None:
            raise FitError(f"{self.name}: run .bootstrap() before asking for intervals")
        arrs = [a[None, ...] for a in np.broadcast_arrays(*[np.asarray(x, dtype=np.float64) for x in X])]
        s = self.bootstrap_.samples
        P = {k: s[k].reshape((-1,) + (1,) * (arrs[0].ndim - 1)) for k in self.param_names}
        preds = np.asarray(self._predict(P, *arrs))
        noise = np.exp(self.residuals_).reshape((1, -1) + (1,) * (preds.ndim - 1))
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        with_noise = (preds[:, None, ...] * noise).reshape((-1,) + preds.shape[1:])
        return {
            "prediction": self.predict(*[a[0] for a in arrs]),
            "ci_low": np.percentile(preds, lo, axis=0), "ci_high": np.percentile(preds, hi, axis=0),
            "pi_low": np.percentile(with_noise, lo, axis=0), "pi_high": np.percentile(with_noise, hi, axis=0),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `lmscale fit --out` writes and `lmscale allocate` reads)."""
        self._check_fitted()
        d: dict[str, Any] = {
            "law": self.name, "params": {k: float(v) for k, v in self.params_.items()},
            "derived": {k: float(v) for k, v in self.derived(self.params_).items()},
            "n_points": self.n_points_, "objective": self.objective_, "converged": True,
            "huber_delta": self.delta, "n_starts": self.n_starts_,
            "n_converged_starts": self.n_converged_starts_,
            "residual_std_log": float(np.std(self.residuals_)), "min_loss": float(np.exp(np.min(self._y))),
        }
        if self.bootstrap_ is not None:
            d["ci95"] = {k: list(v) for k, v in self.bootstrap_.ci(0.95).items()}
            d["bootstrap"] = self.bootstrap_.to_dict(include_samples=True)
        if getattr(self, "holdout_", None) is not None:
            d["holdout"] = self.holdout_
        d["identification"] = identification(self)
        return d

    def __repr__(self) -> str:
        if getattr(self, "converged_", False):
            inner = ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items())
            return f"{type(self).__name__}({inner})"
        return f"{type(self).__name__}()"


def _grid_from(spec: Any, default: dict[str, Sequence[float]]) -> dict[str, Sequence[float]]:
    if spec is None:
        return default
    if isinstance(spec, str):  # a grid by name
        if spec not in GRIDS:
            raise ValueError(f"grid {spec!r} is not one of {', '.join(GRIDS)}")
        spec = GRIDS[spec]
    if isinstance(spec, dict):
        missing = set(default) - set(spec)
        if missing:
            raise ValueError(f"grid is missing axes {sorted(missing)} (expected {sorted(default)})")
        return spec
    raise ValueError("grid must be a dict of axis -> values, or a name in GRIDS")


# ----------------------------------------------------------------------------- Chinchilla

HOFFMANN_GRID: dict[str, Sequence[float]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
"""Hoffmann et al. 2022, App. D.2: the initialisation grid of Approach 3 (5,400 starts)."""

COARSE_GRID: dict[str, Sequence[float]] = {
    "e": (-1.0, 0.0, 1.0), "a": (0.0, 10.0, 20.0), "b": (0.0, 10.0, 20.0),
    "alpha": (0.0, 0.5, 1.0), "beta": (0.0, 0.5, 1.0),
}
"""243 starts: enough for sweeps whose runs span a few decades."""

SMALL_GRID: dict[str, Sequence[float]] = {
    "e": (0.0, 1.0), "a": (5.0, 10.0), "b": (5.0, 10.0), "alpha": (0.3, 0.6), "beta": (0.3, 0.6),
}
"""32 starts around typical language-model exponents: enough for well-behaved sweeps."""

GRIDS: dict[str, dict[str, Sequence[float]]] = {"hoffmann": HOFFMANN_GRID, "coarse": COARSE_GRID, "small": SMALL_GRID}
"""The Chinchilla starting grids by the names the `--grid` flags take."""


class ChinchillaLaw(_LogHuberLaw):
    """L(N, D) = E + A / N^alpha + B / D^beta  (Hoffmann et al. 2022, eq. 2; Approach 3).

    `grid`: dict of axes e (=log E), a (=log A), b (=log B), alpha, beta; default the
    Hoffmann et al. grid. Derived: the compute-optimal exponents a = beta/(alpha+beta) and
    b = alpha/(alpha+beta) with N_opt = G (C/6)^a, D_opt = (C/6)^b / G.
    """

    input_names = ("N", "D")
    param_names = ("E", "A", "B", "alpha", "beta")
    name = "chinchilla"

    def _features(self, N: np.ndarray, D: np.ndarray) -> dict[str, Any]:
        x, u = np.log(N), np.log(D)
        mx, mu = float(x.mean()), float(u.mean())
        return {"x": x - mx, "u": u - mu, "mx": mx, "mu": mu}

    def _log_pred(self, theta, F):
        e, a, b, al, be = _unpack(theta)
        x, u = F["x"], F["u"]
        f, (w1, w2, w3) = _lse(e, a - al * x, b - be * u)
        return f, [w1, w2, w3, -w2 * x, -w3 * u]

    def _objective(self, theta, F, y, w):
        # fused form of the generic objective: exp(e) is per start, two full-size exps remain
        e, a, b, al, be = _unpack(theta)
        x, u = F["x"], F["u"]
        E2 = np.exp(np.minimum(a - al * x, 700.0))
        E3 = np.exp(np.minimum(b - be * u, 700.0))
        S = E2 + E3
        S += np.exp(np.minimum(e, 700.0))
        h, c = huber_with_grad(np.log(S) - y, self.delta)
        if w is not None:
            h = h * w
            c = c * w
        c /= S
        q2 = c * E2
        q3 = c * E3
        s2 = q2.sum(axis=-1)
        s3 = q3.sum(axis=-1)
        g = np.stack([c.sum(axis=-1) * np.exp(np.minimum(e[..., 0], 700.0)) if np.ndim(theta) == 2
                      else float(c.sum() * np.exp(min(float(theta[0]), 700.0))),
                      s2, s3, -(q2 @ x), -(q3 @ u)], axis=-1)
        if np.ndim(theta) == 2:
            return h.sum(axis=-1), g
        return float(h.sum()), g

    def _to_params(self, theta, F):
        e, a, b, al, be = theta
        with np.errstate(over="ignore"):  # a refit that runs off to infinity says so as inf, not as a warning
            return {"E": float(np.exp(e)), "A": float(np.exp(a + al * F["mx"])),
                    "B": float(np.exp(b + be * F["mu"])), "alpha": float(al), "beta": float(be)}

    def _to_theta(self, p, F):
        return np.array([np.log(p["E"]), np.log(p["A"]) - p["alpha"] * F["mx"],
                         np.log(p["B"]) - p["beta"] * F["mu"], p["alpha"], p["beta"]])

    def _grid(self, F, y):
        g = _grid_from(self.grid, HOFFMANN_GRID)
        pts = np.array(list(itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])), dtype=np.float64)
        e, a, b, al, be = pts.T
        return np.column_stack([e, a - al * F["mx"], b - be * F["mu"], al, be])

    def _predict(self, p, N, D):
        return p["E"] + p["A"] / np.power(N, p["alpha"]) + p["B"] / np.power(D, p["beta"])

    def derived(self, p):
        al, be, A, B = p["alpha"], p["beta"], p["A"], p["B"]
        s = al + be
        with np.errstate(all="ignore"):
            G = np.power(al * A / (be * B), 1.0 / s)
        return {"a": be / s, "b": al / s, "G": G}


# ----------------------------------------------------------------------------- single variable

class PowerLaw(_LogHuberLaw):
    """L(X) = E + A X^-alpha for X one of N (parameters), D (tokens) or C (FLOPs)."""

    param_names = ("E", "A", "alpha")

    def __init__(self, variable: str = "N", **kw: Any) -> None:
        super().__init__(**kw)
        if variable not in ("N", "D", "C"):
            raise ValueError(f"variable={variable!r} must be N, D or C")
        self.variable = variable
        self.input_names = (variable,)
        self.name = f"power-{variable.lower()}"

    def _features(self, X):
        x = np.log(X)
        m = float(x.mean())
        return {"x": x - m, "m": m}

    def _log_pred(self, theta, F):
        e, a, al = _unpack(theta)
        x = F["x"]
        f, (w1, w2) = _lse(e, a - al * x)
        return f, [w1, w2, -w2 * x]

    def _to_params(self, theta, F):
        e, a, al = theta
        return {"E": float(np.exp(e)), "A": float(np.exp(a + al * F["m"])), "alpha": float(al)}

    def _to_theta(self, p, F):
        return np.array([np.log(p["E"]), np.log(p["A"]) - p["alpha"] * F["m"], p["alpha"]])

    def _grid(self, F, y):
        g = _grid_from(self.grid, {"e": (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5), "a": (-4.0, -2.0, 0.0, 1.0, 2.0),
                                   "alpha": (0.05, 0.2, 0.5, 1.0, 2.0)})
        return np.array(list(itertools.product(g["e"], g["a"], g["alpha"])), dtype=np.float64)

    def _predict(self, p, X):
        return p["E"] + p["A"] / np.power(X, p["alpha"])

    def _compute(self, X):
        return X[0]


# ----------------------------------------------------------------------------- Kaplan

class KaplanLaw(_LogHuberLaw):
    """L(N, D) = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D  (Kaplan et al. 2020, eq. 1.5).

    Internally theta = (log Nc, log Dc (centred), r = alpha_N/alpha_D, alpha_D), so the log
    prediction is alpha_D * LSE(r (log Nc - log N), log Dc - log D).
    """

    input_names = ("N", "D")
    param_names = ("Nc", "Dc", "alpha_N", "alpha_D")
    name = "kaplan"

    def _features(self, N, D):
        x, u = np.log(N), np.log(D)
        mx, mu = float(x.mean()), float(u.mean())
        return {"x": x - mx, "u": u - mu, "mx": mx, "mu": mu}

    def _log_pred(self, theta, F):
        cn, cd, r, ad = _unpack(theta)
        x, u = F["x"], F["u"]
        s, (w1, w2) = _lse(r * (cn - x), cd - u)
        return ad * s, [ad * w1 * r, ad * w2, ad * w1 * (cn - x), s]

    def _to_params(self, theta, F):
        cn, cd, r, ad = theta
        return {"Nc": float(np.exp(cn + F["mx"])), "Dc": float(np.exp(cd + F["mu"])),
                "alpha_N": float(r * ad), "alpha_D": float(ad)}

    def _to_theta(self, p, F):
        return np.array([np.log(p["Nc"]) - F["mx"], np.log(p["Dc"]) - F["mu"], p["alpha_N"] / p["alpha_D"],
                         p["alpha_D"]])

    def _grid(self, F, y):
        g = _grid_from(self.grid, {"cn": (-2.0, 2.0, 6.0, 10.0, 14.0), "cd": (-2.0, 2.0, 6.0, 10.0, 14.0),
                                   "r": (0.5, 1.0, 2.0), "alpha_D": (0.05, 0.1, 0.3, 0.6)})
        return np.array(list(itertools.product(g["cn"], g["cd"], g["r"], g["alpha_D"])), dtype=np.float64)

    def _predict(self, p, N, D):
        return np.power(np.power(p["Nc"] / N, p["alpha_N"] / p["alpha_D"]) + p["Dc"] / D, p["alpha_D"])


# ----------------------------------------------------------------------------- broken power law

class BrokenPowerLaw(_LogHuberLaw):
    """Caballero et al. 2022 with one break:
    y = a + b x^-c0 (1 + (x/d1)^(1/f1))^(-c1 f1).

    Below the break the slope is c0, above it c0 + c1; f1 is the sharpness. In log space the
    break factor is a softplus, so the prediction is LSE(log a, log b - c0 log x - c1 f1
    softplus((log x - log d1)/f1)).
    """

    param_names = ("a", "b", "c0", "c1", "d1", "f1")

    def __init__(self, variable: str = "C", **kw: Any) -> None:
        super().__init__(**kw)
        self.variable = variable
        self.input_names = (variable,)
        self.name = f"broken-{variable.lower()}"

    def _features(self, X):
        x = np.log(X)
        m = float(x.mean())
        return {"x": x - m, "m": m}

    def _log_pred(self, theta, F):
        la, lb, c0, c1, ld, lf = _unpack(theta)
        x = F["x"]
        f1 = np.exp(lf)
        z = (x - ld) / f1
        sp = np.logaddexp(0.0, z)
        sg = 0.5 * (1.0 + np.tanh(0.5 * z))
        t2 = lb - c0 * x - c1 * f1 * sp
        f, (w1, w2) = _lse(la, t2)
        return f, [w1, w2, -w2 * x, -w2 * f1 * sp, w2 * c1 * sg, -w2 * c1 * f1 * (sp - sg * z)]

    def _to_params(self, theta, F):
        la, lb, c0, c1, ld, lf = theta
        return {"a": float(np.exp(la)), "b": float(np.exp(lb + c0 * F["m"])), "c0": float(c0), "c1": float(c1),
                "d1": float(np.exp(ld + F["m"])), "f1": float(np.exp(lf))}

    def _to_theta(self, p, F):
        return np.array([np.log(p["a"]), np.log(p["b"]) - p["c0"] * F["m"], p["c0"], p["c1"],
                         np.log(p["d1"]) - F["m"], np.log(p["f1"])])

    def _grid(self, F, y):
        x = F["x"]
        ymin = float(np.exp(y.min()))
        default = {
            "a": (np.log(0.5 * ymin), np.log(0.9 * ymin)),
            "b": (-1.0, 1.0),
            "c0": (0.1, 0.5),
            "c1": (-0.3, 0.3, 1.0),
            "d1": tuple(np.quantile(x, [0.25, 0.5, 0.75])),
            "f1": (np.log(0.3), np.log(1.0)),
        }
        g = _grid_from(self.grid, default)
        return np.array(list(itertools.product(g["a"], g["b"], g["c0"], g["c1"], g["d1"], g["f1"])), dtype=np.float64)

    def _predict(self, p, X):
        bend = np.power(1.0 + np.power(X / p["d1"], 1.0 / p["f1"]), -p["c1"] * p["f1"])
        return p["a"] + p["b"] * np.power(X, -p["c0"]) * bend

    def _compute(self, X):
        return X[0]


# ----------------------------------------------------------------------------- data-constrained

def _chinchilla_n_opt_for_tokens(p: dict[str, Any], D: Any) -> Any:
    """Compute-optimal N for a budget whose optimal token count is D (inverting D_opt(C))."""
    al, be = p["alpha"], p["beta"]
    G = np.power(al * p["A"] / (be * p["B"]), 1.0 / (al + be))
    a, b = be / (al + be), al / (al + be)
    c6 = np.power(np.asarray(D, dtype=np.float64) * G, 1.0 / b)
    return G * np.power(c6, a)


def _effective(U: Any, R: Any, s: Any) -> Any:
    return U + U * s * (1.0 - np.exp(-R / s))


class DataConstrainedLaw(_LogHuberLaw):
    """Muennighoff et al. 2023: Chinchilla's form with effective data D' and parameters N'.

    U_D = min(D, U) unique tokens, R_D = D/U_D - 1 repetitions, D' = U_D + U_D R_D* (1 -
    exp(-R_D/R_D*)); U_N = min(N, N_opt(U_D)), R_N = N/U_N - 1, N' likewise with R_N*.
    Fitted as in the paper, in two stages: the base Chinchilla law on single-epoch runs (or a given
    `base` parameter dict), then log R_D* and log R_N* on all runs with the same Huber objective.
    """

    input_names = ("N", "D", "U")
    param_names = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")
    name = "data-constrained"

    def __init__(self, base: dict[str, float] | None = None, base_grid: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.base = dict(base) if base is not None else None
        self.base_grid = base_grid

    def _fit_arrays(self, X, loss):
        N, D, U = X
        if self.base is None:
            single = D <= U * (1 + 1e-9)
            if single.sum() <= 5:
                raise DataError(f"data-constrained fit needs more than 5 single-epoch runs (D <= U) "
                                f"to fit the base law, got {int(single.sum())}; or pass base=")
            b = ChinchillaLaw(delta=self.delta, grid=self.base_grid).fit(N[single], D[single], loss[single])
            self.base_fit_ = b
            base = b.params_
        else:
            base = self.base
        self._base_params = {k: float(base[k]) for k in ("E", "A", "B", "alpha", "beta")}
        return super()._fit_arrays(X, loss)

    def _features(self, N, D, U):
        p = self._base_params
        UD = np.minimum(D, U)
        RD = D / UD - 1.0
        UN = np.minimum(N, _chinchilla_n_opt_for_tokens(p, UD))
        RN = np.maximum(N / UN - 1.0, 0.0)
        return {"UD": UD, "RD": RD, "UN": UN, "RN": RN, "p": p}

    def _log_pred(self, theta, F):
        p = F["p"]
        lsD, lsN = _unpack(theta)
        sD, sN = np.exp(lsD), np.exp(lsN)
        UD, RD, UN, RN = F["UD"], F["RD"], F["UN"], F["RN"]
        eD, eN = np.exp(-RD / sD), np.exp(-RN / sN)
        Dp = UD + UD * sD * (1.0 - eD)
        Np = UN + UN * sN * (1.0 - eN)
        f, (w1, w2, w3) = _lse(np.full_like(Dp, math.log(p["E"])), math.log(p["A"]) - p["alpha"] * np.log(Np),
                               math.log(p["B"]) - p["beta"] * np.log(Dp))
        dDp = UD * sD * ((1.0 - eD) - (RD / sD) * eD)
        dNp = UN * sN * ((1.0 - eN) - (RN / sN) * eN)
        return f, [-w3 * p["beta"] * dDp / Dp, -w2 * p["alpha"] * dNp / Np]

    def _to_params(self, theta, F):
        out = dict(F["p"])
        out["R_D_star"] = float(np.exp(theta[0]))
        out["R_N_star"] = float(np.exp(theta[1]))
        return out

    def _to_theta(self, p, F):
        return np.array([np.log(p["R_D_star"]), np.log(p["R_N_star"])])

    def _grid(self, F, y):
        g = _grid_from(self.grid, {"R_D_star": (1.0, 5.0, 15.0, 50.0), "R_N_star": (1.0, 5.0, 15.0, 50.0)})
        return np.log(np.array(list(itertools.product(g["R_D_star"], g["R_N_star"])), dtype=np.float64))

    def _predict(self, p, N, D, U):
        UD = np.minimum(D, U)
        RD = D / UD - 1.0
        UN = np.minimum(N, _chinchilla_n_opt_for_tokens(p, UD))
        RN = np.maximum(N / UN - 1.0, 0.0)
        Dp = _effective(UD, RD, p["R_D_star"])
        Np = _effective(UN, RN, p["R_N_star"])
        return p["E"] + p["A"] / np.power(Np, p["alpha"]) + p["B"] / np.power(Dp, p["beta"])

    def bootstrap(self, n: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
        """Bootstrap of the repetition parameters with the base law held at its fit; the base law's
        parameters, when fitted here, get their intervals from a bootstrap of that fit (on the
        single-epoch runs), so that every reported number has one. The two are drawn apart, so
        joint samples are cut to the shorter of the two."""
        res = super().bootstrap(n, seed, level)
        base = ("E", "A", "B", "alpha", "beta")
        for k in base:
            res.samples.pop(k, None)
        fit = getattr(self, "base_fit_", None)
        if fit is not None:
            b = fit.bootstrap(n, seed, level)
            m = min(len(b.samples["E"]), len(res.samples["R_D_star"]))
            res.samples = {k: v[:m] for k, v in res.samples.items()}
            res.theta = None if res.theta is None else res.theta[:m]
            res.samples.update({k: b.samples[k][:m] for k in base})
        return res


# ----------------------------------------------------------------------------- approaches 1 and 2

def _loglinear(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares of log y on log x: returns (exponent, coefficient)."""
    A = np.column_stack([np.log(x), np.ones_like(x)])
    (k, c), *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
    return float(k), float(np.exp(c))


class _AllocationFit:
    """N_opt(C) = kN C^a and D_opt(C) = kD C^b read off run records (Approaches 1 and 2)."""

    param_names = ("a", "b", "N_coef", "D_coef")
    name = "allocation"

    def _optima(self, N, D, loss, runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit(self, N: Any, D: Any, loss: Any, runs: Any = None) -> "_AllocationFit":
        N, D, loss = _check_inputs(("N", "D", "loss"), (N, D, loss), 2)
        runs_a = np.asarray(runs).reshape(-1) if runs is not None else None
        if runs_a is not None and runs_a.size != N.size:
            raise DataError(f"runs has {runs_a.size} entries for {N.size} points")
        self._data = (N, D, loss, runs_a)
        C, Nopt, Dopt = self._optima(N, D, loss, runs_a)
        if C.size < 2:
            raise FitError(f"{self.name}: found {C.size} compute optimum; need at least 2 to fit exponents")
        a, kN = _loglinear(C, Nopt)
        b, kD = _loglinear(C, Dopt)
        self.optima_ = {"C": C.tolist(), "N_opt": Nopt.tolist(), "D_opt": Dopt.tolist()}
        self.params_ = {"a": a, "b": b, "N_coef": kN, "D_coef": kD}
        self.n_points_ = int(N.size)
        self.converged_ = True
        self.bootstrap_ = None
        return self

    def predict(self, C: Any) -> dict[str, np.ndarray]:
        if not getattr(self, "converged_", False):
            raise FitError(f"{self.name}: not fitted")
        C = np.asarray(C, dtype=np.float64)
        p = self.params_
        return {"N_opt": p["N_coef"] * C ** p["a"], "D_opt": p["D_coef"] * C ** p["b"]}

    def bootstrap(self, n: int = 1000, seed: int = 0, level: float = 0.95) -> BootstrapResult:
        """Resample runs (whole training curves when `runs` was given) and refit."""
        N, D, loss, runs = self._data
        rng = np.random.default_rng(seed)
        if runs is not None:
            ids = np.unique(runs)
            groups = [np.flatnonzero(runs == r) for r in ids]
        else:
            groups = [np.array([i]) for i in range(N.size)]
        out: dict[str, list[float]] = {k: [] for k in self.param_names}
        failed = 0
        for _ in range(n):
            pick = rng.integers(0, len(groups), len(groups))
            idx = np.concatenate([groups[i] for i in pick])
            new_runs = np.concatenate([np.full(groups[i].size, j) for j, i in enumerate(pick)])
            try:
                C, Nopt, Dopt = self._optima(N[idx], D[idx], loss[idx], new_runs if runs is not None else None)
                if C.size < 2:
                    raise FitError("too few optima")
            except (FitError, np.linalg.LinAlgError):
                failed += 1
                continue
            a, kN = _loglinear(C, Nopt)
            b, kD = _loglinear(C, Dopt)
            for k, v in zip(self.param_names, (a, b, kN, kD)):
                out[k].append(v)
        if failed == n:
            raise FitError(f"{self.name}: none of {n} bootstrap refits succeeded")
        self.bootstrap_ = BootstrapResult({k: np.array(v) for k, v in out.items()}, n, failed, seed, level)
        return self.bootstrap_

    def to_dict(self) -> dict[str, Any]:
        d = {"law": self.name, "params": dict(self.params_), "n_points": self.n_points_, "objective": None,
             "converged": True, "optima": self.optima_}
        if self.bootstrap_ is not None:
            d["ci95"] = {k: list(v) for k, v in self.bootstrap_.ci(0.95).items()}
            d["bootstrap"] = self.bootstrap_.to_dict(include_samples=True)
        return d


class EnvelopeAllocation(_AllocationFit):
    """Approach 1: the lowest loss reached at each compute over all training curves.

    With `runs` (one id per point, points along each run's training curve), each curve's loss is
    interpolated in log C on a shared grid of `n_bins` compute values; without it (final losses
    only) the runs are binned in log C and the lowest-loss run of each bin is taken.
    """

    name = "envelope"

    def __init__(self, n_bins: int = 30) -> None:
        self.n_bins = int(n_bins)

    def _optima(self, N, D, loss, runs):
        C = 6.0 * N * D
        lc = np.log(C)
        grid = np.linspace(lc.min(), lc.max(), self.n_bins)
        if runs is None:
            edges = np.linspace(lc.min(), lc.max() + 1e-12, self.n_bins + 1)
            which = np.clip(np.digitize(lc, edges) - 1, 0, self.n_bins - 1)
            Cs, Ns = [], []
            for k in range(self.n_bins):
                idx = np.flatnonzero(which == k)
                if idx.size:
                    j = idx[np.argmin(loss[idx])]
                    Cs.append(C[j])
                    Ns.append(N[j])
            Cs, Ns = np.array(Cs), np.array(Ns)
        else:
            best = np.full(grid.size, np.inf)
            bestN = np.full(grid.size, np.nan)
            for r in np.unique(runs):
                idx = np.flatnonzero(runs == r)
                o = idx[np.argsort(lc[idx])]
                if o.size < 2:
                    continue
                inside = (grid >= lc[o[0]]) & (grid <= lc[o[-1]])
                if not inside.any():
                    continue
                li = np.interp(grid[inside], lc[o], loss[o])
                better = li < best[inside]
                pos = np.flatnonzero(inside)[better]
                best[pos] = li[better]
                bestN[pos] = np.exp(np.interp(grid[pos], lc[o], np.log(N[o])))
            ok = np.isfinite(best)
            Cs, Ns = np.exp(grid[ok]), bestN[ok]
        return Cs, Ns, Cs / (6.0 * Ns)


class IsoFLOPAllocation(_AllocationFit):
    """Approach 2: a parabola in log N per IsoFLOP group; its vertex is N_opt(C).

    Groups are given by `runs` (any labels: the same label = the same FLOP budget) or formed by
    clustering log10 C within `tolerance_dex`. Groups with fewer than 3 distinct sizes, or whose
    parabola opens downward, are skipped (and counted in `skipped_`).
    """

    name = "isoflop"

    def __init__(self, tolerance_dex: float = 0.05, min_points: int = 3) -> None:
        self.tolerance_dex = float(tolerance_dex)
        self.min_points = max(3, int(min_points))

    def _groups(self, C, runs):
        if runs is not None:
            return [np.flatnonzero(runs == r) for r in np.unique(runs)]
        lc = np.log10(C)
        order = np.argsort(lc)
        groups, cur = [], [order[0]]
        for i in order[1:]:
            if lc[i] - lc[cur[0]] <= 2 * self.tolerance_dex:
                cur.append(i)
            else:
                groups.append(np.array(cur))
                cur = [i]
        groups.append(np.array(cur))
        return groups

    def _optima(self, N, D, loss, runs):
        C = 6.0 * N * D
        Cs, Ns, skipped = [], [], 0
        for g in self._groups(C, runs):
            if np.unique(N[g]).size < self.min_points:
                skipped += 1
                continue
            x = np.log(N[g])
            c2, c1, _ = np.polyfit(x, loss[g], 2)
            if c2 <= 0:
                skipped += 1
                continue
            xv = -c1 / (2 * c2)
            Cg = float(np.exp(np.mean(np.log(C[g]))))
            Cs.append(Cg)
            Ns.append(float(np.exp(xv)))
        self.skipped_ = skipped
        Cs, Ns = np.array(Cs), np.array(Ns)
        return Cs, Ns, Cs / (6.0 * Ns) if Cs.size else Cs


LAWS: dict[str, Callable[..., Any]] = {
    "chinchilla": ChinchillaLaw,
    "kaplan": KaplanLaw,
    "power-n": lambda **kw: PowerLaw("N", **kw),
    "power-d": lambda **kw: PowerLaw("D", **kw),
    "power-c": lambda **kw: PowerLaw("C", **kw),
    "broken-n": lambda **kw: BrokenPowerLaw("N", **kw),
    "broken-d": lambda **kw: BrokenPowerLaw("D", **kw),
    "broken-c": lambda **kw: BrokenPowerLaw("C", **kw),
    "data-constrained": DataConstrainedLaw,
    "envelope": EnvelopeAllocation,
    "isoflop": IsoFLOPAllocation,
}
"""Law names accepted by `lmscale fit --law` and `make_law`."""


def make_law(name: str, **kw: Any) -> Any:
    if name not in LAWS:
        raise ValueError(f"unknown law {name!r}; choose from {', '.join(LAWS)}")
    return LAWS[name](**kw)
