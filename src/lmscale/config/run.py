"""Run configs: the tokenizer, data, objective and train sections and `RunConfig`, which holds them
with the model; `to_yaml` writes a run config as the YAML `--config FILE` reads back."""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import yaml

from lmscale.config.families import OBJECTIVE_KINDS, TOKENIZER_KINDS, family_objective, family_tokenizer
from lmscale.config.model import ModelConfig
from lmscale.config.overrides import to_dict
from lmscale.config.validate import choice, finite, in_range, positive
from lmscale.errors import ConfigError

SCHEDULES = ("cosine", "linear", "wsd", "constant")
MAX_SEED = 2**63 - 1
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")  # train.decay_shape: the wsd cooldown (Hägele et al. 2024)
TRACKERS = ("tensorboard", "wandb", "mlflow")  # train.report_to
# the train keys that say where a run is reported, not how it trains
TRACKER_KEYS = ("report_to", "tracker_project", "tracker_run_name", "tracker_group", "tracker_params")


@dataclass
class TokenizerConfig:
    kind: Optional[str] = None  # bpe | wordpiece | unigram; default from the model family
    vocab_size: Optional[int] = None  # default model.vocab_size
    lowercase: bool = False
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.kind is not None:
            choice("tokenizer.kind", self.kind, TOKENIZER_KINDS)
        in_range("tokenizer.min_frequency", self.min_frequency, 0)
        positive("tokenizer.vocab_size", self.vocab_size, allow_none=True)


@dataclass
class DataConfig:
    corpus: Optional[str] = None  # catalog name (wikitext-2) or a local file/directory
    tokenizer: Optional[str] = None  # tokenizer directory; trained on the corpus when absent
    shards: Optional[str] = None  # token shard directory; default RUN_DIR/shards
    valid_fraction: float = 0.02  # for corpora without their own validation split
    split_seed: int = 1234
    errors: str = "strict"  # strict | replace (undecodable bytes)

    def __post_init__(self) -> None:
        finite("data", self)
        choice("data.errors", self.errors, ("strict", "replace"))
        in_range("data.split_seed", self.split_seed, 0)
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction={self.valid_fraction} must be in (0, 1)")


