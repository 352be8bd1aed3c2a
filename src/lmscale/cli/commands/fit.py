"""`lmscale fit CSV --law NAME`: fit a scaling law to run records, with bootstrap intervals."""
from __future__ import annotations

import argparse
import sys

from lmscale.cli.argtypes import bootstrap_count, nonnegative_int, positive_int

HELP = "fit a scaling law (auto, chinchilla, kaplan, power-*, broken-*, data-constrained, envelope, isoflop) to a CSV"

NEEDS = {
    "auto": ("N", "D"),  # chinchilla, or data-constrained when runs repeated their data (fitting.choose_law)
    "chinchilla": ("N", "D"), "kaplan": ("N", "D"), "data-constrained": ("N", "D", "U"),
    "power-n": ("N",), "power-d": ("D",), "power-c": ("C",),
    "broken-n": ("N",), "broken-d": ("D",), "broken-c": ("C",),
    "envelope": ("N", "D"), "isoflop": ("N", "D"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", help="CSV of runs (one row per run, or per point of a training curve)")
    p.add_argument("--law", default="auto", choices=sorted(NEEDS),
                   help="law to fit (default auto: chinchilla, or data-constrained when the CSV's unique-token "
                        "column shows runs past 4 epochs)")
    for v, h in (("n", "parameters"), ("d", "training tokens"), ("c", "training FLOPs"), ("u", "unique tokens"),
                 ("loss", "final loss")):
        p.add_argument(f"--{v}-col", default=None,
                       help=f"column with {h} (default: the column order of lmscale.scaling.runs)")
    p.add_argument("--run-col", default=None, help="column identifying a run / IsoFLOP group (envelope, isoflop)")
    p.add_argument("--exclude-top-loss", type=nonnegative_int, default=0, metavar="K",
                   help="drop the K highest-loss rows")
    p.add_argument("--holdout", choices=("largest",), default=None,
                   help="fit on all but the largest-compute runs and report their relative errors")
    p.add_argument("--n-holdout", type=positive_int, default=None, help="runs to hold out (default 10%%)")
    p.add_argument("--bootstrap", type=bootstrap_count, default=200, help="bootstrap refits for intervals (0 = none)")
    p.add_argument("--grid", choices=("hoffmann", "coarse"), default="hoffmann",
                   help="initialisation grid for the chinchilla law")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default=None, help="write the fit (with bootstrap samples) to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def read_columns(path: str, args: argparse.Namespace, needs: tuple[str, ...]):
    """The numeric columns {N, D, C, loss, U, runs} of the CSV (by the runs-table reader's column order) and
    the rows left out."""
    from lmscale.errors import DataError
    from lmscale.scaling.runs import candidates, invalid_rows, read_runs_csv

    named = {"N": args.n_col, "D": args.d_col, "C": args.c_col, "U": args.u_col, "loss": args.loss_col}
    cols = read_runs_csv(path, named, text=[args.run_col] if args.run_col else [])
    if not len(cols):
        raise DataError(f"{path}: no data rows")
    header = ", ".join(cols.header)
    if "loss" not in cols.values:
        raise DataError(f"{path}: no loss column (looked for {', '.join(candidates('loss'))}; use --loss-col); "
                        f"columns are {header}")
    for k in needs:
        if k not in cols.values:
            raise DataError(f"{path}: law {args.law} needs {k} but no column for it was found "
                            f"(use --{k.lower()}-col); columns are {header}")
    data = dict(cols.values)
    if args.run_col:
        import numpy as np

        data["runs"] = np.array(cols.text[args.run_col])
    # the rows `report` keeps too: positive, finite values of what the law uses, and a loss
    keep, dropped = invalid_rows(data, (*needs, "loss"), cols.names, cols.columns)
    return {k: v[keep] for k, v in data.items()}, dropped


def fit_from_args(args: argparse.Namespace):
    """The fitted law, the rows left out, and what `choose_law` said of the law chosen ("" if nothing)."""
    from lmscale.errors import DataError
    from lmscale.scaling.fitting import LAW_CHOICES, choose_law
    from lmscale.scaling.identify import design_problems
    from lmscale.scaling.laws import make_law
    from lmscale.scaling.runs import below_top_loss, dropped_note

    data, dropped = read_columns(args.csv, args, NEEDS[args.law])
    name, why = choose_law(args.law, data["D"], data.get("U")) if args.law in LAW_CHOICES else (args.law, "")
    needs = NEEDS[name]
    note = dropped_note(dropped)
    problems = design_problems([k for k in needs if k in ("N", "D", "C", "U")], [data[k] for k in needs], name)
    n = data["loss"].size
    if n == 0 or problems:
        raise DataError(f"{args.csv}: " + ("; ".join(problems) if n else "no run has usable values")
                        + (f" ({note})" if note else ""))
    if args.exclude_top_loss:
        keep = below_top_loss(data["loss"], args.exclude_top_loss)  # (the rows kept have a finite loss)
        data = {key: v[keep] for key, v in data.items()}
    kw = {}
    if name == "chinchilla":
        kw["grid"] = args.grid
    elif name == "data-constrained":
        kw["base_grid"] = args.grid
    law = make_law(name, **kw)
    X = [data[k] for k in needs]
    if name in ("envelope", "isoflop"):
        if args.holdout:
            raise DataError("--holdout applies to parametric laws, not to envelope/isoflop")
        law.fit(data["N"], data["D"], data["loss"], runs=data.get("runs"))
    else:
        law.fit(*X, loss=data["loss"], holdout=args.holdout, n_holdout=args.n_holdout)
    if args.bootstrap:
        law.bootstrap(args.bootstrap, seed=args.seed)
    return law, dropped, why


def run(args: argparse.Namespace) -> int:
    from lmscale.io import atomic_write_json, dumps_json
    from lmscale.io.outputs import check_output_file
    from lmscale.scaling.runs import dropped_note

    if args.out:
        check_output_file(args.out, "--out", kind="json", overwrite=args.overwrite, keys=("law", "params"),
                          inputs=(("CSV", args.csv),))
    law, dropped, why = fit_from_args(args)
    full = law.to_dict()
    if dropped:
        full["dropped"] = dropped
    if why:
        full["law_choice"] = why
    out = {"law": full["law"], "params": full["params"], "ci95": full.get("ci95"), "n_points": full["n_points"],
           "objective": full["objective"], "converged": True}
    for k in ("law_choice", "derived", "holdout", "optima", "identification", "dropped"):
        if k in full:
            out[k] = full[k]
    if "bootstrap" in full:
        out["bootstrap_failed"] = full["bootstrap"]["n_failed"]
    if args.out:
        atomic_write_json(args.out, full)
    if args.json:
        print(dumps_json(out, indent=2))
        return 0
    if dropped:
        print(f"lmscale fit: {dropped_note(dropped)}", file=sys.stderr)
    if out.get("law_choice", "").startswith("warning:"):
        print(f"lmscale fit: {out['law_choice']}", file=sys.stderr)
    print_fit(out)
    if args.out:
        print(f"  wrote {args.out}")
    return 0


def print_fit(out: dict) -> None:
    """The fit as lines: law and why it was chosen, parameters with intervals, the held-out check."""
    ident = out.get("identification") or {}
    bad = ident.get("unidentified") or {}
    objective = out["objective"] if out["objective"] is not None else "-"
    print(f"law {out['law']}: {out['n_points']} points, objective {objective}")
    if out.get("law_choice") and not out["law_choice"].startswith("warning:"):
        print(f"  chosen: {out['law_choice']}")
    if bad:
        print(f"  UNIDENTIFIED: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not determined by these runs "
              "(marked below); do not read them, or what follows from them, as measurements")
    for kind, values in (("", out["params"]), ("  (derived)", out.get("derived") or {})):
        for k, v in values.items():
            ci = (out.get("ci95") or {}).get(k)
            ci_s = f"  95% CI [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
            flag = f"  <- unidentified: {bad[k]}" if k in bad else ""
            if k in (ident.get("wide_intermediates") or {}):
                flag = ("  <- a wide interval, for an intermediate: N_opt and D_opt at a given compute are "
                        "judged on their own intervals (lmscale allocate)")
            print(f"  {k:>10} = {v:.6g}{ci_s}{kind}{flag}")
    if out.get("holdout"):
        h = out["holdout"]
        print(f"  holdout: {h['n_holdout']} largest-compute runs, mean |relative error| "
              f"{h['mean_abs_relative_error']:.3%}, max {h['max_abs_relative_error']:.3%}")
