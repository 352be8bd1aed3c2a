"""GPT-2 small (124M) pretraining on one GPU: bf16, torch.compile, flash attention, MFU.

Runs the real engine (`lmscale.training.loop.pretrain`, the code behind `lmscale pretrain`) on
GPT-2-tokenized WikiText-2 shards at sequence 1024, then, in the same process and on the same
card, `transformers`' GPT2LMHeadModel with the same shape, batch, dtype, compile and fused AdamW,
so the table holds a ratio and not only an absolute number. Phases, each written to the JSON as
soon as it ends (a run cut short still leaves what it measured):

1. flash: one forward+backward of our GPT-2 small with SDPA restricted to the flash kernel (an
   error here would mean our attention calls fall back to the math kernel);
2. lmscale-compiled / lmscale-eager: `pretrain()` runs; tokens/s and MFU are read from the run's
   own metrics.jsonl (PaLM convention 6N + 12*L*d*T against the vendor's dense bf16 peak), first
   logged intervals dropped (compilation, allocator warm-up);
3. transformers-compiled: GPT2LMHeadModel (sdpa attention) timed step by step, same batches;
4. fsdp: `torchrun --nproc_per_node=1 -m lmscale pretrain --train.parallel fsdp` on a small
   decoder, then `lmscale.load` of its (unsharded) checkpoint;
5. profile: the engine's own `Trainer.train_step` under `torch.profiler` for a few steps after
   compilation, queued and read as `Trainer.run` does on a GPU: the wall time, the time some
   kernel ran, the idle gaps (where, between which kernels) and the kernels by time per step, so
   a step's fixed cost can be read off (`--trace FILE.json.gz` keeps the Chrome trace).

Prepare the shards once on any machine (they travel with the working tree):
    lmscale data prepare --corpus wikitext-2 --tokenizer GPT2_TOKENIZER_DIR --out .gpu/shards
    python benchmarks/gpu_train.py --shards .gpu/shards --tokenizer GPT2_TOKENIZER_DIR --out RESULT.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmscale.config import load_run_config  # noqa: E402
from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.training.metrics import peak_flops, read_metrics  # noqa: E402

VOCAB_PADDED = 50304  # 50257 rounded up to a multiple of 128: tensor-core-friendly LM head


def gpt2_small_config(args, out_dir: str, compile_: bool, steps: int):
    return load_run_config(preset="gpt2-small", overrides={
        "out": out_dir, "data.shards": args.shards, "data.tokenizer": args.tokenizer,
        "model.vocab_size": VOCAB_PADDED, "model.dropout": 0.0, "model.attention_dropout": 0.0,
        "train.seq_len": 1024, "train.batch_size": args.batch, "train.micro_batch_size": args.batch,
        "train.max_steps": steps, "train.warmup_steps": 5, "train.lr": 6e-4, "train.dtype": "bf16",
        "train.compile": compile_, "train.device": "cuda", "train.log_every": args.log_every,
        "train.eval_every": 0, "train.checkpoint_every": 0, "train.keep_last": 1,
    })


def read_train_events(run_dir: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("event") == "train"]


def phase_flash(args) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmscale.models import build_model

    cfg = gpt2_small_config(args, "/tmp/unused", False, 1).model
    model = build_model(cfg).cuda().train()
    ids = torch.randint(0, 50257, (4, 1024), device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.cuda.synchronize()
    out = {"flash_only_forward_backward": "ok", "loss": float(loss)}
    del model
    torch.cuda.empty_cache()
    return out


def phase_lmscale(args, compile_: bool, steps: int) -> dict:
    from lmscale.training.loop import pretrain

    run_dir = tempfile.mkdtemp(prefix="gpt2-small-")
    cfg = gpt2_small_config(args, run_dir, compile_, steps)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = pretrain(cfg, progress=False)
    wall = time.perf_counter() - t0
    events = read_train_events(run_dir)
    steady = [e for e in events if e["step"] > args.skip_steps]
    tps = [e["tokens_per_s"] for e in steady if e.get("tokens_per_s")]
    mfu = [e["mfu"] for e in steady if e.get("mfu") is not None]
    return {
        "compile": compile_, "steps": steps, "tokens_per_s": statistics.median(tps), "mfu": statistics.median(mfu),
        "tokens_per_s_per_interval": tps, "first_loss": events[0]["loss"], "last_loss": events[-1]["loss"],
        "params_total": (summary.get("params") or {}).get("total"),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "wall_s_including_compile": wall,
    }


def phase_transformers(args, steps: int) -> dict:
    import transformers

    cfg = transformers.GPT2Config(vocab_size=VOCAB_PADDED, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    try:
        model.config._attn_implementation = "sdpa"
    except Exception:  # older/newer config objects: the default is sdpa anyway
        pass
    model = model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    cmodel = torch.compile(model)
    g = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for i in range(steps + args.skip_steps):
        ids = torch.randint(0, 50257, (args.batch, 1024), device="cuda", generator=g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = cmodel(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        torch.cuda.synchronize()
        if i >= args.skip_steps:
            times.append(time.perf_counter() - t0)
    n = sum(p.numel() for p in model.parameters())
    tps = args.batch * 1024 / statistics.median(times)
    return {"tokens_per_s": tps, "params_total": n, "steps_timed": len(times)}


def phase_fsdp(args) -> dict:
    run_dir = tempfile.mkdtemp(prefix="fsdp-")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "lmscale",
           "pretrain", "--preset", "gpt-tiny", "--shards", args.shards, "--tokenizer", args.tokenizer,
           "--out", run_dir, "--max-steps", "30", "--no-progress", "--json",
           "--model.vocab_size", str(VOCAB_PADDED), "--train.parallel", "fsdp",
           "--train.seq_len", "128", "--train.batch_size", "16", "--train.eval_every", "15"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = {"returncode": p.returncode, "output_tail": (p.stdout + p.stderr)[-1500:]}
    if p.returncode == 0:
        events = read_train_events(run_dir)
        out.update(first_loss=events[0]["loss"], last_loss=events[-1]["loss"])
        import lmscale

        model, tok = lmscale.load(run_dir)
        ids = torch.tensor([tok.encode("The meaning of")])
        out["loaded_logits_shape"] = list(model(ids).logits.shape)
    return out


def _kernel_category(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n:
        return "attention"
    if "adam" in n:
        return "optimizer"
    if any(k in n for k in ("gemm", "cutlass", "sm90", "nvjet", "xmma", "cublas", "gemv")):
        return "matmul"
    if "norm" in n and "multi_tensor" in n or "l2norm" in n or "foreach" in n:
        return "clipping / foreach"
    if "embedding" in n or "radix" in n or "sort" in n or "index" in n:
        return "embedding / indexing"
    if "triton" in n:
        return "compiled elementwise (triton)"
    if "memcpy" in n or "memset" in n:
        return "copies"
    return "other"


def short_kernel_name(name: str) -> str:
    """A kernel's name without its return type and template or call arguments (`void
    at::native::reduce_kernel<512, 1, ...>(...)` -> `at::native::reduce_kernel`)."""
    name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    # a template argument list or a call's, not a spaced remark such as "Memcpy DtoH (Device -> Pinned)"
    return re.split(r"<|(?<! )\(", name, maxsplit=1)[0].strip()[:90]


def analyse_trace(trace: dict, step_label: str, steps_per_window: int = 1) -> dict:
    """Per profiled window (`step_label` ranges of `steps_per_window` steps): wall time, time with
    a kernel running, and the idle gaps; kernel totals per step."""
    events = trace.get("traceEvents", [])
    kernels = sorted(((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
                      if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "ts" in e), key=lambda k: k[0])
    steps = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "user_annotation" and e.get("name") == step_label)
    syncs = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
             if e.get("cat") == "cuda_runtime" and "Synchronize" in e.get("name", "")]
    per_step = []
    for s0, s1 in steps:
        ks = [k for k in kernels if k[0] >= s0 and k[1] <= s1 + 1]
        busy, gaps, cur_end, prev = 0.0, [], None, None
        for k0, k1, name in ks:
            if cur_end is None:
                gaps.append({"at_us": 0.0, "us": round(k0 - s0, 1), "before": "(step start)",
                             "after": short_kernel_name(name)})
                cur_end, busy = k1, k1 - k0
            else:
                if k0 > cur_end + 10:
                    waits = [n for a, b, n in syncs if a <= k0 and b >= cur_end]
                    gaps.append({"at_us": round(cur_end - s0, 1), "us": round(k0 - cur_end, 1),
                                 "before": short_kernel_name(prev), "after": short_kernel_name(name),
                                 "host_waiting_in": waits[:1]})
                busy += max(0.0, k1 - max(k0, cur_end))
                cur_end = max(cur_end, k1)
            prev = name
        if cur_end is not None:
            gaps.append({"at_us": round(cur_end - s0, 1), "us": round(s1 - cur_end, 1),
                         "before": short_kernel_name(prev), "after": "(step end)"})
        gaps = [g for g in gaps if g["us"] >= 20]
        per_step.append({"wall_ms": round((s1 - s0) / 1e3, 3), "kernel_busy_ms": round(busy / 1e3, 3),
                         "idle_ms": round((s1 - s0 - busy) / 1e3, 3), "kernels": len(ks),
                         "wall_ms_per_step": round((s1 - s0) / 1e3 / steps_per_window, 3),
                         "kernel_busy_ms_per_step": round(busy / 1e3 / steps_per_window, 3),
                         "gaps_over_20us": sorted(gaps, key=lambda g: -g["us"])[:12]})
    by_name: dict[str, list[float]] = {}
    for k0, k1, name in kernels:
        by_name.setdefault(name, []).append(k1 - k0)
    n_steps = max(len(steps), 1) * steps_per_window
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]
    cats: dict[str, float] = {}
    for name, ds in by_name.items():
        category = _kernel_category(name)  # from the full name: template arguments say "Adam"
        cats[category] = cats.get(category, 0.0) + sum(ds) / n_steps / 1e3
    return {
        "steps": per_step,
        "ms_per_step_by_category": {k: round(v, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [{"name": short_kernel_name(n), "calls_per_step": len(ds) / n_steps,
                                     "ms_per_step": round(sum(ds) / n_steps / 1e3, 3)} for n, ds in top],
    }


def phase_profile(args, steps_warm: int = 8, steps_profiled: int = 4) -> dict:
    import gzip

    from torch.profiler import ProfilerActivity, profile, record_function

    from lmscale.training.build import build_run, open_run_dir
    from lmscale.training.distributed import init_distributed
    from lmscale.training.engine import sync
    from lmscale.training.loop import Trainer
    from lmscale.training.metrics import MetricsLogger

    run_dir = tempfile.mkdtemp(prefix="gpt2-small-profile-")
    cfg = gpt2_small_config(args, run_dir, True, steps_warm + steps_profiled + 2)
    info = init_distributed(cfg.train.device)
    lock = open_run_dir(cfg, info)  # noqa: F841  checks and locks the directory for the process's life
    run = build_run(cfg, info)
    trainer = Trainer(run, MetricsLogger(run.run_dir), progress=False)
    for _ in range(steps_warm):
        trainer.train_step()
    trainer.read_pending()
    sync(trainer.engine.device)
    # as `Trainer.run` drives it on a GPU: steps queued back to back, read once at the end
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("lmscale_steps"):
            for _ in range(steps_profiled):
                trainer.train_step()
            trainer.read_pending()
            sync(trainer.engine.device)
    trace_path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    trace = json.loads(trace_path.read_text())
    if args.trace:
        with gzip.open(args.trace, "wt") as f:
            json.dump(trace, f)
    out = analyse_trace(trace, "lmscale_steps", steps_per_window=steps_profiled)
    out["steps_profiled"] = steps_profiled
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="GPT-2-tokenized shard directory (see above)")
    ap.add_argument("--tokenizer", help="the GPT-2 tokenizer directory the shards were made with")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--skip-steps", type=int, default=10, help="warm-up steps left out of the medians")
    ap.add_argument("--phases", default="flash,lmscale-compiled,transformers-compiled,lmscale-eager,fsdp")
    ap.add_argument("--trace", help="profile phase: also keep the Chrome trace here (.json.gz)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_train_latest.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train: skipped, no CUDA device (the recorded GPU results are in BENCHMARKS.md)")
        return 0
    if not args.shards or not args.tokenizer:
        ap.error("--shards and --tokenizer are required (see the module docstring)")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(0)
    peak = peak_flops(torch.device("cuda", 0), "bf16")
    result = {"benchmark": "gpu_train", "machine": {"gpu": name, "torch": torch.__version__,
                                                    "cuda": torch.version.cuda, "bf16_peak_flops": peak},
              "setup": {"model": "gpt2-small (12x768, vocab padded to 50304, dropout 0)", "seq_len": 1024,
                        "batch": args.batch, "dtype": "bf16 autocast", "optimizer": "AdamW fused",
                        "mfu_convention": "PaLM 6N + 12*L*d*T per token, vendor dense bf16 peak"},
              "phases": {}}
    for phase in args.phases.split(","):
        print(f"== {phase}", flush=True)
        t0 = time.perf_counter()
        try:
            if phase == "flash":
                r = phase_flash(args)
            elif phase == "lmscale-compiled":
                r = phase_lmscale(args, True, args.steps)
            elif phase == "lmscale-eager":
                r = phase_lmscale(args, False, max(args.steps // 2, args.skip_steps + 10))
            elif phase == "transformers-compiled":
                r = phase_transformers(args, args.steps - args.skip_steps)
            elif phase == "fsdp":
                r = phase_fsdp(args)
            elif phase == "profile":
                r = phase_profile(args)
            else:
                raise ValueError(f"unknown phase {phase}")
        except Exception as exc:  # keep the other phases' numbers
            r = {"error": f"{type(exc).__name__}: {exc}"}
        r["phase_wall_s"] = round(time.perf_counter() - t0, 1)
        result["phases"][phase] = r
        ph = result["phases"]
        if "tokens_per_s" in ph.get("lmscale-compiled", {}) and "tokens_per_s" in ph.get("transformers-compiled", {}):
            result["ratio_lmscale_vs_transformers_compiled"] = (
                ph["lmscale-compiled"]["tokens_per_s"] / ph["transformers-compiled"]["tokens_per_s"])
        print(json.dumps(r, default=str)[:6000], flush=True)
        atomic_write_json(args.out, result)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
