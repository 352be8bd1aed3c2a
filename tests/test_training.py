"""The training engine: schedules vs transformers' reference schedulers, budgets, all three
families end to end, exact resume after a real SIGKILL, 2-process DDP vs one process, non-finite
steps, fail-fast validation, checkpoint retention and the CLI."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmscale.config import ConfigError, TrainConfig, load_run_config, to_dict
from lmscale.training import checkpoint as ckpt
from lmscale.training import loop
from lmscale.training.optim import build_optimizer, lr_at, parameter_groups, schedule_steps

WORDS = ("the cat sat on a mat while dogs were running over lazy foxes and birds sang in quick "
         "brown trees near rivers under bright skies").split()

TINY = {
    "decoder": ("gpt-tiny", "bpe", {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
                                    "model.d_ff": 64, "model.vocab_size": 300}),
    "encoder": ("bert-tiny", "wordpiece", {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
                                           "model.d_ff": 64, "model.vocab_size": 300}),
    "encoder-decoder": ("t5-tiny", "unigram", {"model.d_model": 32, "model.n_layers": 1, "model.n_decoder_layers": 1,
                                               "model.n_heads": 2, "model.d_head": 16, "model.d_ff": 64,
                                               "model.vocab_size": 300}),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated corpus, one tokenizer per family and its token shards (built once)."""
    from lmscale.data.shards import prepare
    from lmscale.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("train-data")
    r = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 80))) + ".\n\n"
                              for _ in range(300)))
    out = {"corpus": corpus}
    for family, (_, kind, _) in TINY.items():
        tok = train_tokenizer(kind, [corpus.read_text()], 300)
        tok_dir = root / f"tok-{kind}"
        tok.save(tok_dir)
        prepare(str(corpus), tok, root / f"shards-{kind}", workers=1, progress=False)
        out[family] = (tok_dir, root / f"shards-{kind}")
    return out


def make_cfg(data, run_dir: Path, family: str = "decoder", **overrides):
    preset, _, model = TINY[family]
    tok_dir, shard_dir = data[family]
    ov = {**model, "data.tokenizer": str(tok_dir), "data.shards": str(shard_dir), "out": str(run_dir),
          "train.seq_len": 32, "train.batch_size": 8, "train.max_steps": 6, "train.eval_every": 0,
          "train.eval_batches": 2, "train.log_every": 1, "train.warmup_steps": 2}
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_run_config(preset=preset, overrides=ov)


