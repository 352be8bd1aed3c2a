"""`lmscale report SOURCE -o report.html`: every scaling figure and the fitted law in one HTML file."""
from __future__ import annotations

import argparse
import sys

from lmscale.cli.argtypes import bootstrap_count, nonnegative_int, positive_int

HELP = "one self-contained HTML scaling report (figures embedded) from a sweep registry or a CSV of runs"


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="sweep registry (SQLite) or CSV of runs (e.g. chinchilla_fig4_epoch.csv)")
    p.add_argument("--sweep", help="sweep name inside the registry (default: all runs)")
    p.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding",
                   help="which parameter count is N for a registry or its CSV export (lmscale.scaling.runs)")
    p.add_argument("--n-col", help="CSV column of parameters N")
    p.add_argument("--d-col", help="CSV column of tokens D")
    p.add_argument("--c-col", help="CSV column of compute C (D = C/6N when there is no D column)")
    p.add_argument("--loss-col", help="CSV column of the final loss")
    p.add_argument("--holdout", choices=("largest", "none"), default="largest",
                   help="check the fit by predicting the largest-compute runs from the others")
    p.add_argument("--n-holdout", type=positive_int,
                   help="how many largest-compute runs to hold out (default: a fifth)")
    p.add_argument("--bootstrap", type=bootstrap_count, default=100,
                   help="bootstrap refits for the 95%% bands (0: none)")
    p.add_argument("--grid", choices=("coarse", "hoffmann", "small"), default="hoffmann",
                   help="fit starting grid: Hoffmann et al.'s 5,400 points (default, as `lmscale fit`), 243, or 32")
    p.add_argument("--exclude-top-loss", type=nonnegative_int, default=0, metavar="K",
                   help="leave out the K highest-loss runs (as `lmscale fit --exclude-top-loss`)")
    p.add_argument("--emergence", metavar="CSV", help="Pythia-style evaluation CSV for the emergence figures")
    p.add_argument("--task", default="lambada_openai", help="task of --emergence (accuracy vs perplexity)")
    p.add_argument("--icl", metavar="JSON", help="result of `lmscale emergence icl` to include")
    p.add_argument("--fit", metavar="FIT.json",
                   help="draw the chinchilla law of this `lmscale fit --out` file instead of fitting one "
                        "(--grid, --bootstrap and --holdout then do not apply)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build(args: argparse.Namespace, html: str | None, png_dir: str | None) -> dict:
    from lmscale.scaling.report import build_report

    res = build_report(
        args.source, html, png_dir=png_dir, sweep=args.sweep, emergence_csv=args.emergence,
        emergence_task=args.task, icl_json=args.icl, holdout=None if args.holdout == "none" else "largest",
        n_holdout=args.n_holdout, n_bootstrap=args.bootstrap, params=args.params, n_col=args.n_col,
        d_col=args.d_col, c_col=args.c_col, loss_col=args.loss_col, grid=args.grid,
        exclude_top_loss=args.exclude_top_loss, fit_file=args.fit,
    )
    src = (res.get("fit") or {}).get("from_file")
    if src and src["n_points"] != res["n_runs"]:  # e.g. a different --exclude-top-loss: drawn, not refused
        print(f"lmscale {args.command}: warning: --fit {src['path']} was fitted on {src['n_points']} points but "
              f"this report keeps {res['n_runs']} runs; the points and residuals shown are this report's",
              file=sys.stderr)
    return res


def summarize(res: dict) -> str:
    from lmscale.scaling.runs import dropped_note

    lines = [f"{res['n_runs']} runs, {len(res['figures'])} figures"]
    if res.get("dropped"):
        lines.append(dropped_note(res["dropped"]))
    if res.get("no_fit"):
        lines.append(f"no law fitted: {res['no_fit']}")
    fit = res.get("fit")
    if fit:
        p = fit["params"]
        lines.append("L(N, D) = {E:.4g} + {A:.4g}/N^{alpha:.3f} + {B:.4g}/D^{beta:.3f}".format(**p))
        src = fit.get("from_file")
        if src:
            lines.append(f"law read from {src['path']} (fitted there on {src['n_points']} points), not refitted")
        ident = fit.get("identification") or {}
        if ident.get("unidentified"):
            lines.append(f"UNIDENTIFIED LAW: {ident['summary']}")
            if not ident.get("allocation_identified", True):
                lines.append("no compute-optimal allocation is drawn from it")
        hc = fit.get("holdout_check")
        if hc:
            lines.append(f"held-out largest-compute runs ({len(hc['holdout'])}): max |relative error| "
                         f"{100 * hc['max_abs_rel_error']:.2f}%")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("-o", "--out", required=True, help="HTML file to write")
    p.add_argument("--png-dir", help="also write the figures as PNG files here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if lmscale did not write it, and write into --png-dir over "
                        "lmscale's output of another kind")


def run(args: argparse.Namespace) -> int:

    from lmscale.io import dumps_json
    from lmscale.io.outputs import check_output_dir, check_output_file

    check_output_file(args.out, "--out", kind="html", overwrite=args.overwrite,
                      inputs=(("SOURCE", args.source), ("--emergence", args.emergence), ("--icl", args.icl),
                              ("--fit", args.fit)))
    if args.png_dir:
        check_output_dir(args.png_dir, "--png-dir", overwrite=args.overwrite, kinds=("figures",))
    res = build(args, args.out, args.png_dir)  # marks --png-dir with the figures it writes
    if args.json:
        print(dumps_json(res, indent=2, default=float))
    else:
        print(summarize(res))
        print(f"wrote {args.out}")
    return 0
