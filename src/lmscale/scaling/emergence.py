"""Emergence and phase transitions: is a capability's rise with scale abrupt, and where is it going?

Three questions, each answered from (scale, metric) rows — sweep records, the Pythia suite's
published evaluations, or any CSV:

1. Fit the metric against log-compute with a sigmoid (Wei et al. 2022's "emergent abilities"
   picture: flat at chance, then a jump) and with a smoothly broken power law (Caballero et al.
   2022), and detect the break: a broken law that beats a plain power law by a BIC margin, with
   the break inside the observed range.
2. Put a discontinuous metric (accuracy, exact match) next to a continuous one of the same task
   (log-likelihood, perplexity, Brier score): Schaeffer et al. 2023 argue that much apparent
   emergence is the metric's doing — a smooth per-token improvement turned into a jump by an
   all-or-nothing score. The sharpness of each is measured the same way (decades of compute the
   sigmoid takes to go from 10% to 90% of its rise).
3. Capability extrapolation ("how much more compute, how many more parameters to reach accuracy
   X?") with a bootstrap interval, refusing with the reason when the fit does not support it:
   no rise seen yet, a target above the fitted ceiling, or a reach far beyond the data.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import least_squares

from lmscale.errors import DataError, LmscaleError
from lmscale.scaling.runs import RunColumns, read_csv_dicts, read_runs_csv, records_columns

LN10 = math.log(10.0)


# ----------------------------------------------------------------------------- data

@dataclass
class ScaleMetric:
    """Rows of one metric against scale. `compute` in FLOPs (C = 6ND), `params` N, `tokens` D."""

    compute: np.ndarray
    value: np.ndarray
    params: np.ndarray | None = None
    tokens: np.ndarray | None = None
    label: str = ""
    metric: str = ""
    group: list[str] | None = None  # e.g. the model name per row, for plotting one line per model

    def __post_init__(self) -> None:
        self.compute = np.asarray(self.compute, dtype=float)
        self.value = np.asarray(self.value, dtype=float)
        keep = np.isfinite(self.compute) & np.isfinite(self.value) & (self.compute > 0)
        if self.compute.shape != self.value.shape:
            raise DataError("scale and metric columns have different lengths")
        self.compute, self.value = self.compute[keep], self.value[keep]
        if self.params is not None:
            self.params = np.asarray(self.params, dtype=float)[keep]
        if self.tokens is not None:
            self.tokens = np.asarray(self.tokens, dtype=float)[keep]
        if self.group is not None:
            self.group = [g for g, k in zip(self.group, keep) if k]
        if len(self.compute) < 4:
            raise DataError(f"{self.label or 'metric'}: need at least 4 rows with positive scale and a finite value, "
                            f"got {len(self.compute)}")

    @property
    def x(self) -> np.ndarray:
        return np.log10(self.compute)


def _float(v: str, path: Path, line: int, col: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{line}: column {col!r} has {v!r}, not a number") from None


def _int(v: str, path: Path, line: int, col: str) -> int:
    x = _float(v, path, line, col)
    if not x.is_integer():
        raise DataError(f"{path}:{line}: column {col!r} has {v!r}, not a whole number")
    return int(x)


PYTHIA_COLUMNS = {"model", "deduped", "n_layers", "d_model", "step", "tokens", "task", "metric", "value"}


def _pythia_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    header, rows = read_csv_dicts(path)
    if not PYTHIA_COLUMNS <= set(header):
        raise DataError(f"{path}: not a Pythia results CSV (need columns {sorted(PYTHIA_COLUMNS)})")
    return list(enumerate(rows, start=2))


def read_scale_metric_csv(path: str | os.PathLike, metric_col: str, scale_col: str | None = None,
                          params_col: str | None = None, tokens_col: str | None = None,
                          where: dict[str, str] | None = None, label: str = "") -> ScaleMetric:
    """Any CSV of (scale, metric) rows, read by the runs-table reader (`lmscale.scaling.runs`).

    Compute is `scale_col`, else the compute column the reader finds, else 6 x parameters x
    tokens (`params_col`, `tokens_col`, or the columns the reader finds).
    """
    cols = read_runs_csv(path, {"C": scale_col, "N": params_col, "D": tokens_col}, extra=[metric_col],
                         where=where)
    return from_columns(cols, metric_col, label=label)


def from_columns(cols: RunColumns, metric: str, label: str = "", group: bool = False) -> ScaleMetric:
    """A runs table's `metric` against its compute C; `group` labels each row with its run name."""
    if "C" not in cols.values:
        raise DataError(f"{cols.source}: no compute column; give the compute column, or both the parameter and "
                        f"token columns (columns are {cols.header})")
    v = cols.values
    return ScaleMetric(v["C"], v[metric], v.get("N"), v.get("D"), label=label or metric, metric=metric,
                       group=list(cols.names) if group else None)


def pythia_non_embedding_params(n_layers: int, d_model: int) -> float:
    """12 * n_layer * d_model^2 (Kaplan et al. 2020): 18.9M for pythia-70m, as published."""
    return 12.0 * n_layers * d_model ** 2


