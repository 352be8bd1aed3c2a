"""`lmscale quickstart`: the whole pretraining paradigm, end to end, on this machine."""
from __future__ import annotations

import argparse

HELP = "walk through tokenizers, pretraining, use, fine-tuning and scaling on WikiText-2"
DESCRIPTION = (
    "Runs every stage of the lecture on real data on a CPU and writes one output directory with "
    "report.html. Re-running skips finished stages."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="lmscale-out", help="output directory (default: ./lmscale-out)")
    p.add_argument("--fast", action="store_true", help="a ~5 minute version with smaller budgets")
    p.add_argument("--corpus", default="wikitext-2",
                   help="catalog name or local .txt/.txt.gz/.jsonl file or directory (default: wikitext-2)")
    p.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    p.add_argument("--redo", default=None, help="comma-separated stage names to run again")


def run(args: argparse.Namespace) -> int:
    from lmscale.experiments.quickstart import run_quickstart

    return run_quickstart(
        out=args.out, fast=args.fast, corpus=args.corpus,
        only=args.only.split(",") if args.only else None,
        redo=args.redo.split(",") if args.redo else None,
    )
