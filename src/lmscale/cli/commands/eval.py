"""`lmscale eval perplexity|fewshot`: perplexity of a corpus split; few-shot in-context evaluation."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lmscale.cli.argtypes import add_device_argument, nonnegative_int, positive_int
from lmscale.io import dumps_json

HELP = "evaluate a checkpoint: corpus perplexity, or few-shot BIG-bench tasks (GPT-3 protocol)"


def _shots(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots wants comma-separated integers like 0,1,8, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--shots wants non-negative integers, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", metavar="{perplexity,fewshot}")
    pp = sub.add_parser("perplexity", help="token/word perplexity and bits per byte of a corpus split "
                                           "(pseudo-perplexity for encoders)")
    pp.add_argument("checkpoint", metavar="CKPT")
    pp.add_argument("--corpus", default="wikitext-2", help="catalog name or text file (default wikitext-2)")
    pp.add_argument("--split", default="test")
    pp.add_argument("--window", type=positive_int, default=None,
                    help="tokens per window (default: the model's context)")
    pp.add_argument("--stride", type=positive_int, default=None,
                    help="tokens the window advances (default: half the window)")
    pp.add_argument("--max-tokens", type=positive_int, default=None,
                    help="stop after the document that reaches this many tokens (quick estimates; a document "
                         "far longer than that is cut before it is tokenized)")
    pp.add_argument("--batch-size", type=positive_int, default=8)
    add_device_argument(pp)
    pp.add_argument("--errors", choices=["strict", "replace"], default="strict",
                    help="undecodable bytes in a local corpus: fail naming the file and offset, or replace them")
    pp.add_argument("--out", default=None,
                    help="also write the result to this file, in lm-evaluation-harness's results schema")
    pp.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    pp.add_argument("--json", action="store_true")

    fp = sub.add_parser("fewshot", help="zero/one/few-shot accuracy on BIG-bench JSON (or JSONL) tasks")
    fp.add_argument("checkpoint", metavar="CKPT", nargs="?", default=None)
    fp.add_argument("--task", action="append", required=True, metavar="PATH_OR_NAME",
                    help="task.json / .jsonl file, task directory, or BIG-bench task name (repeatable)")
    fp.add_argument("--shots", type=_shots, default=[0], help="comma-separated, e.g. 0,1,8 (default 0)")
    fp.add_argument("--seed", type=nonnegative_int, default=1234, help="seed of the demonstration draws")
    fp.add_argument("--limit", type=positive_int, default=None,
                    help="evaluate a seeded sample of this many items per task")
    fp.add_argument("--hf", default=None, metavar="DIR", help="evaluate a local transformers causal LM directory")
    fp.add_argument("--batch-tokens", type=positive_int, default=2048, help="tokens per scoring batch")
    fp.add_argument("--samples", action="store_true", help="include every item's prompt and scores in --out")
    add_device_argument(fp)
    fp.add_argument("--out", default=None, help="write the results here, in lm-evaluation-harness's results schema")
    fp.add_argument("--download", action="store_true",
                    help="fetch BIG-bench (358 MB) if a --task name needs it and it is not here yet")
    fp.add_argument("--overwrite", action="store_true", help="replace --out even if lmscale did not write it")
    fp.add_argument("--json", action="store_true")


def _progress(total: int | None, desc: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import Progress

    prog = Progress(console=Console(stderr=True), transient=True)
    task = prog.add_task(desc, total=total)
    prog.start()
    return prog, (lambda n: prog.advance(task, n))


def _run_perplexity(args: argparse.Namespace) -> int:
    import lmscale
    from lmscale.errors import CheckpointError, LmscaleError
    from lmscale.evaluation.perplexity import corpus_documents, perplexity
    from lmscale.io import atomic_write_json
    from lmscale.io.outputs import check_output_file

    if args.out:
        check_output_file(args.out, "--out", kind="json", overwrite=args.overwrite, keys=("results",),
                          inputs=(("--corpus", args.corpus),))
    if args.stride is not None and args.window is not None and args.stride > args.window:
        raise LmscaleError(f"--stride {args.stride} is longer than --window {args.window}; tokens between "
                           "windows would never be scored")
    started = time.time()
    model, tok = lmscale.load(args.checkpoint, device=args.device)
    if tok is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer saved with the model")
    docs = corpus_documents(args.corpus, args.split, errors=args.errors)
    prog, advance = _progress(args.max_tokens, "scoring tokens", args.json)
    try:
        res = perplexity(model, tok, docs, window=args.window, stride=args.stride, batch_size=args.batch_size,
                         max_tokens=args.max_tokens, progress=advance)
    finally:
        if prog is not None:
            prog.stop()
    out = res.to_harness(f"{Path(str(args.corpus)).name}:{args.split}", corpus=str(args.corpus), split=args.split,
                         model="lmscale", model_args={"pretrained": str(Path(args.checkpoint))},
                         model_name=str(Path(args.checkpoint)), device=args.device,
                         max_tokens=args.max_tokens, started=started)
    if args.out:
        atomic_write_json(args.out, out)
    if args.json:
        print(dumps_json(out))
        return 0
    name = "pseudo-perplexity (masked, not comparable with a decoder's)" if res.kind == "pseudo-perplexity" \
        else res.kind
    print(f"{args.corpus} {args.split}: {res.n_documents} documents, {res.n_tokens:,} tokens, "
          f"{res.n_words:,} words, {res.n_bytes:,} bytes (window {res.window}, stride {res.stride})")
    print(f"  {name}")
    print(f"  token-level : {res.token_perplexity:.3f}   (loss {res.loss:.4f} nats/token)")
    if res.word_perplexity is not None:
        print(f"  word-level  : {res.word_perplexity:.3f}")
    if res.bits_per_byte is not None:
        print(f"  bits/byte   : {res.bits_per_byte:.4f}")
    return 0


def _run_fewshot(args: argparse.Namespace) -> int:
    from lmscale.data.catalog import is_local
    from lmscale.errors import CheckpointError, LmscaleError
    from lmscale.evaluation.fewshot import evaluate, format_table
    from lmscale.evaluation.lm import load_hf_causal_lm, scoring_lm
    from lmscale.evaluation.tasks import is_task_path, load_tasks
    from lmscale.io import atomic_write_json
    from lmscale.io.outputs import check_output_file

    if (args.checkpoint is None) == (args.hf is None):
        raise LmscaleError("give either CKPT or --hf DIR (exactly one)")
    if args.out:
        check_output_file(args.out, "--out", kind="json", overwrite=args.overwrite, keys=("results",),
                          inputs=tuple(("--task", t) for t in args.task))
    # every argument is checked before anything large is read or downloaded: the checkpoint path,
    # the local task files, the model itself, and only then BIG-bench task names
    where = args.checkpoint if args.hf is None else args.hf
    if not Path(where).exists():
        raise CheckpointError(f"{where}: no such checkpoint, run or model directory")
    local = {spec: load_tasks(spec) for spec in args.task if is_task_path(spec)}
    names = [spec for spec in args.task if spec not in local]
    if names and not args.download and not is_local("bigbench"):
        load_tasks(names[0])  # the error that says how to get BIG-bench, before the model is loaded
    if args.hf is not None:
        lm = load_hf_causal_lm(args.hf, device=args.device, batch_tokens=args.batch_tokens)
        model, model_args = "hf", {"pretrained": str(Path(args.hf))}
    else:
        import lmscale

        net, tok = lmscale.load(args.checkpoint, device=args.device)
        if tok is None:
            raise CheckpointError(f"{args.checkpoint}: no tokenizer saved with the model")
        lm = scoring_lm(net, tok, batch_tokens=args.batch_tokens, name=f"lmscale:{Path(args.checkpoint).name}")
        model, model_args = "lmscale", {"pretrained": str(Path(args.checkpoint))}
    tasks = [t for spec in args.task
             for t in (local[spec] if spec in local else load_tasks(spec, download=args.download))]
    total = sum(min(len(t.examples), args.limit or len(t.examples)) for t in tasks) * len(args.shots)
    prog, advance = _progress(total, "few-shot", args.json)
    try:
        result = evaluate(lm, tasks, shots=args.shots, seed=args.seed, limit=args.limit,
                          keep_samples=args.samples, progress=advance, model=model, model_args=model_args,
                          device=args.device)
    finally:
        if prog is not None:
            prog.stop()
    if args.out:
        atomic_write_json(args.out, result)
    if args.json:
        print(dumps_json(result))
        return 0
    rows = format_table(result)
    header = ["task", "shots", "metric", "value", "stderr", "n", "truncated"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if len(args.shots) > 1:
        print("\nin-context learning curve (main metric by number of shots)")
        ks = [str(k) for k in args.shots]
        print("  ".join(["task".ljust(widths[0])] + [f"{k + '-shot':>8}" for k in ks]))
        for task, by_k in result["lmscale"]["curve"].items():
            metric = "exact_match" if "exact_match" in by_k[ks[0]] else "acc"
            cells = [f"{by_k[k][metric]:8.3f}" for k in ks]
            print("  ".join([task.ljust(widths[0])] + cells) + f"  ({metric})")
    if args.out:
        print(f"results written to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "eval_command", None) == "perplexity":
        return _run_perplexity(args)
    if getattr(args, "eval_command", None) == "fewshot":
        return _run_fewshot(args)
    args._parser.print_help()
    return 2
