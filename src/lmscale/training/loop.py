"""One pretraining loop for all three families: the family only picks the model and objective.

`pretrain(run_config, resume=False)` validates everything it can before the first step (tokenizer
vs model vocabulary, sequence vs positions, shard directory, writable run dir), then trains with
gradient accumulation, clipping, AdamW and a schedule whose length comes from the budget, writes
metrics/checkpoints, and returns the summary it also writes to `RUN_DIR/summary.json`.

Exact resume: the model, optimizer, RNG and sampler states, the step counter and the schedule
length are restored from the newest complete checkpoint; batch randomness (masking, span noise,
sentence pairs) is a pure function of (seed, step, the example's index in the global batch), so the
resumed run recomputes the same batches.

Loss weighting: each micro-batch's mean loss is weighted by its share of the step's target tokens
(counted over all processes), so the gradient is that of the global batch's mean token loss no
matter how the batch is split across processes and micro-steps. The inputs are the same too (the
randomness is per example, above), so N processes, or one process accumulating micro-batches,
reproduce the losses of one process taking the whole batch at once, for every objective (dropout
draws from each process's own stream, so that holds with dropout off). Validation uses a fixed set
of `eval_batches` global batches, split over the processes.

Budgets: steps, tokens (global batch x seq_len per step), training FLOPs (PaLM convention, see
`metrics`) or wall-clock. For wall-clock, three forward/backward passes are timed before the first
step (the model is not updated and the RNG is restored), the schedule length is
`max_time_s / step_time`, recorded in the `start` event as `step_time_estimate_s`, and the run also
stops (with a checkpoint) when the clock runs out first.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from lmscale.config import ConfigError, RunConfig, to_dict
from lmscale.data.objectives import example_rngs, make_objective
from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_json, atomic_write_text
from lmscale.training import checkpoint as ckpt
from lmscale.training import distributed as dist_util
from lmscale.training.metrics import (
    MetricsLogger,
    Progress,
    cpu_has_native_bf16,
    peak_flops,
    training_flops_per_token,
)
from lmscale.training.optim import build_optimizer, lr_at, schedule_steps, tokens_per_step

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
_ABSOLUTE_POSITIONS = ("learned", "sinusoidal", "rope")


def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own mean token loss for one micro-batch (kept separate so it can be wrapped)."""
    return model(**batch).loss


# ----------------------------------------------------------------------------- setup helpers

_HINTS: dict[str, bool] = {}  # one-time suggestions already shown in this process


def _resolve_device(pref: str, info: dist_util.DistInfo) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={pref} but CUDA is not available; use train.device=cpu")
        if info.enabled:
            return torch.device("cuda", info.local_rank)
    return dev


def _autocast(device: torch.device, dtype_pref: str):
    use_bf16 = dtype_pref == "bf16" or (dtype_pref == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bf16"
    return contextlib.nullcontext, "fp32"


def _check_positions(cfg: RunConfig, objective: Any) -> None:
    m = cfg.model
    lengths = {"encoder input": cfg.train.seq_len}
    if hasattr(objective, "targets_length"):
        lengths["decoder input (span targets)"] = objective.targets_length
    if m.position in _ABSOLUTE_POSITIONS:
        for what, n in lengths.items():
            if n > m.max_positions:
                raise ConfigError(
                    f"{what} length {n} is longer than model.max_positions={m.max_positions} "
                    f"({m.position} positions); lower train.seq_len or raise model.max_positions"
                )


def _load_tokenizer(path: str) -> Any:
    from lmscale.tokenization import Tokenizer

    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"tokenizer {p} does not exist; point data.tokenizer (--tokenizer) at a directory with "
            "tokenizer.json, or leave it unset to train one on the corpus"
        )
    return Tokenizer.load(p)


def _train_tokenizer(cfg: RunConfig, out_dir: Path) -> Any:
    from lmscale.data.catalog import resolve_corpus
    from lmscale.tokenization import train_tokenizer

    corpus = resolve_corpus(cfg.data.corpus, errors=cfg.data.errors, valid_fraction=cfg.data.valid_fraction,
                            split_seed=cfg.data.split_seed)
    vocab = cfg.tokenizer.vocab_size or cfg.model.vocab_size
    tok = train_tokenizer(
        cfg.tokenizer_kind,
        corpus.iter_documents("train"),
        vocab,
        lowercase=cfg.tokenizer.lowercase,
        min_frequency=cfg.tokenizer.min_frequency,
    )
    tok.save(out_dir)
    return tok


