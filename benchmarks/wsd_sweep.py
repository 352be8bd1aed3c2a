"""WSD sweeps against cosine sweeps: the same grid, sizes and seeds, trained both ways.

- baseline: the grid as `lmscale sweep run` trains it by default, every (N, D) point its own run
  with a cosine schedule sized to D;
- WSD: `schedule: wsd`, per size one stable run to the largest point's branch point and per
  point a cooldown branch (`decay_fraction` of the point's tokens, `--decay-shape`).

Reports per point the final validation loss of the branch against the cosine run (target: within
1%), a Chinchilla fit of each sweep with 95% bootstrap intervals (agreement: each parameter of one
inside the other's interval), and the training FLOPs of each sweep as measured by the runs
(target ratio <= 0.60). Writes benchmarks/results/wsd_sweep.json.

Default grid: the demo sweep's sizes with its token budgets scaled by `--tokens-scale` (1/3: CPU
minutes), on WikiText-2 from the local mirror (LMSCALE_DATA_DIR or ../shared/data).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from lmscale.experiments.sweep import DEMO_SWEEP, SweepConfig, run_sweep  # noqa: E402
from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.scaling.fitting import fit_chinchilla  # noqa: E402
from lmscale.scaling.registry import Registry  # noqa: E402


def _sweep(schedule: str | None, scale: float, decay_fraction: float, shape: str, sizes: list[float],
           tokens: list[float]) -> SweepConfig:
    d = json.loads(json.dumps(DEMO_SWEEP))
    d["name"] = f"bench-{schedule or 'cosine'}"
    d["tokens"] = tokens or [t * scale for t in d["tokens"]]
    d["sizes"] = sizes or d["sizes"]
    d["base"]["train"]["decay_shape"] = shape
    d["evals_per_run"] = 2
    if schedule:
        d.update(schedule=schedule, decay_fraction=decay_fraction)
    return SweepConfig.from_dict(d)


def _points(reg: Registry) -> dict[tuple[int, float], dict]:
    return {(r.params_non_embedding, r.tokens): r for r in reg.runs() if r.role != "stable" and r.status == "finished"}


def _cost(reg: Registry) -> float:
    """FLOPs the sweep trained: whole runs, and only the cooldown of each branch."""
    total = 0.0
    for r in reg.runs():
        if r.flops_trained is None:
            continue
        if r.role == "branch":
            total += r.flops_trained * (1.0 - r.lineage["at_tokens"] / r.tokens_trained)
        else:
            total += r.flops_trained
    return total


def _fit(points: dict, n_boot: int) -> dict:
    keys = sorted(points)
    res = fit_chinchilla([k[0] for k in keys], [k[1] for k in keys], [points[k].final_val_loss for k in keys],
                         holdout=None, n_bootstrap=n_boot, grid="coarse")
    res.pop("_law")
    held = fit_chinchilla([k[0] for k in keys], [k[1] for k in keys], [points[k].final_val_loss for k in keys],
                          holdout="largest", n_holdout=1, grid="coarse")
    return {"params": res["params"], "ci95": res.get("ci95", {}), "heldout_largest": held["holdout"][0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-wsd-sweep"), help="sweep directories (ignored by git)")
    ap.add_argument("--tokens-scale", type=float, default=1 / 3)
    ap.add_argument("--sizes", type=float, nargs="*", default=[])
    ap.add_argument("--tokens", type=float, nargs="*", default=[], help="token budgets (instead of --tokens-scale)")
    ap.add_argument("--decay-fraction", type=float, default=0.2)
    ap.add_argument("--decay-shape", default="1-sqrt", choices=("linear", "cosine", "1-sqrt"))
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    os.environ.setdefault("LMSCALE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    out = Path(args.out)
    regs, secs = {}, {}
    for mode in (None, "wsd"):
        sw = _sweep(mode, args.tokens_scale, args.decay_fraction, args.decay_shape, args.sizes, args.tokens)
        t0 = time.perf_counter()
        res = run_sweep(sw, out / sw.name, workers=1, threads_per_worker=args.threads)
        secs[mode or "cosine"] = time.perf_counter() - t0
        if res.counts["finished"] != res.planned:
            print(json.dumps(res.to_dict(), indent=2)[-3000:])
            return 1
        regs[mode or "cosine"] = Registry(res.registry)
    cos, wsd = _points(regs["cosine"]), _points(regs["wsd"])
    rows = []
    for k in sorted(cos):
        a, b = cos[k].final_val_loss, wsd[k].final_val_loss
        rows.append({"N": k[0], "D": k[1], "cosine": a, "wsd": b, "rel_diff": b / a - 1.0})
    fits = {m: _fit(p, args.bootstrap) for m, p in (("cosine", cos), ("wsd", wsd))}
    agree = {}
    for name in fits["cosine"]["params"]:
        x, y = fits["cosine"], fits["wsd"]
        lo_c, hi_c = x["ci95"][name]
        lo_w, hi_w = y["ci95"][name]
        agree[name] = bool(lo_w <= x["params"][name] <= hi_w and lo_c <= y["params"][name] <= hi_c)
    cost = {m: _cost(r) for m, r in regs.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "threads": args.threads, "tokens_scale": args.tokens_scale, "tokens": args.tokens,
        "decay_fraction": args.decay_fraction,
        "decay_shape": args.decay_shape, "points": rows, "fits": fits, "fit_params_agree": agree,
        "flops": cost, "flops_ratio": cost["wsd"] / cost["cosine"], "wall_s": secs,
        "max_abs_rel_diff": max(abs(r["rel_diff"]) for r in rows),
    }
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_json(HERE / "results" / "wsd_sweep.json", result)
    print(f"{'N':>9} {'D':>10} {'cosine':>8} {'wsd':>8} {'diff':>7}")
    for r in rows:
        print(f"{r['N']:>9,} {r['D']:>10,.0f} {r['cosine']:>8.4f} {r['wsd']:>8.4f} {100 * r['rel_diff']:>+6.2f}%")
    for m, f in fits.items():
        ci = f["ci95"]
        print(m, " ".join(f"{k}={v:.4g} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" for k, v in f["params"].items()))
        h = f["heldout_largest"]
        print(f"  {m}: largest-compute point held out: actual {h['loss']:.4f}, predicted {h['predicted']:.4f} "
              f"({100 * h['rel_error']:+.2f}%)")
    print(f"parameters inside the other's 95% interval: {agree}")
    print(f"training FLOPs: cosine {cost['cosine']:.4g}, wsd {cost['wsd']:.4g}, ratio {result['flops_ratio']:.3f}; "
          f"wall: {secs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
