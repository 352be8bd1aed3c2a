"""Warm-up-stable-decay schedules: cooldown shapes, exact resume through every phase, and cooldown
branches started from a parent's stable-phase checkpoint."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from lmscale.config import ConfigError, TrainConfig
from lmscale.training import loop
from lmscale.training.optim import in_stable_phase, lr_at
from test_training import data, make_cfg, one_thread, read_metrics  # noqa: F401  (fixtures)

TPS = 8 * 32  # make_cfg's batch_size x seq_len


@pytest.mark.parametrize("shape,frac", [("linear", lambda p: p),
                                        ("cosine", lambda p: 0.5 * (1 - math.cos(math.pi * p))),
                                        ("1-sqrt", math.sqrt)])
def test_cooldown_shapes_go_from_the_stable_lr_toward_the_floor(shape, frac):
    tc = TrainConfig(lr=1.0, min_lr_ratio=0.1, schedule="wsd", warmup_steps=10, decay_fraction=0.2,
                     decay_shape=shape)
    assert [lr_at(s, 100, tc) for s in (9, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    for step in (85, 90, 99):
        assert lr_at(step, 100, tc) == pytest.approx(1.0 - 0.9 * frac((step - 80) / 20), abs=1e-12)
    assert lr_at(90, 100, tc) < 1.0 and all(lr_at(s, 100, tc) > lr_at(s + 1, 100, tc) for s in range(80, 99))


def test_default_decay_shape_is_the_linear_cooldown():
    old = TrainConfig(lr=2.0, min_lr_ratio=0.0, schedule="wsd", warmup_steps=5, decay_fraction=0.3)
    assert old.decay_shape == "linear"
    assert [lr_at(s, 50, old) for s in range(35, 50)] == [2.0 - 2.0 * (s - 35) / 15 for s in range(35, 50)]
    with pytest.raises(ConfigError, match="decay_shape"):
        TrainConfig(decay_shape="sqrt")


def test_stable_phase_is_after_warmup_and_before_the_first_decayed_step():
    tc = TrainConfig(lr=1.0, schedule="wsd", warmup_steps=4, decay_fraction=0.25)
    # the decay's first step (15) still runs at the stable rate (progress 0): 16 steps at most
    assert [s for s in range(0, 21) if in_stable_phase(s, 20, tc)] == list(range(4, 17))
    assert not in_stable_phase(8, 20, TrainConfig(schedule="cosine", warmup_steps=4))
    stable_only = TrainConfig(lr=1.0, schedule="wsd", warmup_steps=4, decay_fraction=0.0)
    assert in_stable_phase(20, 20, stable_only)  # no decay at all: its last checkpoint is a branch point


def test_branch_points_must_be_whole_steps():
    assert TrainConfig(seq_len=32, batch_size=8, branch_points=[512, 256, 512]).branch_points == [256, 512]
    with pytest.raises(ConfigError, match="multiple"):
        TrainConfig(seq_len=32, batch_size=8, branch_points=[300])


@pytest.mark.slow
def test_wsd_resume_is_exact_through_warmup_stable_and_decay(data, tmp_path, one_thread, monkeypatch):  # noqa: F811
    """Interrupted in the warm-up, the stable phase and the cooldown; each resume continues from the
    checkpoint before the interruption and the per-step losses equal an uninterrupted run's."""
    common = dict(train__max_steps=20, train__warmup_steps=4, train__schedule="wsd", train__decay_fraction=0.3,
                  train__decay_shape="1-sqrt", train__checkpoint_every=3, train__keep_last=10, model__dropout=0.1)
    ref = loop.pretrain(make_cfg(data, tmp_path / "ref", **common), progress=False)
    run = tmp_path / "run"
    cfg = make_cfg(data, run, **common)
    real_step = loop.Trainer.train_step
    stops = [5, 11, 17]  # warm-up ends at 4 (checkpoint 3), decay starts at 14 (checkpoint 15)

    def step(self):
        if stops and self.built.state.step == stops[0]:
            stops.pop(0)
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        loop.pretrain(cfg, progress=False)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            loop.pretrain(cfg, resume=True, progress=False)
    summary = loop.pretrain(cfg, resume=True, progress=False)
    want = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(tmp_path / "ref")]
    assert [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run)] == want
    assert summary["final_val_loss"] == ref["final_val_loss"] and not stops


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_branch_is_a_cooldown_from_the_parents_stable_checkpoint(data, tmp_path, one_thread, capsys):  # noqa: F811
    """The branch trains f*D more tokens from the parent's checkpoint at D: its losses are the
    parent's up to D, then those of one WSD run decaying from D; the parent is untouched."""
    from lmscale.cli import main

    parent = tmp_path / "parent"
    loop.pretrain(make_cfg(data, parent, train__max_steps=12, train__schedule="wsd", train__decay_fraction=0.0,
                           train__branch_points=[6 * TPS], train__eval_every=0, train__keep_last=1), progress=False)
    assert (parent / "checkpoints" / "step_00000006").is_dir()  # a branch point survives keep_last=1
    before = _hashes(parent)
    child = tmp_path / "child"
    assert main(["pretrain", "--branch-from", str(parent), "--at-tokens", str(6 * TPS), "--decay-fraction", "0.5",
                 "--out", str(child), "--train.decay_shape", "cosine", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert _hashes(parent) == before
    lineage = {"parent": str(parent), "at_tokens": 6 * TPS, "decay_fraction": 0.5}
    saved = yaml.safe_load((child / "config.yaml").read_text())["train"]
    assert saved["branch"] == lineage and summary["branch"] == lineage
    assert summary["steps"] == 9 and summary["tokens"] == 9 * TPS
    fpt = make_cfg(data, child).model.training_flops_per_token(32)
    assert summary["flops"] == pytest.approx(9 * TPS * fpt)  # the parent's share up to D plus the cooldown

    # the same schedule trained in one run from scratch: warm-up, stable to step 6, cosine decay over 3
    single = tmp_path / "single"
    loop.pretrain(make_cfg(data, single, train__max_steps=9, train__schedule="wsd", train__decay_fraction=3 / 9,
                           train__decay_shape="cosine"), progress=False)
    got = [(r["step"], r["loss"], r["lr"]) for r in read_metrics(child)]
    assert got == [(r["step"], r["loss"], r["lr"]) for r in read_metrics(single)]
    assert [x[1] for x in got[:6]] == [r["loss"] for r in read_metrics(parent)][:6]
    assert got[-1][2] < got[5][2]  # the cooldown lowered the learning rate

    # refused in one line when the parent has no checkpoint at D; the branch itself resumes like any run
    assert main(["pretrain", "--branch-from", str(parent), "--at-tokens", str(4 * TPS), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert "no checkpoint at 1,024 tokens (checkpoints at: 1,536, 3,072 tokens)" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
    assert main(["pretrain", "--resume", str(child), "--no-progress", "--json"]) == 0


@pytest.mark.slow
def test_branch_refuses_a_point_outside_the_stable_phase(data, tmp_path, one_thread):  # noqa: F811
    parent = tmp_path / "decayed"
    loop.pretrain(make_cfg(data, parent, train__max_steps=6, train__schedule="wsd", train__decay_fraction=0.5,
                           train__checkpoint_every=1, train__keep_last=10), progress=False)
    for step in (1, 5):  # in the warm-up (2 steps); past the first decayed step (3)
        cfg = make_cfg(data, tmp_path / f"b{step}", train__branch={"parent": str(parent), "at_tokens": step * TPS,
                                                                   "decay_fraction": 0.5})
        with pytest.raises(ConfigError, match="not in the stable phase") as err:
            loop.pretrain(cfg, progress=False)
        assert "\n" not in str(err.value)
    cosine = tmp_path / "cosine"
    loop.pretrain(make_cfg(data, cosine, train__max_steps=4, train__checkpoint_every=2), progress=False)
    with pytest.raises(ConfigError, match="stable phase of its cosine schedule"):
        loop.pretrain(make_cfg(data, tmp_path / "bc", train__branch={"parent": str(cosine), "at_tokens": 2 * TPS,
                                                                      "decay_fraction": 0.5}), progress=False)
