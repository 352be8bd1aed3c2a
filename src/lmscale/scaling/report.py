"""The scaling report: every figure plus the fitted law in one self-contained HTML file.

The report opens offline and can be mailed as one file: images are embedded as base64 PNGs and
the styling is inline. It is built from a sweep registry or from any CSV of runs (the
Chinchilla paper's published runs among them), so it can be checked without training anything.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from lmscale.errors import DataError
from lmscale.io import atomic_write_bytes, atomic_write_text, read_json_file
from lmscale.io.outputs import mark_output_dir
from lmscale.scaling import plots
from lmscale.scaling.emergence import analyze, compare_metrics, read_pythia
from lmscale.scaling.fitting import fit_table, law_derived, table_problems
from lmscale.scaling.identify import identification, summary
from lmscale.scaling.laws import BootstrapResult, ChinchillaLaw
from lmscale.scaling.runs import RunsTable, dropped_note, load_runs

__all__ = ["build_report", "emergence_figures", "fit_from_file", "fit_table", "load_runs", "make_figures",
           "read_fit_file", "render_html"]


def make_figures(t: RunsTable, fit: dict[str, Any] | None, emergence: dict[str, Any] | None = None,
                 icl: dict[str, Any] | None = None) -> dict[str, Any]:
    """name -> (matplotlib figure, caption)."""
    law = fit["_law"] if fit else None
    src = (fit or {}).get("from_file")
    lines = f"lines: the Chinchilla law of {src['path']} (not refitted here)" if src else "lines: fitted Chinchilla law"
    if src and not src["bootstrap_refits"]:
        bands = "no bands (the fit file keeps no bootstrap refits)"
    else:
        bands = "bands: 95% bootstrap confidence interval" + (" from the fit file's refits" if src else "")
    # no compute-optimal line is drawn from a law that does not identify it
    alloc_ok = bool(fit) and (fit.get("identification") or {}).get("allocation_identified", True)
    alloc_law = law if alloc_ok else None
    not_drawn = ("" if alloc_ok or not fit else " No compute-optimal line: the fitted law does not identify "
                 "A, B, alpha and beta (see the fit), so it implies no allocation.")
    figs: dict[str, Any] = {
        "loss_vs_compute": (plots.plot_loss_vs_compute(t, alloc_law),
                            "Final validation loss against training compute; dashed: the runs' efficient "
                            "frontier; red: the fitted law's compute-optimal frontier." + not_drawn),
        "loss_vs_params": (plots.plot_loss_vs(t, "N", law), "Loss against parameters, one colour per token budget; "
                           f"{lines}, {bands}."),
        "loss_vs_tokens": (plots.plot_loss_vs(t, "D", law), "Loss against tokens, one colour per model size; "
                           "lines and bands as above."),
        "isoflop": (plots.plot_isoflop(t, law), "IsoFLOP curves with their minima (Hoffmann et al. approach 2)."),
        "allocation": (plots.plot_allocation(t, alloc_law),
                       "Compute-optimal parameters N_opt and tokens D_opt against compute." + not_drawn),
    }
    if any(t.curves):
        figs["training_curves"] = (plots.plot_training_curves(t), "Validation loss during training for every run.")
    if emergence:
        for key, item in emergence.items():
            figs[key] = item
    if icl:
        figs["icl"] = (plots.plot_icl(icl), "Synthetic in-context tasks: accuracy (left) and the log-probability "
                       "of the right answer (right) against training tokens, per model size.")
    return figs


def emergence_figures(csv_path: str | os.PathLike, task: str = "lambada_openai", metric: str = "acc",
                      continuous_metric: str = "ppl",
                      chance: float | None = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures and numbers for a Pythia-style CSV: the discontinuous and continuous metric of one task."""
    disc = read_pythia(csv_path, task, metric)
    cont = read_pythia(csv_path, task, continuous_metric)
    da = analyze(disc, chance=chance)
    ca = analyze(cont, higher_is_better=False, log_metric=True)
    cmp = compare_metrics(disc, cont)
    figs = {
        "emergence": (plots.plot_emergence(disc, da), f"{task} {metric} against compute (every Pythia model and "
                      "checkpoint): sigmoid and broken power law fits. " + da.break_reason + "."),
        "emergence_metrics": (plots.plot_metric_pair(disc, da, cont, ca, cmp),
                              "The same task under a discontinuous and a continuous metric (Schaeffer et al. 2023)."),
    }
    numbers = {"task": task, "discontinuous": da.to_dict(), "continuous": ca.to_dict(), "comparison": cmp}
    return figs, numbers


