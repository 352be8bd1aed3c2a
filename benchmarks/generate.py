"""Generation with vs without the key/value cache, same model, same prompt, same run.

Baseline: recomputing the whole prefix at every step (what a model without a cache must do),
so step t costs a forward pass over prompt+t tokens and 256 new tokens cost O(T^2) work. With the
cache each step runs one position against stored keys and values. Both decode greedily and must
produce the same tokens; the script checks that before reporting the speed-up.

    .venv/bin/python benchmarks/generate.py [--new-tokens 256] [--d-model 512] [--layers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(HERE / "results" / "generate.json"))
    args, _ = p.parse_known_args(argv)

    import torch

    from lmscale.config import ModelConfig
    from lmscale.inference.generate import iter_token_ids
    from lmscale.inference.sampling import SamplingConfig
    from lmscale.io import atomic_write_json
    from lmscale.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(family="decoder", vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, max_positions=args.prompt_tokens + args.new_tokens,
                      activation="gelu_tanh", init_std=0.02)
    model = build_model(cfg).eval()
    prompt = torch.randint(1, args.vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    greedy = SamplingConfig(greedy=True)

    def run(use_cache: bool) -> tuple[list[int], float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        toks = list(iter_token_ids(model, prompt, greedy, args.new_tokens, use_cache=use_cache))
        return toks, time.perf_counter() - t0, time.process_time() - c0

    run(True)  # warm-up: first-call allocations and kernel selection
    cached, t_cache, cpu_cache = run(True)
    uncached, t_nocache, cpu_nocache = run(False)
    if cached != uncached:
        print("error: cached and uncached generations differ", file=sys.stderr)
        return 1
    n = len(cached)
    speedup = t_nocache / t_cache
    params = model.num_parameters()
    result = {
        "benchmark": "generate",
        "model": {"family": "decoder", "d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads,
                  "vocab_size": args.vocab, "params_total": params["total"],
                  "params_non_embedding": params["non_embedding"]},
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": n,
        "with_cache": {"wall_s": t_cache, "cpu_s": cpu_cache, "tokens_per_s": n / t_cache},
        "without_cache": {"wall_s": t_nocache, "cpu_s": cpu_nocache, "tokens_per_s": n / t_nocache},
        "speedup": speedup,
        "speedup_cpu_time": cpu_nocache / cpu_cache,
        "same_tokens": True,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    print(f"decoder d_model={args.d_model} layers={args.layers} ({params['total'] / 1e6:.1f}M params), "
          f"prompt {args.prompt_tokens} tokens, {n} new tokens, greedy, torch threads {torch.get_num_threads()}")
    print(f"  without KV cache (baseline): {t_nocache:7.2f} s  {n / t_nocache:8.1f} tokens/s  "
          f"(CPU {cpu_nocache:.2f} s)")
    print(f"  with KV cache              : {t_cache:7.2f} s  {n / t_cache:8.1f} tokens/s  (CPU {cpu_cache:.2f} s)")
    print(f"  speed-up                   : {speedup:.1f}x wall clock, {cpu_nocache / cpu_cache:.1f}x CPU time "
          f"(same tokens: yes)")
    if args.out:
        atomic_write_json(args.out, result)
        print(f"  written to {args.out}")
    print(json.dumps({"speedup": round(speedup, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
