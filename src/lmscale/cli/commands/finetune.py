"""`lmscale finetune`: train a classification / regression / text-to-text task on a checkpoint."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import (
    OVERWRITE_DIR_HELP,
    add_device_argument,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    seed,
    unit_interval,
)
from lmscale.io import dumps_json

# default peak learning rates by initialisation
PRETRAINED_LR = 1e-4
RANDOM_INIT_LR = 1e-3

HELP = "fine-tune a checkpoint (or a randomly initialised preset) on a labelled task"
DESCRIPTION = (
    "Fine-tune on GLUE-style TSV/CSV/JSONL tasks: a head on [CLS]/mean (encoders), on the last "
    "real token with GPT's input transformations (decoders), on the pooled encoder or text-to-text "
    "(encoder-decoders). Evaluates on dev each epoch, keeps the best checkpoint in RUN_DIR/best and "
    "writes RUN_DIR/results.json."
)


def _csv(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",")] if s else None


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", help="task directory (train/dev/test .tsv/.csv/.jsonl), or a catalog name "
                                  "such as sentiment-movies; repeat as NAME=DIR for a T5-style mixture",
                   action="append")
    g.add_argument("--train", help="training file (instead of --task)")
    g.add_argument("--dev", help="dev file")
    g.add_argument("--test", help="test file")
    g.add_argument("--kind", default="classification", choices=("classification", "regression", "text-to-text"))
    g.add_argument("--text-column", default="sentence")
    g.add_argument("--text-pair-column", default=None, help="second sentence of a pair task")
    g.add_argument("--label-column", default="label", help="class label or regression score column")
    g.add_argument("--choice-columns", default=None, help="multiple choice: comma-separated answer columns")
    g.add_argument("--input-column", default="input", help="text-to-text input field")
    g.add_argument("--target-column", default="target", help="text-to-text target field")
    g.add_argument("--format", default=None, choices=("tsv", "csv", "jsonl"))
    g.add_argument("--labels", default=None, help="comma-separated label set (default: inferred from train)")


def task_spec(args: argparse.Namespace):
    from lmscale.finetune.tasks import TaskSpec

    return TaskSpec(kind=args.kind, text_column=args.text_column, text_pair_column=args.text_pair_column,
                    label_column=args.label_column, choice_columns=_csv(args.choice_columns),
                    input_column=args.input_column, target_column=args.target_column, format=args.format,
                    labels=_csv(args.labels))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="model dir, run dir or transformers dir to start from")
    p.add_argument("--preset", help="random initialisation from a preset instead of a checkpoint")
    p.add_argument("--tokenizer", help="tokenizer for --preset (default: trained on the training texts)")
    p.add_argument("--tokenizer-vocab-size", type=positive_int, default=4096,
                   help="vocab when training one for --preset")
    p.add_argument("--out", required=True, help="run directory (best/, metrics.jsonl, results.json)")
    p.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)
    add_task_arguments(p)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--mode", default="auto", choices=("auto", "head", "text-to-text"))
    g.add_argument("--pooling", default=None, help="encoder: cls|mean|pooler; encoder-decoder: mean|first")
    g.add_argument("--freeze-body", action="store_true", help="linear probe: train only the head")
    g.add_argument("--symmetric", action="store_true", help="decoders: similarity (both orders) for pairs")
    g.add_argument("--padding-side", default="right", choices=("left", "right"))
    g.add_argument("--label-words", default=None, help="text-to-text targets per class, comma-separated")
    g.add_argument("--max-length", type=positive_int, default=64,
                   help="tokens per input; longer ones are truncated and counted")
    g.add_argument("--max-target-length", type=positive_int, default=16, help="text-to-text target tokens")
    g.add_argument("--batch-size", type=positive_int, default=32)
    g.add_argument("--epochs", type=positive_int, default=3)
    g.add_argument("--min-steps", type=nonnegative_int, default=0)
    g.add_argument("--max-steps", type=positive_int, default=None)
    g.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate (default {PRETRAINED_LR:g} from a checkpoint, as for pretrained BERT; "
                        f"{RANDOM_INIT_LR:g} from random weights (--preset), which learn nothing in a few dozen "
                        "steps at the pretrained rate)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.01)
    g.add_argument("--warmup-fraction", type=unit_interval, default=0.1)
    g.add_argument("--dropout", type=fraction, default=0.1)
    g.add_argument("--patience", type=nonnegative_int, default=3,
                   help="evaluations without improvement (0 = never stop early)")
    g.add_argument("--metric", default=None, help="dev metric for the best checkpoint")
    g.add_argument("--train-examples", type=positive_int, default=None, help="random subset of the training split")
    g.add_argument("--mixing-cap", type=positive_int, default=None, help="mixture: examples-proportional cap K")
    g.add_argument("--mixture-size", type=positive_int, default=None, help="mixture: examples drawn per epoch")
    g.add_argument("--seed", type=seed, default=0)
    add_device_argument(g)
    p.add_argument("--json", action="store_true", help="print results.json only")
    p.set_defaults(_accepts_overrides=True)


def _reclaim_override_value(args: argparse.Namespace) -> list[str]:
    """argparse hands the value of the first unknown `--model.key VALUE` to the optional
    CHECKPOINT positional; with --preset that value is put back where it belongs."""
    extra = list(args._extra)
    if not (args.preset and args.checkpoint):
        return extra
    for i, tok in enumerate(extra):
        if tok.startswith("--") and "=" not in tok and (i + 1 == len(extra) or extra[i + 1].startswith("--")):
            extra.insert(i + 1, args.checkpoint)
            args.checkpoint = None
            break
    return extra


def run(args: argparse.Namespace) -> int:
    from lmscale.config import parse_override_args
    from lmscale.errors import LmscaleError
    from lmscale.finetune.api import load_body, mixture_task
    from lmscale.finetune.tasks import load_task
    from lmscale.finetune.trainer import FINETUNE_DIR_ENTRIES, FinetuneConfig, finetune, looks_like_finetune_dir
    from lmscale.io.locks import DirectoryLock
    from lmscale.io.outputs import check_output_dir, mark_output_dir

    overrides = parse_override_args(_reclaim_override_value(args))
    if bool(args.checkpoint) == bool(args.preset):
        raise LmscaleError("give a checkpoint or --preset NAME (random initialisation), not both or neither")
    # before any work: a fine-tuning run never writes into a file or a directory of something else
    check_output_dir(args.out, "--out", overwrite=args.overwrite, ours=looks_like_finetune_dir, kinds=("finetune",),
                     names=FINETUNE_DIR_ENTRIES)
    if overrides and not args.preset:
        raise LmscaleError("--model.* overrides apply to --preset only (a checkpoint fixes the architecture)")
    spec = task_spec(args)
    tasks = args.task or []
    if args.train:
        if tasks:
            raise LmscaleError("use either --task or --train/--dev/--test")
        task = load_task({"train": args.train, "dev": args.dev, "test": args.test}, spec)
    elif len(tasks) == 1 and "=" not in tasks[0]:
        task = load_task(tasks[0], spec)
    elif tasks:
        named = {}
        for t in tasks:
            if "=" not in t:
                raise LmscaleError(f"mixture tasks are NAME=DIR, got {t!r}")
            name, path = t.split("=", 1)
            named[name] = load_task(path, spec, name=name)
        task = mixture_task(named, cap=args.mixing_cap, size=args.mixture_size, seed=args.seed,
                            label_words=_csv(args.label_words))
    else:
        raise LmscaleError("no task: pass --task DIR or --train FILE --dev FILE")
    cfg = FinetuneConfig(
        mode="text-to-text" if task.kind == "text-to-text" else args.mode, pooling=args.pooling,
        freeze_body=args.freeze_body, max_length=args.max_length, max_target_length=args.max_target_length,
        batch_size=args.batch_size,
        epochs=args.epochs, min_steps=args.min_steps, max_steps=args.max_steps,
        lr=args.lr if args.lr is not None else (RANDOM_INIT_LR if args.preset else PRETRAINED_LR),
        weight_decay=args.weight_decay, warmup_fraction=args.warmup_fraction, dropout=args.dropout,
        patience=args.patience or None, seed=args.seed, padding_side=args.padding_side,
        symmetric=args.symmetric, metric=args.metric, train_examples=args.train_examples,
        label_words=_csv(args.label_words) if len(tasks) <= 1 else None, device=args.device,
    )
    body, tok = load_body(args.checkpoint, preset=args.preset, tokenizer=args.tokenizer,
                          overrides=overrides, train_texts=[e.text for e in task.splits["train"]]
                          + [e.text_pair for e in task.splits["train"] if e.text_pair],
                          vocab_size=args.tokenizer_vocab_size, seed=args.seed)

    def log(rec):
        if not args.json:
            dev = ", ".join(f"{k} {v:.4f}" for k, v in rec["dev"].items())
            loss = rec["train_loss"]
            loss = loss if loss is None else round(loss, 4)
            print(f"epoch {rec['epoch']:3d} step {rec['step']:6d} loss {loss} | dev {dev}")

    with DirectoryLock(args.out, "fine-tuning run directory"):
        mark_output_dir(args.out, "finetune", names=FINETUNE_DIR_ENTRIES)
        results = finetune(body, tok, task, cfg, out_dir=args.out, log=log)
    results.pop("model", None)
    if args.json:
        print(dumps_json({k: results[k] for k in ("dev", "test") if k in results} | {
            "best_epoch": results["best_epoch"], "truncated": results["truncated"]}, indent=2))
        return 0
    cut = results["truncated"]
    if any(cut.values()):
        print("truncated to --max-length: " + ", ".join(f"{k} {v}" for k, v in cut.items()))
    for split in ("dev", "test"):
        if split in results:
            print(f"{split:5s} " + ", ".join(f"{k} {v:.4f}" for k, v in results[split].items()))
    print(f"best epoch {results['best_epoch']} -> {args.out}/best ; results in {args.out}/results.json")
    return 0
