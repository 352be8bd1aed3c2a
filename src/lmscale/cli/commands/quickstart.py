"""`lmscale quickstart`: the whole pretraining paradigm, end to end, on this machine."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP, add_device_argument

HELP = "walk through tokenizers, pretraining, use, fine-tuning, scaling and emergence on WikiText-2"
DESCRIPTION = (
    "Runs every stage of the lecture on real data and writes one output directory with report.html. "
    "A profile (cpu: about 20 minutes on 2 cores; gpu: about 15 minutes on one H100-class GPU) sets "
    "every size and token budget, so a profile prints the same numbers run after run; each stage "
    "says whether it shows the phenomenon it stands for. Re-running skips finished stages."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lmscale-out", help="output directory (default: ./lmscale-out)")
    p.add_argument("--fast", action="store_true", help="the profile's smaller budgets (cpu: about 3 minutes)")
    p.add_argument("--profile", choices=["cpu", "gpu"], default=None,
                   help="sizes and budgets (src/lmscale/presets/quickstart/PROFILE.yaml); default: gpu when the "
                        "device is a CUDA GPU, else cpu")
    add_device_argument(p, help="auto (CUDA when present), cpu, cuda or cuda:N", resolve=False)
    p.add_argument("--corpus", default=None,
                   help="catalog name or local .txt/.txt.gz/.jsonl file or directory (default: the profile's, "
                        "movie-reviews for cpu and wikitext-2 for gpu)")
    p.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    p.add_argument("--redo", default=None, help="comma-separated stage names to run again")
    p.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)


def run(args: argparse.Namespace) -> int:
    from lmscale.experiments.quickstart import run_quickstart

    return run_quickstart(
        out=args.out, fast=args.fast, corpus=args.corpus,
        only=args.only.split(",") if args.only else None,
        redo=args.redo.split(",") if args.redo else None, profile=args.profile, device=args.device,
        overwrite=args.overwrite,
    )
