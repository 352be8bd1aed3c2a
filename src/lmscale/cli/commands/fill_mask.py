"""`lmscale fill-mask CKPT TEXT`: the masked-LM head's top candidates for each [MASK] (or ___)."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import add_device_argument, positive_int
from lmscale.io import dumps_json

HELP = "predict the words behind [MASK] (or ___) with an encoder checkpoint"
DESCRIPTION = (
    "Show the top candidates and their probabilities for every mask in TEXT, best first. "
    "Write the blank as [MASK] or ___; several masks are each answered. With an encoder-decoder "
    "(T5) checkpoint the blanks are filled as spans instead. --json prints what transformers' "
    'fill-mask pipeline returns: [{"score", "token", "token_str", "sequence"}, ...] best first for one '
    "mask, one such list per mask for several."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="model directory, run directory or transformers directory")
    p.add_argument("text", metavar="TEXT", help='e.g. "University of Minnesota is located in [MASK], Minnesota."')
    p.add_argument("--top-k", type=positive_int, default=5, help="candidates per mask (default 5)")
    p.add_argument("--targets", default=None,
                   help="comma-separated words to score instead of the whole vocabulary "
                        "(a multi-token word is scored by its first sub-token)")
    add_device_argument(p)
    p.add_argument("--json", action="store_true",
                   help="print only JSON shaped like transformers' fill-mask pipeline (score/token/token_str/sequence)")


def run(args: argparse.Namespace) -> int:
    import lmscale
    from lmscale.inference.fill_mask import BLANK, fill_mask, fill_mask_pipeline
    from lmscale.inference.generate import infill, model_family

    model, tok = lmscale.load(args.checkpoint, device=args.device)
    if tok is None:
        from lmscale.errors import CheckpointError

        raise CheckpointError(f"{args.checkpoint}: no tokenizer saved with the model")
    if model_family(model) == "encoder-decoder":
        text, i = args.text, 0
        while BLANK.search(text) or "[MASK]" in text:
            m = BLANK.search(text)
            j = text.find("[MASK]")
            if m is not None and (j < 0 or m.start() < j):
                text = text[: m.start()] + f"<extra_id_{i}>" + text[m.end():]
            else:
                text = text[:j] + f"<extra_id_{i}>" + text[j + 6:]
            i += 1
        res = infill(model, tok, text)
        if args.json:
            print(dumps_json(res.to_dict()))
        else:
            for k, s in enumerate(res.spans):
                print(f"<extra_id_{k}> -> {s!r}")
            print(res.text)
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets is not None else None
    if targets is not None and not targets:
        from lmscale.errors import LmscaleError

        raise LmscaleError(f"--targets {args.targets!r} names no word; give comma-separated words, e.g. --targets "
                           "paris,london")
    if args.json:
        print(dumps_json(fill_mask_pipeline(model, tok, args.text, top_k=args.top_k, targets=targets)))
        return 0
    results = fill_mask(model, tok, args.text, top_k=args.top_k, targets=targets)
    print(args.text)
    for n, entries in enumerate(results, start=1):
        if len(results) > 1:
            print(f"\nmask {n} of {len(results)}")
        width = max([len(e["token"]) for e in entries] + [9])
        print(f"{'rank':>4}  {'candidate':<{width}}  probability")
        for r, e in enumerate(entries, start=1):
            note = f"  (first sub-token of {e['first_subtoken_of']!r})" if "first_subtoken_of" in e else ""
            print(f"{r:>4}  {e['token']:<{width}}  {e['probability']:.4f}{note}")
    return 0
