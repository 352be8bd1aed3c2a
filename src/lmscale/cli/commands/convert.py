"""`lmscale convert`: transformers checkpoints in, our checkpoints out (and back)."""
from __future__ import annotations

import argparse
import json

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP
from lmscale.io import dumps_json

HELP = "convert between transformers checkpoints (BERT, GPT-2, GPT, T5, Llama, GPT-NeoX) and lmscale model dirs"
DESCRIPTION = (
    "lmscale convert --from-hf HF_DIR --out MODEL_DIR imports a transformers BertForMaskedLM / "
    "BertModel / BertForPreTraining, GPT2LMHeadModel, OpenAIGPTLMHeadModel, "
    "T5ForConditionalGeneration, LlamaForCausalLM or GPTNeoXForCausalLM (Pythia) directory; "
    "lmscale convert --to-hf CKPT --out HF_DIR exports a model dir or run dir (its best/newest "
    "checkpoint) to safetensors + config + tokenizer files, as whichever of these classes computes "
    "the same function (a RoPE decoder leaves as Llama or GPT-NeoX). A `lmscale finetune` output "
    "leaves as BertForSequenceClassification (fine-tuned with --pooling pooler) or "
    "GPT2ForSequenceClassification, where its head maps."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="HF_DIR", help="transformers model directory to import")
    src.add_argument("--to-hf", metavar="CKPT", help="lmscale model dir, run dir or fine-tuning run dir to export")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (replaced atomically; it must be new, empty, or one convert wrote)")
    p.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)
    p.add_argument("--json", action="store_true", help="print a JSON summary only")


def _is_finetuned(path) -> bool:
    return (path / "finetune.json").is_file() or (path / "best" / "finetune.json").is_file()


def _finetuned_to_hf(path: str, out: str):
    """A `lmscale finetune` output as transformers' sequence-classification class, where its head maps."""
    from lmscale.errors import CheckpointError
    from lmscale.finetune.trainer import FinetunedModel
    from lmscale.models.hf.classification import to_hf_classifier

    ft = FinetunedModel.load(path)
    meta, fmt = ft.meta, ft.fmt
    why = ("it was fine-tuned text-to-text (export its model/ directory as a plain model)" if meta["mode"] != "head"
           else "its head scores multiple choices" if meta["multiple_choice"]
           else "its head adds the two orders of a pair (--symmetric)" if fmt.symmetric
           else None)
    if why is not None:
        raise CheckpointError(f"{path}: no transformers sequence-classification class computes this model: {why}")
    head = ft.net.head
    arch = to_hf_classifier(ft.body, ft.tokenizer, head.weight, head.bias, out, pooling=meta["pooling"],
                            labels=meta.get("labels") or [], regression=ft.kind == "regression",
                            target_mean=meta["target_mean"], target_std=meta["target_std"],
                            pad_token_id=ft.tokenizer.pad_id)
    return ft.body, ft.tokenizer, arch


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmscale.errors import CheckpointError
    from lmscale.io.outputs import check_output_dir, mark_output_dir
    from lmscale.models import hf
    from lmscale.models.loading import load
    from lmscale.models.serialization import save_model_dir

    source = Path(args.from_hf or args.to_hf).resolve()
    out = Path(args.out).resolve()
    if out == source or out in source.parents:
        raise CheckpointError(f"--out {args.out} is (or holds) the model being converted; choose another --out")
    # before any work: convert replaces --out, so it must be new, empty or a model directory it wrote
    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("model",))
    if args.from_hf:
        if not Path(args.from_hf).is_dir():
            raise CheckpointError(f"{args.from_hf}: not a directory")
        model, tok = hf.from_hf(args.from_hf)
        save_model_dir(model, tok, args.out)
        arch = model.config.family
    elif _is_finetuned(Path(args.to_hf)):
        model, tok, arch = _finetuned_to_hf(args.to_hf, args.out)
    else:
        model, tok = load(args.to_hf)
        hf.to_hf(model, tok, args.out)
        arch = json.loads((Path(args.out) / "config.json").read_text())["architectures"][0]
    mark_output_dir(args.out, "model", whole=True)  # the directory was just built whole
    summary = {"out": str(args.out), "family": model.config.family, "architecture": arch,
               "params": model.num_parameters(), "tokenizer": tok is not None}
    if args.json:
        print(dumps_json(summary))
    else:
        n = summary["params"]["total"]
        print(f"wrote {args.out}: {arch} ({n:,} parameters){'' if tok is not None else ', no tokenizer'}")
    return 0
