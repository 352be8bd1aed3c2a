"""Scaling sweeps that run themselves: designs, a run per `lmscale pretrain`, one SQLite registry.

A sweep is planned once (grid of sizes x token budgets, or IsoFLOP slices), every planned run is
written into the registry, and then workers claim runs from the registry until none is left.
Because the registry (not the process) holds the state, re-running the same command skips
finished runs, resumes interrupted ones from their checkpoints (`lmscale pretrain --resume`), and
records failures with their error without stopping the other runs; several sweep processes, or
the tasks of a Slurm job array, can work on one sweep at once.

Each run is an ordinary `lmscale pretrain` subprocess (launched and recorded by
`lmscale.experiments.launch`), so whatever the training engine supports (torchrun DDP/FSDP on
GPUs) a sweep supports by changing the command prefix; the only scheduler here is the local
worker pool. Fitting the finished runs is science, not orchestration: `lmscale.scaling.fitting`.

Slurm: `launcher="slurm"` writes `OUT/NAME.sbatch`, a job array with one task per run; each
task runs `lmscale sweep exec REGISTRY --index $SLURM_ARRAY_TASK_ID`, which claims its run in
the registry and records the result there. The sweep directory (run directories, checkpoints,
the shared tokenizer and shards, the registry) must be on a filesystem that every node mounts
at the same path and whose POSIX locks work; the registry then uses SQLite's rollback journal,
since WAL needs memory shared by all its users, i.e. one host.

Budgets are set by tokens: every run gets `train.max_tokens = D` and the matching number of
steps, so its learning-rate schedule decays over exactly its own budget (Hoffmann et al. 2022
found that a cosine schedule longer than the run overestimates the loss of small-budget runs).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from lmscale.config import TRACKER_KEYS, ConfigError, RunConfig, compose, deep_merge, from_dict, load_yaml, to_dict
from lmscale.data.prepare import prepare_run_data
from lmscale.errors import LmscaleError
from lmscale.experiments.launch import LAUNCHERS, RunOutcome, execute_run, pretrain_command, write_slurm_script
from lmscale.io import atomic_write_text, clean_stale_temporaries
from lmscale.io.locks import DirectoryLock
from lmscale.io.outputs import mark_output_dir
from lmscale.scaling.counting import count_parameters
from lmscale.scaling.registry import Registry, RunRecord
from lmscale.scaling.shapes import ShapeRule, describe, shape_for
from lmscale.training.branch import branch_config, cooldown_steps

__all__ = ["DEMO_SWEEP", "DESIGNS", "LAUNCHERS", "REGISTRY_FILE", "RunOutcome", "RunSpec", "SweepConfig",
           "SweepResult", "exec_index", "execute_run", "plan", "prepare_data", "pretrain_command", "register",
           "run_sweep", "sweep_entries"]

DESIGNS = ("grid", "isoflop")
SCHEDULE_MODES = (None, "cosine", "wsd")  # None/cosine: each run its own schedule (base.train.schedule)
REGISTRY_FILE = "registry.sqlite"  # OUT/REGISTRY_FILE unless --registry says otherwise


def sweep_entries(name: str) -> tuple[str, ...]:
    """What sweep `name` writes in its directory (its marker's manifest claims them up front): its
    config, runs, shared data, run configs and logs, registry, Slurm script, and the report and
    figures the quickstart draws there."""
    return ("sweep.yaml", "runs", "data", "configs", "logs", REGISTRY_FILE,
            *(REGISTRY_FILE + s for s in ("-wal", "-shm", "-journal")), f"{name}.sbatch", "report.html", "figures")


@dataclass
class SweepConfig:
    """What `lmscale sweep run CONFIG.yaml` reads.

    `sizes` are target parameter counts (non-embedding by default, see `shape.count`) and
    `tokens` token budgets for a grid; `flops` are compute budgets C for an IsoFLOP design, each
    with `n_sizes` models spread log-uniformly over a factor `size_span` around the size with
    `tokens_per_param` tokens per parameter, and D = C / (6N). `base` holds RunConfig sections
    (model/data/train/...) applied over `preset`.
    """

    name: str = "sweep"
    design: str = "grid"
    preset: str | None = "gpt-tiny"
    base: dict[str, Any] = field(default_factory=dict)
    sizes: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    n_sizes: int = 5
    size_span: float = 8.0
    tokens_per_param: float = 20.0
    seeds: list[int] = field(default_factory=lambda: [0])
    shape: dict[str, Any] = field(default_factory=dict)
    flops_params: str = "non_embedding"  # which N enters C = 6ND: non_embedding | total
    evals_per_run: int = 8
    out: str | None = None
    # "wsd": per size one stable run to the largest budget, each point a cooldown branch of it that
    # spends `decay_fraction` of its tokens decaying (Hägele et al. 2024); None: a run per point
    schedule: str | None = None
    decay_fraction: float = 0.2
    # a learning-rate axis: every point trained at each peak rate (empty: base.train.lr); fits and
    # reports keep each point's best rate, and `sweep status` shows the best rate per size
    lrs: list[float] = field(default_factory=list)
    # a batch-size axis likewise (sequences per optimizer step; empty: base.train.batch_size): every
    # batch size trains the same token budget, so each point's best (lr, batch) is kept
    batch_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_types()
        if self.schedule not in SCHEDULE_MODES:
            raise ConfigError(f"sweep schedule={self.schedule!r} must be one of cosine, wsd")
        if not 0.0 < float(self.decay_fraction) < 1.0:
            raise ConfigError(f"sweep decay_fraction={self.decay_fraction} must be in (0, 1)")
        if self.design not in DESIGNS:
            raise ConfigError(f"sweep design={self.design!r} is not one of {', '.join(DESIGNS)}")
        if self.flops_params not in ("non_embedding", "total"):
            raise ConfigError(f"sweep flops_params={self.flops_params!r} must be non_embedding or total")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"sweep name {self.name!r} may contain only letters, digits, '_', '.', '-'")
        if self.design == "grid" and (not self.sizes or not self.tokens):
            raise ConfigError("a grid sweep needs both `sizes` (parameter counts) and `tokens` (token budgets)")
        if self.design == "isoflop" and not self.flops:
            raise ConfigError("an isoflop sweep needs `flops` (a list of compute budgets C)")
        for key in ("lrs", "batch_sizes"):
            vals = getattr(self, key)
            if vals and self.schedule == "wsd":
                raise ConfigError(f"sweep {key} with schedule: wsd is not supported: a hyperparameter axis trains "
                                  "each value from scratch (give one value, or run the axis as a cosine sweep)")
            if len(set(vals)) != len(vals):
                raise ConfigError(f"sweep {key} lists a value twice: {vals}")
        if any(b != int(b) for b in self.batch_sizes):
            raise ConfigError(f"sweep batch_sizes must be whole numbers, got {self.batch_sizes}")
        self.batch_sizes = [int(b) for b in self.batch_sizes]
        for key in ("sizes", "tokens", "flops", "lrs", "batch_sizes"):
            vals = getattr(self, key)
            if any(not (v > 0 and math.isfinite(v)) for v in vals):
                raise ConfigError(f"sweep {key} must be positive numbers, got {vals}")
        if self.n_sizes < 1 or not self.size_span >= 1 or not math.isfinite(self.size_span):
            raise ConfigError("sweep n_sizes must be >= 1 and size_span >= 1")
        if not self.seeds:
            raise ConfigError("sweep seeds must list at least one seed")
        _ = self.rule  # building the rule validates the shape section

    def _check_types(self) -> None:
        """Each key the type it must have (YAML gives whatever was written: `sizes: 5e5` is a
        string, `seeds: 3` a number), so a wrong one is a message naming the key, not a traceback."""
        def number(key: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ConfigError(f"sweep {key}: {v!r} is not a number")
            try:
                return float(v)
            except ValueError:
                raise ConfigError(f"sweep {key}: {v!r} is not a number") from None

        for key in ("sizes", "tokens", "flops", "seeds", "lrs", "batch_sizes"):
            vals = getattr(self, key)
            if not isinstance(vals, list):
                raise ConfigError(f"sweep {key} must be a list (e.g. {key}: [{vals}]), got {vals!r}")
            setattr(self, key, [number(key, v) for v in vals])
        if any(s != int(s) for s in self.seeds):
            raise ConfigError(f"sweep seeds must be whole numbers, got {self.seeds}")
        self.seeds = [int(s) for s in self.seeds]
        for key in ("size_span", "tokens_per_param", "decay_fraction"):
            setattr(self, key, number(key, getattr(self, key)))
        for key in ("n_sizes", "evals_per_run"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"sweep {key} must be a whole number, got {v!r}")
        for key in ("base", "shape"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"sweep {key} must be a mapping of keys to values, got {getattr(self, key)!r}")
        for key in ("name", "design"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"sweep {key} must be text, got {getattr(self, key)!r}")
        if self.preset is not None and not isinstance(self.preset, str):
            raise ConfigError(f"sweep preset must be a preset name, got {self.preset!r}")

    @property
    def rule(self) -> ShapeRule:
        names = {f.name for f in fields(ShapeRule)}
        bad = set(self.shape) - names
        if bad:
            raise ConfigError(f"unknown sweep shape keys {sorted(bad)}; valid: {sorted(names)}")
        return ShapeRule(**self.shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepConfig":
        names = {f.name for f in fields(cls)}
        bad = set(data) - names
        if bad:
            raise ConfigError(f"unknown sweep keys {sorted(bad)}; valid: {sorted(names)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SweepConfig":
        data = load_yaml(path, what="sweep config")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a sweep config is a mapping of keys (name, sizes, tokens, ...)")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def base_config(self) -> RunConfig:
        """The run config every run starts from: `preset`, then `base` deep-merged over it (as
        `lmscale pretrain --preset P --config BASE.yaml` composes them). A `preset` key inside
        `base` is only the config's label, as it always was: the sweep's own `preset` is loaded."""
        base = dict(self.base or {})
        label = {"preset": base.pop("preset")} if "preset" in base else None
        return compose(self.preset or None, [base], label)


# The demo: 9 decoders on WikiText-2, 8x in non-embedding parameters and 4x in tokens.
DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "design": "grid",
    "preset": "gpt-tiny",
    "base": {
        "model": {"vocab_size": 4096, "max_positions": 128},
        "tokenizer": {"vocab_size": 4096},
        "data": {"corpus": "wikitext-2"},
        "train": {"seq_len": 128, "batch_size": 16, "lr": 0.002, "warmup_fraction": 0.05,
                  "schedule": "cosine", "eval_batches": 16, "log_every": 20, "device": "cpu"},
    },
    "sizes": [1.0e5, 3.0e5, 8.4e5],
    "tokens": [7.5e5, 1.5e6, 3.0e6],
    "seeds": [0],
}


@dataclass
class RunSpec:
    """One planned run: its full RunConfig plus the scaling coordinates it was planned at."""

    run_id: str
    name: str
    config: RunConfig
    params: dict[str, int]
    tokens: float
    flops: float
    seed: int
    role: str | None = None  # WSD sweeps: "stable" (not a point) or "branch"
    parent: str | None = None  # a branch's stable run
    lineage: dict[str, Any] | None = None

    def record(self, sweep: str, idx: int) -> RunRecord:
        return RunRecord(
            run_id=self.run_id, name=self.name, sweep=sweep, idx=idx, config=to_dict(self.config),
            family=self.config.model.family, params_total=self.params["params_total"],
            params_embedding=self.params["params_embedding"],
            params_non_embedding=self.params["params_non_embedding"], tokens=self.tokens,
            flops=self.flops, seed=self.seed, run_dir=self.config.out, role=self.role, parent=self.parent,
            lineage=self.lineage,
        )


# keys added after registries were first written: at their defaults they leave the run id as it was
_LATER_KEYS: dict[str, dict[str, Any]] = {
    "train": {"decay_shape": "linear", "branch_points": [], "branch": None, "init_from": None},
    "model": {"parametrization": "sp", "mup_base_width": None, "relative_bias_init": "zero"},
}


def _run_id(cfg: RunConfig, parent_id: str | None = None) -> str:
    d = to_dict(cfg)
    d.pop("out", None)
    if d["train"].get("branch"):  # a branch is named by its parent's id, not where the parent lives
        d["train"]["branch"] = {**d["train"]["branch"], "parent": parent_id}
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("tokenizer", "shards")}
    # where a run is reported is not what it trains: the same run whichever trackers watch it
    d["train"] = {k: v for k, v in d["train"].items() if k not in TRACKER_KEYS}
    for section, later in _LATER_KEYS.items():
        d[section] = {k: v for k, v in d[section].items() if not (k in later and v == later[k])}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _fmt(x: float) -> str:
    e = int(math.floor(math.log10(x)))
    return f"{x / 10 ** e:.3g}e{e}".replace(".", "p")


def plan(sweep: SweepConfig, out_dir: str | os.PathLike) -> list[RunSpec]:
    """Every run of the sweep with its shape, budget and schedule; largest compute first."""
    base = sweep.base_config()
    rule = sweep.rule
    batches = sweep.batch_sizes or [base.train.batch_size]
    # tokens per step for every batch size of the axis: budgets are whole multiples of their least
    # common multiple, so each batch size trains exactly the same tokens
    tps = math.lcm(*batches) * base.train.seq_len
    out = Path(out_dir)
    points: list[tuple[Any, float]] = []  # (model config, tokens)
    if sweep.design == "grid":
        for size in sweep.sizes:
            m = shape_for(size, base.model, rule)
            for d in sweep.tokens:
                points.append((m, d))
    else:
        for c in sweep.flops:
            centre = math.sqrt(c / (6.0 * sweep.tokens_per_param))
            n = sweep.n_sizes
            for i in range(n):
                frac = (i / (n - 1) - 0.5) if n > 1 else 0.0
                m = shape_for(centre * sweep.size_span ** frac, base.model, rule)
                counts = count_parameters(m)
                n_c = counts["params_non_embedding" if sweep.flops_params == "non_embedding" else "params_total"]
                points.append((m, c / (6.0 * n_c)))
    if sweep.schedule == "wsd":
        return _wsd_plan(sweep, base, points, out)
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for m, d in points:
        if d < tps:
            raise ConfigError(
                f"a token budget of {d:.4g} tokens is less than one optimizer step ({tps:,} tokens: "
                f"batch_size {math.lcm(*batches)} x seq_len {base.train.seq_len}); raise the budgets "
                "(or --tokens-scale) or lower the batch" + (" sizes" if sweep.batch_sizes else ""))
        tokens = max(1, int(round(d / tps))) * tps
        counts = count_parameters(m)
        n_c = counts["params_non_embedding" if sweep.flops_params == "non_embedding" else "params_total"]
        for seed, lr, bs in itertools.product(sweep.seeds, sweep.lrs or [None], sweep.batch_sizes or [None]):
            name = (f"{describe(m)}-D{_fmt(tokens)}-s{seed}" + (f"-lr{_fmt(lr)}" if lr is not None else "")
                    + (f"-bs{bs}" if bs is not None else ""))
            rate = {} if lr is None else {"lr": lr}
            if bs is not None:
                rate["batch_size"] = bs
            steps = tokens // ((bs or base.train.batch_size) * base.train.seq_len)
            # this run's shape, budget and schedule over the base (the one deep merge: the base's
            # tracker_params keep their keys beside the sweep's)
            data = deep_merge(to_dict(base), {
                "model": to_dict(m),
                "train": dict(
                    max_steps=steps, max_tokens=tokens, seed=seed, max_flops=None, max_time_s=None,
                    eval_every=max(1, steps // max(1, sweep.evals_per_run)), checkpoint_every=max(1, steps // 4),
                    tracker_group=base.train.tracker_group or sweep.name,
                    tracker_params={"sweep": sweep.name, "N": n_c, "N_counts": sweep.flops_params, "D": tokens,
                                    "C": 6.0 * n_c * tokens, "seed": seed, **rate},
                    **rate,
                ),
                "out": str(out / "runs" / name),
            })
            cfg = from_dict(RunConfig, data)
            rid = _run_id(cfg)
            if rid in seen:
                continue
            seen.add(rid)
            specs.append(RunSpec(rid, name, cfg, counts, float(tokens), 6.0 * n_c * tokens, seed))
    specs.sort(key=lambda s: (-s.flops, s.name))
    return specs


def _wsd_plan(sweep: SweepConfig, base: RunConfig, points: list[tuple[Any, float]], out: Path) -> list[RunSpec]:
    """Per size and seed one stable run (warm-up, then the constant rate) to the largest budget's
    branch point, with a kept checkpoint at every point's branch point; per point a cooldown
    branch from there that decays over the last `decay_fraction` of the point's tokens, so the
    branch has trained exactly the point's D. Stable runs come first; a branch waits for its own."""
    tps = base.train.batch_size * base.train.seq_len
    groups: dict[str, tuple[Any, list[int]]] = {}
    for m, d in points:
        if d < tps:
            raise ConfigError(f"a token budget of {d:.4g} tokens is less than one optimizer step ({tps:,} tokens); "
                              "raise the budgets (or --tokens-scale) or lower the batch")
        key = json.dumps(to_dict(m), sort_keys=True)
        groups.setdefault(key, (m, []))[1].append(max(1, int(round(d / tps))))
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for m, all_steps in groups.values():
        totals = sorted(set(all_steps))
        cool = {t: cooldown_steps(t, sweep.decay_fraction) for t in totals}
        if any(cool[t] >= t for t in totals):
            raise ConfigError(f"a budget of {min(totals)} optimizer steps is too short for a cooldown of "
                              f"decay_fraction={sweep.decay_fraction}; raise the budgets or lower the batch")
        at = {t: t - cool[t] for t in totals}
        stable_steps = max(at.values())
        warm = base.train.warmup_steps
        if warm is None:  # the shortest point's own warm-up, inside every branch's stable part
            warm = max(1, int(round(base.train.warmup_fraction * min(totals))))
        warm = min(warm, min(at.values()))
        counts = count_parameters(m)
        n_c = counts["params_non_embedding" if sweep.flops_params == "non_embedding" else "params_total"]
        for seed in sweep.seeds:
            stable_tokens = stable_steps * tps
            name = f"{describe(m)}-stable-D{_fmt(stable_tokens)}-s{seed}"
            data = deep_merge(to_dict(base), {
                "model": to_dict(m),
                "train": dict(
                    schedule="wsd", decay_fraction=0.0, warmup_steps=warm, max_steps=stable_steps,
                    max_tokens=stable_tokens, seed=seed, max_flops=None, max_time_s=None,
                    branch_points=[at[t] * tps for t in totals],
                    eval_every=max(1, stable_steps // max(1, sweep.evals_per_run)),
                    checkpoint_every=max(1, stable_steps // 4), tracker_group=base.train.tracker_group or sweep.name,
                    tracker_params={"sweep": sweep.name, "N": n_c, "N_counts": sweep.flops_params,
                                    "D": stable_tokens, "C": 6.0 * n_c * stable_tokens, "seed": seed,
                                    "role": "stable"}),
                "out": str(out / "runs" / name),
            })
            parent = from_dict(RunConfig, data)
            parent_id = _run_id(parent)
            if parent_id in seen:
                continue
            seen.add(parent_id)
            specs.append(RunSpec(parent_id, name, parent, counts, float(stable_tokens),
                                 6.0 * n_c * stable_tokens, seed, role="stable"))
            parent_dir = str(Path(parent.out).absolute())
            for t in totals:
                tokens = t * tps
                lineage = {"parent": parent_dir, "at_tokens": at[t] * tps, "decay_fraction": cool[t] / at[t]}
                bname = f"{describe(m)}-D{_fmt(tokens)}-s{seed}"
                requested = deep_merge(to_dict(parent), {
                    "out": str(out / "runs" / bname),
                    "train": dict(branch=lineage, eval_every=max(1, t // max(1, sweep.evals_per_run)),
                                  checkpoint_every=max(1, cool[t] // 2),
                                  tracker_params={**parent.train.tracker_params, "D": tokens,
                                                  "C": 6.0 * n_c * tokens, "role": "branch"}),
                })
                child = branch_config(from_dict(RunConfig, requested), parent, stable_steps)
                specs.append(RunSpec(_run_id(child, parent_id), bname, child, counts, float(tokens),
                                     6.0 * n_c * tokens, seed, role="branch", parent=parent_id,
                                     lineage={**lineage, "parent": parent_id}))
    specs.sort(key=lambda s: (s.role != "stable", -s.flops, s.name))
    return specs


# --------------------------------------------------------------------------- data shared by all runs

def prepare_data(base: RunConfig, out_dir: Path) -> tuple[str, str]:
    """Train one tokenizer and write one set of token shards for the whole sweep.

    Losses of different runs are only comparable when they are measured in the same tokens on
    the same validation windows, so no run may train its own tokenizer.
    """
    if base.data.corpus is None and base.data.shards is None:
        raise ConfigError("the sweep's base config needs data.corpus (e.g. wikitext-2) or data.shards")
    # several sweep processes may start at once: one prepares, the others wait for it; temporaries
    # a killed preparation left are removed by whoever holds the lock next
    data_dir = out_dir / "data"
    with DirectoryLock(data_dir, "sweep data directory").acquire_waiting():
        clean_stale_temporaries(data_dir)
        data = prepare_run_data(base, data_dir)
    return str(data.tokenizer_dir.absolute()), str(data.shard_dir.absolute())


@dataclass
class SweepResult:
    planned: int
    outcomes: list[RunOutcome]
    counts: dict[str, int]
    registry: str
    script: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"planned": self.planned, "registry": self.registry, "counts": self.counts,
                "script": self.script, "runs": [asdict(o) for o in self.outcomes]}


def looks_like_sweep_dir(path: Path) -> bool:
    """A sweep directory (written before output directories carried the marker)."""
    return (Path(path) / REGISTRY_FILE).is_file() or (Path(path) / "sweep.yaml").is_file()


def register(sweep: SweepConfig, out_dir: str | os.PathLike, registry: str | os.PathLike | None = None,
             journal_mode: str | None = None, prepare: bool = True) -> tuple[Registry, list[RunSpec]]:
    """Plan the sweep, prepare its shared data, and write its runs into the registry."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, "sweep", names=sweep_entries(sweep.name))
    reg = Registry(registry or out / REGISTRY_FILE, journal_mode=journal_mode)
    specs = plan(sweep, out)
    base = sweep.base_config()
    tok = shards = None
    if prepare and specs:
        tok, shards = prepare_data(base, out)
    for i, spec in enumerate(specs):
        if tok is not None:
            spec.config.data.tokenizer = tok
            spec.config.data.shards = shards
        reg.add_run(spec.record(sweep.name, i), replace_plan=True)
    planned = {spec.run_id for spec in specs}
    for r in reg.runs(sweep.name):
        if r.run_id not in planned and r.idx >= 0:
            reg.update(r.run_id, idx=-1)  # left over from an earlier plan: kept, never run by index
    reg.set_meta(f"sweep:{sweep.name}", json.dumps({"config": sweep.to_dict(), "out": str(out.resolve())}))
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    return reg, specs


def run_sweep(sweep: SweepConfig, out_dir: str | os.PathLike, workers: int = 1, launcher: str = "local",
              nproc_per_node: int = 1, threads_per_worker: int | None = None, retry_failed: bool = False,
              registry: str | os.PathLike | None = None, stale_after_s: float = 600.0,
              heartbeat_s: float = 30.0, command: Callable[[Path, Path, bool], list[str]] | None = None,
              prepare: bool = True, slurm_directives: list[str] | None = None,
              progress: Callable[[RunOutcome], None] | None = None) -> SweepResult:
    """Plan, register and run (or, with launcher="slurm", script) a sweep; returns the outcomes."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    out = Path(out_dir)
    reg, specs = register(sweep, out, registry, journal_mode="delete" if launcher == "slurm" else None,
                          prepare=prepare)
    reg_path = str(reg.path)
    if launcher == "slurm":
        script = write_slurm_script(sweep.name, out, reg.path, len(specs), slurm_directives or [],
                                    nproc_per_node=nproc_per_node)
        return SweepResult(len(specs), [], reg.counts(sweep.name), reg_path, str(script))
    cmd = command or (lambda c, r, resume: pretrain_command(c, r, resume, launcher, nproc_per_node))
    if threads_per_worker is None and launcher == "local":
        threads_per_worker = max(1, (os.cpu_count() or 1) // workers)
    planned = frozenset(s.run_id for s in specs)  # a changed plan does not run the old plan's leftovers
    skipped = [RunOutcome(r.run_id, r.name, "skipped") for r in reg.runs(sweep.name, status="finished")
               if r.run_id in planned]
    pool = _WorkerPool(reg.path, sweep.name, out, planned, cmd, threads_per_worker, heartbeat_s, stale_after_s,
                       retry_failed, progress)
    outcomes = pool.run(workers)
    counts = {k: 0 for k in ("pending", "running", "finished", "failed", "stopped")}
    for r in reg.runs(sweep.name):
        if r.run_id in planned:
            counts[r.status] = counts.get(r.status, 0) + 1
    return SweepResult(len(specs), skipped + outcomes, counts, reg_path)


@dataclass
class _WorkerPool:
    """Local worker threads that claim the plan's runs from the registry until none is left.

    Each worker has its own registry connection and trains one run at a time in a subprocess;
    a run is tried at most once per pass, so a failing run cannot occupy a worker forever.
    """

    registry: Path
    sweep: str
    out: Path
    planned: frozenset[str]
    command: Callable[[Path, Path, bool], list[str]]
    threads: int | None
    heartbeat_s: float
    stale_after_s: float
    retry_failed: bool
    progress: Callable[[RunOutcome], None] | None
    outcomes: list[RunOutcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    tried: set[str] = field(default_factory=set)
    active: dict[str, subprocess.Popen] = field(default_factory=dict)
    poll_s: float = 1.0

    def run(self, workers: int) -> list[RunOutcome]:
        done = [threading.Event() for _ in range(workers)]
        for i in range(workers):
            threading.Thread(target=self._work, args=(i, done[i]), daemon=True).start()
        try:
            while not all(d.wait(0.5) for d in done):
                pass
        except KeyboardInterrupt:
            self._interrupt(done)
            raise
        return self.outcomes

    def _claim(self, reg: Registry, worker: str) -> tuple[RunRecord, str] | None:
        with self.lock:
            claimed = reg.claim_next(worker, sweep=self.sweep, stale_after_s=self.stale_after_s,
                                     retry_failed=self.retry_failed, exclude=frozenset(self.tried), only=self.planned)
            if claimed is not None:
                self.tried.add(claimed[0].run_id)
        return claimed

    def _work(self, wid: int, done: threading.Event) -> None:
        reg = Registry(self.registry)
        worker = f"{socket.gethostname()}:{os.getpid()}:{wid}"
        try:
            while not self.stop.is_set():
                claimed = self._claim(reg, worker)
                if claimed is None:
                    # WSD sweeps: branches wait for their stable run, which another worker trains
                    with self.lock:
                        tried = frozenset(self.tried)
                    if reg.waiting(self.sweep, only=self.planned, tried=tried):
                        self.stop.wait(self.poll_s)
                        continue
                    return
                rec, _ = claimed
                o = execute_run(reg, rec, self.out, worker, self.command, self.threads, self.heartbeat_s,
                                self.stop, self.active)
                with self.lock:
                    self.outcomes.append(o)
                if self.progress is not None:
                    self.progress(o)
        finally:
            reg.close()
            done.set()

    def _interrupt(self, done: list[threading.Event]) -> None:
        # stop the children here (not only from the workers' next heartbeat), then let every
        # worker record its run as "stopped" so the next sweep resumes it
        self.stop.set()
        for proc in list(self.active.values()):
            proc.terminate()
        deadline = time.monotonic() + 60
        try:
            while not all(d.is_set() for d in done) and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for proc in list(self.active.values()):
            proc.kill()


def exec_index(registry: str | os.PathLike, index: int, sweep_name: str | None = None,
               launcher: str = "local", nproc_per_node: int = 1, retry_failed: bool = False,
               stale_after_s: float = 600.0, heartbeat_s: float = 30.0) -> RunOutcome:
    """Run the sweep's run number `index` (a Slurm array task): skip it if done or taken."""
    reg = Registry(registry)
    names = reg.sweeps() if sweep_name is None else [sweep_name]
    if len(names) != 1:
        raise LmscaleError(f"{registry} holds sweeps {names}; name one with --sweep")
    meta = json.loads(reg.get_meta(f"sweep:{names[0]}") or "{}")
    out = Path(meta.get("out") or Path(registry).parent)
    recs = [r for r in reg.runs(names[0]) if r.idx == index]
    if not recs:
        raise LmscaleError(f"sweep {names[0]!r} has no run with index {index} (0..{len(reg.runs(names[0])) - 1})")
    rec = recs[0]
    if rec.status == "finished":
        return RunOutcome(rec.run_id, rec.name, "skipped")
    worker = f"{socket.gethostname()}:{os.getpid()}:task{index}"
    prev = reg.claim(rec.run_id, worker, stale_after_s=stale_after_s, retry_failed=retry_failed)
    if prev is None:
        return RunOutcome(rec.run_id, rec.name, "skipped", error=f"run is {reg.get(rec.run_id).status}")
    rec = reg.get(rec.run_id)
    cmd = lambda c, r, resume: pretrain_command(c, r, resume, launcher, nproc_per_node)  # noqa: E731
    return execute_run(reg, rec, out, worker, cmd, None, heartbeat_s)