@dataclass
class ObjectiveConfig:
    kind: Optional[str] = None  # mlm | causal | span; default from the model family
    mlm_probability: float = 0.15
    mask_token_fraction: float = 0.8
    random_token_fraction: float = 0.1
    whole_word_mask: bool = False
    span_mask: bool = False  # SpanBERT-style geometric spans for MLM
    nsp: bool = False
    noise_density: float = 0.15  # T5 span corruption
    mean_noise_span_length: float = 3.0

    def __post_init__(self) -> None:
        finite("objective", self)
        if self.kind is not None:
            choice("objective.kind", self.kind, OBJECTIVE_KINDS)
        for name in ("mask_token_fraction", "random_token_fraction"):
            in_range(f"objective.{name}", getattr(self, name), 0.0, 1.0)
        in_range("objective.mean_noise_span_length", self.mean_noise_span_length, 1.0)
        for name in ("mlm_probability", "noise_density"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(f"objective.{name}={v} must be in (0, 1)")
        if self.mask_token_fraction + self.random_token_fraction > 1.0 + 1e-9:
            raise ConfigError(
                "objective.mask_token_fraction + objective.random_token_fraction must be <= 1 "
                f"(got {self.mask_token_fraction} + {self.random_token_fraction})"
            )


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_LR = 10.0  # an AdamW learning rate above this only diverges


@dataclass
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 32  # global batch in sequences (independent of the number of processes)
    micro_batch_size: Optional[int] = None  # per process per step; gradient accumulation fills the rest
    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    max_flops: Optional[float] = None
    max_time_s: Optional[float] = None
    # a safety cap, not a budget: the schedule still follows the budgets above (so runs repeat
    # exactly), and a run the clock stops first ends with status "time_cap" and a checkpoint
    time_cap_s: Optional[float] = None
    # stop after this many evaluations in a row without a lower validation loss (0 = never): on a
    # small corpus a long budget overfits; checkpoints/best keeps the best weights either way
    early_stopping: int = 0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | wsd | constant
    warmup_steps: Optional[int] = None  # default: warmup_fraction of the schedule
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2  # wsd: share of the schedule spent decaying
    decay_shape: str = "linear"  # wsd: linear | cosine | 1-sqrt, from the stable LR to the floor
    # token counts at which a checkpoint is written and never pruned: where cooldown branches start
    branch_points: list[int] = field(default_factory=list)
    # a cooldown branch: {parent: RUN_DIR, at_tokens: D, decay_fraction: f} (`lmscale pretrain --branch-from`)
    branch: Optional[dict[str, Any]] = None
    # continued pretraining: the checkpoint whose weights a fresh run starts from (`pretrain --init-from`)
    init_from: Optional[str] = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10  # validation set: this many global batches of windows (fixed, spread over the split)
    log_every: int = 10  # on CUDA also how often losses are read back (the device never waits in between)
    checkpoint_every: int = 0  # 0 = only at the end (and at evaluations that improve the best)
    keep_last: int = 2
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on GPUs with it, fp16 + gradient scaler on older GPUs, fp32 on CPU)
    # | fp32 | bf16 | fp16 (autocast; on a CPU bf16 pays off only with bf16 hardware, AVX512-BF16 or
    # AMX, elsewhere bf16 products are emulated)
    compile: bool = False
    max_bad_steps: int = 5  # consecutive non-finite steps before stopping (skipped steps leave the
    # weights untouched; on CUDA a streak is noticed at the next log, eval or checkpoint step)
    parallel: str = "ddp"  # ddp | fsdp (used when launched by torchrun)
    # where the metrics.jsonl scalars are mirrored: tensorboard (when installed), wandb, mlflow, or
    # none; wandb and mlflow read their usual settings (WANDB_MODE, WANDB_DIR, MLFLOW_TRACKING_URI)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "lmscale"  # the wandb project, the mlflow experiment
    tracker_run_name: Optional[str] = None  # default: the run directory's name
    tracker_group: Optional[str] = None  # runs shown together (a sweep sets its name)
    # extra run parameters for the trackers (a sweep sets the run's N, D and C); not a training setting
    tracker_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        finite("train", self)
        bad = [t for t in self.report_to if t not in TRACKERS]
        if bad:
            raise ConfigError(f"train.report_to={bad[0]!r} is not a tracker: use {', '.join(TRACKERS)} or none")
        self.report_to = list(dict.fromkeys(self.report_to))
        for key, value in self.tracker_params.items():
            if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
                raise ConfigError(f"train.tracker_params[{key!r}]={value!r}: values must be numbers or strings")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"train.tracker_params[{key!r}]={value!r}: must be a finite number")
        if not self.tracker_project.strip():
            raise ConfigError("train.tracker_project must not be empty")
        if not isinstance(self.device, str) or not DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"train.device={self.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        in_range("train.lr", self.lr, 0.0, MAX_LR, lo_open=True)
        for name in ("min_lr_ratio", "warmup_fraction", "decay_fraction"):
            in_range(f"train.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("beta1", "beta2"):
            in_range(f"train.{name}", getattr(self, name), 0.0, 1.0, hi_open=True)
        in_range("train.eps", self.eps, 0.0, lo_open=True)
        for name in ("weight_decay", "grad_clip", "eval_every", "eval_batches", "log_every", "checkpoint_every",
                     "seed"):
            in_range(f"train.{name}", getattr(self, name), 0)
        in_range("train.seed", self.seed, 0, MAX_SEED)  # torch and numpy seeds are 64-bit
        in_range("train.warmup_steps", self.warmup_steps, 0, allow_none=True)
        for name in ("keep_last", "max_bad_steps"):
            in_range(f"train.{name}", getattr(self, name), 1)
        choice("train.schedule", self.schedule, SCHEDULES)
        choice("train.decay_shape", self.decay_shape, DECAY_SHAPES)
        self._check_branching()
        choice("train.dtype", self.dtype, ("auto", "fp32", "bf16", "fp16"))
        choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        for name in ("seq_len", "batch_size", "lr"):
            positive(f"train.{name}", getattr(self, name))
        for name in ("micro_batch_size", "max_steps", "max_tokens", "max_flops", "max_time_s", "time_cap_s"):
            positive(f"train.{name}", getattr(self, name), allow_none=True)
        if not isinstance(self.early_stopping, int) or isinstance(self.early_stopping, bool) or self.early_stopping < 0:
            raise ConfigError(f"train.early_stopping={self.early_stopping!r} must be a whole number of "
                              "evaluations, 0 to never stop early")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not a multiple of "
                f"train.micro_batch_size={self.micro_batch_size}"
            )

    def _check_branching(self) -> None:
        """Branch points are whole optimizer steps; a branch names its parent, point and fraction."""
        tps = int(self.batch_size) * int(self.seq_len)
        points = []
        for v in self.branch_points:
            try:
                t = int(float(v))
            except (TypeError, ValueError):
                raise ConfigError(f"train.branch_points: {v!r} is not a token count") from None
            if t <= 0 or t % tps:
                raise ConfigError(f"train.branch_points: {v} is not a positive multiple of the {tps:,} tokens "
                                  "of one optimizer step (batch_size x seq_len)")
            points.append(t)
        self.branch_points = sorted(set(points))
        if self.branch is not None:
            missing = {"parent", "at_tokens", "decay_fraction"} - set(self.branch)
            if missing:
                raise ConfigError(f"train.branch needs {', '.join(sorted(missing))}")
            positive("train.branch.at_tokens", self.branch["at_tokens"])
            positive("train.branch.decay_fraction", self.branch["decay_fraction"])