def read_metrics(run_dir: Path, event: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


# ----------------------------------------------------------------------------- schedules and budgets

@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_schedules_match_transformers(schedule):
    """After warm-up, each schedule equals transformers' reference scheduler with the same floor."""
    from transformers import optimization as hf

    total, warm, ratio = 100, 10, 0.1 if schedule in ("cosine", "wsd") else 0.0
    tc = TrainConfig(lr=1e-3, schedule=schedule, warmup_steps=warm, min_lr_ratio=ratio, decay_fraction=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    if schedule == "cosine":
        sched = hf.get_cosine_with_min_lr_schedule_with_warmup(opt, warm, total, min_lr_rate=ratio)
    elif schedule == "linear":
        sched = hf.get_linear_schedule_with_warmup(opt, warm, total)
    elif schedule == "wsd":
        sched = hf.get_wsd_schedule(opt, warm, num_decay_steps=20, num_training_steps=total,
                                    decay_type="linear", min_lr_ratio=ratio)
    else:
        sched = hf.get_constant_schedule_with_warmup(opt, warm)
    for step in range(total):
        if step >= warm:
            assert lr_at(step, total, tc) == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-15)
        else:  # linear warm-up that reaches the peak on its last step, never a zero-LR step
            assert lr_at(step, total, tc) == pytest.approx(1e-3 * (step + 1) / warm)
        opt.step()
        sched.step()


def test_budgets_set_schedule_length():
    from lmscale.scaling.counting import flops_per_token

    cfg = load_run_config(preset="gpt-tiny")
    fpt = cfg.model.training_flops_per_token(128)
    assert fpt == flops_per_token(cfg.model, 128, "palm")["palm"]
    per_step = 32 * 128
    tc = TrainConfig(max_tokens=10 * per_step + 1)
    assert schedule_steps(tc) == (11, "tokens")
    tc = TrainConfig(max_flops=fpt * per_step * 7.5)
    assert schedule_steps(tc, fpt) == (7, "flops")
    tc = TrainConfig(max_time_s=60.0)
    assert schedule_steps(tc, step_time_s=0.25) == (240, "time")
    tc = TrainConfig(max_steps=50, max_tokens=per_step * 20, max_time_s=1000.0)
    assert schedule_steps(tc, fpt, step_time_s=0.1) == (20, "tokens")  # the smallest budget wins
    with pytest.raises(ConfigError, match="budget"):
        schedule_steps(TrainConfig())


def test_parameter_groups_exclude_biases_norms_embeddings():
    from lmscale.models import build_model

    cfg = load_run_config(preset="gpt-tiny", overrides=TINY["decoder"][2])
    model = build_model(cfg.model)
    decay, plain = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert plain["weight_decay"] == 0.0
    assert not any("emb" in n or "norm" in n or n.endswith("bias") for n in decay_names)
    assert {"tok_emb.weight", "pos_emb.weight"} <= plain_names
    assert sum(p.numel() for p in decay["params"] + plain["params"]) == model.num_parameters()["total"]
    opt = build_optimizer(model, cfg.train)
    assert isinstance(opt, torch.optim.AdamW)


def test_peak_flops_table_and_cached_cpu_probe(tmp_path, monkeypatch):
    from lmscale.training import metrics

    def probe(value):
        return lambda dtype="fp32": value

    monkeypatch.setenv("LMSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_PROBED", {})
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", probe(1.25e10))
    assert metrics.peak_flops("cpu") == 1.25e10
    assert list(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [1.25e10]
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", lambda dtype="fp32": 1 / 0)  # once per process
    assert metrics.peak_flops("cpu") == 1.25e10
    # a later process's probe under contention reads low: the best probe seen is kept
    monkeypatch.setattr(metrics, "_PROBED", {})
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", probe(0.5e10))
    assert metrics.peak_flops("cpu") == 1.25e10
    monkeypatch.setattr(metrics, "_PROBED", {})
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", probe(2e10))
    assert metrics.peak_flops("cpu") == 2e10
    assert list(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [2e10]
    # a bf16 run is measured against a bf16 probe, cached apart from the fp32 one
    asked = []
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", lambda dtype="fp32": asked.append(dtype) or 5e10)
    assert metrics.peak_flops("cpu", "bf16") == 5e10 and asked == ["bf16"]
    assert metrics.peak_flops("cpu", "fp32") == 2e10 and asked == ["bf16"]
    assert sorted(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [2e10, 5e10]
    # vendor dense peaks (bf16 tensor cores): A100 312 TFLOP/s, H100 SXM 989 TFLOP/s
    assert metrics.GPU_PEAK_FLOPS["A100"][0] == 312e12 and metrics.GPU_PEAK_FLOPS["H100"][0] == 989e12


def test_cpu_matmul_probe_runs_in_the_asked_dtype(monkeypatch):
    from lmscale.training import metrics

    seen = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append(a.dtype) or real_mm(a, b))
    assert metrics.measure_cpu_matmul_flops(size=64, seconds=0.0, dtype="bf16") > 0
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    assert metrics.measure_cpu_matmul_flops(size=64, seconds=0.0) > 0
    assert set(seen) == {torch.float32}


# ----------------------------------------------------------------------------- runs

SUMMARY_KEYS = {"status", "steps", "tokens", "flops", "wall_s", "final_val_loss", "best_val_loss",
                "params", "tokens_per_s", "error", "branch"}


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder-decoder"])
def test_each_family_trains(data, tmp_path, family, one_thread):
    import lmscale

    run = tmp_path / "run"
    cfg = make_cfg(data, run, family, train__max_steps=12, train__eval_every=6, train__lr=3e-3)
    summary = loop.pretrain(cfg, progress=False)
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["error"] is None
    assert summary["tokens"] == 12 * 8 * 32
    assert json.loads((run / "summary.json").read_text()) == summary
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 12 and losses[-1] < losses[0]
    evals = read_metrics(run, "eval")
    assert [e["step"] for e in evals] == [6, 12]
    assert all({"val_loss", "val_ppl", "val_bpb"} <= set(e) for e in evals)
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    rec = read_metrics(run)[-1]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "flops", "mfu", "wall_s"} <= set(rec)
    model, tok = lmscale.load(run)
    assert tok.vocab_size <= model.config.vocab_size
    assert summary["params"]["total"] == model.num_parameters()["total"]


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder-decoder"])
def test_bf16_autocast_on_cpu_trains_with_fp32_weights_and_a_bf16_peak(data, tmp_path, family, one_thread,
                                                                      monkeypatch):
    from lmscale.training import metrics

    asked = []
    monkeypatch.setattr(metrics, "_PROBED", {})
    monkeypatch.setattr(metrics, "measure_cpu_matmul_flops", lambda dtype="fp32": asked.append(dtype) or 1e11)
    runs = {}
    for dtype in ("fp32", "bf16"):
        run = tmp_path / dtype
        cfg = make_cfg(data, run, family, train__max_steps=8, train__lr=3e-3, train__dtype=dtype)
        assert loop.pretrain(cfg, progress=False)["status"] == "finished"
        runs[dtype] = read_metrics(run)
    assert read_metrics(tmp_path / "bf16", "start")[0]["dtype"] == "bf16"
    assert asked == ["fp32", "bf16"]  # each run's MFU against the matmul rate of its own dtype
    first32, first16 = runs["fp32"][0]["loss"], runs["bf16"][0]["loss"]
    # the same weights and batch: bf16 products change the losses by rounding only (the very first
    # can round to the same float when the initial logits are near uniform, as the tiny T5's are)
    assert first16 == pytest.approx(first32, rel=2e-2)
    assert any(a["loss"] != b["loss"] for a, b in zip(runs["fp32"], runs["bf16"]))
    assert runs["bf16"][-1]["loss"] < first16
    state = load_file(str(ckpt.latest_checkpoint(tmp_path / "bf16") / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.float32}  # master weights stay fp32


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_fp16_with_gradient_scaler_trains_and_resumes_exactly(data, tmp_path, family, one_thread):
    """fp16 autocast (what `auto` picks on GPUs without bf16), checked on the CPU: the loss is
    scaled, the optimizer sees unscaled gradients, weights stay fp32, and the scaler's state is part
    of the checkpoint, so a resumed run repeats the uninterrupted one's losses."""
    common = dict(train__max_steps=8, train__lr=3e-3, train__dtype="fp16", train__checkpoint_every=4)
    full = tmp_path / "full"
    assert loop.pretrain(make_cfg(data, full, family, **common), progress=False)["status"] == "finished"
    losses = [r["loss"] for r in read_metrics(full)]
    assert read_metrics(full, "start")[0]["dtype"] == "fp16"
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(full))
    assert state["grad_scaler"]["scale"] > 1.0
    weights = load_file(str(ckpt.latest_checkpoint(full) / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    # clipping and the logged norm see unscaled gradients: the first step's norm is fp32's
    fp32 = tmp_path / "fp32"
    loop.pretrain(make_cfg(data, fp32, family, **{**common, "train__dtype": "fp32", "train__max_steps": 1}),
                  progress=False)
    assert read_metrics(full)[0]["grad_norm"] == pytest.approx(read_metrics(fp32)[0]["grad_norm"], rel=0.05)
    # as if killed after step 8 before its checkpoint: the resume restores the scaler of step 4
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    (part / "summary.json").unlink()
    loop.pretrain(make_cfg(data, part, family, **common), resume=True, progress=False)
    assert [r["loss"] for r in read_metrics(part)] == losses
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(part))["grad_scaler"] == state["grad_scaler"]


def test_dtype_auto_picks_bf16_where_the_gpu_has_it_else_fp16(monkeypatch):
    from lmscale.training import engine

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(engine, "cuda_has_bf16", lambda device: True)
    assert engine.precision(cuda, "auto")[1] == "bf16"
    monkeypatch.setattr(engine, "cuda_has_bf16", lambda device: False)
    assert engine.precision(cuda, "auto")[1] == "fp16"
    assert engine.precision(cuda, "fp32")[1] == "fp32" and engine.precision(cuda, "fp16")[1] == "fp16"
    assert engine.precision(cpu, "auto")[1] == "fp32"  # CPU results do not depend on the CPU model


def test_cpu_precision_hints_once_per_process(data, tmp_path, one_thread, monkeypatch, capfd):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(loop, "_HINTS", {})
    hint = "this CPU multiplies bf16 in hardware"
    loop.pretrain(make_cfg(data, tmp_path / "fp32", train__max_steps=2, train__dtype="fp32"), progress=True)
    assert hint not in "".join(capfd.readouterr())  # an explicit choice is not second-guessed
    for name in ("a", "b"):
        loop.pretrain(make_cfg(data, tmp_path / name, train__max_steps=2), progress=True)
    assert "".join(capfd.readouterr()).count(hint) == 1
    monkeypatch.setattr(loop, "_HINTS", {})
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    loop.pretrain(make_cfg(data, tmp_path / "c", train__max_steps=2), progress=True)
    assert hint not in "".join(capfd.readouterr())
    # and bf16 asked for on a CPU that would emulate it
    loop.pretrain(make_cfg(data, tmp_path / "d", train__max_steps=2, train__dtype="bf16"), progress=True)
    assert "this CPU has no bf16 hardware" in "".join(capfd.readouterr())


def test_budget_by_tokens_gives_short_schedule(data, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__max_steps=None, train__max_tokens=5 * 8 * 32 + 1, train__warmup_steps=1,
                   train__min_lr_ratio=0.0, train__schedule="linear")
    summary = loop.pretrain(cfg, progress=False)
    assert summary["steps"] == 6
    recs = read_metrics(run)
    assert recs[-1]["lr"] == pytest.approx(lr_at(5, 6, cfg.train))
    start = read_metrics(run, "start")[0]
    assert start["budget"] == "tokens" and start["total_steps"] == 6


def test_budget_by_wall_clock(data, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__max_steps=None, train__max_time_s=0.5)
    summary = loop.pretrain(cfg, progress=False)
    start = read_metrics(run, "start")[0]
    assert start["budget"] == "time" and start["step_time_estimate_s"] > 0
    assert summary["status"] == "finished" and summary["steps"] >= 1
    assert summary["steps"] <= start["total_steps"]
    assert ckpt.latest_checkpoint(run) is not None


def test_time_cap_stops_without_changing_the_schedule(data, tmp_path, one_thread):
    """A wall-clock cap is a safety net, not a budget: the schedule comes from the step budget alone,
    a run the clock stops says so in its status, and --resume finishes that same schedule."""
    run = tmp_path / "run"
    summary = loop.pretrain(make_cfg(data, run, train__max_steps=40, train__time_cap_s=1e-6), progress=False)
    start = read_metrics(run, "start")[0]
    assert start["budget"] == "steps" and start["total_steps"] == 40 and start["step_time_estimate_s"] is None
    assert summary["status"] == "time_cap" and 1 <= summary["steps"] < 40
    assert summary["final_val_loss"] is not None and ckpt.latest_checkpoint(run) is not None
    resumed = loop.pretrain(make_cfg(data, run, train__max_steps=40), resume=True, progress=False)
    assert resumed["status"] == "finished" and resumed["steps"] == 40


def test_early_stopping_after_evaluations_without_improvement(data, tmp_path, one_thread):
    """A learning rate that only makes the validation loss worse after the first evaluation: the
    run stops after `early_stopping` evaluations without improvement, best weights kept."""
    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__max_steps=60, train__eval_every=2, train__early_stopping=2, train__lr=5.0,
                   train__warmup_steps=0, train__grad_clip=0.0)
    summary = loop.pretrain(cfg, progress=False)
    evals = [r["val_loss"] for r in read_metrics(run, "eval")]
    assert summary["status"] == "early_stopped" and summary["steps"] < 60
    best = evals.index(min(evals))
    assert len(evals) == best + 3 and summary["best_val_loss"] == min(evals)
    assert json.loads((run / "checkpoints" / "best" / "best.json").read_text())["val_loss"] == min(evals)
    with pytest.raises(ConfigError, match="early_stopping"):
        make_cfg(data, run, train__early_stopping=-1)


def test_checkpoint_retention(data, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__max_steps=8, train__checkpoint_every=2, train__keep_last=2,
                   train__eval_every=4)
    loop.pretrain(cfg, progress=False)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best", "step_00000006", "step_00000008"]
    best = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert best["val_loss"] == min(e["val_loss"] for e in read_metrics(run, "eval"))
    (run / "checkpoints" / "step_00000010").mkdir()  # an incomplete directory is never a resume point
    (run / "checkpoints" / "step_00000010" / "config.json").write_text("{}")
    assert ckpt.latest_checkpoint(run).name == "step_00000008"
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(run))
    assert state["step"] == 8 and state["tokens"] == 8 * 8 * 32 and "optimizer" in state and "sampler" in state
    loop.pretrain(make_cfg(data, run, train__max_steps=2), progress=False)  # a fresh start replaces the old run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step_00000002"]
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


class _Payload:
    """Unpickling this runs `os.system`: what a crafted run directory could hide in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_trainer_state_is_json_and_safetensors_and_reads_back_exactly(data, tmp_path, one_thread):
    run = tmp_path / "run"
    loop.pretrain(make_cfg(data, run, train__max_steps=2, model__dropout=0.1), progress=False)
    latest = ckpt.latest_checkpoint(run)
    assert sorted(p.name for p in latest.glob("trainer_state*")) == ["trainer_state.json",
                                                                      "trainer_state.safetensors"]
    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 5)}},
                           "param_groups": [{"betas": (0.9, 0.95), "params": [0], "lr": float("nan")}]},
             "rng_by_rank": [ckpt.rng_state()], "sampler": {"seed": 1, "epoch": 0, "position": 7},
             "window": np.arange(6, dtype=np.int64), "best_val_loss": None, "$odd": float("inf")}
    ckpt.write_trainer_state(tmp_path, state)
    back = ckpt.load_trainer_state(tmp_path)
    assert back["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert math.isnan(back["optimizer"]["param_groups"][0]["lr"]) and back["$odd"] == float("inf")
    assert back["rng_by_rank"][0]["python"] == state["rng_by_rank"][0]["python"]
    assert back["rng_by_rank"][0]["torch"].equal(state["rng_by_rank"][0]["torch"])
    assert back["window"].tolist() == list(range(6)) and back["sampler"] == state["sampler"]


def test_resume_never_unpickles_a_crafted_trainer_state(data, tmp_path, one_thread, capsys):
    """An older-format checkpoint whose trainer_state.pt carries a code-running payload: the resume
    refuses it with a one-line error (exit 2) and the payload never runs."""
    from lmscale.cli.main import main

    run, marker = tmp_path / "run", tmp_path / "pwned"
    loop.pretrain(make_cfg(data, run, train__max_steps=4, train__checkpoint_every=2), progress=False)
    (run / "summary.json").unlink()
    latest = ckpt.latest_checkpoint(run)
    state = ckpt.load_trainer_state(latest)
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (latest / name).unlink()
    torch.save({**state, "payload": _Payload(marker)}, latest / "trainer_state.pt")
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trainer_state.pt" in err and "--trust-checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    torch.save(state, latest / "trainer_state.pt")  # an older checkpoint without foreign types still resumes
    assert main(["pretrain", "--resume", str(run), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4 and not marker.exists()


def test_tensorboard_mirrors_the_metrics_file_through_resume_and_restart(data, tmp_path, one_thread, monkeypatch):
    """With tensorboard installed, every numeric field of metrics.jsonl is also an event scalar;
    a resumed run hides the events past its checkpoint, a fresh start drops the old run's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer import event_file_writer

    # event file names end in a per-process counter compared as text: from 9 to 10, a resumed
    # run's file opened within the same second would sort (and be read) first
    monkeypatch.setattr(event_file_writer._global_uid, "_value", 9)

    def scalars(tag):
        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        return acc, [(e.step, e.value) for e in acc.Scalars(tag)]

    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__max_steps=4, train__eval_every=2, train__checkpoint_every=2)
    loop.pretrain(cfg, progress=False)
    acc, loss = scalars("train/loss")
    train, evals = read_metrics(run), read_metrics(run, "eval")
    assert [s for s, _ in loss] == [r["step"] for r in train] == [1, 2, 3, 4]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [e.value for e in acc.Scalars("eval/val_loss")] == pytest.approx([r["val_loss"] for r in evals], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"} <= set(acc.Tags()["scalars"])

    # as if killed after step 4 before its checkpoint: steps 3-4 are run again, and shown once
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    loop.pretrain(cfg, progress=False, resume=True)
    _, again = scalars("train/loss")
    assert [s for s, _ in again] == [1, 2, 3, 4]
    assert [v for _, v in again] == pytest.approx([r["loss"] for r in read_metrics(run)], rel=1e-6)

    # a fresh start in the same directory replaces the run: no events of the old one remain
    loop.pretrain(make_cfg(data, run, train__max_steps=2), progress=False)
    _, fresh = scalars("train/loss")
    assert [s for s, _ in fresh] == [1, 2]


def _losses_turn_nonfinite(monkeypatch, factor: float, bad_call) -> None:
    """Training losses times `factor` (nan or inf) on the forward calls `bad_call(n)` picks."""
    calls = {"n": 0}
    real = loop.compute_loss

    def patched(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * factor if bad_call(calls["n"]) and model.training else loss

    monkeypatch.setattr(loop, "compute_loss", patched)


def _weights_are_finite(checkpoint) -> bool:
    import lmscale

    model, _ = lmscale.load(checkpoint)
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_step_is_skipped_and_counted(data, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    _losses_turn_nonfinite(monkeypatch, float("nan"), lambda n: n == 3)
    summary = loop.pretrain(make_cfg(data, run), progress=False)
    assert summary["status"] == "finished" and summary["steps"] == 6
    bad = read_metrics(run, "nonfinite")
    assert [b["step"] for b in bad] == [3]
    assert read_metrics(run, "end")[0]["bad_steps"] == 1


def test_pretraining_takes_the_shared_optimizer_step(data, tmp_path, monkeypatch, one_thread):
    """The step fine-tuning and the experiments take too (`training.step.OptimizerStep`)."""
    from lmscale.training.step import OptimizerStep

    seen, real = [], OptimizerStep.update
    monkeypatch.setattr(OptimizerStep, "update", lambda self, step_loss: seen.append(real(self, step_loss))
                        or seen[-1])
    _losses_turn_nonfinite(monkeypatch, float("nan"), lambda n: n == 2)
    loop.pretrain(make_cfg(data, tmp_path / "run", train__max_steps=3), progress=False)
    assert [r.read()[2] for r in seen] == [False, True, False]


def test_nonfinite_streak_stops_and_keeps_checkpoint(data, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    _losses_turn_nonfinite(monkeypatch, float("inf"), lambda n: n >= 4)
    cfg = make_cfg(data, run, train__max_steps=20, train__checkpoint_every=2, train__max_bad_steps=3)
    summary = loop.pretrain(cfg, progress=False)
    assert summary["status"] == "failed" and summary["steps"] == 6
    assert "3 consecutive steps with a non-finite" in summary["error"]
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step_00000004"
    assert _weights_are_finite(latest)


def _read_once_per_interval(monkeypatch):
    """Train as on an accelerator: the host reads losses and skips only at log, eval and
    checkpoint points, not after every step."""
    init = loop.Trainer.__init__

    def deferred(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.read_every_step = False

    monkeypatch.setattr(loop.Trainer, "__init__", deferred)


def test_reads_once_per_interval_give_the_same_run(data, tmp_path, monkeypatch, one_thread):
    cfg = dict(train__max_steps=7, train__log_every=3, train__checkpoint_every=0)
    loop.pretrain(make_cfg(data, tmp_path / "a", **cfg), progress=False)
    _read_once_per_interval(monkeypatch)
    loop.pretrain(make_cfg(data, tmp_path / "b", **cfg), progress=False)
    every, deferred = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in deferred] == [3, 6, 7]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in deferred] == \
        [(r["step"], r["loss"], r["grad_norm"]) for r in every]


def _streak_from_step_4(data, run, monkeypatch, **overrides) -> dict:
    """Steps 4 on are non-finite; reads at every 4th step (log and checkpoint), stop after 3."""
    _losses_turn_nonfinite(monkeypatch, float("inf"), lambda n: n >= 4)
    cfg = make_cfg(data, run, train__max_steps=20, train__checkpoint_every=4, train__log_every=4,
                   train__max_bad_steps=3, **overrides)
    return loop.pretrain(cfg, progress=False)


def test_nonfinite_streak_found_at_a_later_read(data, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    _read_once_per_interval(monkeypatch)
    summary = _streak_from_step_4(data, run, monkeypatch)
    # steps 5-8 are read together at step 8: the streak reached 3 at step 6, and step 8's
    # checkpoint is not written
    assert summary["status"] == "failed" and summary["steps"] == 8
    assert "3 consecutive steps with a non-finite loss or gradient (up to step 6)" in summary["error"]
    assert [b["step"] for b in read_metrics(run, "nonfinite")] == [4, 5, 6, 7, 8]
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step_00000004"
    assert _weights_are_finite(latest)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_run_follows_the_cpu_run(data, tmp_path):
    """fp32 on CUDA (TF32 matmuls) with the device-side skip and once-per-interval reads."""
    cfg = dict(train__max_steps=6, train__log_every=2, train__dtype="fp32")
    loop.pretrain(make_cfg(data, tmp_path / "cpu", train__device="cpu", **cfg), progress=False)
    loop.pretrain(make_cfg(data, tmp_path / "gpu", train__device="cuda", **cfg), progress=False)
    cpu, gpu = read_metrics(tmp_path / "cpu"), read_metrics(tmp_path / "gpu")
    assert [r["step"] for r in gpu] == [2, 4, 6]
    assert [r["loss"] for r in gpu] == pytest.approx([r["loss"] for r in cpu], rel=2e-2)


@needs_cuda
def test_cuda_nonfinite_streak(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    summary = _streak_from_step_4(data, run, monkeypatch, train__device="cuda")
    assert summary["status"] == "failed" and summary["steps"] == 8
    assert "(up to step 6)" in summary["error"]
    assert [b["step"] for b in read_metrics(run, "nonfinite")] == [4, 5, 6, 7, 8]
    assert _weights_are_finite(ckpt.latest_checkpoint(run))


# ----------------------------------------------------------------------------- fail fast

def test_fail_fast_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size"):
        loop.pretrain(make_cfg(data, tmp_path / "a", model__vocab_size=100), progress=False)
    with pytest.raises(ConfigError, match="max_positions"):
        make_cfg(data, tmp_path / "b", train__seq_len=256, model__max_positions=128)
    with pytest.raises(ConfigError, match="shard directory .* does not exist"):
        loop.pretrain(make_cfg(data, tmp_path / "c", data__shards=str(tmp_path / "nope")), progress=False)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to the run directory"):
        loop.pretrain(make_cfg(data, blocker / "run"), progress=False)
    with pytest.raises(ConfigError, match="tokenizer .* does not exist"):
        loop.pretrain(make_cfg(data, tmp_path / "d", data__tokenizer=str(tmp_path / "no-tok")), progress=False)
    with pytest.raises(ConfigError, match="no training budget"):
        loop.pretrain(make_cfg(data, tmp_path / "e", train__max_steps=None), progress=False)
    for name in "acde":
        assert not (tmp_path / name / "checkpoints").exists()


def test_cli_pretrain_json(data, tmp_path, capsys, one_thread):
    from lmscale.cli import main

    tok_dir, shard_dir = data["decoder"]
    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "gpt-tiny", "--tokenizer", str(tok_dir), "--shards", str(shard_dir),
            "--out", str(run), "--max-steps", "3", "--seed", "5", "--checkpoint-every", "2", "--json"]
    argv += [f"--{k}={v}" for k, v in TINY["decoder"][2].items()]
    argv += ["--train.seq_len", "32", "--train.batch_size", "4"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["status"] == "finished"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["seed"] == 5 and saved["model"]["d_model"] == 32
    assert main(["pretrain", "--resume", str(run), "--json"]) == 0  # already finished: nothing to do
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert main(["pretrain", "--preset", "gpt-tiny", "--out", str(tmp_path / "x"), "--max-steps", "1"]) == 2
    assert "corpus" in capsys.readouterr().err


def test_pretrain_from_raw_corpus_trains_tokenizer_and_shards(data, tmp_path, one_thread):
    run = tmp_path / "run"
    cfg = make_cfg(data, run, data__tokenizer=None, data__shards=None, data__corpus=str(data["corpus"]),
                   train__max_steps=2)
    summary = loop.pretrain(cfg, progress=False)
    assert summary["status"] == "finished"
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (run / "shards" / "index.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["tokenizer"] == str(run / "tokenizer")  # a resume reuses it
    assert summary["final_val_loss"] is not None


# ----------------------------------------------------------------------------- processes

def _write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def _torchrun_pretrain(cfg, config_path: Path) -> None:
    """`lmscale pretrain` under torchrun with 2 CPU processes (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmscale", "pretrain", "--config", str(_write_config(cfg, config_path)), "--no-progress"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(data, tmp_path, one_thread):
    """Kill -9 a real training process mid-run; the resumed run's per-step losses equal an
    uninterrupted run's exactly (dropout on, so RNG state restore matters too)."""
    n_steps = 60
    common = dict(train__max_steps=n_steps, train__checkpoint_every=4, train__eval_every=20, model__dropout=0.1)
    ref = loop.pretrain(make_cfg(data, tmp_path / "ref", **common), progress=False)
    run = tmp_path / "run"
    cfg_file = _write_config(make_cfg(data, run, **common), tmp_path / "run.yaml")
    cmd = [sys.executable, "-m", "lmscale", "pretrain", "--config", str(cfg_file), "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
                     if line.endswith("}") and '"train"' in line]
            if steps and max(steps) >= 8:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = max(steps)
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert killed_at is not None and killed_at < n_steps
    assert not (run / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lmscale", "pretrain", "--resume", str(run), "--no-progress"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "ref")}
    got = [(r["step"], r["loss"]) for r in read_metrics(run)]
    assert [s for s, _ in got] == list(range(1, n_steps + 1))
    assert dict(got) == want
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == n_steps and summary["final_val_loss"] == ref["final_val_loss"]


@pytest.mark.slow
def test_fsdp_two_cpu_processes_train_the_masked_lm_and_save_a_loadable_model(data, tmp_path, one_thread):
    """FSDP2 (`fully_shard` per block, gloo): the encoder's last block runs at the masked rows
    only, through the block's own call so FSDP's all-gather hooks run; training and the
    validation split over the two processes give one process's losses; the unsharded checkpoint
    loads in one process."""
    import lmscale

    run = tmp_path / "fsdp"
    settings = dict(model__n_layers=2, train__max_steps=4, train__eval_every=2)
    loop.pretrain(make_cfg(data, tmp_path / "single", "encoder", **settings), progress=False)
    _torchrun_pretrain(make_cfg(data, run, "encoder", train__parallel="fsdp", **settings), tmp_path / "fsdp.yaml")
    for event, key in (("train", "loss"), ("eval", "val_loss")):
        single = [r[key] for r in read_metrics(tmp_path / "single", event)]
        sharded = [r[key] for r in read_metrics(run, event)]
        assert len(sharded) == len(single) == (4 if event == "train" else 2)
        assert sharded == pytest.approx(single, rel=1e-5)
    model, _ = lmscale.load(run)
    assert model.config.n_layers == 2


NSP = {"objective.nsp": True, "model.nsp_head": True, "model.pooler": True}
FAMILY_RUNS = {  # the masked LM with next-sentence pairs: its "random" segments come from other rows
    "decoder": {}, "encoder": NSP, "encoder-decoder": {},
}


def _family_cfg(data, run: Path, family: str, **overrides):
    settings = {"train__max_steps": 6, "train__batch_size": 8, "train__eval_every": 3, "train__lr": 3e-3,
                **{k.replace(".", "__"): v for k, v in FAMILY_RUNS[family].items()}, **overrides}
    return make_cfg(data, run, family, **settings)


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_micro_batch_size_does_not_change_the_run(data, tmp_path, family, one_thread):
    """Masks, spans and sentence pairs are drawn per example, keyed by its place in the global
    batch: 1 micro-batch of 8 and 4 accumulated micro-batches of 2 train on the same inputs and
    give the same losses, training and validation."""
    one = _family_cfg(data, tmp_path / "one", family, train__micro_batch_size=8)
    four = _family_cfg(data, tmp_path / "four", family, train__micro_batch_size=2)
    loop.pretrain(one, progress=False)
    loop.pretrain(four, progress=False)
    for event, key in (("train", "loss"), ("eval", "val_loss")):
        a = [r[key] for r in read_metrics(tmp_path / "one", event)]
        b = [r[key] for r in read_metrics(tmp_path / "four", event)]
        assert len(a) == len(b) > 0
        assert b == pytest.approx(a, rel=1e-5)
    assert read_metrics(tmp_path / "four", "start")[0]["accum_steps"] == 4


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_compiled_model_trains_like_the_eager_one_without_graph_warnings(data, tmp_path, family, monkeypatch,
                                                                          one_thread):
    """`train.compile=true` traces every family with dynamo (its "eager" backend here, so the
    test needs no C++ toolchain and no minutes of code generation) and trains to the same losses;
    the host reads inside the models (all-ones masks, the masked rows' count, the fused loss)
    split the graph without a warning."""
    import functools
    import logging

    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    loop.pretrain(_family_cfg(data, tmp_path / "eager", family, train__max_steps=3), progress=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("torch", "torch._dynamo", "torch._inductor")]  # no propagation
    for logger in loggers:
        logger.addHandler(handler)
    try:
        loop.pretrain(_family_cfg(data, tmp_path / "compiled", family, train__max_steps=3, train__compile=True),
                      progress=False)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [r.getMessage()[:200] for r in records] == []
    a = [r["loss"] for r in read_metrics(tmp_path / "eager")]
    b = [r["loss"] for r in read_metrics(tmp_path / "compiled")]
    assert len(a) == 3 and b == pytest.approx(a, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_ddp_two_processes_match_single_process(data, tmp_path, family, one_thread):
    """torchrun, 2 gloo processes x 2 micro-batches of 2 == 1 process x 2 micro-batches of 4:
    same inputs (masks, spans and sentence pairs included), same losses; validation is split over
    the processes and gives the same loss."""
    loop.pretrain(_family_cfg(data, tmp_path / "single", family, train__micro_batch_size=4), progress=False)
    run = tmp_path / "ddp"
    _torchrun_pretrain(_family_cfg(data, run, family, train__micro_batch_size=2), tmp_path / "ddp.yaml")
    # validation batches of 4 and of 2 pad the encoder-decoder's inputs to different lengths, and its
    # float32 loss moves with the padded length by about 1e-5 relative (3.5e-5 measured); training
    # batches are padded alike in both runs and agree to 1e-5
    tolerance = {"train": 1e-5, "eval": 1e-4 if family == "encoder-decoder" else 1e-5}
    for event, key in (("train", "loss"), ("eval", "val_loss")):
        single = [r[key] for r in read_metrics(tmp_path / "single", event)]
        ddp = [r[key] for r in read_metrics(run, event)]
        assert len(single) == len(ddp) > 0
        for a, b in zip(single, ddp):
            assert abs(a - b) <= tolerance[event] * abs(a), (event, single, ddp)
    assert read_metrics(run, "start")[0]["world_size"] == 2
    assert read_metrics(run, "start")[0]["accum_steps"] == 2


@pytest.mark.slow
def test_ddp_wall_clock_budget_plans_one_schedule(data, tmp_path, one_thread):
    """A wall-clock budget under torchrun: every process times its steps, the slowest sets the
    schedule (one MAX all-reduce), and the run finishes within that schedule."""
    run = tmp_path / "ddp"
    cfg = make_cfg(data, run, train__max_steps=None, train__max_time_s=2.0, train__micro_batch_size=2)
    _torchrun_pretrain(cfg, tmp_path / "ddp.yaml")
    start = read_metrics(run, "start")[0]
    assert start["budget"] == "time" and start["step_time_estimate_s"] > 0 and start["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and 1 <= summary["steps"] <= start["total_steps"]
