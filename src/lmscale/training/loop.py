"""One pretraining loop for all three families: the family only picks the model and objective.

`pretrain(run_config, resume=False)` builds the run (`build.build_run`: everything is checked
before the first step), then `Trainer` trains it with gradient accumulation, clipping, AdamW and a
schedule whose length comes from the budget, writes metrics and checkpoints, and returns the
summary it also writes to `RUN_DIR/summary.json`.

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

A wall-clock budget also stops the run (with a checkpoint) when the clock runs out before the
planned schedule does.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lmscale.config import RunConfig, to_dict
from lmscale.errors import LmscaleError
from lmscale.training import checkpoint as ckpt
from lmscale.training import distributed as dist_util
from lmscale.training.batches import to_device
from lmscale.training.branch import start_branch
from lmscale.training.build import Run, build_run, open_run_dir
from lmscale.training.checkpoint import RunState
from lmscale.training.engine import Engine, compute_loss, sync
from lmscale.training.metrics import MetricsLogger, Progress, cpu_has_native_bf16, peak_flops
from lmscale.training.optim import lr_at, tokens_per_step
from lmscale.training.rundir import RunDir, RunSummary, write_summary
from lmscale.training.step import OptimizerStep, record_step, streak_message
from lmscale.training.trackers import flat_params

_HINTS: dict[str, bool] = {}  # one-time suggestions already shown in this process


def pretrain(run_config: RunConfig, resume: bool = False, progress: bool = True,
             trust_checkpoint: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train as `run_config` says (or continue its run dir when `resume`); returns the summary.
    `trust_checkpoint` lets a resume unpickle an older checkpoint's trainer state in full.

    The run directory is locked for the run's life (a second writer is refused); a fresh run
    refuses a non-empty directory that is not a run directory unless `overwrite`. Problems found
    before the first step raise `ConfigError` with what to change; a run that stops on repeated
    non-finite steps returns a summary with status "failed" and the reason.
    """
    info = dist_util.init_distributed(run_config.train.device)
    lock = None
    try:
        if run_config.train.branch is not None and not resume:
            # a cooldown branch starts as a resume of the parent's checkpoint copied into its directory
            run_config, resume = start_branch(run_config, info, overwrite=overwrite), True
        lock = open_run_dir(run_config, info, resume=resume, overwrite=overwrite)
        try:
            run = build_run(run_config, info, resume=resume, trust_checkpoint=trust_checkpoint)
        except LmscaleError as exc:
            if info.is_main:
                _record_failed_start(run_config.out, str(exc), resume)
            raise
        return Trainer(run, MetricsLogger(run.run_dir, enabled=info.is_main, train_cfg=run.cfg.train),
                       progress=progress).run()
    finally:
        if lock is not None:
            lock.release()
        dist_util.shutdown(info)


def _record_failed_start(out: Optional[str], error: str, resume: bool) -> None:
    """The summary of a run that failed before its first step, when its run directory exists; a
    failed resume keeps the summary of an earlier session that trained to its end."""
    if out is None or not Path(out).is_dir():
        return
    failed = RunSummary.from_dict(summary_record(RunState(total_steps=0, budget="steps"), "failed", error))
    with contextlib.suppress(OSError):
        RunDir(out).record_failed_start(failed, resume)


