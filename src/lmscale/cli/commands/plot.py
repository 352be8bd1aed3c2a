"""`lmscale plot SOURCE -o DIR`: the scaling figures as PNG files."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP
from lmscale.cli.commands.report import add_source_arguments, build, summarize
from lmscale.io import dumps_json

HELP = "scaling figures (loss vs C/N/D with fits and bands, IsoFLOPs, allocation, curves) as PNG files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("-o", "--out", required=True, help="directory for the PNG files")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)


def run(args: argparse.Namespace) -> int:

    from lmscale.io.outputs import check_output_dir

    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("figures",))
    res = build(args, None, args.out)  # marks --out with the figures it writes
    if args.json:
        print(dumps_json(res, indent=2, default=float))
    else:
        print(summarize(res))
        for p in res["pngs"]:
            print(p)
    return 0
