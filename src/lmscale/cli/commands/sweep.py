"""`lmscale sweep`: plan, run, resume and fit scaling sweeps recorded in a SQLite registry."""
from __future__ import annotations

import argparse
import sys

from lmscale.cli.argtypes import (
    OVERWRITE_DIR_HELP,
    add_device_argument,
    bootstrap_count,
    nonnegative_int,
    positive_float,
    positive_int,
)
from lmscale.io import dumps_json

HELP = "scaling sweeps (grid / IsoFLOP) of `lmscale pretrain` runs with a SQLite run registry"
DESCRIPTION = """Scaling sweeps. `run` plans the sweep, prepares one tokenizer and token shards for all
runs, registers every run in OUT/registry.sqlite and trains them (local worker pool, torchrun
per run, or a Slurm job array). Re-running the same command skips finished runs and resumes
interrupted ones. `status` lists runs, `fit` fits the Chinchilla law (--holdout largest checks
it on the largest-compute runs), `exec` runs one run by index (what Slurm tasks call),
`export` writes the runs as CSV, `demo-config` prints the demo sweep."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    r = sub.add_parser("run", help="plan, register and run a sweep (skips finished runs, resumes interrupted ones)")
    r.add_argument("config", nargs="?", help="sweep YAML (name, design, preset, base, sizes, tokens | flops, ...)")
    r.add_argument("--demo", action="store_true", help="the demo sweep: 9 decoders on WikiText-2")
    r.add_argument("--out", help="sweep directory (default sweeps/NAME)")
    r.add_argument("--registry", help="registry file (default OUT/registry.sqlite)")
    r.add_argument("--workers", type=positive_int, default=1, help="runs trained at once by the local worker pool")
    r.add_argument("--threads-per-worker", type=positive_int, help="OMP threads per run (default: cores / workers)")
    r.add_argument("--launcher", choices=("local", "torchrun", "slurm"), default="local",
                   help="local: a pool of --workers processes; torchrun: each run on --nproc-per-node "
                        "processes; slurm: write OUT/NAME.sbatch, a job array whose tasks report into the "
                        "registry (OUT must be on a filesystem every node shares, with working POSIX locks)")
    r.add_argument("--nproc-per-node", type=positive_int, default=1,
                   help="processes per run for torchrun (GPUs per run)")
    r.add_argument("--slurm-directive", action="append", default=[], metavar="OPT",
                   help="extra #SBATCH option for --launcher slurm, e.g. time=04:00:00 or partition=gpu (repeatable)")
    r.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    r.add_argument("--tokens-scale", type=positive_float,
                   help="multiply every token budget (quick checks of the machinery)")
    r.add_argument("--dry-run", action="store_true", help="print the plan only")
    r.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)
    r.add_argument("--json", action="store_true", help="machine-readable output")
    # the spelling is checked here; whether the device exists, by each run where it runs (a Slurm
    # or torchrun node, not necessarily this machine)
    add_device_argument(r, default=None, resolve=False, help="train.device of every run (auto: CUDA when "
                        "present; default: the sweep config's, else auto)")

    s = sub.add_parser("status", help="runs of a registry with their status, N, D, C and losses")
    s.add_argument("registry", help=_REGISTRY_HELP)
    s.add_argument("--sweep")
    s.add_argument("--json", action="store_true")

    f = sub.add_parser("fit", help="scaling-law fit of the finished runs, checked on held-out largest-compute runs")
    f.add_argument("registry", help=_REGISTRY_HELP)
    f.add_argument("--law", choices=("auto", "chinchilla", "data-constrained"), default="auto",
                   help="default auto: chinchilla, or data-constrained when runs repeated their data past 4 epochs")
    f.add_argument("--sweep")
    f.add_argument("--holdout", choices=("largest", "none"), default="largest")
    f.add_argument("--n-holdout", type=positive_int, help="runs held out (default: a fifth, at least one)")
    f.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding")
    f.add_argument("--bootstrap", type=bootstrap_count, default=0, help="bootstrap refits for 95%% intervals")
    f.add_argument("--out", help="write the fit as JSON here")
    f.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    f.add_argument("--json", action="store_true")

    e = sub.add_parser("exec", help="run one registered run by index (a Slurm array task)")
    e.add_argument("registry", help=_REGISTRY_HELP)
    e.add_argument("--index", type=nonnegative_int, required=True)
    e.add_argument("--sweep")
    e.add_argument("--launcher", choices=("local", "torchrun"), default="local")
    e.add_argument("--nproc-per-node", type=positive_int, default=1)
    e.add_argument("--retry-failed", action="store_true")
    e.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="write the registry's runs as CSV (what `lmscale fit`/`report` read)")
    x.add_argument("registry", help=_REGISTRY_HELP)
    x.add_argument("-o", "--out", required=True)
    x.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    x.add_argument("--sweep")

    sub.add_parser("demo-config", help="print the demo sweep as YAML")


_REGISTRY_HELP = "the sweep directory, or its registry file (OUT/registry.sqlite)"


def _load(args) -> "object":
    from lmscale.config import ConfigError
    from lmscale.experiments.sweep import DEMO_SWEEP, SweepConfig

    if args.demo == bool(args.config):
        raise ConfigError("give a sweep config file or --demo (not both)")
    sw = SweepConfig.from_dict(dict(DEMO_SWEEP)) if args.demo else SweepConfig.load(args.config)
    if args.tokens_scale:
        if sw.design == "grid":
            sw.tokens = [t * args.tokens_scale for t in sw.tokens]
        else:
            sw.flops = [c * args.tokens_scale for c in sw.flops]
    return sw


def _run(args) -> int:
    from pathlib import Path

    from lmscale.config import deep_merge
    from lmscale.experiments.sweep import looks_like_sweep_dir, plan, run_sweep, sweep_entries
    from lmscale.io.outputs import check_output_dir

    sw = _load(args)
    if args.device is not None:
        sw.base = deep_merge(sw.base, {"train": {"device": args.device}})
    out = Path(args.out or Path("sweeps") / sw.name)
    if args.dry_run:
        specs = plan(sw, out)
        rows = [{"name": s.name, "params_non_embedding": s.params["params_non_embedding"],
                 "params_total": s.params["params_total"], "tokens": s.tokens, "flops": s.flops,
                 "steps": s.config.train.max_steps} for s in specs]
        if args.json:
            print(dumps_json(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<34} N={r['params_non_embedding']:>10,} D={r['tokens']:>12,.0f} "
                      f"C={r['flops']:.3g} steps={r['steps']}")
            print(f"{len(rows)} runs; total C = {sum(r['flops'] for r in rows):.3g} FLOPs (6ND)")
        return 0

    check_output_dir(out, "--out", overwrite=args.overwrite, ours=looks_like_sweep_dir, kinds=("sweep",),
                     names=sweep_entries(sw.name))

    def progress(o) -> None:
        if not args.json:
            extra = f" ({o.error.splitlines()[-1][:160]})" if o.error else ""
            print(f"[{o.status}{', resumed' if o.resumed else ''}] {o.name}{extra}", flush=True)

    res = run_sweep(sw, out, workers=args.workers, launcher=args.launcher, nproc_per_node=args.nproc_per_node,
                    threads_per_worker=args.threads_per_worker, retry_failed=args.retry_failed,
                    registry=args.registry, slurm_directives=args.slurm_directive, progress=progress)
    if args.json:
        print(dumps_json(res.to_dict(), indent=2))
    else:
        if res.script:
            print(f"wrote {res.script}: submit it with `sbatch {res.script}` ({res.planned} array tasks)")
        c = res.counts
        print(f"{res.planned} runs: {c['finished']} finished, {c['failed']} failed, {c['stopped']} stopped, "
              f"{c['pending']} pending, {c['running']} running; registry {res.registry}")
    return 0 if res.counts.get("failed", 0) == 0 else 1


def _status(args) -> int:
    from lmscale.scaling.registry import Registry
    from lmscale.scaling.runs import best_hyperparameters

    reg = Registry(args.registry)
    runs = reg.runs(args.sweep)
    _, _, best = best_hyperparameters([r for r in runs if r.status == "finished"])
    if args.json:
        print(dumps_json([{k: v for k, v in r.to_dict().items() if k not in ("config", "loss_curve", "train_curve")}
                          for r in runs] + ([{"best_settings": best}] if best else []), indent=2))
        return 0
    for r in runs:
        loss = f"{r.final_val_loss:.4f}" if r.final_val_loss is not None else "-"
        wall = f"{r.wall_s:.0f}s" if r.wall_s is not None else "-"
        n = f"{r.params_non_embedding:,}" if r.params_non_embedding is not None else "-"
        print(f"{r.idx:>3} {r.status:<9} {r.name:<34} N={n:>10} D={r.tokens or 0:>12,.0f} loss={loss} {wall}"
              + (f"  error: {r.error.splitlines()[-1][:120]}" if r.error else ""))
    print(", ".join(f"{k} {v}" for k, v in reg.counts(args.sweep).items()))
    if best:
        print("best setting per point (fits and reports keep these runs):")
        for b in sorted(best, key=lambda b: (b["N"], b["D"], b["seed"])):
            tried = "; ".join(f"{k}: {loss:.4f}" for k, loss in b["losses"].items())
            batch = f", batch {b['best_batch_size']}" if "batch" in next(iter(b["losses"])) else ""
            print(f"  N={b['N']:,} D={b['D']:,.0f} seed {b['seed']}: lr {b['best_lr']:g}{batch}  ({tried})"
                  + ("  at the edge of the values tried: widen the axis" if b["at_grid_edge"] else ""))
    return 0


def _fit(args) -> int:
    import numpy as np

    from lmscale.cli.commands.fit import print_fit
    from lmscale.errors import LmscaleError
    from lmscale.io import dumps_json
    from lmscale.io.outputs import check_output_file
    from lmscale.scaling.fitting import choose_law, fit_chinchilla, save_result
    from lmscale.scaling.laws import make_law
    from lmscale.scaling.runs import dropped_note, invalid_rows, read_runs

    if args.out:
        check_output_file(args.out, "--out", kind="json", overwrite=args.overwrite, keys=("law", "params"),
                          inputs=(("--registry", args.registry),))
    cols = read_runs(args.registry, params=args.params, sweep=args.sweep)
    keep, dropped = invalid_rows(cols.values, ("N", "D", "loss"), cols.names, cols.columns)
    v = {k: np.asarray(x)[keep] for k, x in cols.values.items()}
    dropped = [*cols.dropped, *dropped]
    if len(v["loss"]) < 6:
        note = dropped_note(dropped)
        raise LmscaleError(f"{args.registry}: {len(v['loss'])} finished runs; a scaling-law fit needs at least 6"
                           + (f" ({note})" if note else ""))
    law_name, why = choose_law(args.law, v["D"], v.get("U"))
    if law_name == "data-constrained":
        if "U" not in v or not np.isfinite(v["U"]).all():
            raise LmscaleError(f"{args.registry}: --law data-constrained needs every run's unique_tokens, "
                               "which these runs did not record")
        law = make_law("data-constrained", base_grid="coarse")
        law.fit(v["N"], v["D"], v["U"], loss=v["loss"], holdout=None if args.holdout == "none" else "largest",
                n_holdout=args.n_holdout)
        if args.bootstrap:
            law.bootstrap(args.bootstrap, seed=0)
        res = law.to_dict()
    else:
        res = fit_chinchilla(v["N"], v["D"], v["loss"], holdout=None if args.holdout == "none" else "largest",
                             n_holdout=args.n_holdout, n_bootstrap=args.bootstrap, grid="coarse")
        res.pop("_law")
    res["law_choice"] = why
    if args.out:
        save_result(args.out, res)
    if dropped:
        res["dropped"] = dropped
    if args.json:
        print(dumps_json(res, indent=2))
        return 0
    if dropped:
        print(f"lmscale sweep fit: {dropped_note(dropped)}", file=sys.stderr)
    if why.startswith("warning:"):
        print(f"lmscale sweep fit: {why}", file=sys.stderr)
    if law_name == "data-constrained":
        print_fit(res)
        return 0
    p = res["params"]
    print("L(N, D) = {E:.4g} + {A:.4g}/N^{alpha:.3f} + {B:.4g}/D^{beta:.3f}".format(**p)
          + f"   ({res['n_fit']} runs fitted, N = {args.params.replace('_', '-')} parameters)")
    if why and not why.startswith("warning:"):
        print(f"law chinchilla: {why}")
    for h in res["holdout"]:
        print(f"held out: N={h['N']:.3g} D={h['D']:.3g} C={h['C']:.3g} loss {h['loss']:.4f} "
              f"predicted {h['predicted']:.4f} ({100 * h['rel_error']:+.2f}%)")
    if res["holdout"]:
        print(f"max |relative error| on the held-out largest-compute runs: {100 * res['max_abs_rel_error']:.2f}%")
    ident = res.get("identification") or {}
    if ident.get("unidentified"):
        print(f"UNIDENTIFIED LAW: {ident['summary']}")
    return 0


def _existing_registry(path: str) -> str:
    """A sweep directory stands for its registry; a missing registry is an error, not a new file."""
    from pathlib import Path

    from lmscale.errors import LmscaleError
    from lmscale.experiments.sweep import REGISTRY_FILE

    p = Path(path)
    if p.is_dir():
        p = p / REGISTRY_FILE
    if not p.is_file():
        raise LmscaleError(f"no run registry at {p}; give the sweep directory or its {REGISTRY_FILE} "
                           "(written by `lmscale sweep run`)")
    return str(p)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "registry", None) and args.verb in ("status", "fit", "exec", "export"):
        args.registry = _existing_registry(args.registry)
    if args.verb == "run":
        return _run(args)
    if args.verb == "status":
        return _status(args)
    if args.verb == "fit":
        return _fit(args)
    if args.verb == "exec":
        from lmscale.experiments.sweep import exec_index

        o = exec_index(args.registry, args.index, args.sweep, launcher=args.launcher,
                       nproc_per_node=args.nproc_per_node, retry_failed=args.retry_failed)
        print(dumps_json(o.__dict__) if args.json else f"[{o.status}] {o.name}" + (f": {o.error}" if o.error else ""))
        return 0 if o.status in ("finished", "skipped") else 1
    if args.verb == "export":
        from lmscale.io.outputs import check_output_file
        from lmscale.scaling.registry import Registry

        check_output_file(args.out, "--out", kind="csv", overwrite=args.overwrite,
                          inputs=(("--registry", args.registry),))
        Registry(args.registry).to_csv(args.out, sweep=args.sweep)
        print(f"wrote {args.out}")
        return 0
    if args.verb == "demo-config":
        import yaml

        from lmscale.experiments.sweep import DEMO_SWEEP

        sys.stdout.write(yaml.safe_dump(DEMO_SWEEP, sort_keys=False))
        return 0
    return 2