def summary_record(state: RunState, status: str, error: Optional[str], flops_per_token: float = 0.0,
                   params: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """What `summary.json` holds about a run that ended (or failed to start), as `RunSummary` keys."""
    return RunSummary(
        status=status, steps=state.step, tokens=state.tokens, flops=float(state.tokens * flops_per_token),
        wall_s=round(state.wall_s, 3), final_val_loss=state.last_val_loss, best_val_loss=state.best_val_loss,
        params=params or None, error=error,
        tokens_per_s=(state.tokens / state.train_time_s) if state.train_time_s > 0 else None,
    ).to_dict()


@dataclass
class _Interval:
    """What the host has read since the last `train` record."""

    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


class Trainer:
    """Runs the optimizer steps of a built run, and its evaluations, checkpoints and records."""

    def __init__(self, run: Run, logger: MetricsLogger, progress: bool = True) -> None:
        self.built = run  # the built run is the one source of its parts and of its state
        self.tokens_per_step = tokens_per_step(run.cfg.train)
        self.logger = logger
        self.show_progress = progress
        self.reduce_device = dist_util.collective_device(run.info, run.engine.device)
        self.optimizer_step = OptimizerStep(run.engine.model, run.engine.optimizer, run.cfg.train.grad_clip,
                                            run.engine.autocast, run.engine.scaler,
                                            sharded=run.cfg.train.parallel == "fsdp")
        # on an accelerator the host queues step after step and reads the losses, gradient
        # norms and skips once per log interval (each read makes the device go idle while the
        # host catches up); on CPU a read costs nothing and every step is read at once
        self.read_every_step = run.engine.device.type != "cuda"
        # per-step (step, loss, grad_norm, skipped) not yet read on the host: device tensors when
        # the skip of a non-finite step is decided on the device (see `train_step`)
        self.pending: list[tuple[int, Any, Any, Any]] = []
        # branch points: checkpoints written there and never pruned
        self.keep_steps = frozenset(t // self.tokens_per_step for t in run.cfg.train.branch_points)

    @property
    def engine(self) -> Engine:
        """The model, its optimizer and the precision/device policy it trains with."""
        return self.built.engine

    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or of the clock, or of a non-finite streak) and
        evaluate the final weights; returns the summary."""
        st = self.built.state
        bar = Progress(st.total_steps, st.step, enabled=self.show_progress and self.built.info.is_main)
        try:
            self._open_records()
            status, error = self._train(bar)
            if status in ("finished", "time_cap", "early_stopped") and st.last_eval_step != st.step:
                self.run_eval(bar)  # the summary's final_val_loss belongs to the final weights
        except KeyboardInterrupt:
            self._finish("stopped", "interrupted", bar)
            raise
        except Exception as exc:
            self._finish("failed", f"{type(exc).__name__}: {exc}", bar)
            raise
        return self._finish(status, error, bar)

    def _train(self, bar: Progress) -> tuple[str, Optional[str]]:
        """The step loop: the host reads the device's results only where it logs, evaluates,
        saves or checks the clock (or after every step when reads are free)."""
        tc, st = self.built.cfg.train, self.built.state
        peak = peak_flops(self.engine.device, self.engine.compute_dtype) if self.built.info.is_main else float("nan")
        if not self.built.resumed:
            # dropout draws from here on; independent of whatever setup consumed before
            torch.manual_seed(tc.seed * 1_000_003 + 17 + self.built.info.rank)
        if bar.enabled and self.engine.device.type == "cpu":
            _cpu_precision_hint(tc.dtype, self.engine.compute_dtype, bar)
        interval, grad_norm = _Interval(), float("nan")
        session_start, wall_at_start = time.perf_counter(), st.wall_s
        segment_start = session_start  # training time runs from here to the next read
        while st.step < st.total_steps:
            self.train_step()
            st.wall_s = wall_at_start + (time.perf_counter() - session_start)
            interval.tokens += self.tokens_per_step
            at_end = st.step == st.total_steps
            log_now = st.step % max(tc.log_every, 1) == 0 or at_end
            eval_now = bool(tc.eval_every) and (st.step % tc.eval_every == 0 or at_end)
            save_now = bool(tc.checkpoint_every and st.step % tc.checkpoint_every == 0) or at_end \
                or st.step in self.keep_steps
            out_of_time = not at_end and self._out_of_time()
            if not (self.read_every_step or log_now or eval_now or save_now or out_of_time):
                continue
            sync(self.engine.device)
            st.wall_s = wall_at_start + (time.perf_counter() - session_start)
            dt = time.perf_counter() - segment_start
            st.train_time_s += dt
            interval.seconds += dt
            grad_norm, error = self._read_results(interval, grad_norm)
            if error is not None:
                bar.message(f"lmscale pretrain: {error}")
                return "failed", error
            if log_now:
                self._log_train(interval, grad_norm, peak, bar)
                interval = _Interval()
            if eval_now:
                self.run_eval(bar)
                if tc.early_stopping and st.evals_since_best >= tc.early_stopping and not at_end:
                    self.save()
                    bar.message(f"lmscale pretrain: validation loss has not improved for {st.evals_since_best} "
                                f"evaluations; stopped early at step {st.step} (best weights in checkpoints/best)")
                    return "early_stopped", None
            if save_now or out_of_time:
                self.save()
            if out_of_time:
                if tc.max_time_s is None or (tc.time_cap_s is not None and tc.time_cap_s < tc.max_time_s):
                    bar.message(f"lmscale pretrain: stopped by train.time_cap_s={tc.time_cap_s:g} at step "
                                f"{st.step} of {st.total_steps}; --resume continues the same schedule")
                    return "time_cap", None
                break
            segment_start = time.perf_counter()
        return "finished", None

    def train_step(self) -> None:
        """One optimizer step (`step.OptimizerStep`); its loss, gradient norm and skip go to
        `self.pending`."""
        info, st, step = self.built.info, self.built.state, self.optimizer_step
        step.set_lr(lr_at(st.step, st.total_steps, self.built.cfg.train))
        micro_batches, counts = self.built.batches.take(st.step)
        total = dist_util.global_sum(float(sum(counts)), info, self.reduce_device)
        total = total.clamp(min=1.0) if isinstance(total, torch.Tensor) else max(total, 1.0)
        self.engine.model.train()
        loss_acc = torch.zeros((), device=self.engine.device, dtype=torch.float64)
        for i, b in enumerate(micro_batches):
            b = to_device(b, self.engine.device)
            last = i == len(micro_batches) - 1
            with dist_util.no_gradient_sync(self.engine.model, active=info.enabled and not last):
                with self.engine.autocast():
                    loss = compute_loss(self.engine.model, b)
                step.backward(loss, counts[i] / total * info.world_size)
            loss_acc += loss.detach().double() * counts[i]
        if st.step + 1 < st.total_steps:
            # the next step's inputs are built now, before the first read of a result: on an
            # accelerator the host works while the device runs this step's kernels instead of
            # the device idling while the host builds them; on CPU it only moves the same work
            self.built.batches.prefetch(st.step + 1)
        result = step.update(dist_util.sum_tensor(loss_acc, info, self.reduce_device) / total)
        st.step += 1
        st.tokens += self.tokens_per_step
        self.pending.append((st.step, result.loss, result.grad_norm, result.skipped))

    def read_pending(self) -> list[tuple[int, float, float, bool]]:
        """(step, loss, grad_norm, skipped) of the steps run since the last read, on the host:
        one device read for all of them."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        values = [entry[1:] for entry in pending]
        if isinstance(values[0][0], torch.Tensor):
            values = torch.stack([torch.stack([v.double() for v in entry]) for entry in values]).tolist()
        return [(entry[0], float(loss), float(norm), bool(skipped))
                for entry, (loss, norm, skipped) in zip(pending, values)]

    def _read_results(self, interval: _Interval, grad_norm: float) -> tuple[float, Optional[str]]:
        """Count the steps read now: finite losses into `interval`, non-finite ones recorded.
        Returns the last gradient norm read, and the error when a non-finite streak is too long."""
        st, max_bad, error = self.built.state, self.built.cfg.train.max_bad_steps, None
        for step, loss, grad_norm, skipped in self.read_pending():
            stop = record_step(st, skipped, max_bad)
            if not skipped:
                interval.losses.append(loss)
                continue
            self.logger.log({"event": "nonfinite", "step": step, "loss": loss, "grad_norm": grad_norm,
                             "bad_steps": st.bad_steps})
            if stop and error is None:
                last = ckpt.latest_checkpoint(self.built.run_dir)
                error = (
                    f"{streak_message(st.consecutive_bad, step)}. The last good checkpoint "
                    f"({last if last else 'none written yet'}) is kept: lower train.lr, raise "
                    "train.warmup_steps or train.grad_clip, or resume with train.max_bad_steps higher"
                )
        return grad_norm, error

    def _log_train(self, interval: _Interval, grad_norm: float, peak: float, bar: Progress) -> None:
        st, world = self.built.state, self.built.info.world_size
        tps = interval.tokens / interval.seconds if interval.seconds > 0 else None
        mean_loss = float(np.mean(interval.losses)) if interval.losses else float("nan")
        mfu = (self.built.flops_per_token * tps / (peak * world)) if tps and peak == peak else None
        self.logger.log({
            "event": "train", "step": st.step, "tokens": st.tokens, "loss": mean_loss,
            "lr": lr_at(st.step - 1, st.total_steps, self.built.cfg.train), "grad_norm": grad_norm,
            "tokens_per_s": tps, "flops": st.tokens * self.built.flops_per_token, "mfu": mfu,
            "wall_s": round(st.wall_s, 3), "bad_steps": st.bad_steps,
        })
        bar.update(st.step, mean_loss, tps)

    def _out_of_time(self) -> bool:
        limits = [t for t in (self.built.cfg.train.max_time_s, self.built.cfg.train.time_cap_s) if t is not None]
        if not limits:
            return False
        over = self.built.state.wall_s >= float(min(limits))
        return bool(dist_util.broadcast_object(over, self.built.info))

    @torch.no_grad()
    def evaluate(self) -> Optional[dict[str, float]]:
        """Mean token loss over this run's fixed validation batches (all processes together)."""
        if self.built.val_batches is None:
            return None
        model = self.engine.model if dist_util.is_fsdp(self.engine.model) else dist_util.unwrap(self.engine.model)
        model.eval()
        loss_acc = torch.zeros((), device=self.engine.device, dtype=torch.float64)
        count = 0.0
        for b, n in self.built.val_batches:
            with self.engine.autocast():
                loss = compute_loss(model, to_device(b, self.engine.device))
            loss_acc += loss.detach().double() * n
            count += n
        # one read of the device per evaluation, not one per batch
        loss_sum, count = dist_util.all_reduce_sum([float(loss_acc.item()), count], self.built.info, self.reduce_device)
        model.train()
        val_loss = loss_sum / max(count, 1)
        out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
        if self.built.bytes_per_token:
            out["val_bpb"] = val_loss / math.log(2) / self.built.bytes_per_token
        return out

    def run_eval(self, bar: Progress) -> None:
        ev = self.evaluate()
        if ev is None:
            return
        st = self.built.state
        st.last_eval_step = st.step
        st.last_val_loss = ev["val_loss"]
        improved = st.best_val_loss is None or ev["val_loss"] < st.best_val_loss
        if improved:
            st.best_val_loss = ev["val_loss"]
        st.evals_since_best = 0 if improved else st.evals_since_best + 1
        self.logger.log({"event": "eval", "step": st.step, "tokens": st.tokens, **ev, "wall_s": round(st.wall_s, 3)})
        bar.message(f"step {st.step}: val_loss {ev['val_loss']:.4f}")
        if improved:
            self.save_best()

    def save(self) -> None:
        """A resumable checkpoint of this step (every process takes part; rank 0 writes it)."""
        info, st = self.built.info, self.built.state
        rngs = dist_util.all_gather_object(ckpt.rng_state(), info)
        model, optim_sd = ckpt.model_and_optimizer_to_save(self.engine.model, self.engine.optimizer,
                                                           self.built.cfg.model, info)
        if info.is_main:
            state = {
                **asdict(st), "flops": st.tokens * self.built.flops_per_token, "optimizer": optim_sd,
                "rng_by_rank": rngs, "sampler": self.built.batches.sampler_state(), "world_size": info.world_size,
                "grad_scaler": self.engine.scaler.state_dict() if self.engine.scaler is not None else None,
                "tokenizer_hash": self.built.tokenizer.hash,
            }
            path = ckpt.save_checkpoint(self.built.run_dir, st.step, model, self.built.tokenizer, state,
                                        keep_last=self.built.cfg.train.keep_last, keep_steps=self.keep_steps)
            self.logger.log({"event": "checkpoint", "step": st.step, "tokens": st.tokens,
                             "path": str(path), "wall_s": round(st.wall_s, 3)})
        dist_util.barrier(info)

    def save_best(self) -> None:
        if dist_util.is_fsdp(self.engine.model):
            model, _ = ckpt.model_and_optimizer_to_save(self.engine.model, self.engine.optimizer,
                                                        self.built.cfg.model, self.built.info)
        else:
            model = dist_util.unwrap(self.engine.model)
        if self.built.info.is_main:
            ckpt.save_best(self.built.run_dir, model, self.built.tokenizer,
                           {"step": self.built.state.step, "val_loss": self.built.state.best_val_loss})
        dist_util.barrier(self.built.info)

    def _open_records(self) -> None:
        """A resumed run drops the records past its checkpoint; a fresh start replaces an earlier
        run's records and checkpoints, so --resume never mixes the two."""
        info, st = self.built.info, self.built.state
        if self.built.resumed:
            self.logger.truncate_after(st.step)
        elif info.is_main:
            self.logger.truncate_after(-1)
            ckpt.clear_checkpoints(self.built.run_dir)
            RunDir(self.built.run_dir).remove_summary()
        dist_util.barrier(info)
        self.logger.open_trackers(st.step if self.built.resumed else None, self.tracker_params())
        if not self.built.resumed:
            self.logger.log({
                "event": "start", "step": 0, "tokens": 0, "total_steps": st.total_steps, "budget": st.budget,
                "step_time_estimate_s": self.built.step_time_estimate, "flops_per_token": self.built.flops_per_token,
                "flop_convention": "palm", "params": self.engine.params, "world_size": info.world_size,
                "device": str(self.engine.device), "dtype": self.engine.compute_dtype,
                "micro_batch_size": self.built.batches.micro, "accum_steps": self.built.batches.accum,
            })

    def tracker_params(self) -> dict[str, Any]:
        """What a tracker run is described by: the resolved config, the parameter counts, the
        FLOPs per token, and the `train.tracker_params` a sweep adds (its N, D and C)."""
        cfg = to_dict(self.built.cfg)
        cfg["train"].pop("tracker_params", None)
        return {**flat_params(cfg), **{f"params.{k}": v for k, v in (self.engine.params or {}).items()},
                "flops_per_token": self.built.flops_per_token, "total_steps": self.built.state.total_steps,
                **self.built.cfg.train.tracker_params}

    def _finish(self, status: str, error: Optional[str], bar: Progress) -> dict[str, Any]:
        bar.close()
        st = self.built.state
        summary = summary_record(st, status, error, self.built.flops_per_token, self.engine.params)
        summary["branch"] = self.built.cfg.train.branch  # the lineage of a cooldown branch
        if self.built.info.is_main:
            self.logger.log({"event": "end", "step": st.step, "tokens": st.tokens, "status": status,
                             "bad_steps": st.bad_steps, "wall_s": round(st.wall_s, 3),
                             "tokens_per_s": summary["tokens_per_s"], "error": error})
            write_summary(self.built.run_dir, summary)
        self.logger.close(status)
        return summary


def _cpu_precision_hint(asked: str, compute_dtype: str, bar: Progress) -> None:
    """Once per process: say when the other CPU precision would train faster (bf16 products are
    fast on CPUs that multiply bf16 in hardware, and emulated, far slower, elsewhere)."""
    if asked == "auto" and compute_dtype == "fp32" and not _HINTS.get("bf16"):
        _HINTS["bf16"] = True
        if cpu_has_native_bf16():
            bar.message("this CPU multiplies bf16 in hardware: --train.dtype bf16 (bf16 products, fp32 "
                        "weights and optimizer) usually trains faster on such CPUs")
    elif compute_dtype == "bf16" and not _HINTS.get("bf16-emulated"):
        _HINTS["bf16-emulated"] = True
        if not cpu_has_native_bf16():
            bar.message("this CPU has no bf16 hardware (AVX512-BF16 or AMX): its bf16 products are emulated "
                        "and much slower than fp32 ones; --train.dtype fp32 trains faster here")


__all__ = ["pretrain", "Trainer", "compute_loss", "summary_record", "write_summary"]
