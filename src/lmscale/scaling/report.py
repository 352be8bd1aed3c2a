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

from lmscale.errors import DataError
from lmscale.io import atomic_write_bytes, atomic_write_text, read_json_file
from lmscale.scaling import plots
from lmscale.scaling.emergence import analyze, compare_metrics, read_pythia
from lmscale.scaling.fitting import fit_table, table_problems
from lmscale.scaling.runs import RunsTable, dropped_note, load_runs

__all__ = ["build_report", "emergence_figures", "fit_table", "load_runs", "make_figures", "render_html"]


def make_figures(t: RunsTable, fit: dict[str, Any] | None, emergence: dict[str, Any] | None = None,
                 icl: dict[str, Any] | None = None) -> dict[str, Any]:
    """name -> (matplotlib figure, caption)."""
    law = fit["_law"] if fit else None
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
                           "lines: fitted Chinchilla law, bands: 95% bootstrap confidence interval."),
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
                              "params": [], "holdout": None, "holdout_rows": [], "no_fit": ""}
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
                 exclude_top_loss: int = 0, **csv_cols: Any) -> dict[str, Any]:
    """Fit, draw and write: PNGs into `png_dir`, one self-contained HTML at `out_html`.

    `csv_cols` (`n_col`, `d_col`, `c_col`, `loss_col`) name the columns of a CSV source. `fit`, a
    `fit_table` result of these runs (with its `_law`), is drawn instead of fitting them again.
    `exclude_top_loss` leaves out the runs with the highest losses, as `lmscale fit` does.
    """
    t = load_runs(source, sweep=sweep, params=params, **csv_cols).without_top_loss(exclude_top_loss)
    if fit is None or "_law" not in fit:
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


def _read_icl(path: str | os.PathLike) -> dict[str, Any]:
    """An `lmscale emergence icl` result: its models, each with its evaluations."""
    icl = read_json_file(path, what="--icl")
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def an_eval(e: Any) -> bool:
        return isinstance(e, dict) and number(e.get("tokens")) and all(
            isinstance(e.get(t), dict) and number(e[t].get("accuracy")) and number(e[t].get("answer_logprob"))
            for t in ("recall", "induction"))

    models = icl.get("models")
    if not isinstance(models, list) or not models or not all(
            isinstance(m, dict) and number(m.get("params_non_embedding")) and isinstance(m.get("evals"), list)
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
