"""Scaling figures: loss against compute, parameters and tokens, IsoFLOPs, allocation, emergence.

Every figure is drawn from plain arrays (a `RunsTable`) so the same code serves a sweep
registry and a CSV of published runs (the Chinchilla paper's). Power laws are straight lines on
log-log axes, so every scale axis is logarithmic, and every axis says its unit.
Figures are `matplotlib.figure.Figure` objects, not pyplot ones: they need no display and leave
the caller's pyplot backend and figure list alone. `save` writes them atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from lmscale.io import atomic_path
from lmscale.scaling.emergence import BrokenPowerLawFit, SigmoidFit
from lmscale.scaling.fitting import law_derived
from lmscale.scaling.frontier import frontier_indices
from lmscale.scaling.frontier import frontier_indices as frontier  # one frontier for fits and figures
from lmscale.scaling.runs import RunsTable

__all__ = ["RunsTable", "frontier", "isoflop_minima", "law_derived", "law_frontier", "plot_allocation",
           "plot_emergence", "plot_icl", "plot_isoflop", "plot_loss_vs", "plot_loss_vs_compute",
           "plot_metric_pair", "plot_training_curves", "save"]

LOSS_LABEL = "validation loss (nats/token)"
C_LABEL = "training compute C = 6ND (FLOPs)"
N_LABEL = "parameters N"
D_LABEL = "training tokens D"


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.4)):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def _cmap(name: str):
    return matplotlib.colormaps[name]


def _loss_axis(ax) -> None:
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _n_label(t: RunsTable) -> str:
    return f"{N_LABEL} ({t.n_kind})" if t.n_kind else N_LABEL


def _groups(values: np.ndarray, rel: float = 0.1) -> list[np.ndarray]:
    """Indices of runs whose value agrees within `rel` (runs planned at one budget)."""
    order = np.argsort(values)
    groups, cur = [], [order[0]]
    for i in order[1:]:
        if values[i] <= values[cur[0]] * (1 + rel):
            cur.append(i)
        else:
            groups.append(np.array(cur))
            cur = [i]
    groups.append(np.array(cur))
    return groups


def law_frontier(law: Any, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compute-optimal N and loss of a fitted Chinchilla law along C (closed form, D = C/6N)."""
    dv = law_derived(law)
    n_opt = dv["G"] * (C / 6.0) ** dv["a"]
    return n_opt, law.predict(n_opt, C / (6.0 * n_opt))


def plot_loss_vs_compute(t: RunsTable, law: Any = None):
    fig, ax = _figure()
    sc = ax.scatter(t.C, t.loss, c=np.log10(t.N), cmap="viridis", s=28, zorder=3)
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label(f"log10 {_n_label(t)}")
    f = frontier_indices(t.C, t.loss)  # the runs fit_frontier fits
    ax.plot(t.C[f], t.loss[f], "k--", lw=1.2, label="efficient frontier (runs)", zorder=2)
    if law is not None:
        cg = np.logspace(np.log10(t.C.min()), np.log10(t.C.max()) + 0.5, 100)
        _, lg = law_frontier(law, cg)
        ax.plot(cg, lg, color="tab:red", lw=1.5, label="compute-optimal frontier (fitted law)")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(C_LABEL), ax.set_ylabel(LOSS_LABEL)
    _loss_axis(ax)
    ax.set_title("Loss vs compute")
    ax.legend(fontsize=8)
    return fig


def _band(law: Any, N, D) -> dict[str, np.ndarray] | None:
    if law is None or getattr(law, "bootstrap_", None) is None:
        return None
    return law.prediction_interval(N, D)