def _fmt(v: Any) -> str:
    """Floats to four significant digits; the template escapes whatever this returns."""
    if isinstance(v, float):
        if v == 0 or not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


# autoescaping, so titles, paths, run names and captions from the data cannot inject markup
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=False)
_ENV.filters["num"] = _fmt


def render_html(t: RunsTable, fit: dict[str, Any] | None, images: dict[str, tuple[bytes, str]],
                title: str, extra: dict[str, Any] | None = None) -> str:
    """Rows and numbers are prepared here; the markup is in `templates/report.html.j2`, whose autoescape
    keeps every value from the data out of it."""
    values: dict[str, Any] = {"t": t, "title": title, "fit": fit, "unidentified": {}, "allocation_identified": True,
                              "params": [], "holdout": None, "holdout_rows": [], "no_fit": "",
                              "from_file": (fit or {}).get("from_file")}
    values["dropped"] = dropped_note(t.dropped, limit=20) if getattr(t, "dropped", None) else ""
    if fit:
        p = fit["params"]
        ci = fit.get("ci95", {})
        ident = fit.get("identification") or {}
        bad = ident.get("unidentified") or {}
        rows = [{"parameter": k, "estimate": v, "95% CI low": ci.get(k, [math.nan])[0],
                 "95% CI high": ci.get(k, [math.nan, math.nan])[1],
                 "identified": "NO" if k in bad else "yes"} for k, v in p.items()]
        for k, v in fit["derived"].items():
            rows.append({"parameter": f"{k} (derived)", "estimate": v, "95% CI low": ci.get(k, [math.nan])[0],
                         "95% CI high": ci.get(k, [math.nan, math.nan])[1], "identified": "NO" if k in bad else "yes"})
        hc = fit.get("holdout_check") or None
        values.update(unidentified=bad, allocation_identified=ident.get("allocation_identified", True), params=rows,
                      holdout=hc)
        if hc:
            values["holdout_rows"] = [{**h, "rel. error (%)": 100 * h["rel_error"]} for h in hc["holdout"]]
    else:
        values["no_fit"] = "; ".join(table_problems(t)) or "no law fitted"
    values["figures"] = [(name, base64.b64encode(png).decode("ascii"), caption)
                         for name, (png, caption) in images.items()]
    values["extra"] = [(heading, json.dumps(obj, indent=1, default=float)) for heading, obj in (extra or {}).items()]
    runs = [{"run": n, "N": float(a), "D": float(b), "C": float(6 * a * b), "loss": float(c)}
            for n, a, b, c in sorted(zip(t.names, t.N, t.D, t.loss), key=lambda r: 6 * r[1] * r[2])]
    values["runs"] = runs if len(runs) <= 400 else []
    return _ENV.get_template("report.html.j2").render(**values)