def _shard_dir_ready(path: Path) -> bool:
    return (path / "index.json").is_file()


def _prepare_shards(cfg: RunConfig, tokenizer: Any, shard_dir: Path) -> None:
    from lmscale.data.catalog import resolve_corpus
    from lmscale.data.shards import prepare

    corpus = resolve_corpus(cfg.data.corpus, errors=cfg.data.errors)
    prepare(corpus, tokenizer, shard_dir, valid_fraction=cfg.data.valid_fraction,
            split_seed=cfg.data.split_seed, errors=cfg.data.errors)


def _meta_get(meta: dict, *names: str) -> Any:
    for n in names:
        if n in meta:
            return meta[n]
    return None


def _check_shards(shard_dir: Path, meta: dict, tokenizer: Any, vocab: int) -> None:
    h = _meta_get(meta, "tokenizer_hash")
    if h is not None and h != tokenizer.hash:
        raise ConfigError(
            f"the shards in {shard_dir} were made with a different tokenizer (hash {str(h)[:12]}, "
            f"this one {tokenizer.hash[:12]}); delete {shard_dir} or set data.shards to a new directory"
        )
    sv = _meta_get(meta, "vocab_size")
    if sv is not None and int(sv) > vocab:
        raise ConfigError(
            f"the shards in {shard_dir} hold token ids up to {int(sv) - 1} but model.vocab_size={vocab}; "
            f"set model.vocab_size to at least {sv}"
        )


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SUMMARY_FILE, summary)


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_run_dir_config(run_dir: str | Path) -> RunConfig:
    """The resolved RunConfig a run directory was started with (for `--resume`)."""
    from lmscale.config import from_dict, load_yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); start it without --resume")
    return from_dict(RunConfig, load_yaml(path))


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """State of one run; `run()` drives it. Kept as a class so each phase reads as one method."""

    def __init__(self, cfg: RunConfig, resume: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.resume = resume
        self.show_progress = progress
        self.info = dist_util.init_distributed(cfg.train.device)
        if cfg.out is None:
            raise ConfigError("no run directory: set --out RUN_DIR (or `out:` in the config file)")
        self.run_dir = Path(cfg.out)
        self.summary: dict[str, Any] = {}
        self.step = 0
        self.tokens = 0
        self.wall_s = 0.0
        self.train_time_s = 0.0
        self.bad_steps = 0
        self.consecutive_bad = 0
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.last_eval_step: Optional[int] = None
        self.total_steps = 0
        self.budget = "steps"
        self.logger: Optional[MetricsLogger] = None
        self.params: dict[str, int] = {}
        # the next step's host-side inputs, built while the device ran the current step:
        # (step, micro-batches, label counts, sampler state before they were drawn)
        self._prefetched: Optional[tuple[int, list[dict[str, Any]], list[int], dict]] = None
        self._val_batches: Optional[list[tuple[dict[str, Any], int]]] = None
        # per-step (step, loss, grad_norm, skipped) not yet read on the host: device tensors when
        # the skip of a non-finite step is decided on the device (see `train_step`)
        self._pending: list[tuple[int, Any, Any, Any]] = []

    # -- phases

    def validate_and_build(self) -> None:
        cfg, tc, info = self.cfg, self.cfg.train, self.info
        problem = ckpt.is_writable_dir(self.run_dir) if info.is_main else None
        problem = dist_util.broadcast_object(problem, info)
        if problem:
            raise ConfigError(f"cannot write to the run directory {self.run_dir} ({problem}); choose another --out")
        if info.is_main and not (self.run_dir / CONFIG_FILE).exists():
            save_run_config(self.run_dir, cfg)  # early, so a run killed while preparing data can --resume
        if info.world_size > 1 and tc.batch_size % info.world_size:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is not divisible by the {info.world_size} processes; "
                "change the batch size or --nproc_per_node"
            )
        per_rank = tc.batch_size // info.world_size
        self.micro = min(tc.micro_batch_size or per_rank, per_rank)
        if per_rank % self.micro:
            raise ConfigError(
                f"each of {info.world_size} processes gets {per_rank} sequences, not a multiple of "
                f"train.micro_batch_size={self.micro}"
            )
        self.accum = per_rank // self.micro
        if tc.max_steps is None and tc.max_tokens is None and tc.max_flops is None and tc.max_time_s is None:
            raise ConfigError(
                "no training budget: set one of train.max_steps, train.max_tokens, train.max_flops "
                "or train.max_time_s (e.g. --max-steps 200)"
            )

        # tokenizer
        if cfg.data.tokenizer is None and self.resume and (self.run_dir / "tokenizer" / "tokenizer.json").is_file():
            cfg.data.tokenizer = str(self.run_dir / "tokenizer")
        if cfg.data.tokenizer is None:
            if cfg.data.corpus is None:
                raise ConfigError("no data: set data.corpus (--corpus NAME_OR_PATH) or data.shards with data.tokenizer")
            tok_dir = self.run_dir / "tokenizer"
            if info.is_main:
                _train_tokenizer(cfg, tok_dir)
            dist_util.barrier(info)
            cfg.data.tokenizer = str(tok_dir)
        self.tokenizer = _load_tokenizer(cfg.data.tokenizer)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but model.vocab_size="
                f"{cfg.model.vocab_size}; set --model.vocab_size {self.tokenizer.vocab_size} (or larger)"
            )

        self.objective = make_objective(cfg, self.tokenizer)
        _check_positions(cfg, self.objective)
        self.raw_len = self.objective.raw_length(tc.seq_len)

        # shards
        if cfg.data.shards is not None:
            shard_dir = Path(cfg.data.shards)
            if not _shard_dir_ready(shard_dir) and cfg.data.corpus is None:
                raise ConfigError(
                    f"shard directory {shard_dir} does not exist or has no index.json; build it with "
                    "`lmscale data prepare`, fix data.shards, or set data.corpus to build it here"
                )
        else:
            shard_dir = self.run_dir / "shards"
        if not _shard_dir_ready(shard_dir):
            if cfg.data.corpus is None:
                raise ConfigError("no data: set data.corpus (--corpus NAME_OR_PATH) or data.shards")
            if info.is_main:
                _prepare_shards(cfg, self.tokenizer, shard_dir)
            dist_util.barrier(info)
        self.shard_dir = shard_dir

        from lmscale.data.sampler import WindowSampler, validation_windows
        from lmscale.data.shards import TokenDataset

        self.train_ds = TokenDataset.open(shard_dir, "train")
        _check_shards(shard_dir, dict(self.train_ds.meta), self.tokenizer, cfg.model.vocab_size)
        if self.train_ds.num_tokens < self.raw_len + 1:
            raise ConfigError(
                f"the training split has {self.train_ds.num_tokens} tokens, fewer than one window of "
                f"{self.raw_len}; use a bigger corpus or a shorter train.seq_len"
            )
        try:
            self.valid_ds = TokenDataset.open(shard_dir, "valid")
        except (FileNotFoundError, LmscaleError, KeyError):
            self.valid_ds = None
        if self.valid_ds is not None and self.valid_ds.num_tokens < self.raw_len + 1:
            self.valid_ds = None
        self.sampler = WindowSampler(self.train_ds, self.raw_len, tc.batch_size, tc.seed,
                                     rank=info.rank, world_size=info.world_size)
        self.val_windows = None
        self.bytes_per_token = None
        if self.valid_ds is not None and tc.eval_batches > 0:
            # eval_batches global batches, split over the processes (a multiple of their number,
            # so each runs as many forward passes: FSDP's collectives need that)
            windows = validation_windows(self.valid_ds, self.raw_len, tc.eval_batches * tc.batch_size)
            windows = windows[: len(windows) - len(windows) % info.world_size]
            self.val_windows = np.asarray(windows, dtype=np.int64) if len(windows) else None
            n_bytes = _meta_get(dict(self.valid_ds.meta), "n_bytes")
            if n_bytes:
                self.bytes_per_token = float(n_bytes) / float(self.valid_ds.num_tokens)

        # model
        self.device = _resolve_device(tc.device, info)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.autocast, self.compute_dtype = _autocast(self.device, tc.dtype)
        from lmscale.models import build_model

        torch.manual_seed(tc.seed)
        model = build_model(cfg.model)
        self.params = {k: int(v) for k, v in model.num_parameters().items()}
        self.resume_state: Optional[dict[str, Any]] = None
        if self.resume:
            latest = ckpt.latest_checkpoint(self.run_dir)
            if latest is not None:
                ckpt.load_model_weights(model, latest)
                self.resume_state = ckpt.load_trainer_state(latest)
                self.resume_from = latest
        model.to(self.device)
        if tc.compile and tc.parallel != "fsdp":
            model = torch.compile(model)
        model = dist_util.wrap_model(model, info, tc.parallel, self.device,
                                     mixed_bf16=self.compute_dtype == "bf16")
        if tc.compile and tc.parallel == "fsdp" and info.enabled:
            model = torch.compile(model)
        self.model = model
        self.optimizer = build_optimizer(model, tc)
        # a non-finite step is skipped inside the fused AdamW kernel (its found_inf input), so
        # no step has to wait for the device before its update is queued; FSDP's sharded
        # parameters and the multi-tensor fallback keep the host-side decision
        self._skip_on_device = bool(self.optimizer.defaults.get("fused")) and tc.parallel != "fsdp"
        # on an accelerator the host queues step after step and reads the losses, gradient
        # norms and skips once per log interval (each read made the device go idle while the
        # host caught up: 6-10 ms of a 72 ms GPT-2-small step in an H100 profile); on CPU a read costs
        # nothing and every step is read at once
        self._read_every_step = self.device.type != "cuda"
        self.flops_per_token = training_flops_per_token(cfg.model, tc.seq_len, self.params["total"])
        self.tokens_per_step = tokens_per_step(tc)

    def restore(self) -> None:
        st = self.resume_state
        if st is None:
            return
        dist_util.load_full_state_dicts(self.model, self.optimizer, None, st["optimizer"])
        rngs = st.get("rng_by_rank") or [st.get("rng")]
        ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        self.sampler.load_state_dict(st["sampler"])
        self._prefetched = None
        self.step = int(st["step"])
        self.tokens = int(st["tokens"])
        self.wall_s = float(st["wall_s"])
        self.train_time_s = float(st.get("train_time_s", self.wall_s))
        self.bad_steps = int(st["bad_steps"])
        self.consecutive_bad = int(st["consecutive_bad"])
        self.best_val_loss = st.get("best_val_loss")
        self.last_val_loss = st.get("last_val_loss")
        self.last_eval_step = st.get("last_eval_step")
        self.total_steps = int(st["total_steps"])
        self.budget = st.get("budget", "steps")

    def plan_schedule(self) -> None:
        """Schedule length from the budget; a time budget measures the step time first."""
        if self.resume_state is not None:
            return
        tc = self.cfg.train
        step_time = self._probe_step_time() if tc.max_time_s is not None else None
        self.total_steps, self.budget = schedule_steps(tc, self.flops_per_token, step_time)
        self.step_time_estimate = step_time

    def _probe_step_time(self) -> float:
        """Time a few forward/backward passes (no optimizer update, RNG restored afterwards)."""
        rng_before = ckpt.rng_state()
        windows = np.asarray(self.train_ds.tokens[: self.raw_len], dtype=np.int64)[None].repeat(self.micro, 0)
        rngs = example_rngs(self.cfg.train.seed, 0, 0, self.micro, stream=2)
        batch = self._to_device(self.objective.build(windows, rngs))
        times = []
        self.model.train()
        for i in range(3):
            t0 = time.perf_counter()
            with self.autocast():
                loss = compute_loss(self.model, batch)
            loss.backward()
            self._sync()
            times.append(time.perf_counter() - t0)
        self.optimizer.zero_grad(set_to_none=True)
        ckpt.set_rng_state(rng_before)
        per_micro = float(np.median(times[1:]))
        t = torch.tensor([per_micro * self.accum])
        if self.info.enabled:
            import torch.distributed as dist

            t = t.to(self.device if self.info.backend == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every rank plans with the slowest rank's step time
        return float(t.item()) * 1.05  # optimizer step and data, roughly

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _host_ready(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Page-locked copies when training on CUDA: only from those is the copy to the device
        asynchronous (from pageable memory it first waits for the device to go idle)."""
        if self.device.type != "cuda":
            return batch
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _build_step_inputs(self, step: int) -> tuple[list[dict[str, Any]], list[int]]:
        """This process's micro-batches of optimizer step `step`, built on the host, and the
        label count of each."""
        tc, info = self.cfg.train, self.info
        rows, partners = self.sampler.next_batch_with_partners(partners=self.objective.uses_partners)
        # each example's masking draws are keyed by its index in the global batch, so the inputs
        # do not depend on the micro-batch size or the number of processes
        first = info.rank * self.micro * self.accum
        micro_batches, counts = [], []
        for i in range(self.accum):
            part = slice(i * self.micro, (i + 1) * self.micro)
            rngs = (example_rngs(tc.seed, step, first + part.start, self.micro)
                    if self.objective.uses_example_rngs else ())
            b = self.objective.build(rows[part], rngs, None if partners is None else partners[part])
            counts.append(self.objective.count_targets(b))
            micro_batches.append(self._host_ready(b))
        return micro_batches, counts

    def _sampler_state(self) -> dict:
        """The sampler's position after the batches consumed so far (a prefetched batch is not
        consumed yet: a resumed run builds it again)."""
        return self._prefetched[3] if self._prefetched is not None else self.sampler.state_dict()

    # -- one optimizer step

    def train_step(self) -> None:
        """One optimizer step; its loss, gradient norm and skip go to `self._pending`."""
        tc, info = self.cfg.train, self.info
        lr = lr_at(self.step, self.total_steps, tc)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self._prefetched is not None and self._prefetched[0] == self.step:
            micro_batches, counts = self._prefetched[1], self._prefetched[2]
        else:
            micro_batches, counts = self._build_step_inputs(self.step)
        self._prefetched = None
        total = dist_util.global_sum(float(sum(counts)), info, self._reduce_device())
        total = total.clamp(min=1.0) if isinstance(total, torch.Tensor) else max(total, 1.0)
        self.model.train()
        loss_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, b in enumerate(micro_batches):
            b = self._to_device(b)
            last = i == self.accum - 1
            with dist_util.no_gradient_sync(self.model, active=info.enabled and not last):
                with self.autocast():
                    loss = compute_loss(self.model, b)
                weight = counts[i] / total * info.world_size
                (loss * weight).backward()
            loss_acc += loss.detach().double() * counts[i]
        if self.step + 1 < self.total_steps:
            # the next step's inputs are built now, before the first read of a result: on an
            # accelerator the host works while the device runs this step's kernels instead of
            # the device idling while the host builds them (10-40 ms per step for masked-LM or
            # span-corruption batches of 256 sequences); on CPU it only moves the same work
            before = self.sampler.state_dict()
            nxt, nxt_counts = self._build_step_inputs(self.step + 1)
            self._prefetched = (self.step + 1, nxt, nxt_counts, before)
        if info.enabled:
            import torch.distributed as dist

            red = loss_acc.to(self._reduce_device())
            dist.all_reduce(red)  # sum over ranks
            loss_acc = red
        step_loss = loss_acc / total
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = tc.grad_clip if tc.grad_clip and tc.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = norm.detach()
        if self._skip_on_device:
            skipped = ~(torch.isfinite(step_loss) & torch.isfinite(norm))
            # the fused kernel leaves weights, moments and step count untouched when found_inf
            # is 1: the same state as not calling step() at all
            self.optimizer.found_inf = skipped.to(torch.float32)
            self.optimizer.step()
        else:
            step_loss, norm = float(step_loss.item()), float(norm.item())
            skipped = not (math.isfinite(step_loss) and math.isfinite(norm))
            if not skipped:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        self._pending.append((self.step, step_loss, norm, skipped))

    def _cpu_precision_hint(self, bar: Progress) -> None:
        """Once per process: say when the other CPU precision would train faster. bf16 products
        run 2.2-2.4x as fast as fp32 ones on a Zen 4 core with AVX512-BF16 and are emulated, far
        slower, on CPUs without bf16 hardware."""
        if self.cfg.train.dtype == "auto" and self.compute_dtype == "fp32" and not _HINTS.get("bf16"):
            _HINTS["bf16"] = True
            if cpu_has_native_bf16():
                bar.message("this CPU multiplies bf16 in hardware: --train.dtype bf16 (bf16 products, fp32 "
                            "weights and optimizer) trains 1.4-1.8x faster on such CPUs in lmscale's benchmark")
        elif self.compute_dtype == "bf16" and not _HINTS.get("bf16-emulated"):
            _HINTS["bf16-emulated"] = True
            if not cpu_has_native_bf16():
                bar.message("this CPU has no bf16 hardware (AVX512-BF16 or AMX): its bf16 products are emulated "
                            "and much slower than fp32 ones; --train.dtype fp32 trains faster here")

    def read_pending(self) -> list[tuple[int, float, float, bool]]:
        """(step, loss, grad_norm, skipped) of the steps run since the last read, on the host:
        one device read for all of them."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        values = [entry[1:] for entry in pending]
        if isinstance(values[0][0], torch.Tensor):
            values = torch.stack([torch.stack([v.double() for v in entry]) for entry in values]).tolist()
        return [(entry[0], float(loss), float(norm), bool(skipped))
                for entry, (loss, norm, skipped) in zip(pending, values)]

    def _reduce_device(self) -> torch.device:
        return self.device if self.info.backend == "nccl" else torch.device("cpu")

    # -- evaluation

    @torch.no_grad()
    def evaluate(self) -> Optional[dict[str, float]]:
        if self.val_windows is None:
            return None
        model = self.model if dist_util.is_fsdp(self.model) else dist_util.unwrap(self.model)
        model.eval()
        info = self.info
        if self._val_batches is None:
            self._val_batches = self._build_validation_batches()
        loss_acc = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0.0
        for b, n in self._val_batches:
            with self.autocast():
                loss = compute_loss(model, self._to_device(b))
            loss_acc += loss.detach().double() * n
            count += n
        # one read of the device per evaluation, not one per batch
        loss_sum, count = dist_util.all_reduce_sum([float(loss_acc.item()), count], info, self._reduce_device())
        model.train()
        val_loss = loss_sum / max(count, 1)
        out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
        if self.bytes_per_token:
            out["val_bpb"] = val_loss / math.log(2) / self.bytes_per_token
        return out

    def _build_validation_batches(self) -> list[tuple[dict[str, Any], int]]:
        """This process's share of the validation set as batches, with their label counts. Built
        once per run: the masking draws are fixed (keyed by window index), so every evaluation
        sees the same inputs and only the first one pays for building them."""
        windows = self.val_windows
        partners = np.roll(windows, -1, axis=0) if self.objective.uses_partners and len(windows) > 1 else None
        info = self.info
        share = len(windows) // info.world_size
        mine = range(info.rank * share, (info.rank + 1) * share)
        out = []
        for i in range(mine.start, mine.stop, self.micro):
            part = slice(i, min(i + self.micro, mine.stop))
            rngs = (example_rngs(self.cfg.train.seed, 0, i, part.stop - i, stream=1)
                    if self.objective.uses_example_rngs else ())
            b = self.objective.build(windows[part], rngs, None if partners is None else partners[part])
            out.append((b, self.objective.count_targets(b)))
        return out

    # -- checkpoints

    def _plain_model_for_saving(self) -> tuple[torch.nn.Module, dict]:
        model_sd, optim_sd = dist_util.full_state_dicts(self.model, self.optimizer)
        if dist_util.is_fsdp(self.model):
            if not self.info.is_main:  # the full state is gathered on rank 0 only
                return None, optim_sd
            from lmscale.models import build_model

            cpu_model = build_model(self.cfg.model)
            cpu_model.load_state_dict(model_sd)
            return cpu_model, optim_sd
        return dist_util.unwrap(self.model), optim_sd

    def save(self) -> None:
        info = self.info
        rngs = [ckpt.rng_state()]
        if info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        model, optim_sd = self._plain_model_for_saving()
        if info.is_main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "flops": self.tokens * self.flops_per_token,
                "wall_s": self.wall_s,
                "train_time_s": self.train_time_s,
                "optimizer": optim_sd,
                "rng_by_rank": rngs,
                "sampler": self._sampler_state(),
                "total_steps": self.total_steps,
                "budget": self.budget,
                "bad_steps": self.bad_steps,
                "consecutive_bad": self.consecutive_bad,
                "best_val_loss": self.best_val_loss,
                "last_val_loss": self.last_val_loss,
                "last_eval_step": self.last_eval_step,
                "world_size": info.world_size,
                "tokenizer_hash": self.tokenizer.hash,
            }
            path = ckpt.save_checkpoint(self.run_dir, self.step, model, self.tokenizer, state,
                                        keep_last=self.cfg.train.keep_last)
            self.logger.log({"event": "checkpoint", "step": self.step, "tokens": self.tokens,
                             "path": str(path), "wall_s": round(self.wall_s, 3)})
        dist_util.barrier(info)

    def save_best(self) -> None:
        model, _ = self._plain_model_for_saving() if dist_util.is_fsdp(self.model) else (dist_util.unwrap(self.model), None)
        if self.info.is_main:
            ckpt.save_best(self.run_dir, model, self.tokenizer,
                           {"step": self.step, "val_loss": self.best_val_loss})
        dist_util.barrier(self.info)

    # -- driver

    def _summary(self, status: str, error: Optional[str]) -> dict[str, Any]:
        return {
            "status": status,
            "steps": self.step,
            "tokens": self.tokens,
            "flops": float(self.tokens * getattr(self, "flops_per_token", 0.0)),
            "wall_s": round(self.wall_s, 3),
            "final_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss,
            "params": self.params or None,
            "tokens_per_s": (self.tokens / self.train_time_s) if self.train_time_s > 0 else None,
            "error": error,
        }

    def run(self) -> dict[str, Any]:
        info = self.info
        self.validate_and_build()
        if info.is_main:
            save_run_config(self.run_dir, self.cfg)
        self.logger = MetricsLogger(self.run_dir, enabled=info.is_main)
        if self.resume and self.resume_state is None and info.is_main:
            print(f"lmscale pretrain: no checkpoint in {self.run_dir}; starting from step 0", flush=True)
        self.restore()
        if self.resume_state is not None:
            self.logger.truncate_after(self.step)
        elif info.is_main:
            # a fresh start replaces an earlier run's records, so --resume never mixes the two
            self.logger.truncate_after(-1)
            ckpt.clear_checkpoints(self.run_dir)
            (self.run_dir / SUMMARY_FILE).unlink(missing_ok=True)
        dist_util.barrier(info)
        self.plan_schedule()
        tc = self.cfg.train
        if self.resume_state is None:
            self.logger.log({
                "event": "start", "step": 0, "tokens": 0, "total_steps": self.total_steps,
                "budget": self.budget, "step_time_estimate_s": getattr(self, "step_time_estimate", None),
                "flops_per_token": self.flops_per_token, "flop_convention": "palm",
                "params": self.params, "world_size": info.world_size, "device": str(self.device),
                "dtype": self.compute_dtype, "micro_batch_size": self.micro, "accum_steps": self.accum,
            })
        peak = peak_flops(self.device, self.compute_dtype) if info.is_main else float("nan")
        if self.resume_state is None:
            # dropout draws from here on; independent of whatever setup consumed before
            torch.manual_seed(tc.seed * 1_000_003 + 17 + info.rank)
        bar = Progress(self.total_steps, self.step, enabled=self.show_progress and info.is_main)
        if bar.enabled and self.device.type == "cpu":
            self._cpu_precision_hint(bar)
        status, error = "finished", None
        interval_tokens, interval_time, interval_losses = 0, 0.0, []
        grad_norm = float("nan")
        session_start = time.perf_counter()
        wall_at_start = self.wall_s
        segment_start = time.perf_counter()  # training time runs from here to the next read
        try:
            while self.step < self.total_steps:
                self.train_step()
                self.wall_s = wall_at_start + (time.perf_counter() - session_start)
                interval_tokens += self.tokens_per_step
                at_end = self.step == self.total_steps
                log_now = self.step % max(tc.log_every, 1) == 0 or at_end
                eval_now = bool(tc.eval_every) and (self.step % tc.eval_every == 0 or at_end)
                save_now = bool(tc.checkpoint_every and self.step % tc.checkpoint_every == 0) or at_end
                out_of_time = tc.max_time_s is not None and not at_end and self._out_of_time()
                if not (self._read_every_step or log_now or eval_now or save_now or out_of_time):
                    continue
                self._sync()
                self.wall_s = wall_at_start + (time.perf_counter() - session_start)
                dt = time.perf_counter() - segment_start
                self.train_time_s += dt
                interval_time += dt
                for step, loss, grad_norm, skipped in self.read_pending():
                    if not skipped:
                        self.consecutive_bad = 0
                        interval_losses.append(loss)
                        continue
                    self.bad_steps += 1
                    self.consecutive_bad += 1
                    self.logger.log({"event": "nonfinite", "step": step, "loss": loss,
                                     "grad_norm": grad_norm, "bad_steps": self.bad_steps})
                    if self.consecutive_bad >= tc.max_bad_steps and error is None:
                        last = ckpt.latest_checkpoint(self.run_dir)
                        error = (
                            f"{self.consecutive_bad} consecutive steps with a non-finite loss or gradient "
                            f"(up to step {step}); stopped. The last good checkpoint "
                            f"({last if last else 'none written yet'}) is kept: lower train.lr, raise "
                            "train.warmup_steps or train.grad_clip, or resume with train.max_bad_steps higher"
                        )
                if error is not None:
                    status = "failed"
                    bar.message(f"lmscale pretrain: {error}")
                    break
                if log_now:
                    tps = interval_tokens / interval_time if interval_time > 0 else None
                    mean_loss = float(np.mean(interval_losses)) if interval_losses else float("nan")
                    mfu = (self.flops_per_token * tps / (peak * info.world_size)) if tps and peak == peak else None
                    self.logger.log({
                        "event": "train", "step": self.step, "tokens": self.tokens, "loss": mean_loss,
                        "lr": lr_at(self.step - 1, self.total_steps, tc), "grad_norm": grad_norm,
                        "tokens_per_s": tps, "flops": self.tokens * self.flops_per_token, "mfu": mfu,
                        "wall_s": round(self.wall_s, 3), "bad_steps": self.bad_steps,
                    })
                    bar.update(self.step, mean_loss, tps)
                    interval_tokens, interval_time, interval_losses = 0, 0.0, []
                if eval_now:
                    self.run_eval(bar)
                if save_now or out_of_time:
                    self.save()
                if out_of_time:
                    break
                segment_start = time.perf_counter()
            if status == "finished" and self.last_eval_step != self.step:
                self.run_eval(bar)  # the summary's final_val_loss belongs to the final weights
        except KeyboardInterrupt:
            status, error = "stopped", "interrupted"
            self._finish(status, error, bar)
            raise
        except Exception as exc:
            self._finish("failed", f"{type(exc).__name__}: {exc}", bar)
            raise
        return self._finish(status, error, bar)

    def run_eval(self, bar: Progress) -> None:
        ev = self.evaluate()
        if ev is None:
            return
        self.last_eval_step = self.step
        self.last_val_loss = ev["val_loss"]
        improved = self.best_val_loss is None or ev["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = ev["val_loss"]
        self.logger.log({"event": "eval", "step": self.step, "tokens": self.tokens, **ev,
                         "wall_s": round(self.wall_s, 3)})
        bar.message(f"step {self.step}: val_loss {ev['val_loss']:.4f}")
        if improved:
            self.save_best()

    def _out_of_time(self) -> bool:
        over = self.wall_s >= float(self.cfg.train.max_time_s)
        return bool(dist_util.broadcast_object(over, self.info))

    def _finish(self, status: str, error: Optional[str], bar: Progress) -> dict[str, Any]:
        bar.close()
        self.summary = self._summary(status, error)
        if self.info.is_main:
            if self.logger is not None:
                self.logger.log({"event": "end", "step": self.step, "tokens": self.tokens, "status": status,
                                 "bad_steps": self.bad_steps, "wall_s": round(self.wall_s, 3),
                                 "tokens_per_s": self.summary["tokens_per_s"], "error": error})
            write_summary(self.run_dir, self.summary)
        if self.logger is not None:
            self.logger.close()
        return self.summary


def pretrain(run_config: RunConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train as `run_config` says (or continue its run dir when `resume`); returns the summary.

    Problems found before the first step raise `ConfigError` with what to change; a run that stops
    on repeated non-finite steps returns a summary with status "failed" and the reason.
    """
    trainer = None
    try:
        trainer = Trainer(run_config, resume=resume, progress=progress)
        try:
            return trainer.run()
        except LmscaleError as exc:
            if trainer.info.is_main and trainer.run_dir.is_dir() and not trainer.summary:
                with contextlib.suppress(OSError):
                    write_summary(trainer.run_dir, {**trainer._summary("failed", str(exc))})
            raise
    finally:
        if trainer is not None:
            dist_util.shutdown(trainer.info)


__all__ = ["pretrain", "Trainer", "compute_loss", "load_run_dir_config", "write_summary"]
