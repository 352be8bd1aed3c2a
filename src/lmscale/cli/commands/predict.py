"""`lmscale predict`: run a fine-tuned model on new inputs."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import add_device_argument, positive_int

HELP = "predict labels / scores / outputs with a fine-tuned model"
DESCRIPTION = (
    "Load a fine-tuning run (RUN_DIR or RUN_DIR/best) and predict for texts given on the command "
    "line or for every row of a TSV/CSV/JSONL file (columns as in training unless overridden)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="fine-tuning run directory or its best/ directory")
    p.add_argument("text", nargs="*", help="input text(s)")
    p.add_argument("--text-pair", default=None, help="second sentence for pair tasks (with one text)")
    p.add_argument("--input", default=None, help="file of inputs (.tsv/.csv/.jsonl)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--format", default=None, choices=("tsv", "csv", "jsonl"))
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--out", default=None, help="write predictions as JSONL here (each with its input row and line)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from lmscale.errors import LmscaleError
    from lmscale.finetune.predict import predict_file, predict_texts
    from lmscale.finetune.trainer import FinetunedModel
    from lmscale.io import atomic_write_text, dumps_json
    from lmscale.io.outputs import check_output_file

    if args.input and args.text:
        raise LmscaleError("give texts or --input FILE, not both")
    if args.out:
        check_output_file(args.out, "--out", kind="jsonl", overwrite=args.overwrite, keys=("row",),
                          inputs=(("--input", args.input),))
    model = FinetunedModel.load(args.model, device=args.device)
    if args.input:
        inputs, rows = predict_file(model, args.input, text_column=args.text_column,
                                    text_pair_column=args.text_pair_column, fmt=args.format,
                                    batch_size=args.batch_size)
    elif args.text:
        if args.text_pair is not None and len(args.text) != 1:
            raise LmscaleError("--text-pair goes with exactly one text")
        inputs, rows = predict_texts(model, args.text, args.text_pair, batch_size=args.batch_size)
    else:
        raise LmscaleError("nothing to predict: give texts or --input FILE")
    if args.out:
        atomic_write_text(args.out, "".join(dumps_json(r) + "\n" for r in rows))
    if args.json:
        print(dumps_json(rows, indent=2))
        return 0
    for ex, r in zip(inputs, rows):
        text = ex.text if ex.text_pair is None else f"{ex.text} ||| {ex.text_pair}"
        text = text if len(text) <= 70 else text[:67] + "..."
        if "label" in r:
            print(f"{r['label']}\t{r['probabilities'][r['label']]:.3f}\t{text}")
        elif "score" in r:
            print(f"{r['score']:.4f}\t{text}")
        else:
            print(f"{r['output']}\t{text}")
    return 0