def build_report(source: str | os.PathLike, out_html: str | os.PathLike | None = None,
                 png_dir: str | os.PathLike | None = None, sweep: str | None = None,
                 emergence_csv: str | os.PathLike | None = None, emergence_task: str = "lambada_openai",
                 icl_json: str | os.PathLike | None = None, holdout: str | None = "largest",
                 n_holdout: int | None = None, n_bootstrap: int = 100, title: str | None = None,
                 params: str = "non_embedding", grid: Any = "hoffmann", fit: dict[str, Any] | None = None,
                 exclude_top_loss: int = 0, fit_file: str | os.PathLike | None = None,
                 **csv_cols: Any) -> dict[str, Any]:
    """Fit, draw and write: PNGs into `png_dir`, one self-contained HTML at `out_html`.

    `csv_cols` (`n_col`, `d_col`, `c_col`, `loss_col`) name the columns of a CSV source. `fit`, a
    `fit_table` result of these runs (with its `_law`), is drawn instead of fitting them again.
    `exclude_top_loss` leaves out the runs with the highest losses, as `lmscale fit` does.
    `fit_file`, a chinchilla fit written by `lmscale fit --out`, is drawn instead of a fit of its
    own (`fit_from_file`); `holdout`, `n_bootstrap` and `grid` then do not apply.
    """
    saved = read_fit_file(fit_file) if fit_file is not None else None  # refused before any work
    t = load_runs(source, sweep=sweep, params=params, **csv_cols).without_top_loss(exclude_top_loss)
    if saved is not None:
        fit = fit_from_file(t, saved)
    elif fit is None or "_law" not in fit:
        fit = fit_table(t, holdout=holdout, n_holdout=n_holdout, n_bootstrap=n_bootstrap, grid=grid)
    extra: dict[str, Any] = {}
    em_figs = None
    if emergence_csv:
        em_figs, numbers = emergence_figures(emergence_csv, task=emergence_task)
        extra["Emergence analysis"] = numbers
    icl = None
    if icl_json:
        icl = _read_icl(icl_json)
        extra["In-context learning phase transition"] = {k: v for k, v in icl.items() if k != "models"} | {
            "models": [{k: v for k, v in m.items() if k != "evals"} for m in icl["models"]]}
    images, skipped = _render_pngs(make_figures(t, fit, em_figs, icl))
    if png_dir is not None:  # the figure names are claimed before any is written
        mark_output_dir(png_dir, "figures", names=[f"{name}.png" for name in images])
    written = [str(atomic_write_bytes(Path(png_dir) / f"{name}.png", png)) for name, (png, _) in images.items()
               ] if png_dir is not None else []
    result: dict[str, Any] = {"n_runs": len(t), "figures": list(images), "pngs": written,
                              "figures_not_drawn": skipped}
    if t.dropped:
        result["dropped"] = list(t.dropped)
    if fit:
        result["fit"] = {k: v for k, v in fit.items() if not k.startswith("_")}
    else:
        result["no_fit"] = "; ".join(table_problems(t))
    if emergence_csv:
        result["emergence"] = extra["Emergence analysis"]
    if out_html is not None:
        text = render_html(t, fit, images, title or f"Scaling report: {Path(source).name}", extra)
        atomic_write_text(out_html, text)
        result["html"] = str(out_html)
    return result


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_fit_file(path: str | os.PathLike) -> dict[str, Any]:
    """The chinchilla law a `lmscale fit --out` file holds, checked field by field: its params,
    n_points and, when kept, ci95, bootstrap refits and identification. Anything else is a one-line
    `DataError` naming the file, never a traceback halfway through a report."""
    fit = read_json_file(path, what="--fit")
    where = f"--fit {path}"
    missing = [k for k in ("law", "params", "n_points") if k not in fit]
    if missing:
        raise DataError(f"{where}: not a fit written by `lmscale fit --out` (no {', '.join(missing)})")
    if fit["law"] != "chinchilla":
        raise DataError(f"{where}: law {json.dumps(fit['law'])[:60]} cannot be drawn by a scaling report, which "
                        "draws a chinchilla law; write one with `lmscale fit --law chinchilla --out`")
    if fit.get("converged") is False:
        raise DataError(f"{where}: the fit did not converge; refit before reusing it")
    p = fit["params"]
    names = ChinchillaLaw.param_names
    if not isinstance(p, dict) or not all(_number(p.get(k)) for k in names):
        raise DataError(f"{where}: \"params\" must give {', '.join(names)} as finite numbers")
    if not all(p[k] > 0 for k in ("E", "A", "B")):
        raise DataError(f"{where}: the chinchilla law's E, A and B are positive; this file has "
                        + ", ".join(f"{k} = {p[k]:g}" for k in ("E", "A", "B")))
    n = fit["n_points"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"{where}: \"n_points\" must be a positive whole number")
    ci = fit.get("ci95") or {}
    if not isinstance(ci, dict) or not all(isinstance(v, list) and len(v) == 2
                                           and all(x is None or _number(x) for x in v) for v in ci.values()):
        raise DataError(f"{where}: \"ci95\" must map each name to [low, high] numbers")
    ci95 = {k: [math.nan if x is None else float(x) for x in v] for k, v in ci.items()}  # NaN is written as null
    boot = fit.get("bootstrap")
    samples = boot.get("samples") if isinstance(boot, dict) else None
    if boot is not None and not isinstance(boot, dict):
        raise DataError(f"{where}: \"bootstrap\" must be an object")
    refits = None
    if samples is not None:  # a bootstrap summary without its samples draws no bands
        cols = [samples.get(k) for k in names] if isinstance(samples, dict) else [None]
        if not all(isinstance(c, list) and len(c) >= 2 and len(c) == len(cols[0]) and all(map(_number, c))
                   for c in cols):
            raise DataError(f"{where}: \"bootstrap\" samples must give {', '.join(names)} as equally long "
                            "lists of finite numbers")
        s = {k: np.asarray(c, dtype=np.float64) for k, c in zip(names, cols)}
        s.update({k: np.asarray(v, dtype=np.float64) for k, v in ChinchillaLaw().derived(s).items()})
        counts = [boot.get(k) if isinstance(boot.get(k), int) and not isinstance(boot.get(k), bool) else default
                  for k, default in (("n_requested", len(cols[0])), ("n_failed", 0), ("seed", 0))]
        refits = BootstrapResult(s, *counts)
    ident = fit.get("identification")
    if ident is not None:
        def reasons(x: Any) -> bool:  # name -> why, as `identification` writes them
            return isinstance(x, dict) and all(isinstance(k, str) and isinstance(r, str) for k, r in x.items())

        if not (isinstance(ident, dict) and reasons(ident.get("unidentified"))
                and reasons(ident.get("wide_intermediates", {}))
                and isinstance(ident.get("allocation_identified", True), bool)):
            raise DataError(f"{where}: \"identification\" is not one `lmscale fit` writes")
        bad = ident["unidentified"]
        ident = {"identified": not bad, "unidentified": dict(bad),
                 "allocation_identified": ident.get("allocation_identified", True), "summary": summary(bad),
                 **({"wide_intermediates": dict(ident["wide_intermediates"])} if "wide_intermediates" in ident
                    else {})}
    extra = {k: fit[k] for k in ("min_loss", "residual_std_log") if _number(fit.get(k))}
    return {"path": str(path), "params": {k: float(p[k]) for k in names}, "n_points": n, "ci95": ci95,
            "bootstrap": refits, "identification": ident, **extra}


