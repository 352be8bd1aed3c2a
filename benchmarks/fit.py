"""Scaling-law fit speed: `ChinchillaLaw` (Approach 3) against a naive scipy fit, same data, same run.

Data: the 245 Chinchilla runs of `chinchilla_fig4_epoch.csv` (local mirror, or a synthetic stand-in
of the same shape when the mirror is absent).

- lmscale: the full Hoffmann et al. grid (5,400 initialisations) with analytic gradients, the
  grid advanced by a vectorised L-BFGS and the distinct end points refined by scipy's L-BFGS-B;
  then 1,000 bootstrap refits warm-started at the full-data optimum.
- baseline: `scipy.optimize.minimize(method="L-BFGS-B")` with finite-difference gradients from a
  single initialisation (the centre of the grid), the objective summed Huber on log residuals
  written without the log-sum-exp trick; bootstrap refits start from the same single point.
  The baseline's bootstrap is timed on `--baseline-boot` refits and scaled per refit.

Prints times and ratios and writes benchmarks/results/fit.json.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.scaling.laws import ChinchillaLaw, huber  # noqa: E402


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    for c in (os.environ.get("LMSCALE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if c and (Path(c) / "chinchilla_fig4_epoch.csv").is_file():
            rows = list(csv.DictReader((Path(c) / "chinchilla_fig4_epoch.csv").open()))
            N = np.array([float(r["Model Size"]) for r in rows])
            C = np.array([float(r["Training FLOP"]) for r in rows])
            L = np.array([float(r["loss"]) for r in rows])
            return N, C / (6 * N), L, "chinchilla_fig4_epoch.csv (245 runs)"
    rng = np.random.default_rng(0)
    N, D = 10 ** rng.uniform(7.7, 10.2, 245), 10 ** rng.uniform(8.5, 11, 245)
    L = (1.82 + 482 / N ** 0.348 + 2085 / D ** 0.366) * np.exp(rng.normal(0, 0.02, 245))
    return N, D, L, "synthetic stand-in (245 runs)"


def _naive_fit(N, D, L, w, x0):
    from scipy.optimize import minimize

    def obj(t):
        with np.errstate(all="ignore"):
            E, A, B, al, be = np.exp(t[0]), np.exp(t[1]), np.exp(t[2]), t[3], t[4]
            pred = np.log(E + A / N ** al + B / D ** be)
            return float(np.sum(w * huber(pred - np.log(L))))

    return minimize(obj, x0, method="L-BFGS-B")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--baseline-boot", type=int, default=100)
    ap.add_argument("--scipy-grid", action="store_true",
                    help="also time the literal procedure: scipy L-BFGS-B (analytic gradients) from every grid point")
    ap.add_argument("--out", default=str(HERE / "results" / "fit.json"))
    args = ap.parse_args()
    N, D, L, source = _data()

    t = time.perf_counter()
    law = ChinchillaLaw().fit(N, D, L)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    boot = law.bootstrap(args.boot, seed=0)
    boot_s = time.perf_counter() - t

    x0 = np.array([0.5, 12.5, 12.5, 1.0, 1.0])  # centre of the Hoffmann grid, log-parameterised
    ones = np.ones_like(L)
    t = time.perf_counter()
    base = _naive_fit(N, D, L, ones, x0)
    base_fit_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    base_ok = 0
    for _ in range(args.baseline_boot):
        w = np.bincount(rng.integers(0, L.size, L.size), minlength=L.size).astype(float)
        base_ok += bool(_naive_fit(N, D, L, w, x0).success)
    base_boot_per = (time.perf_counter() - t) / args.baseline_boot
    ours_boot_per = boot_s / args.boot

    grid_s = None
    if args.scipy_grid:
        t = time.perf_counter()
        literal = ChinchillaLaw(method="scipy").fit(N, D, L)
        grid_s = time.perf_counter() - t

    base_params = {"E": float(np.exp(base.x[0])), "A": float(np.exp(base.x[1])), "B": float(np.exp(base.x[2])),
                   "alpha": float(base.x[3]), "beta": float(base.x[4])}
    result = {
        "data": source,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "python": platform.python_version()},
        "lmscale": {"fit_s": fit_s, "n_starts": law.n_starts_, "n_polished": law.n_polished_,
                    "objective": law.objective_, "params": law.params_, "bootstrap_refits": args.boot,
                    "bootstrap_s": boot_s, "bootstrap_failed": boot.n_failed, "bootstrap_per_refit_s": ours_boot_per},
        "baseline": {"name": "scipy L-BFGS-B, finite-difference gradients, single initialisation",
                     "fit_s": base_fit_s, "objective": float(base.fun), "converged": bool(base.success),
                     "params": base_params, "bootstrap_refits_timed": args.baseline_boot,
                     "bootstrap_converged": base_ok, "bootstrap_per_refit_s": base_boot_per},
        "ratios": {
            "bootstrap_per_refit_speedup": base_boot_per / ours_boot_per,
            "objective_baseline_over_lmscale": float(base.fun) / law.objective_,
            "full_grid_fit_vs_one_naive_start": fit_s / base_fit_s,
        },
    }
    if grid_s is not None:
        result["scipy_every_start"] = {"fit_s": grid_s, "objective": literal.objective_, "params": literal.params_}
        result["ratios"]["scipy_every_start_over_lmscale_fit"] = grid_s / fit_s
    atomic_write_json(args.out, result)
    print(f"data: {source}; load average {result['machine']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':34}{'lmscale':>14}{'baseline':>14}{'ratio':>10}")
    print(f"{'fit (s)':34}{fit_s:>14.2f}{base_fit_s:>14.2f}{fit_s / base_fit_s:>10.1f}"
          f"   ({law.n_starts_} starts vs 1)")
    print(f"{'objective (lower is better)':34}{law.objective_:>14.6g}{base.fun:>14.6g}"
          f"{base.fun / law.objective_:>10.2f}")
    print(f"{'bootstrap per refit (ms)':34}{ours_boot_per * 1e3:>14.2f}{base_boot_per * 1e3:>14.2f}"
          f"{base_boot_per / ours_boot_per:>10.1f}x")
    print(f"{f'{args.boot} bootstrap refits (s)':34}{boot_s:>14.1f}{base_boot_per * args.boot:>14.1f}"
          f"   (baseline scaled from {args.baseline_boot})")
    if grid_s is not None:
        print(f"{'full grid, scipy from every start (s)':34}{fit_s:>14.2f}{grid_s:>14.2f}{grid_s / fit_s:>10.1f}x"
              f"   (objective {literal.objective_:.6g})")
    print(f"lmscale: E={law.params_['E']:.4f} A={law.params_['A']:.1f} B={law.params_['B']:.1f} "
          f"alpha={law.params_['alpha']:.4f} beta={law.params_['beta']:.4f}")
    print(f"baseline: E={base_params['E']:.4f} A={base_params['A']:.1f} B={base_params['B']:.1f} "
          f"alpha={base_params['alpha']:.4f} beta={base_params['beta']:.4f} (converged={base.success})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