@dataclass
class RunConfig:
    """Everything one pretraining run needs; what `lmscale pretrain --config FILE.yaml` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Optional[str] = None
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        m, t = self.model, self.train
        if t.seq_len > m.max_positions and m.position in ("learned",):
            raise ConfigError(
                f"train.seq_len={t.seq_len} is longer than model.max_positions={m.max_positions} "
                "(learned positions); lower train.seq_len or raise model.max_positions"
            )
        if self.tokenizer.vocab_size is not None and self.tokenizer.vocab_size > m.vocab_size:
            raise ConfigError(
                f"tokenizer.vocab_size={self.tokenizer.vocab_size} exceeds "
                f"model.vocab_size={m.vocab_size}; make them equal"
            )

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer.kind or family_tokenizer(self.model.family)

    @property
    def objective_kind(self) -> str:
        return self.objective.kind or family_objective(self.model.family)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ----------------------------------------------------------------------------- sections and YAML

def config_sections() -> dict[str, list[str]]:
    """Each section of a run config (model, tokenizer, data, objective, train) and its keys."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: [g.name for g in fields(hints[f.name])]
            for f in fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


def _effective_defaults(cfg: RunConfig) -> dict[str, Any]:
    """What a null key resolves to, where the config decides it (shown beside it by `to_yaml`)."""
    m, t = cfg.model, cfg.train
    return {
        "model.d_head": m.head_dim, "model.d_ff": m.ffn_dim, "model.n_kv_heads": m.kv_heads,
        "model.scale_output": m.output_scaled if m.family == "encoder-decoder" else None,
        "tokenizer.kind": cfg.tokenizer_kind, "tokenizer.vocab_size": m.vocab_size,
        "objective.kind": cfg.objective_kind, "train.micro_batch_size": t.batch_size,
        "train.warmup_steps": f"{t.warmup_fraction} of the schedule",
        "data.shards": "RUN_DIR/shards" if cfg.out is None else f"{cfg.out}/shards",
    }


def to_yaml(cfg: RunConfig) -> str:
    """The run config as YAML that `--config FILE` reads back to the same config; a null key that
    the config resolves (d_head, d_ff, the tokenizer kind, ...) carries its value as a comment."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=100)
    effective = _effective_defaults(cfg)
    out, section = [], ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        key = line.strip().split(":", 1)[0]
        value = effective.get(f"{section}.{key}")
        if line.endswith(": null") and line.startswith("  ") and value is not None:
            line = f"{line}  # {value}"
        out.append(line)
    return "\n".join(out) + "\n"