def fit_from_file(t: RunsTable, saved: dict[str, Any]) -> dict[str, Any]:
    """A `fit_table`-shaped result for the runs `t` whose law is `saved` (`read_fit_file`), unfitted.

    The parameters, their 95% intervals and the identification are the fit file's: they were
    determined by the runs that fit saw, and judging them again on these runs would be a claim
    about another fit. Bands come from the file's bootstrap refits, which are that same fit's
    parameter uncertainty; refitting on these runs to get bands would replace the law. A file with
    no refits (`lmscale fit --bootstrap 0`) gives no bands, and the report says so. What is
    measured here is what the runs of `t` give: the residuals and the points drawn. No held-out
    check is made: it needs a fit of its own.
    """
    law = ChinchillaLaw.from_params(saved["params"], t.N, t.D, loss=t.loss, bootstrap=saved["bootstrap"])
    derived = {k: float(v) for k, v in law_derived(law).items()}
    # the file's own judgement, or (none kept, or from before intermediates were told apart) one
    # made again from what the file keeps: its values and intervals
    ident = identification({"params": saved["params"], "derived": derived, "ci95": saved["ci95"],
                            "identification": saved["identification"],
                            **{k: saved[k] for k in ("min_loss", "residual_std_log") if k in saved}})
    b = saved["bootstrap"]
    res: dict[str, Any] = {
        "params": dict(saved["params"]), "derived": derived, "n_points": saved["n_points"], "identification": ident,
        "from_file": {"path": saved["path"], "n_points": saved["n_points"], "n_runs_here": len(t),
                      "bootstrap_refits": len(b.samples["E"]) if b is not None else 0},
        "_law": law,
    }
    if saved["ci95"]:
        res["ci95"] = dict(saved["ci95"])
    return res


def _read_icl(path: str | os.PathLike) -> dict[str, Any]:
    """An `lmscale emergence icl` result: its models, each with its evaluations."""
    icl = read_json_file(path, what="--icl")

    def an_eval(e: Any) -> bool:
        return isinstance(e, dict) and _number(e.get("tokens")) and all(
            isinstance(e.get(t), dict) and _number(e[t].get("accuracy")) and _number(e[t].get("answer_logprob"))
            for t in ("recall", "induction"))

    models = icl.get("models")
    if not isinstance(models, list) or not models or not all(
            isinstance(m, dict) and _number(m.get("params_non_embedding")) and isinstance(m.get("evals"), list)
            and all(map(an_eval, m["evals"])) for m in models):
        raise DataError(f"--icl {path}: not an `lmscale emergence icl` result (models with their evaluations)")
    return icl


def _render_pngs(figs: dict[str, Any]) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
    """name -> (PNG bytes, caption) of every figure that draws, and name -> why for those that do not."""
    images: dict[str, tuple[bytes, str]] = {}
    skipped: dict[str, str] = {}
    for name, (fig, caption) in figs.items():
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        except ValueError as exc:  # e.g. a degenerate fit with no positive values on a log axis
            skipped[name] = str(exc)
            continue
        images[name] = (buf.getvalue(), caption)
    return images, skipped
