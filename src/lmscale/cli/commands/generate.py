"""`lmscale generate CKPT PROMPT`: continue a prompt (decoders, encoder-decoders), streaming tokens."""
from __future__ import annotations

import argparse
import json
import re
import sys

HELP = "generate text from a decoder or encoder-decoder checkpoint (KV cache; T5 span infilling)"
DESCRIPTION = (
    "Continue PROMPT token by token, printing each piece as it is generated. Sampling by default "
    "(temperature, top-k, top-p, repetition penalty); --greedy for argmax decoding. With a T5 "
    "checkpoint and sentinels in the prompt (<extra_id_0> or <X>, <Y>, <Z>), fills the spans and "
    "prints the reassembled sentence."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="model directory, run directory or transformers directory")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1.0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this string is generated (repeatable; not included in the output)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help='print only {"token_ids": [...], "text": ...}')


def run(args: argparse.Namespace) -> int:
    import lmscale
    from lmscale.errors import CheckpointError
    from lmscale.inference.generate import generate, infill, model_family, normalize_sentinels

    model, tok = lmscale.load(args.checkpoint, device=args.device)
    if tok is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer saved with the model")
    stop = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]
    sampling = dict(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, seed=args.seed)
    if model_family(model) == "encoder-decoder" and re.search(r"<extra_id_\d+>", normalize_sentinels(args.prompt)):
        res = infill(model, tok, args.prompt, max_new_tokens=args.max_new_tokens,
                     use_cache=not args.no_cache, **sampling)
        if args.json:
            print(json.dumps(res.to_dict()))
        else:
            for k, s in enumerate(res.spans):
                print(f"<extra_id_{k}> -> {s!r}")
            print(res.text)
        return 0
    if model_family(model) == "encoder":
        from lmscale.errors import LmscaleError

        raise LmscaleError(f"{args.checkpoint} is an encoder (BERT-style), which cannot generate text; "
                           "use `lmscale fill-mask`")
    on_text = None
    if not args.json:
        if model_family(model) == "decoder":
            sys.stdout.write(args.prompt)
        else:
            sys.stdout.write(f"{args.prompt}\n-> ")
        sys.stdout.flush()

        def on_text(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

    res = generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, stop=stop,
                   use_cache=not args.no_cache, on_text=on_text, **sampling)
    if args.json:
        print(json.dumps({"token_ids": res.token_ids, "text": res.text, "stop_reason": res.stop_reason,
                          "prompt_truncated": res.prompt_truncated}))
    else:
        sys.stdout.write("\n")
        if res.prompt_truncated:
            print(f"(prompt cut by {res.prompt_truncated} tokens from the left to fit the context)",
                  file=sys.stderr)
    return 0