def plot_loss_vs(t: RunsTable, var: str, law: Any = None):
    """Loss against N (one line per token budget) or against D (one line per model size)."""
    fig, ax = _figure()
    x, other = (t.N, t.D) if var == "N" else (t.D, t.N)
    groups = _groups(other) if len(t) <= 400 else [np.arange(len(t))]
    reps = None
    if len(groups) > 8:  # too many budgets to draw one line each: colour by the other variable
        sc = ax.scatter(x, t.loss, c=np.log10(other), cmap="plasma", s=14, alpha=0.7)
        fig.colorbar(sc, ax=ax).set_label("log10 " + (D_LABEL if var == "N" else _n_label(t)))
        reps = np.quantile(other, [0.1, 0.5, 0.9])
        groups = []
    cmap = _cmap("viridis")
    if reps is not None and law is not None:
        pcm = _cmap("plasma")
        lo_o, hi_o = np.log10(other.min()), np.log10(other.max())
        for o in reps:
            col = pcm((np.log10(o) - lo_o) / max(hi_o - lo_o, 1e-9))
            xg = np.logspace(np.log10(x.min()) - 0.2, np.log10(x.max()) + 0.3, 60)
            args = (xg, np.full_like(xg, o)) if var == "N" else (np.full_like(xg, o), xg)
            label = f"law at D={o:.3g}" if var == "N" else f"law at N={o:.3g}"
            ax.plot(xg, law.predict(*args), color=col, lw=1.4, label=label)
            band = _band(law, *args)
            if band is not None:
                ax.fill_between(xg, band["ci_low"], band["ci_high"], color=col, alpha=0.25, lw=0)
        ax.legend(fontsize=7)
    for gi, g in enumerate(groups):
        col = cmap(gi / max(1, len(groups) - 1))
        o = float(np.exp(np.mean(np.log(other[g]))))
        lab = f"D={o:.3g}" if var == "N" else f"N={o:.3g}"
        ax.scatter(x[g], t.loss[g], color=col, s=28, zorder=3, label=lab)
        if law is not None:
            xg = np.logspace(np.log10(x.min()) - 0.2, np.log10(x.max()) + 0.3, 60)
            og = np.full_like(xg, o)
            args = (xg, og) if var == "N" else (og, xg)
            ax.plot(xg, law.predict(*args), color=col, lw=1.2)
            band = _band(law, *args)
            if band is not None:
                ax.fill_between(xg, band["ci_low"], band["ci_high"], color=col, alpha=0.2, lw=0)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(_n_label(t) if var == "N" else D_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    _loss_axis(ax)
    title = "Loss vs parameters" if var == "N" else "Loss vs tokens"
    if law is not None:
        title += " (lines: fitted law" + (", bands: 95% CI)" if _band(law, t.N[:1], t.D[:1]) is not None else ")")
    ax.set_title(title, fontsize=10)
    if groups:
        ax.legend(fontsize=7, ncol=2)
    return fig


def isoflop_minima(t: RunsTable, min_runs: int = 4, rel: float = 0.35) -> list[dict[str, float]]:
    """Approach 2 (Hoffmann et al.): per compute budget, a parabola in log N through the runs; its minimum."""
    out = []
    for g in _groups(t.C, rel):
        if len(g) < min_runs or len(np.unique(np.round(np.log10(t.N[g]), 3))) < 3:
            continue
        x, y = np.log10(t.N[g]), t.loss[g]
        a, b, c = np.polyfit(x, y, 2)
        if a <= 0:
            continue
        xm = -b / (2 * a)
        if not (x.min() - 0.5 <= xm <= x.max() + 0.5):
            continue
        cm = float(np.exp(np.mean(np.log(t.C[g]))))
        out.append({"C": cm, "N_opt": float(10 ** xm), "D_opt": cm / (6 * 10 ** xm),
                    "loss": float(a * xm ** 2 + b * xm + c),
                    "indices": g.tolist(), "coef": [float(a), float(b), float(c)]})
    return out


def plot_isoflop(t: RunsTable, law: Any = None, budgets: Sequence[float] | None = None):
    """IsoFLOP curves: measured slices with their parabola minima, else the fitted law's."""
    fig, ax = _figure()
    mins = isoflop_minima(t)
    cmap = _cmap("plasma")
    if mins:
        for i, m in enumerate(mins):
            col = cmap(i / max(1, len(mins) - 1) * 0.85)
            g = np.array(m["indices"])
            ax.scatter(t.N[g], t.loss[g], color=col, s=24, zorder=3, label=f"C={m['C']:.2g}")
            xg = np.linspace(np.log10(t.N[g]).min() - 0.1, np.log10(t.N[g]).max() + 0.1, 50)
            ax.plot(10 ** xg, np.polyval(m["coef"], xg), color=col, lw=1)
            ax.plot([m["N_opt"]], [m["loss"]], marker="*", color=col, ms=12, mec="k", zorder=4)
        ax.set_title("IsoFLOP slices (parabola fits in log N, stars: minima)", fontsize=10)
    elif law is not None:
        cs = budgets or np.logspace(np.log10(t.C.min()), np.log10(t.C.max()), 4)
        for i, c in enumerate(cs):
            col = cmap(i / max(1, len(cs) - 1) * 0.85)
            n_opt, l_opt = law_frontier(law, np.array([c]))
            ng = n_opt[0] * np.logspace(-1, 1, 60)
            ax.plot(ng, law.predict(ng, c / (6 * ng)), color=col, lw=1.3, label=f"C={c:.2g}")
            ax.plot(n_opt, l_opt, marker="*", color=col, ms=12, mec="k")
        ax.set_title("IsoFLOP curves of the fitted law (stars: minima)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no IsoFLOP slices and no fitted law", ha="center", transform=ax.transAxes)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(_n_label(t)), ax.set_ylabel(LOSS_LABEL)
    _loss_axis(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    return fig


def plot_allocation(t: RunsTable, law: Any = None):
    """N_opt(C) and D_opt(C): the fitted law's closed form with bootstrap bands, IsoFLOP minima as points."""
    fig, ax = _figure()
    cg = np.logspace(np.log10(t.C.min()) - 0.5, np.log10(t.C.max()) + 1.5, 80)
    if law is not None:
        dv = law_derived(law)
        n_opt = dv["G"] * (cg / 6) ** dv["a"]
        ax.plot(cg, n_opt, color="tab:blue", label=f"N_opt ∝ C^{dv['a']:.2f} (fitted law)")
        ax.plot(cg, cg / (6 * n_opt), color="tab:orange", label=f"D_opt ∝ C^{dv['b']:.2f} (fitted law)")
        b = getattr(law, "bootstrap_", None)
        if b is not None and {"G", "a"} <= set(b.samples):
            G, a = b.samples["G"][:, None], b.samples["a"][:, None]
            ok = np.isfinite(G[:, 0]) & np.isfinite(a[:, 0]) & (G[:, 0] > 0)
            if ok.sum() >= 2:  # a degenerate fit can leave no usable bootstrap sample
                ns = G[ok] * (cg[None, :] / 6) ** a[ok]
                lo, hi = np.percentile(ns, [2.5, 97.5], axis=0)
                ax.fill_between(cg, lo, hi, color="tab:blue", alpha=0.2, lw=0, label="95% CI")
                ax.fill_between(cg, cg / (6 * hi), cg / (6 * lo), color="tab:orange", alpha=0.2, lw=0)
    ax.plot(cg, np.sqrt(cg / 120), "k:", lw=1, label="20 tokens/parameter rule")
    mins = isoflop_minima(t)
    if mins:
        ax.scatter([m["C"] for m in mins], [m["N_opt"] for m in mins], color="tab:blue", marker="*", s=80, zorder=3,
                   label="IsoFLOP minima")
        ax.scatter([m["C"] for m in mins], [m["D_opt"] for m in mins], color="tab:orange", marker="*", s=80, zorder=3)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(C_LABEL), ax.set_ylabel("compute-optimal N (parameters) and D (tokens)")
    ax.set_title("Compute-optimal allocation")
    ax.legend(fontsize=7)
    return fig


def plot_training_curves(t: RunsTable):
    fig, ax = _figure()
    cmap = _cmap("viridis")
    lo, hi = np.log10(t.N.min()), np.log10(t.N.max())
    drawn = 0
    for i, curve in enumerate(t.curves):
        pts = [(c[1], c[2]) for c in curve if c[1] and c[1] > 0]
        if not pts:
            continue
        x, y = zip(*pts)
        col = cmap((np.log10(t.N[i]) - lo) / max(hi - lo, 1e-9))
        ax.plot(x, y, color=col, lw=1, marker=".", ms=3)
        drawn += 1
    if drawn == 0:
        ax.text(0.5, 0.5, "no training curves in this source", ha="center", transform=ax.transAxes)
    else:
        fig.colorbar(ScalarMappable(norm=Normalize(lo, hi), cmap=cmap), ax=ax).set_label(f"log10 {_n_label(t)}")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokens seen (tokens)"), ax.set_ylabel(LOSS_LABEL)
    _loss_axis(ax)
    ax.set_title("Training curves (validation loss during training)")
    return fig


def plot_emergence(data: Any, analysis: Any, log_metric: bool = False, ax=None):
    """A metric against compute with the sigmoid and broken-power-law fits and the break."""
    fig = None
    if ax is None:
        fig, ax = _figure()
    groups = sorted(set(data.group)) if data.group else []
    if groups and len(groups) <= 20:
        cmap = _cmap("viridis")
        names = np.array(data.group)
        if data.params is not None:  # one line per model, smallest first
            order = sorted(groups, key=lambda g: float(np.median(data.params[names == g])))
        else:
            order = groups
        for i, g in enumerate(order):
            m = names == g
            ax.plot(data.compute[m], data.value[m], "o", ms=3, color=cmap(i / max(1, len(order) - 1)), label=g)
    else:
        ax.plot(data.compute, data.value, "o", ms=3, color="tab:blue", label="runs")
    xg = np.linspace(data.x.min(), data.x.max(), 300)
    s = analysis.sigmoid
    ys = SigmoidFit.curve(xg, s["lo"], s["hi"], s["k"], s["x0"])
    b = analysis.broken_power_law
    yb = BrokenPowerLawFit.curve(xg, b["a"], b["logb"], b["c0"], b["c1"], b["xb"], b["f"])
    if analysis.higher_is_better and not log_metric:
        yb = 1.0 - yb
    if log_metric:
        ys = 10 ** ys
        yb = 10 ** (yb + np.log10(data.value).min() - 1e-3 * max(np.ptp(np.log10(data.value)), 1e-9))
        ax.set_yscale("log")
    ax.plot(10 ** xg, ys, "k-", lw=1.5, label=f"sigmoid (10-90%: {analysis.transition_width_decades:.2f} decades)")
    ax.plot(10 ** xg, yb, "r--", lw=1.5, label="broken power law")
    if analysis.break_detected:
        ax.axvline(analysis.break_compute, color="r", lw=0.8, ls=":",
                   label=f"break at {analysis.break_compute:.2g} FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(f"{analysis.label or analysis.metric}")
    ax.set_title(analysis.label or analysis.metric, fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    return fig


def plot_metric_pair(disc: Any, disc_an: Any, cont: Any, cont_an: Any, comparison: dict[str, Any] | None = None):
    """Schaeffer et al. 2023: the same task under a discontinuous and a continuous metric."""
    fig, (a1, a2) = _figure(2, (11, 4.2))
    plot_emergence(disc, disc_an, ax=a1)
    plot_emergence(cont, cont_an, log_metric=True, ax=a2)
    if comparison:
        d, c = comparison["discontinuous"], comparison["continuous"]
        fig.suptitle(f"Same task, two metrics: 10-90% rise over {d['width_decades']:.2f} decades ({d['label']}) "
                     f"vs {c['width_decades']:.2f} ({c['label']})", fontsize=10)
    return fig


def plot_icl(result: dict[str, Any]):
    """In-context accuracy (and answer log-likelihood) against training tokens, one line per size."""
    fig, (a1, a2) = _figure(2, (11, 4.2))
    cmap = _cmap("viridis")
    models = result["models"]
    for i, m in enumerate(models):
        col = cmap(i / max(1, len(models) - 1))
        tok = [e["tokens"] for e in m["evals"]]
        for task, ls in (("recall", "-"), ("induction", "--")):
            a1.plot(tok, [e[task]["accuracy"] for e in m["evals"]], ls, color=col,
                    label=f"{task}, N={m['params_non_embedding'] / 1e3:.0f}k")
        for task, ls in (("recall", "-"), ("induction", "--")):
            a2.plot(tok, [e[task]["answer_logprob"] for e in m["evals"]], ls, color=col,
                    label=f"{task}, N={m['params_non_embedding'] / 1e3:.0f}k")
    chance = result.get("chance", {}).get("recall")
    if chance:
        a1.axhline(chance, color="grey", lw=0.8, ls=":", label="chance (recall)")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training tokens (tokens)")
        ax.legend(fontsize=6)
    a1.set_ylabel("in-context accuracy (fraction of queries)")
    a1.set_title("In-context accuracy (discontinuous metric)", fontsize=10)
    a2.set_ylabel("log-probability of the correct answer (nats)")
    a2.set_title("Answer log-likelihood (continuous metric)", fontsize=10)
    return fig
