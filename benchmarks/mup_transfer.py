"""Learning-rate transfer across width: standard parametrization against muP (Yang et al. 2022).

A small byte-level decoder (vocab 256, 2 layers, 4 heads) is trained on WikiText-2 train bytes at
three widths spanning 4x, at learning rates a factor 2 apart, under sp and under muP with the
smallest width as the base. For each seed every run sees the same batches in the same order and
the same initial draw; it uses Adam with a constant rate after a short warm-up and is scored on
the same held-out bytes of WikiText-2 valid. With `--seeds k` each cell is the mean over k seeds
(its standard error beside it), and the best rate is chosen on the mean. The question is where
the best learning rate sits per width: under muP it should stay put as the model widens (the
point of muTransfer), under sp it drifts down.

Prints a table and writes benchmarks/results/mup_transfer.json. CPU-minutes: the default grid is
2 x 3 x 5 = 30 short runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lmscale.config import ModelConfig, TrainConfig
from lmscale.experiments.coord_check import widen
from lmscale.models import build_model
from lmscale.training.optim import build_optimizer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _bytes(split: str) -> np.ndarray:
    for c in (os.environ.get("LMSCALE_DATA_DIR"), REPO.parent / "shared" / "data"):
        p = Path(c) / "wikitext-2" / f"wiki.{split}.raw" if c else None
        if p is not None and p.is_file():
            return np.frombuffer(p.read_bytes(), dtype=np.uint8)
    raise SystemExit("WikiText-2 not found: set LMSCALE_DATA_DIR to a directory with wikitext-2/wiki.*.raw")


def run_one(cfg: ModelConfig, lr: float, train: np.ndarray, valid: np.ndarray, steps: int, batch: int, seq: int,
            warmup: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = build_optimizer(model, TrainConfig(lr=lr, weight_decay=0.0, beta2=0.95))
    rng = np.random.default_rng(seed)  # the same batches for every run
    starts = rng.integers(0, len(train) - seq - 1, (steps, batch))
    losses = []
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (t + 1) / warmup) * g.get("lr_scale", 1.0)
        ids = torch.from_numpy(np.stack([train[s:s + seq] for s in starts[t]]).astype(np.int64))
        model.train()
        loss = model(ids, labels=ids).loss
        if not torch.isfinite(loss):
            return {"lr": lr, "train_loss": math.inf, "valid_loss": math.inf, "diverged": True}
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    vs = np.arange(0, min(len(valid) - seq - 1, 64 * seq * 16), seq)[:64 * 16]
    with torch.no_grad():
        v = []
        for i in range(0, len(vs), 64):
            ids = torch.from_numpy(np.stack([valid[s:s + seq] for s in vs[i:i + 64]]).astype(np.int64))
            v.append(float(model(ids, labels=ids).loss))
    vl = float(np.mean(v))
    return {"lr": lr, "train_loss": float(np.mean(losses[-20:])), "valid_loss": vl, "diverged": not math.isfinite(vl)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--lrs", default="0.0025,0.005,0.01,0.02,0.04")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (the best rate is chosen on their mean)")
    ap.add_argument("--out", default=str(HERE / "results" / "mup_transfer.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    widths = [int(w) for w in a.widths.split(",")]
    lrs = [float(x) for x in a.lrs.split(",")]
    train, valid = _bytes("train"), _bytes("valid")
    base = ModelConfig(family="decoder", vocab_size=256, d_model=widths[0], n_layers=2, n_heads=4,
                       d_ff=4 * widths[0], max_positions=a.seq, activation="gelu_tanh")
    rows, t0 = [], time.process_time()
    for par in ("sp", "mup"):
        for w in widths:
            cfg = widen(base, w, par, widths[0])
            for lr in lrs:
                runs = [run_one(cfg, lr, train, valid, a.steps, a.batch, a.seq, a.warmup, seed=s)
                        for s in range(a.seeds)]
                v = np.array([r["valid_loss"] for r in runs])
                r = {"lr": lr, "valid_loss": float(v.mean()),
                     "valid_loss_sem": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None,
                     "valid_losses": v.tolist(), "train_loss": float(np.mean([x["train_loss"] for x in runs])),
                     "diverged": any(x["diverged"] for x in runs)}
                rows.append({"parametrization": par, "width": w, **r})
                print(f"{par:>4} width {w:>4} lr {lr:<8g} valid {r['valid_loss']:.4f} train {r['train_loss']:.4f}",
                      flush=True)
    cpu_min = (time.process_time() - t0) / 60
    best = {}
    print(f"\nvalid loss (nats/byte) after {a.steps} steps x {a.batch} x {a.seq} bytes; best per row marked *")
    print(f"{'':>10}" + "".join(f"{lr:>10g}" for lr in lrs) + f"{'best lr':>10}")
    for par in ("sp", "mup"):
        for w in widths:
            rs = [r for r in rows if r["parametrization"] == par and r["width"] == w]
            b = min(rs, key=lambda r: r["valid_loss"])
            best.setdefault(par, {})[w] = b["lr"]
            cells = "".join(f"{r['valid_loss']:>9.4f}{'*' if r is b else ' '}" for r in rs)
            print(f"{par:>4} {w:>5}" + cells + f"{b['lr']:>10g}")
    for par in best:
        shift = math.log2(best[par][widths[0]] / best[par][widths[-1]])
        print(f"{par}: best lr moves {shift:+.0f} factor-2 steps from width {widths[0]} to {widths[-1]}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"widths": widths, "lrs": lrs, "steps": a.steps, "batch": a.batch, "seq": a.seq,
                               "seeds": a.seeds,
                               "warmup": a.warmup, "rows": rows, "best_lr": best, "cpu_minutes": cpu_min,
                               "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__}, indent=2) + "\n")
    print(f"cpu minutes {cpu_min:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
