"""`lmscale allocate --flops C --fit FIT.json`: compute-optimal N and D for a budget."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import nonnegative_float, positive_float

HELP = "compute-optimal model size and tokens for a FLOP budget, from a fitted Chinchilla law"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flops", type=positive_float, required=True, help="training FLOP budget C")
    p.add_argument("--fit", default=None, help="fit JSON from `lmscale fit --out` "
                   "(default: Hoffmann et al. 2022's published E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)")
    p.add_argument("--inference-tokens", type=nonnegative_float, default=None,
                   help="lifetime inference tokens: also give the inference-aware allocation (Sardana et al.)")
    p.add_argument("--unique-tokens", type=positive_float, default=None,
                   help="unique training tokens available: repeated-data allocation (needs a data-constrained fit)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


HOFFMANN_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def run(args: argparse.Namespace) -> int:

    from lmscale.errors import DataError
    from lmscale.io import dumps_json, read_json_file
    from lmscale.scaling.allocation import compute_optimal, inference_aware, repeated_data

    if args.fit:
        fit = read_json_file(args.fit, what="--fit")
        if not isinstance(fit.get("params"), dict):
            raise DataError(f"{args.fit}: not a fit (no \"params\"); write one with `lmscale fit --out`")
        if fit.get("converged") is False:
            raise DataError(f"{args.fit}: the fit did not converge; refit before allocating")
    else:
        fit = {"law": "chinchilla", "params": dict(HOFFMANN_PUBLISHED)}
    if args.unique_tokens is not None:
        out = repeated_data(fit, args.flops, args.unique_tokens)
        out["compute_optimal"] = compute_optimal(fit, args.flops)
    else:
        out = compute_optimal(fit, args.flops)
    if args.inference_tokens is not None:
        out["inference_aware"] = inference_aware(fit, inference_tokens=args.inference_tokens, flops=args.flops)
    if args.json:
        print(dumps_json(out, indent=2))
        return 0
    co = out.get("compute_optimal", out)
    if co.get("warning"):
        print(co["warning"] + ":")
        for k, why in co.get("unidentified", {}).items():
            print(f"  {k} {why}")
    print(f"budget C = {args.flops:.4g} FLOPs")
    ci = co.get("ci", {})

    def fmt(k: str) -> str:
        return f"  [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""
    print(f"  N_opt            {co['N_opt']:.4g}{fmt('N_opt')}")
    print(f"  D_opt            {co['D_opt']:.4g}{fmt('D_opt')}")
    print(f"  tokens/param     {co['tokens_per_param']:.3g}{fmt('tokens_per_param')}")
    print(f"  predicted loss   {co['loss']:.4f}{fmt('loss')}")
    print(f"  numeric check    N_opt {co['numeric']['N_opt']:.4g}, loss {co['numeric']['loss']:.4f}")
    r = co["rule_of_thumb_20"]
    print(f"  20 tokens/param  N {r['N']:.4g}, D {r['D']:.4g}, loss {r.get('loss', float('nan')):.4f}")
    if args.unique_tokens is not None:
        print(f"  with {args.unique_tokens:.4g} unique tokens: N {out['N_opt']:.4g}, D {out['D_opt']:.4g} "
              f"({out['epochs']:.2f} epochs), loss {out['loss']:.4f}")
    if args.inference_tokens is not None:
        ia = out["inference_aware"]
        print(f"  inference-aware ({args.inference_tokens:.3g} inference tokens, loss {ia['loss']:.4f}): "
              f"N {ia['N']:.4g}, D_train {ia['D_train']:.4g}, total {ia['total_flops']:.4g} FLOPs "
              f"(Chinchilla-optimal: {ia['chinchilla']['total_flops']:.4g})")
    return 0
