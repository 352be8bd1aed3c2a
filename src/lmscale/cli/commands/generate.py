"""`lmscale generate CKPT PROMPT...`: continue prompts (decoders, encoder-decoders), streaming one, batching several."""
from __future__ import annotations

import argparse
import re
import sys

from lmscale.cli.argtypes import add_device_argument, nonnegative_int, positive_float, positive_int, seed
from lmscale.io import dumps_json

HELP = "generate text from a decoder or encoder-decoder checkpoint (KV cache; batches; T5 span infilling)"
DESCRIPTION = (
    "Continue PROMPT token by token, printing each piece as it is generated. Several prompts (as "
    "arguments, or one per line of --file) are decoded together in batches with the KV cache (left "
    "padding); each gets the tokens it would get alone. Sampling by default (temperature, top-k, "
    "top-p, repetition penalty); --greedy for argmax decoding. With a T5 checkpoint and sentinels in "
    "the prompt (<extra_id_0> or <X>, <Y>, <Z>), fills the spans and prints the reassembled sentence. "
    '--json prints what transformers\' text-generation pipeline returns: [{"generated_text": ...}] for '
    "one prompt (the prompt and its continuation; for an encoder-decoder the output alone), one such "
    "list per prompt for several; each record also carries token_ids (the new tokens), stop_reason "
    "and prompt_truncated."
)


def _top_p(text: str) -> float:
    value = positive_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"is a probability mass in (0, 1], got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="model directory, run directory or transformers directory")
    p.add_argument("prompt", metavar="PROMPT", nargs="*", help="one or more prompts")
    p.add_argument("--file", metavar="FILE", help="read prompts from FILE, one per line ('-' for stdin)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts decoded together (default 16)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="> 1 discourages repeats (1.0 = off)")
    p.add_argument("--max-new-tokens", type=positive_int, default=50)
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this string is generated (repeatable; not included in the output)")
    p.add_argument("--seed", type=seed, default=None,
                   help="sampling seed (same seed, same text; every prompt is sampled with it)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step")
    add_device_argument(p)
    p.add_argument("--json", action="store_true",
                   help='print only JSON shaped like transformers\' pipeline: [{"generated_text": ...}]')


def _prompts(args: argparse.Namespace) -> list[str]:
    from lmscale.errors import LmscaleError

    prompts = list(args.prompt)
    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                with open(args.file, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                raise LmscaleError(f"--file {args.file}: {exc.strerror or exc}") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise LmscaleError("give a PROMPT (or several), or --file FILE with one prompt per line")
    return prompts


def _record(prompt: str, res, continues: bool) -> dict:
    """`continues`: the model continues its prompt (a causal LM), so the record shows both."""
    text = prompt + res.text if continues else res.text
    return {"generated_text": text, "token_ids": res.token_ids, "stop_reason": res.stop_reason,
            "prompt_truncated": res.prompt_truncated}


def run(args: argparse.Namespace) -> int:
    import lmscale
    from lmscale.errors import CheckpointError, LmscaleError
    from lmscale.inference.generate import generate, generate_batch, infill, normalize_sentinels
    from lmscale.models import family_spec

    prompts = _prompts(args)
    model, tok = lmscale.load(args.checkpoint, device=args.device)
    if tok is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer saved with the model")
    spec = family_spec(model)
    if not spec.can_generate:
        raise LmscaleError(f"{args.checkpoint} is an encoder (BERT-style), which cannot generate text; "
                           "use `lmscale fill-mask`")
    stop = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]
    sampling = dict(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, seed=args.seed)
    records: list[dict] = []
    if spec.is_encoder_decoder and any(re.search(r"<extra_id_\d+>", normalize_sentinels(p)) for p in prompts):
        for i, prompt in enumerate(prompts, start=1):
            res = infill(model, tok, prompt, max_new_tokens=args.max_new_tokens, use_cache=not args.no_cache,
                         **sampling)
            if args.json:
                records.append({"generated_text": res.text, **res.to_dict()})
                continue
            if len(prompts) > 1:
                print(f"[{i}/{len(prompts)}] {prompt}")
            for k, s in enumerate(res.spans):
                print(f"<extra_id_{k}> -> {s!r}")
            print(res.text)
        if args.json:
            print(dumps_json([records[0]] if len(prompts) == 1 else [[r] for r in records]))
        return 0
    if len(prompts) == 1 and not args.json:
        prompt = prompts[0]
        sys.stdout.write(prompt if spec.causal else f"{prompt}\n-> ")
        sys.stdout.flush()

        def on_text(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        res = generate(model, tok, prompt, max_new_tokens=args.max_new_tokens, stop=stop,
                       use_cache=not args.no_cache, on_text=on_text, **sampling)
        sys.stdout.write("\n")
        if res.prompt_truncated:
            print(f"(prompt cut by {res.prompt_truncated} tokens from the left to fit the context)", file=sys.stderr)
        return 0
    results = generate_batch(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stop,
                             use_cache=not args.no_cache, batch_size=args.batch_size, **sampling)
    records = [_record(p, r, spec.causal) for p, r in zip(prompts, results)]
    if args.json:
        print(dumps_json([records[0]] if len(prompts) == 1 else [[r] for r in records]))
        return 0
    for i, (prompt, rec, res) in enumerate(zip(prompts, records, results), start=1):
        head = f"[{i}/{len(prompts)}] "
        body = rec["generated_text"] if spec.causal else f"{prompt}\n-> {rec['generated_text']}"
        print(head + body)
        if res.prompt_truncated:
            print(f"(prompt {i} cut by {res.prompt_truncated} tokens from the left to fit the context)",
                  file=sys.stderr)
    return 0
