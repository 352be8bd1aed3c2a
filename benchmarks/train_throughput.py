"""Training throughput of lmscale models vs `transformers` on identical architectures (CPU, fp32).

For each family the same architecture is built twice: our model, and the `transformers` class that
`lmscale.models.hf` exports it to (GPT2LMHeadModel, BertForMaskedLM, T5ForConditionalGeneration),
loaded with the very same weights. Both train on the same batches with the same step: forward,
backward, gradient clipping, AdamW (same hyperparameters and parameter groups), fp32. Each side
uses its usual optimizer implementation: lmscale its engine's (`build_optimizer`: torch's fused
AdamW kernel), transformers the stock `torch.optim.AdamW` (multi-tensor `foreach` path). A third
engine, transformers with the fused AdamW too, is measured alongside so the table can say how
much of the speed-up is the optimizer kernel (`--no-fused-reference` skips it). The two alternate in the same
process, round after round, so machine load hits both alike; the reported number is the median
tokens/s over rounds and the median of the per-round ratios. Time is process CPU time with one
torch thread (wall time is kept in the JSON too): on a machine shared with other jobs the wall
clock mostly measures the neighbours, while CPU time is what the step cost. MFU for the width-512
decoder uses the PaLM convention (6N + 12·L·d·T FLOPs per token)
against a fp32 matmul rate re-measured before every round. Each side's step is
also run once under torch's FLOP counter: the matrix-product FLOPs it really executes, the share
of the matmul rate it sustains on them, and the ratio lmscale would reach if it ran all of them at
that rate and did nothing else: a ceiling for these FLOPs against this transformers time, as
small products rarely reach the 1024x1024 rate.

`--compile` wraps every engine's model in `torch.compile` (inductor's C++ backend on CPU), both
sides alike, and writes its own results file. `--dtype bf16` runs every engine's forward pass
under CPU bf16 autocast (weights, gradients and optimizer state stay fp32), both sides alike,
measures MFU against a bf16 matmul rate and writes its own results file too: on CPUs with
AVX512-BF16 or AMX the bf16 products run faster than fp32 ones (see BENCHMARKS.md).

    python benchmarks/train_throughput.py [--rounds 4] [--steps 1] [--batch 4] [--threads 1] [--compile]
        [--dtype bf16] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmscale.config import ModelConfig  # noqa: E402
from lmscale.data.objectives import compute_input_and_target_lengths  # noqa: E402
from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.models import build_model  # noqa: E402
from lmscale.models.hf import hf_state_dict  # noqa: E402
from lmscale.training.metrics import cpu_name  # noqa: E402
from lmscale.training.optim import build_optimizer, parameter_groups  # noqa: E402

SEQ = 128
VOCAB = 8192


def configs() -> dict[str, ModelConfig]:
    common = dict(vocab_size=VOCAB, max_positions=SEQ, dropout=0.0, attention_dropout=0.0)
    return {
        "decoder-256": ModelConfig(family="decoder", d_model=256, n_layers=4, n_heads=4, activation="gelu_tanh",
                                   norm_position="pre", **common),
        "decoder-512": ModelConfig(family="decoder", d_model=512, n_layers=4, n_heads=8, activation="gelu_tanh",
                                   norm_position="pre", **common),
        "encoder-256": ModelConfig(family="encoder", d_model=256, n_layers=4, n_heads=4, activation="gelu",
                                   norm_position="post", embedding_norm=True, type_vocab_size=2, norm_eps=1e-12,
                                   **common),
        "encoder-decoder-256": ModelConfig(family="encoder-decoder", d_model=256, n_layers=4, n_decoder_layers=4,
                                           n_heads=4, d_head=64, position="relative", norm="rmsnorm", bias=False,
                                           activation="relu", norm_eps=1e-6, vocab_size=VOCAB, max_positions=512),
    }


def hf_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model of the same architecture, holding the same weights."""
    import transformers

    arch, c, state = hf_state_dict(model)
    c = {k: v for k, v in c.items() if k != "architectures"}
    config = transformers.AutoConfig.for_model(c.pop("model_type"), **c)
    hf = getattr(transformers, arch)(config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"{arch}: unexpected tensors {unexpected}")
    ours_n = model.num_parameters()["total"]
    hf_n = sum(p.numel() for p in hf.parameters())
    if ours_n != hf_n:
        raise RuntimeError(f"{arch}: {hf_n} parameters, ours {ours_n}")
    return hf