def read_pythia(path: str | os.PathLike, task: str, metric: str, deduped: bool | None = False,
                min_step: int = 1) -> ScaleMetric:
    """The Pythia suite's zero-shot results: every (model, checkpoint) as one point at C = 6ND.

    N is the non-embedding count 12·L·d²; D = step x 2,097,152 tokens. Step 0 (no training) has
    no compute and is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    c, v, n, d, g = [], [], [], [], []
    for i, row in _pythia_rows(path):
        if row["task"] != task or row["metric"] != metric:
            continue
        if deduped is not None and row["deduped"] != ("1" if deduped else "0"):
            continue
        if _int(row["step"], path, i, "step") < min_step:
            continue
        nn = pythia_non_embedding_params(_int(row["n_layers"], path, i, "n_layers"),
                                         _int(row["d_model"], path, i, "d_model"))
        dd = _float(row["tokens"], path, i, "tokens")
        c.append(6.0 * nn * dd), v.append(_float(row["value"], path, i, "value"))
        n.append(nn), d.append(dd), g.append(row["model"])
    if not c:
        raise DataError(f"{path}: no rows for task={task!r} metric={metric!r}")
    return ScaleMetric(np.array(c), np.array(v), np.array(n), np.array(d), label=f"{task} {metric}",
                       metric=metric, group=g)


# ----------------------------------------------------------------------------- fits

def _bic(rss: float, n: int, k: int) -> float:
    return n * math.log(max(rss, 1e-300) / n) + k * math.log(n)


@dataclass
class SigmoidFit:
    """y = lo + (hi - lo) / (1 + exp(-k (x - x0))), x = log10(compute).

    `lo` is fixed at `chance` when given (the floor a random guesser gets); `hi` is bounded by
    `ceiling` (1 for accuracies).
    """

    chance: float | None = None
    ceiling: float | None = 1.0
    params_: dict[str, float] = field(default_factory=dict)
    rss_: float = math.nan
    n_: int = 0

    def _unpack(self, p: np.ndarray) -> tuple[float, float, float, float]:
        if self.chance is None:
            lo, hi, k, x0 = p
        else:
            hi, k, x0 = p
            lo = self.chance
        return lo, hi, k, x0

    @staticmethod
    def curve(x, lo, hi, k, x0):
        z = np.clip(-k * (np.asarray(x, dtype=float) - x0), -60, 60)
        return lo + (hi - lo) / (1.0 + np.exp(z))

    def fit(self, x: Sequence[float], y: Sequence[float], p0: np.ndarray | None = None) -> "SigmoidFit":
        x, y = np.asarray(x, float), np.asarray(y, float)
        ymin, ymax = float(y.min()), float(y.max())
        span = max(ymax - ymin, 1e-6)
        hi_max = self.ceiling if self.ceiling is not None else ymax + 10 * span
        lo0 = self.chance if self.chance is not None else ymin
        best = None
        starts = [p0] if p0 is not None else [
            np.array(([lo0] if self.chance is None else []) + [min(ymax, hi_max - 1e-6), k0, x0])
            for x0 in np.quantile(x, [0.2, 0.4, 0.6, 0.8]) for k0 in (2.0,)]
        lb = (([ymin - 10 * span] if self.chance is None else [])
              + [-np.inf if self.ceiling is None else lo0 - span, 1e-3, x.min() - 10])
        ub = ([ymax + span] if self.chance is None else []) + [hi_max, 200.0, x.max() + 10]
        for s in starts:
            s = np.clip(s, np.array(lb) + 1e-9, np.array(ub) - 1e-9)
            r = least_squares(lambda p: self.curve(x, *self._unpack(p)) - y, s, bounds=(lb, ub), method="trf",
                              max_nfev=400)
            if best is None or r.cost < best.cost:
                best = r
        lo, hi, k, x0 = self._unpack(best.x)
        self.params_ = {"lo": float(lo), "hi": float(hi), "k": float(k), "x0": float(x0)}
        self.rss_ = float(2 * best.cost)
        self.n_ = len(x)
        self._p = best.x
        return self

    @property
    def n_free(self) -> int:
        return 4 if self.chance is None else 3

    def predict(self, x):
        p = self.params_
        return self.curve(x, p["lo"], p["hi"], p["k"], p["x0"])

    def inverse(self, y: float) -> float:
        """log10(compute) at which the curve reaches `y` (nan if it never does)."""
        p = self.params_
        lo, hi = p["lo"], p["hi"]
        frac = (y - lo) / (hi - lo) if hi != lo else math.nan
        if not 0 < frac < 1:
            return math.nan
        return p["x0"] + math.log(frac / (1 - frac)) / p["k"]

    @property
    def width_decades(self) -> float:
        """Decades of compute from 10% to 90% of the rise: 2 ln 9 / k."""
        return 2 * math.log(9.0) / self.params_["k"]

    @property
    def bic(self) -> float:
        return _bic(self.rss_, self.n_, self.n_free)


@dataclass
class BrokenPowerLawFit:
    """Smoothly broken power law with one break (Caballero et al. 2022), in log10 compute x:

        y = a + b * 10^(-c0 x) * (1 + 10^((x - xb) / f))^(-c1 f)

    fitted to a quantity that falls with scale (an error rate, a loss). Below the break the
    slope in log-log is -c0, above it -(c0 + c1); `f` (decades) is how sharp the bend is.
    With `breaks=0` it is a plain power law y = a + b 10^(-c0 x).
    """

    breaks: int = 1
    params_: dict[str, float] = field(default_factory=dict)
    rss_: float = math.nan
    n_: int = 0

    @staticmethod
    def curve(x, a, logb, c0, c1=0.0, xb=0.0, f=1.0):
        x = np.asarray(x, float)
        t = np.clip((x - xb) / f, -300, 300)
        soft = np.where(t > 30, t, np.log10(1 + 10 ** np.minimum(t, 30)))  # log10(1 + 10^t)
        return a + 10 ** np.clip(logb - c0 * x - c1 * f * soft, -300, 300)

    def fit(self, x: Sequence[float], y: Sequence[float]) -> "BrokenPowerLawFit":
        x, y = np.asarray(x, float), np.asarray(y, float)
        xm = float(x.mean())
        xs = x - xm  # centred, so logb is well scaled
        ymin, ymax = float(y.min()), float(y.max())
        span = max(ymax - ymin, 1e-9)
        best = None
        a_hi = max(ymin, 0.0) + 1e-12
        if self.breaks == 0:
            lb, ub = [-span, -30, -5], [a_hi, 30, 5]
            starts = [[a0, math.log10(max(ymax - a0, 1e-9)), c0] for a0 in (0.0, 0.5 * ymin) for c0 in (0.05, 0.5)]
        else:
            lb, ub = [-span, -30, -5, -10, xs.min(), 0.02], [a_hi, 30, 5, 10, xs.max(), 3.0]
            starts = [[0.5 * ymin, math.log10(max(ymax - 0.5 * ymin, 1e-9)), 0.0, c1, xb, 0.2]
                      for c1 in (0.3, 2.0) for xb in np.quantile(xs, [0.15, 0.35, 0.5, 0.65, 0.85])]
        lb_a, ub_a = np.array(lb, float), np.array(ub, float)
        for s in starts:
            s = np.clip(np.array(s, float), lb_a + 1e-9, ub_a - 1e-9)
            try:
                r = least_squares(lambda p: self.curve(xs, *p) - y, s, bounds=(lb_a, ub_a), method="trf",
                                  max_nfev=300)
            except ValueError:
                continue
            if best is None or r.cost < best.cost:
                best = r
        if best is None:
            raise LmscaleError("broken power law fit failed from every start")
        p = list(best.x)
        names = ["a", "logb", "c0"] + (["c1", "xb", "f"] if self.breaks else [])
        self.params_ = dict(zip(names, map(float, p)))
        self.params_["logb"] += self.params_["c0"] * xm  # undo the centring: logb - c0 (x - xm)
        if self.breaks:
            self.params_["xb"] += xm
        self._xm = xm
        self._p = p
        self.rss_ = float(2 * best.cost)
        self.n_ = len(x)
        return self

    def predict(self, x):
        p = self._p
        return self.curve(np.asarray(x, float) - self._xm, *p)

    @property
    def bic(self) -> float:
        return _bic(self.rss_, self.n_, 3 + 3 * self.breaks)


# ----------------------------------------------------------------------------- analysis

@dataclass
class EmergenceAnalysis:
    label: str
    metric: str
    higher_is_better: bool
    n_points: int
    sigmoid: dict[str, float]
    transition_width_decades: float
    broken_power_law: dict[str, float]
    power_law: dict[str, float]
    bic: dict[str, float]
    break_detected: bool
    break_compute: float | None
    break_reason: str
    slopes: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decreasing(values: np.ndarray, higher_is_better: bool, ceiling: float | None) -> np.ndarray:
    """The quantity a power law describes: the error left (ceiling - metric), or the metric itself."""
    if not higher_is_better:
        return values
    return (ceiling if ceiling is not None else float(values.max()) * 1.05) - values


def analyze(data: ScaleMetric, higher_is_better: bool = True, chance: float | None = None,
            ceiling: float | None = 1.0, bic_margin: float = 10.0, log_metric: bool = False) -> EmergenceAnalysis:
    """Sigmoid and broken/plain power-law fits of one metric against log10 compute.

    A break is reported when the broken power law's BIC beats the plain power law's by
    `bic_margin` (very strong evidence on Kass & Raftery's scale) and the break lies inside the
    observed compute range. `log_metric` fits log10 of a positive metric (perplexity).
    """
    x = data.x
    y = np.log10(data.value) if log_metric else data.value
    sig_ceiling = ceiling if (higher_is_better and not log_metric) else None
    sig = SigmoidFit(chance=chance if higher_is_better else None, ceiling=sig_ceiling).fit(x, y)
    dec = _decreasing(y, higher_is_better, ceiling if not log_metric else None)
    if log_metric:
        dec = y - float(y.min()) + 1e-3 * max(float(np.ptp(y)), 1e-9)
    pl = BrokenPowerLawFit(breaks=0).fit(x, dec)
    bp = BrokenPowerLawFit(breaks=1).fit(x, dec)
    inside = bool(bp.params_["xb"] > x.min() + 0.05 * np.ptp(x) and bp.params_["xb"] < x.max() - 0.05 * np.ptp(x))
    gain = pl.bic - bp.bic
    detected = bool(gain >= bic_margin and inside)
    if detected:
        reason = (f"broken power law beats a plain power law by dBIC={gain:.1f} (>= {bic_margin:g}), "
                  "break inside the data")
    elif gain < bic_margin:
        reason = f"a break improves BIC by only {gain:.1f} (< {bic_margin:g}): no evidence of a phase transition"
    else:
        reason = f"best break at 10^{bp.params_['xb']:.2f} FLOPs lies at the edge of the data (dBIC={gain:.1f})"
    return EmergenceAnalysis(
        label=data.label, metric=data.metric, higher_is_better=higher_is_better, n_points=len(x),
        sigmoid=sig.params_, transition_width_decades=sig.width_decades, broken_power_law=bp.params_,
        power_law=pl.params_, bic={"sigmoid": sig.bic, "broken_power_law": bp.bic, "power_law": pl.bic},
        break_detected=detected, break_compute=float(10 ** bp.params_["xb"]) if detected else None,
        break_reason=reason,
        slopes={"before": -bp.params_["c0"], "after": -(bp.params_["c0"] + bp.params_["c1"])},
    )


def normalized_sharpness(data: ScaleMetric, higher_is_better: bool, log_metric: bool = False) -> dict[str, float]:
    """Sharpness of a metric's rise, comparable across metrics of different units.

    The metric is mapped to "progress" in [0, 1] (worst observed -> 0, best -> 1; log10 first
    for perplexities), a free sigmoid is fitted to progress against log10 compute, and its
    10%->90% width in decades is returned with the largest one-decade jump in progress.
    """
    y = np.log10(data.value) if log_metric else data.value.copy()
    if not higher_is_better:
        y = -y
    lo, hi = np.quantile(y, 0.02), np.quantile(y, 0.98)
    prog = np.clip((y - lo) / max(hi - lo, 1e-12), -0.2, 1.2)
    sig = SigmoidFit(chance=None, ceiling=None).fit(data.x, prog)
    grid = np.linspace(data.x.min(), data.x.max() - 1.0, 200) if np.ptp(data.x) > 1 else np.array([data.x.min()])
    rise = max(sig.params_["hi"] - sig.params_["lo"], 1e-12)
    jump = float(np.max(sig.predict(grid + 1.0) - sig.predict(grid))) / rise
    return {"width_decades": sig.width_decades, "max_jump_per_decade": jump,
            "midpoint_log10_compute": sig.params_["x0"]}


def compare_metrics(discontinuous: ScaleMetric, continuous: ScaleMetric, continuous_higher_is_better: bool = False,
                    continuous_log: bool = True) -> dict[str, Any]:
    """Schaeffer et al. 2023: the same task under an all-or-nothing and a continuous metric."""
    d = normalized_sharpness(discontinuous, True)
    c = normalized_sharpness(continuous, continuous_higher_is_better, log_metric=continuous_log)
    return {"discontinuous": {"label": discontinuous.label, **d}, "continuous": {"label": continuous.label, **c},
            "sharpness_ratio": c["width_decades"] / d["width_decades"] if d["width_decades"] > 0 else math.inf}


# ----------------------------------------------------------------------------- extrapolation

@dataclass
class Extrapolation:
    ok: bool
    target: float
    reason: str
    observed_max_compute: float
    observed_best: float
    compute: float | None = None
    compute_ci95: tuple[float, float] | None = None
    extra_compute_factor: float | None = None
    params: float | None = None
    params_ci95: tuple[float, float] | None = None
    tokens_per_param: float = 20.0
    reachable_fraction: float | None = None
    fit: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extrapolate(data: ScaleMetric, target: float, chance: float | None = None, ceiling: float = 1.0,
                max_decades: float = 2.0, n_bootstrap: int = 200, seed: int = 0, tokens_per_param: float = 20.0,
                min_rise_sigmas: float = 3.0, noise: float | None = None) -> Extrapolation:
    """How much compute (and, compute-optimally, how many parameters) reaches accuracy `target`?

    The sigmoid in log10 compute is fitted, and resampled (cases bootstrap) for an interval.
    Parameters assume compute-optimal training, D = `tokens_per_param` x N (Hoffmann et al.
    2022), so N = sqrt(C / (6 x tokens_per_param)). Refuses (ok=False, with the reason) when:
    the metric has not risen above chance (midpoint and ceiling unidentified), the target is
    above the fitted ceiling, fewer than 95% of bootstrap refits reach the target, or reaching
    it needs more than `max_decades` decades of compute beyond the largest observed run.
    """
    x, y = data.x, data.value
    cmax = float(data.compute.max())
    best = float(y.max())
    base = dict(target=target, observed_max_compute=cmax, observed_best=best, tokens_per_param=tokens_per_param)

    def n_of(c):
        return math.sqrt(c / (6.0 * tokens_per_param))

    if not 0 < target < ceiling:
        return Extrapolation(False, reason=f"target {target} is outside (0, {ceiling})", **base)
    floor = chance if chance is not None else float(np.quantile(y, 0.1))
    sig = SigmoidFit(chance=chance, ceiling=ceiling).fit(x, y)
    resid = y - sig.predict(x)
    sd = noise if noise is not None else float(np.std(resid, ddof=min(len(y) - 1, sig.n_free)))
    top = np.sort(y)[-max(3, len(y) // 10):].mean()
    if top - floor < min_rise_sigmas * max(sd, 1e-6):
        return Extrapolation(False, reason=(f"no rise above chance yet: the best observed values ({top:.3f}) are "
                                            f"within {min_rise_sigmas:g} sd ({sd:.3f}) of chance ({floor:.3f}), so "
                                            "the sigmoid's midpoint "
                                            "and ceiling are not identified by the data"), fit=sig.params_, **base)
    if best >= target:
        c_reach = float(data.compute[y >= target].min())
        return Extrapolation(True, reason="already reached within the observed range", compute=c_reach,
                             compute_ci95=(c_reach, c_reach), extra_compute_factor=1.0, params=n_of(c_reach),
                             params_ci95=(n_of(c_reach), n_of(c_reach)), reachable_fraction=1.0, fit=sig.params_,
                             **base)
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) == 0:
            continue
        b = SigmoidFit(chance=chance, ceiling=ceiling).fit(x[idx], y[idx], p0=sig._p)
        xs.append(b.inverse(target))
    xs_arr = np.array(xs)
    reach = np.isfinite(xs_arr)
    frac = float(reach.mean()) if len(xs_arr) else 0.0
    x_hat = sig.inverse(target)
    fitres = dict(sig.params_)
    if not math.isfinite(x_hat):
        return Extrapolation(False, reason=(f"target {target} is above the fitted ceiling {sig.params_['hi']:.3f}: "
                                            "the fit says more compute alone does not get there"),
                             reachable_fraction=frac, fit=fitres, **base)
    if frac < 0.95:
        return Extrapolation(False, reason=(f"only {100 * frac:.0f}% of bootstrap refits ever reach {target} "
                                            "(the ceiling is not pinned down by the data)"),
                             reachable_fraction=frac, fit=fitres, **base)
    lo, hi = np.quantile(xs_arr[reach], [0.025, 0.975])
    beyond = hi - math.log10(cmax)
    if beyond > max_decades:
        return Extrapolation(False, reason=(f"the 95% interval reaches 10^{hi:.1f} FLOPs, {beyond:.1f} decades "
                                            "beyond the "
                                            f"largest observed run (limit {max_decades:g}): too far to extrapolate"),
                             compute=10 ** x_hat, compute_ci95=(10 ** lo, 10 ** hi), reachable_fraction=frac,
                             fit=fitres, **base)
    c = 10 ** x_hat
    return Extrapolation(True, reason="within the supported extrapolation range", compute=c,
                         compute_ci95=(10 ** lo, 10 ** hi), extra_compute_factor=c / cmax, params=n_of(c),
                         params_ci95=(n_of(10 ** lo), n_of(10 ** hi)), reachable_fraction=frac, fit=fitres, **base)


def from_records(records: Iterable[Any], metric: str = "final_val_loss", params: str = "non_embedding") -> ScaleMetric:
    """Sweep registry records as (compute, metric) rows, read by the runs-table reader."""
    return from_columns(records_columns(records, params=params, extra=[metric]), metric, group=True)


# ----------------------------------------------------------------------------- two-step (model ladder)
#
# Bhagia et al. 2024 ("Establishing task scaling laws via compute-efficient model ladders")
# predict a large model's accuracy in two steps: (1) the task loss -- the negative
# log-likelihood of the correct answer -- from (N, D) with a Chinchilla-form power law, then
# (2) accuracy from task loss with a sigmoid. Loss is smooth in scale where accuracy is not, and
# the loss -> accuracy map is shared by all sizes, so small models' checkpoints pin it down.

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmbt])\b", re.IGNORECASE)
_SIZE_UNIT = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def nominal_size(name: str) -> float | None:
    """The size a model's name states (pythia-6.9b -> 6.9e9, pythia-70m -> 7e7), else None."""
    m = _SIZE.search(name.replace("_", "-").split("/")[-1])
    return float(m.group(1)) * _SIZE_UNIT[m.group(2).lower()] if m else None


@dataclass
class LadderData:
    """One row per (model, checkpoint): N (12 L d^2), D tokens, task loss (nats) and accuracy."""

    model: list[str]
    size: np.ndarray  # nominal size from the name (N when the name carries none): selects fit/predict models
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    task: str
    loss_source: str  # which column the loss comes from, and whether it is the task's own or a proxy

    def select(self, mask: np.ndarray) -> "LadderData":
        mask = np.asarray(mask, bool)
        return LadderData([m for m, k in zip(self.model, mask) if k], self.size[mask], self.N[mask], self.D[mask],
                          self.loss[mask], self.acc[mask], self.task, self.loss_source)

    @property
    def C(self) -> np.ndarray:
        return 6.0 * self.N * self.D


def read_pythia_ladder(path: str | os.PathLike, task: str, metric: str = "acc", loss_task: str | None = None,
                       loss_metric: str = "ppl", deduped: bool = False, min_step: int = 1) -> LadderData:
    """Join a Pythia-style CSV's accuracy rows with its loss rows of the same checkpoints.

    The task loss is ln(perplexity): lm-evaluation-harness's lambada perplexity is exp of the
    mean negative log-likelihood of the correct final word, so its log is exactly the task loss
    of Bhagia et al. A task without a perplexity column (arc_easy, piqa, ...) has no likelihood
    of its answers in the file; then `loss_task` names another task whose loss stands in as a
    proxy of the checkpoint's language-modelling quality, and `loss_source` says so.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    loss_task = loss_task or task
    acc: dict[tuple[str, int], float] = {}
    loss: dict[tuple[str, int], float] = {}
    shape: dict[tuple[str, int], tuple[float, float]] = {}
    for i, row in _pythia_rows(path):
        if row["deduped"] != ("1" if deduped else "0") or _int(row["step"], path, i, "step") < min_step:
            continue
        key = (row["model"], _int(row["step"], path, i, "step"))
        if row["task"] == task and row["metric"] == metric:
            acc[key] = _float(row["value"], path, i, "value")
        elif row["task"] == loss_task and row["metric"] == loss_metric:
            v = _float(row["value"], path, i, "value")
            if v <= 0:
                raise DataError(f"{path}:{i}: {loss_metric} {v} is not a positive perplexity")
            loss[key] = math.log(v)
        else:
            continue
        shape[key] = (pythia_non_embedding_params(_int(row["n_layers"], path, i, "n_layers"),
                                                  _int(row["d_model"], path, i, "d_model")),
                      _float(row["tokens"], path, i, "tokens"))
    if not acc:
        raise DataError(f"{path}: no rows for task={task!r} metric={metric!r}")
    if not loss:
        raise DataError(f"{path}: no {loss_metric!r} rows for task {loss_task!r}; a task without a likelihood column "
                        "needs a proxy loss (--loss-task, e.g. lambada_openai)")
    keys = sorted(set(acc) & set(loss), key=lambda k: (shape[k][0], k[1]))
    if len(keys) < 6:
        raise DataError(f"{path}: only {len(keys)} checkpoints have both {task} {metric} and {loss_task} {loss_metric}")
    names = [k[0] for k in keys]
    n = np.array([shape[k][0] for k in keys])
    size = np.array([nominal_size(m) or nn for m, nn in zip(names, n)])
    src = (f"{task} ln({loss_metric}) (the task's own loss)" if loss_task == task else
           f"{loss_task} ln({loss_metric}) (proxy: {task} has no likelihood column in this file)")
    return LadderData(names, size, n, np.array([shape[k][1] for k in keys]), np.array([loss[k] for k in keys]),
                      np.array([acc[k] for k in keys]), task, src)


@dataclass
class TaskLossLaw:
    """Step 1: L(N, D) = E + A N^-alpha + B D^-beta ("nd"), or L(C) = E + A C^-alpha ("compute").

    Fitted by least squares on log L (relative errors, as Hoffmann et al. 2022 fit log loss),
    from several starts; the parameters are bounded, and a parameter that keeps landing on its
    bound is reported as not identified by the data.
    """

    form: str = "nd"
    params_: dict[str, float] = field(default_factory=dict)
    rss_: float = math.nan

    BOUNDS = {"logE": (-10.0, 5.0), "logA": (-20.0, 60.0), "alpha": (0.0, 2.5), "logB": (-20.0, 60.0),
              "beta": (0.0, 2.5)}

    def __post_init__(self) -> None:
        if self.form not in ("nd", "compute"):
            raise LmscaleError(f"task-loss law form {self.form!r}: use 'nd' or 'compute'")

    @property
    def names(self) -> list[str]:
        return ["logE", "logA", "alpha"] + (["logB", "beta"] if self.form == "nd" else [])

    @staticmethod
    def _terms(p, lnN, lnD, lnC, form):
        if form == "nd":
            e, a, al, b, be = p
            return np.exp(e) + np.exp(np.clip(a - al * lnN, -700, 700)) + np.exp(np.clip(b - be * lnD, -700, 700))
        e, a, al = p
        return np.exp(e) + np.exp(np.clip(a - al * lnC, -700, 700))

    def fit(self, N, D, loss, p0: np.ndarray | None = None) -> "TaskLossLaw":
        N, D, loss = (np.asarray(v, float) for v in (N, D, loss))
        if np.any(loss <= 0):
            raise DataError("task loss must be positive")
        lnN, lnD = np.log(N), np.log(D)
        lnC = np.log(6.0) + lnN + lnD
        y = np.log(loss)
        lb = np.array([self.BOUNDS[k][0] for k in self.names])
        ub = np.array([self.BOUNDS[k][1] for k in self.names])
        if p0 is not None:
            starts = [p0]
        else:
            e0 = math.log(max(float(loss.min()) * 0.5, 1e-3))
            starts = []
            for al in (0.1, 0.3, 0.7):
                for be in ((0.1, 0.3, 0.7) if self.form == "nd" else (None,)):
                    # put each term at about the observed loss scale at the data's middle
                    s = [e0, math.log(float(np.median(loss))) + al * float(np.median(lnN if be else lnC)), al]
                    if be is not None:
                        s += [math.log(float(np.median(loss))) + be * float(np.median(lnD)), be]
                    starts.append(np.array(s))
        best = None
        for s in starts:
            s = np.clip(np.asarray(s, float), lb + 1e-9, ub - 1e-9)
            r = least_squares(lambda p: np.log(self._terms(p, lnN, lnD, lnC, self.form)) - y, s, bounds=(lb, ub),
                              method="trf", max_nfev=2000)
            if best is None or r.cost < best.cost:
                best = r
        self._p = best.x
        self.params_ = dict(zip(self.names, map(float, best.x)))
        self.rss_ = float(2 * best.cost)
        return self

    def predict(self, N, D):
        lnN, lnD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
        return self._terms(self._p, lnN, lnD, np.log(6.0) + lnN + lnD, self.form)

    def readable(self) -> dict[str, float]:
        """E, A, alpha (and B, beta) in the paper's units."""
        p = self.params_
        out = {"E": math.exp(p["logE"]), "A": math.exp(p["logA"]), "alpha": p["alpha"]}
        if self.form == "nd":
            out |= {"B": math.exp(p["logB"]), "beta": p["beta"]}
        return out

    def at_bound(self, tol: float = 1e-3) -> dict[str, bool]:
        out = {}
        for k, v in self.params_.items():
            lo, hi = self.BOUNDS[k]
            out[k] = bool(min(v - lo, hi - v) < tol * (hi - lo))
        return out


def _accuracy_vs_loss(loss: np.ndarray, acc: np.ndarray, chance: float | None, p0=None) -> SigmoidFit:
    """Step 2: accuracy = lo + (hi - lo) / (1 + exp(k (L - L0))), a sigmoid in -L."""
    return SigmoidFit(chance=chance, ceiling=1.0).fit(-np.asarray(loss, float), acc, p0=p0)


def _sigmoid_at_bound(s: SigmoidFit, x: np.ndarray, tol: float = 1e-3) -> dict[str, bool]:
    """Which sigmoid parameters sit on the bounds SigmoidFit.fit imposes (data does not hold them)."""
    p = s.params_
    out = {"hi": bool(s.ceiling is not None and p["hi"] > s.ceiling - tol),
           "k": bool(p["k"] < 1e-3 + tol or p["k"] > 200.0 - tol),
           "x0": bool(p["x0"] < x.min() - 10 + tol or p["x0"] > x.max() + 10 - tol)}
    if s.chance is None:
        out["lo"] = False
    return out


@dataclass
class LadderPrediction:
    model: str
    size: float
    N: float
    D: float
    compute: float
    loss_pred: float
    loss_ci95: tuple[float, float]
    acc_two_step: float
    acc_two_step_ci95: tuple[float, float]
    acc_one_step: float
    acc_one_step_ci95: tuple[float, float]
    loss_observed: float | None = None
    acc_observed: float | None = None
    abs_err_two_step: float | None = None
    abs_err_one_step: float | None = None
    acc_at_observed_loss: float | None = None  # step 2 alone, fed the true loss: splits the error between steps


@dataclass
class LadderResult:
    task: str
    metric: str
    loss_source: str
    loss_form: str
    fit_models: list[str]
    n_fit_rows: int
    n_loss_rows: int
    n_bootstrap: int
    loss_law: dict[str, dict[str, Any]]  # name -> {value, ci95, identified}
    acc_vs_loss: dict[str, dict[str, Any]]
    one_step: dict[str, dict[str, Any]]
    loss_rmse_log: float
    acc_vs_loss_rmse: float
    one_step_rmse: float
    predictions: list[LadderPrediction]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _param_table(point: dict[str, float], boot: list[dict[str, float]], at_bound: list[dict[str, bool]],
                 point_bound: dict[str, bool], max_bound_frac: float = 0.1) -> dict[str, dict[str, Any]]:
    """Point value, bootstrap 95% interval and whether the data identify each parameter.

    Not identified: the full-data fit sits on the parameter's bound, or more than `max_bound_frac`
    of the bootstrap refits do -- the likelihood is flat that way, and the number is the bound's.
    """
    out = {}
    for k, v in point.items():
        vals = np.array([b[k] for b in boot]) if boot else np.array([v])
        frac = float(np.mean([b.get(k, False) for b in at_bound])) if at_bound else 0.0
        ok = not point_bound.get(k, False) and frac <= max_bound_frac
        lo, hi = (np.quantile(vals, [0.025, 0.975]) if len(vals) > 1 else (v, v))
        out[k] = {"value": float(v), "ci95": (float(lo), float(hi)), "identified": bool(ok),
                  "at_bound_fraction": frac}
    return out


def _sigmoid_table(s: SigmoidFit, x: np.ndarray, y: np.ndarray, boot, boot_bound,
                   min_rise_sigmas: float = 3.0) -> dict[str, dict[str, Any]]:
    """Like `_param_table`; with no rise above the floor in the data, no sigmoid parameter is identified."""
    tab = _param_table(s.params_, boot, boot_bound, _sigmoid_at_bound(s, x))
    if s.chance is not None:
        tab.pop("lo", None)
    sd = float(np.std(y - s.predict(x), ddof=min(len(y) - 1, s.n_free)))
    floor = s.chance if s.chance is not None else float(np.quantile(y, 0.1))
    top = float(np.sort(y)[-max(3, len(y) // 10):].mean())
    if top - floor < min_rise_sigmas * max(sd, 1e-6):
        for v in tab.values():
            v["identified"] = False
    return tab


def _ci(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, float)
    a = a[np.isfinite(a)]
    return (float(np.quantile(a, 0.025)), float(np.quantile(a, 0.975))) if len(a) > 1 else (math.nan, math.nan)


def ladder_predict(data: LadderData, fit_below: float, predict: Sequence[float], chance: float | None = None,
                   loss_form: str = "nd", n_bootstrap: int = 200, seed: int = 0,
                   tokens: float | None = None, loss_min_fraction: float = 0.1) -> LadderResult:
    """Fit both steps (and the one-step sigmoid in log-compute) on models smaller than `fit_below`.

    `predict` are sizes: a size matching a model in `data` (within 5%, by its nominal size) is
    predicted at its final checkpoint and compared with the observed accuracy; any other size is
    taken as N at `tokens` (default: the largest D seen). Intervals are a bootstrap over
    checkpoints, resampled within each fitting model so that every size stays represented.

    Step 1 uses each model's checkpoints past `loss_min_fraction` of its training tokens: before
    that the loss is still near its initial value, a regime no power law in D describes (and
    Bhagia et al. fit step 1 on trained models only). Steps 2 and the one-step sigmoid use every
    checkpoint: the untrained ones are what pin the accuracy floor.
    """
    fit = data.select(data.size < fit_below)
    models = sorted(set(fit.model), key=lambda m: fit.size[fit.model.index(m)])
    if len(models) < 2:
        raise DataError(f"fitting needs at least 2 model sizes below {fit_below:g}; found {models}")
    if len(fit.acc) < 8:
        raise DataError(f"only {len(fit.acc)} checkpoints below {fit_below:g}")
    tokens = float(tokens if tokens is not None else data.D.max())
    targets = []
    for s in predict:
        hit = [i for i in range(len(data.model)) if abs(data.size[i] / s - 1) < 0.05]
        if hit:
            last = max(hit, key=lambda i: data.D[i])
            targets.append((data.model[last], s, data.N[last], data.D[last], data.loss[last], data.acc[last]))
        else:
            targets.append((f"N={s:.3g}", s, float(s), tokens, None, None))
    tN = np.array([t[2] for t in targets])
    tD = np.array([t[3] for t in targets])
    tx = np.log10(6.0 * tN * tD)

    dmax = {m: float(fit.D[np.array(fit.model) == m].max()) for m in models}
    trained = np.array([dd >= loss_min_fraction * dmax[m] for m, dd in zip(fit.model, fit.D)])

    def run(d: LadderData, use: np.ndarray, law0=None, sig0=None, one0=None):
        law = TaskLossLaw(loss_form).fit(d.N[use], d.D[use], d.loss[use], p0=law0)
        sig = _accuracy_vs_loss(d.loss, d.acc, chance, p0=sig0)
        one = SigmoidFit(chance=chance, ceiling=1.0).fit(np.log10(d.C), d.acc, p0=one0)
        return law, sig, one

    law, sig, one = run(fit, trained)
    lpred = law.predict(tN, tD)
    two = sig.predict(-lpred)
    ones = one.predict(tx)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(np.array(fit.model) == m) for m in models]
    b_loss, b_two, b_one = [], [], []
    b_law, b_sig, b_onep, bb_law, bb_sig, bb_one = [], [], [], [], [], []
    for _ in range(n_bootstrap):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        d = LadderData([fit.model[i] for i in idx], fit.size[idx], fit.N[idx], fit.D[idx], fit.loss[idx],
                       fit.acc[idx], fit.task, fit.loss_source)
        bl, bs, bo = run(d, trained[idx], law._p, sig._p, one._p)
        lp = bl.predict(tN, tD)
        b_loss.append(lp), b_two.append(bs.predict(-lp)), b_one.append(bo.predict(tx))
        b_law.append(bl.params_), bb_law.append(bl.at_bound())
        b_sig.append(bs.params_), bb_sig.append(_sigmoid_at_bound(bs, -d.loss))
        b_onep.append(bo.params_), bb_one.append(_sigmoid_at_bound(bo, np.log10(d.C)))
    preds = []
    for j, (name, s, n, dd, lo_obs, acc_obs) in enumerate(targets):
        preds.append(LadderPrediction(
            model=name, size=float(s), N=float(n), D=float(dd), compute=float(6 * n * dd),
            loss_pred=float(lpred[j]), loss_ci95=_ci([a[j] for a in b_loss]), acc_two_step=float(two[j]),
            acc_two_step_ci95=_ci([a[j] for a in b_two]), acc_one_step=float(ones[j]),
            acc_one_step_ci95=_ci([a[j] for a in b_one]),
            loss_observed=None if lo_obs is None else float(lo_obs),
            acc_observed=None if acc_obs is None else float(acc_obs),
            abs_err_two_step=None if acc_obs is None else float(abs(two[j] - acc_obs)),
            abs_err_one_step=None if acc_obs is None else float(abs(ones[j] - acc_obs)),
            acc_at_observed_loss=None if lo_obs is None else float(sig.predict(-np.array([lo_obs]))[0])))
    sig_tab = _sigmoid_table(sig, -fit.loss, fit.acc, b_sig, bb_sig)
    one_tab = _sigmoid_table(one, np.log10(fit.C), fit.acc, b_onep, bb_one)
    return LadderResult(
        task=data.task, metric="acc", loss_source=data.loss_source, loss_form=loss_form, fit_models=models,
        n_fit_rows=len(fit.acc), n_loss_rows=int(trained.sum()), n_bootstrap=n_bootstrap,
        loss_law=_param_table(law.params_, b_law, bb_law, law.at_bound()),
        acc_vs_loss=sig_tab, one_step=one_tab,
        loss_rmse_log=float(np.sqrt(np.mean((np.log(law.predict(fit.N[trained], fit.D[trained]))
                                             - np.log(fit.loss[trained])) ** 2))),
        acc_vs_loss_rmse=float(np.sqrt(np.mean((sig.predict(-fit.loss) - fit.acc) ** 2))),
        one_step_rmse=float(np.sqrt(np.mean((one.predict(np.log10(fit.C)) - fit.acc) ** 2))),
        predictions=preds)
