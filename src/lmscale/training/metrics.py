"""Training FLOPs, model FLOPs utilisation (MFU), and the run's metrics file.

FLOP convention for MFU and for FLOP budgets: PaLM (Chowdhery et al. 2022, App. B), the model
config's own count (`ModelConfig.training_flops_per_token`): ``6·N + 12·L·H·Q·T`` training FLOPs
per token, with N all parameters, L layers (both stacks of an encoder-decoder), H·Q the attention
width and T the sequence length.
MFU = achieved model FLOPs per second / peak FLOPs of the hardware, where the peak is the
vendor's dense number for the compute dtype (bf16 tensor cores on CUDA) or, on CPU, a measured
matmul rate in the run's compute dtype (fp32, or bf16 where a run trains under bf16 autocast: a
CPU with bf16 hardware runs bf16 products faster than fp32 ones, one without it far slower),
probed once per process, the best probe kept per machine.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from lmscale.config import TrainConfig
from lmscale.errors import one_line
from lmscale.io import atomic_write_json, atomic_write_text, cache_dir, dumps_json
from lmscale.training.trackers import open_trackers, scalars

# Dense peak FLOP/s by device name fragment: (bf16/fp16 tensor core, fp32 without TF32).
GPU_PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "GH200": (989e12, 67e12),
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),
    "H800": (989e12, 67e12),
    "B200": (2250e12, 80e12),
    "A100": (312e12, 19.5e12),
    "A800": (312e12, 19.5e12),
    "A10G": (70e12, 31.2e12),
    "A10": (125e12, 31.2e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "A6000": (155e12, 38.7e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there CPU bf16
    autocast trains faster than fp32, elsewhere bf16 products are emulated and far slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except (RuntimeError, OSError):
        return False


def measure_cpu_matmul_flops(size: int = 1024, seconds: float = 0.3, dtype: str = "fp32") -> float:
    """Matmul FLOP/s of this machine's cores in `dtype` ("fp32" or "bf16") at the process's
    thread count (best of repeats).

    Wall time: it is what the training steps are timed in, so MFU compares like with like. A probe
    taken while other jobs hold the cores reads low; `peak_flops` therefore keeps the best probe
    ever seen rather than the first.
    """
    g = torch.Generator().manual_seed(0)  # never touch the global RNG the training run relies on
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    if size > 256:
        # emulated bf16 runs about 1 GFLOP/s: at full size the probe alone would take many seconds,
        # so a slow rate at 256 is measured there (it is compute-bound either way)
        s = torch.randn(256, 256, generator=g).to(dt)
        torch.mm(s, s)
        t0 = time.perf_counter()
        torch.mm(s, s)
        if time.perf_counter() - t0 > 0.005:
            size = 256
    a = torch.randn(size, size, generator=g).to(dt)
    b = torch.randn(size, size, generator=g).to(dt)
    torch.mm(a, b)
    reps, best = 0, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        t0 = time.perf_counter()
        for _ in range(2):
            torch.mm(a, b)
        dt = time.perf_counter() - t0
        if dt > 0:
            best = max(best, 2 * 2 * size**3 / dt)
        reps += 1
    return best


_PROBED: dict[str, float] = {}


def peak_flops(device: Any = "cpu", dtype: str = "fp32") -> float:
    """Peak FLOP/s for MFU: the vendor table on CUDA, a cached matmul probe in `dtype` on CPU."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for frag, (half, single) in GPU_PEAK_FLOPS.items():
            if frag.lower() in name.lower():
                return half if dtype in ("bf16", "fp16") else single
        return float("nan")
    threads = torch.get_num_threads()
    dtype = "bf16" if dtype == "bf16" else "fp32"
    key = f"{cpu_name()}|threads={threads}|torch={torch.__version__}" + ("|bf16" if dtype == "bf16" else "")
    if key in _PROBED:
        return _PROBED[key]
    # one short probe per process, kept as the best ever seen: a peak is a maximum, and a probe
    # that shared the cores with another job must not inflate every later MFU
    path = cache_dir() / "cpu_peak_flops.json"
    cache: dict[str, float] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    probe = measure_cpu_matmul_flops(dtype=dtype)
    value = max(probe, float(cache.get(key, 0.0)))
    _PROBED[key] = value
    if value != cache.get(key):
        cache[key] = value
        try:
            atomic_write_json(path, cache)
        except OSError:
            pass
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of `RUN_DIR/metrics.jsonl` in order ([] when absent); a line cut by a kill is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


class MetricsLogger:
    """One JSON object per event in `metrics.jsonl`, mirrored to the trackers `train.report_to`
    names (`trackers.py`: the same scalars, opened by `open_trackers` before the first step).

    The file is append-only during a run; on resume the lines past the checkpoint are dropped
    (rewritten atomically) so every step appears once and in order.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, train_cfg: Optional[TrainConfig] = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.train_cfg = train_cfg if train_cfg is not None else TrainConfig()
        self._fh = None
        self.trackers: list[Any] = []

    def truncate_after(self, step: int) -> None:
        """Drop events past `step` (those of an interrupted run beyond its last checkpoint);
        `step` < 0 is a fresh start, which replaces the earlier run's records altogether."""
        if not self.enabled:
            return
        if step < 0:
            shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if int(rec.get("step", 0)) <= step and rec.get("event") != "end":
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def open_trackers(self, resume_step: Optional[int], params: dict[str, Any]) -> None:
        """Start (or, for a run resumed at `resume_step`, continue) the tracker runs."""
        if self.enabled:
            self.trackers = open_trackers(self.run_dir, self.train_cfg, params, resume_step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(dumps_json(record) + "\n")  # a non-finite loss is null, listed under non_finite
        self._fh.flush()
        values = scalars(record)
        for tracker in list(self.trackers) if values else []:
            try:
                tracker.log(int(record.get("step", 0)), values)
            except Exception as exc:  # a tracker that fails mid-run (a server gone) must not stop training
                self.trackers.remove(tracker)
                print(f"lmscale: warning: {tracker.name} stopped receiving metrics at step {record.get('step')} "
                      f"({one_line(exc)}); metrics.jsonl has them all", file=sys.stderr, flush=True)

    def close(self, status: str = "finished") -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(status)
            except Exception as exc:  # the run's own records are complete whatever a tracker says
                print(f"lmscale: warning: closing {tracker.name} failed ({one_line(exc)})", file=sys.stderr,
                      flush=True)


class Progress:
    """A live bar (rich) on a terminal; periodic one-line summaries otherwise."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self._bar = None
        self._task = None
        self._t0 = time.perf_counter()
        self._start = start
        if enabled and sys.stderr.isatty():
            self._bar = RichProgress(
                TextColumn("[bold]pretrain"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, loss: Optional[float], tokens_per_s: Optional[float], extra: str = "") -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}" if loss is not None and math.isfinite(loss) else "loss nan"
        if tokens_per_s:
            info += f" | {tokens_per_s:,.0f} tok/s"
        if extra:
            info += f" | {extra}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        else:
            done = step - self._start
            elapsed = time.perf_counter() - self._t0
            eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
            print(f"step {step}/{self.total} | {info} | ETA {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