def make_batches(cfg: ModelConfig, batch: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, cfg.vocab_size, (batch, SEQ), generator=g)
        if cfg.family == "decoder":
            out.append({"input_ids": ids, "labels": ids.clone()})
        elif cfg.family == "encoder":
            selected = torch.rand(batch, SEQ, generator=g) < 0.15
            labels = torch.where(selected, ids, torch.full_like(ids, -100))
            inputs = torch.where(selected, torch.full_like(ids, 4), ids)
            out.append({"input_ids": inputs, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids), "labels": labels})
        else:
            _, tgt = compute_input_and_target_lengths(SEQ, 0.15, 3.0)
            labels = torch.randint(5, cfg.vocab_size, (batch, tgt), generator=g)
            dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), labels[:, :-1]], 1)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": dec,
                        "labels": labels})
    return out


def clock() -> float:
    """Process CPU seconds: with one thread this is the time the step actually ran, so other
    tenants of a shared machine stretch the wall clock but not this (see the module docstring)."""
    return time.process_time()


def matmul_peak(size: int = 1024, seconds: float = 0.3, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best, start = 0.0, clock()
    while clock() - start < seconds:
        t0 = clock()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size**3 / max(clock() - t0, 1e-9))
    return best


def _register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA attention kernels, not the CPU flash kernel both sides
    run here: count it like them (QK^T and PV as dense products, causal or not)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def counted_flops_per_step(model, opt, batches, train_cfg) -> float:
    """Matrix-product FLOPs one training step actually executes (torch's FLOP counter over the
    step's ATen calls, eager): unlike the 6N convention this sees the work a model skips (the
    encoder's masked-rows-only last layer and head, T5's short decoder side)."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        train_steps(model, opt, batches, train_cfg)
    return counter.get_total_flops() / len(batches)


def baseline_optimizer(model, train_cfg, fused: bool = False) -> torch.optim.Optimizer:
    """What a `transformers` user on CPU gets from the stock optimizer: `torch.optim.AdamW` with
    the same hyperparameters and parameter groups as our engine, multi-tensor (`foreach`)
    implementation (no slower than torch's CPU default, the per-tensor loop). `fused=True` gives
    the reference column that isolates what the optimizer kernel alone contributes."""
    groups = parameter_groups(model, train_cfg.weight_decay)
    kwargs = dict(lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)
    return torch.optim.AdamW(groups, **({"fused": True} if fused else {"foreach": True}), **kwargs)


AUTOCAST = {"on": False}  # --dtype bf16: every engine's forward under CPU bf16 autocast


def train_steps(model, opt, batches, train_cfg) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for one optimizer step per batch (forward, backward, clip, AdamW)."""
    params = [p for p in model.parameters() if p.requires_grad]
    t0, w0 = clock(), time.perf_counter()
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AUTOCAST["on"]):
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return clock() - t0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per engine per round")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on a shared machine more threads mostly measure contention)")
    ap.add_argument("--only", nargs="*", help="subset of configs")
    ap.add_argument("--no-fused-reference", dest="fused_reference", action="store_false",
                    help="skip the third engine (transformers with fused AdamW)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every engine's model (both sides)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: forward passes under CPU bf16 autocast on both sides (fp32 weights and optimizer)")
    ap.add_argument("--out", default=None,
                    help="results JSON (default benchmarks/results/train_throughput[_compiled][_bf16].json)")
    args = ap.parse_args()
    if args.out is None:
        suffix = ("_compiled" if args.compile else "") + ("_bf16" if args.dtype == "bf16" else "")
        args.out = str(ROOT / "benchmarks" / "results" / f"train_throughput{suffix}.json")
    AUTOCAST["on"] = args.dtype == "bf16"
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    run_model = torch.compile if args.compile else (lambda m: m)

    from lmscale.config import TrainConfig

    tc = TrainConfig(lr=1e-4, weight_decay=0.1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    results = {}
    print(f"torch threads: {torch.get_num_threads()}; process CPU time; {args.dtype} matmul peak re-measured "
          "(1024^2) before each round",
          flush=True)
    for name, cfg in configs().items():
        if args.only and name not in args.only:
            continue
        ours = build_model(cfg)
        hf = hf_twin(ours)
        ours.train()
        hf.train()
        engines = {"lmscale": (run_model(ours), build_optimizer(ours, tc)),
                   "transformers": (run_model(hf), baseline_optimizer(hf, tc))}
        if args.fused_reference:
            hf2 = hf_twin(ours).train()
            engines["transformers+fused"] = (run_model(hf2), baseline_optimizer(hf2, tc, fused=True))
        batches = make_batches(cfg, args.batch, args.steps)
        warm = make_batches(cfg, args.batch, 1, seed=1)
        # counted on the eager models (the counter cannot see inside compiled kernels)
        counted = {"lmscale": counted_flops_per_step(ours, engines["lmscale"][1], batches, tc),
                   "transformers": counted_flops_per_step(hf, engines["transformers"][1], batches, tc)}
        for m, o in engines.values():
            train_steps(m, o, warm, tc)
            if args.compile:
                # every shape the timed steps will see (the masked LM's row count varies per batch)
                # is compiled here, not inside a timed round
                train_steps(m, o, batches, tc)
        tps: dict[str, list[float]] = {k: [] for k in engines}
        mfu: dict[str, list[float]] = {k: [] for k in engines}
        util: dict[str, list[float]] = {k: [] for k in counted}
        bound: list[float] = []
        wall_tps: dict[str, list[float]] = {k: [] for k in engines}
        ratios: list[float] = []
        ratios_fused: list[float] = []
        peaks: list[float] = []
        fpt = cfg.training_flops_per_token(SEQ)
        for r in range(args.rounds):
            # the machine is shared: the peak is re-measured next to every round it normalises
            peak = matmul_peak(dtype=peak_dtype)
            peaks.append(peak)
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for k in order:
                m, o = engines[k]
                dt, wall = train_steps(m, o, batches, tc)
                tps[k].append(args.batch * SEQ * len(batches) / dt)
                wall_tps[k].append(args.batch * SEQ * len(batches) / wall)
                mfu[k].append(fpt * tps[k][-1] / peak)
                if k in counted:
                    util[k].append(counted[k] * len(batches) / dt / peak)
            ratios.append(tps["lmscale"][-1] / tps["transformers"][-1])
            # the most lmscale could gain on this round's transformers time by running every
            # FLOP it executes at the measured matmul rate (and nothing else)
            step_hf = args.batch * SEQ / tps["transformers"][-1]
            bound.append(step_hf / (counted["lmscale"] / peak))
            if "transformers+fused" in tps:
                ratios_fused.append(tps["lmscale"][-1] / tps["transformers+fused"][-1])
        med = {k: statistics.median(v) for k, v in tps.items()}
        ratio = statistics.median(ratios)
        row = {"params": ours.num_parameters()["total"], "tokens_per_s": med, "ratio": ratio,
               "ratio_per_round": ratios,
               "ratio_vs_transformers_fused_adamw": statistics.median(ratios_fused) if ratios_fused else None,
               "ratio_vs_transformers_fused_adamw_per_round": ratios_fused,
               "tokens_per_s_per_round": tps, "flops_per_token_palm": fpt,
               "peak_per_round": peaks, "wall_tokens_per_s_per_round": wall_tps,
               "mfu_vs_measured_peak": {k: statistics.median(v) for k, v in mfu.items()},
               "counted_flops_per_step": counted,
               "counted_flop_utilization": {k: statistics.median(v) for k, v in util.items()},
               "ratio_bound_at_peak": statistics.median(bound)}
        results[name] = row
        print(f"{name:22s} lmscale {med['lmscale']:8.0f} tok/s  transformers {med['transformers']:8.0f} tok/s  "
              f"ratio {ratio:.2f}x (median of rounds)  MFU lmscale {row['mfu_vs_measured_peak']['lmscale']:.0%} "
              f"transformers {row['mfu_vs_measured_peak']['transformers']:.0%}"
              + (f"  [vs transformers+fused AdamW {row['ratio_vs_transformers_fused_adamw']:.2f}x]"
                 if ratios_fused else ""), flush=True)
        print(f"{'':22s} counted GFLOP/step lmscale {counted['lmscale'] / 1e9:.2f} transformers "
              f"{counted['transformers'] / 1e9:.2f}; share of the matmul rate lmscale "
              f"{row['counted_flop_utilization']['lmscale']:.0%} transformers "
              f"{row['counted_flop_utilization']['transformers']:.0%}; ratio if lmscale ran at that rate "
              f"{row['ratio_bound_at_peak']:.2f}x", flush=True)
        del engines, ours, hf
    out = {
        "benchmark": "train_throughput",
        "machine": {"cpu": cpu_name() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cores": os.cpu_count(),
                    "load_average_1_5_15_min": {"start": list(load_before), "end": list(os.getloadavg())}},
        "setup": {"clock": "process CPU time", "seq_len": SEQ, "batch": args.batch,
                  "dtype": "fp32" if args.dtype == "fp32" else "bf16 autocast (fp32 weights, gradients, AdamW)",
                  "torch_compile": bool(args.compile),
                  "optimizer": {"lmscale": "torch.optim.AdamW(fused=True) via build_optimizer",
                                "transformers": "torch.optim.AdamW(foreach=True)",
                                "transformers+fused": "torch.optim.AdamW(fused=True) (reference)"},
                  "rounds": args.rounds, "steps_per_round": args.steps, "flop_convention": "palm 6N+12LdT",
                  "counted_flops": "torch.utils.flop_counter over one eager training step (matrix products and "
                                   "attention, dense); utilization = counted FLOP/s / measured matmul rate"},
        "results": results,
    }
    if args.out:
        atomic_write_json(args.out, out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
