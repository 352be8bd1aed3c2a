"""Synthetic in-context tasks: episodes are well formed, the driver trains and measures, and the CLI works."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmscale.cli import main
from lmscale.experiments.icl_tasks import (
    ARROW,
    N_SPECIAL,
    PAD,
    ICLConfig,
    copy_episode,
    recall_episode,
    run_icl,
    transition,
)


def test_recall_episode_answers_come_from_its_own_fresh_mapping():
    cfg = ICLConfig()
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(20):
        toks, queries = recall_episode(cfg, rng)
        assert len(toks) == cfg.seq_len and toks[0] == PAD
        pairs = {int(toks[i]): int(toks[i + 2]) for i in range(1, 1 + 4 * cfg.n_pairs, 4)}
        assert all(toks[i + 1] == ARROW for i in range(1, 1 + 4 * cfg.n_pairs, 4))
        assert len(pairs) == cfg.n_pairs
        for pos, ans in queries:
            assert toks[pos] == ARROW and toks[pos + 1] == ans and pairs[int(toks[pos - 1])] == ans
        maps.append(pairs)
    assert len({tuple(sorted(m.items())) for m in maps}) == 20  # a new mapping every sequence


def test_copy_episode_targets_are_read_off_the_first_copy():
    cfg = ICLConfig()
    toks, targets = copy_episode(cfg, np.random.default_rng(1))
    L = cfg.copy_len
    assert (toks[1:1 + L] == toks[1 + L:1 + 2 * L]).all()
    for pos, ans in targets:
        assert toks[pos + 1] == ans == toks[pos + 1 - L]
    assert toks[1:1 + 2 * L].min() >= N_SPECIAL


def test_transition_finds_the_jump():
    acc = [0.03, 0.03, 0.04, 0.05, 0.85, 0.9, 0.92]
    evals = [{"tokens": 1000 * (i + 1), "recall": {"accuracy": a}} for i, a in enumerate(acc)]
    t = transition(evals)
    assert t["risen"] and t["accuracy_after"] == 0.92 and t["jump_between_tokens"] == [4000, 5000]
    assert t["jump_fraction"] == pytest.approx(0.80 / 0.89)


def test_icl_driver_small_setting(tmp_path):
    cfg = ICLConfig.small()
    cfg.widths, cfg.steps = [16], 30
    res = run_icl(cfg)
    (m,) = res["models"]
    assert [e["step"] for e in m["evals"]] == [20, 30]
    for e in m["evals"]:
        assert 0 <= e["recall"]["accuracy"] <= 1 and e["recall"]["answer_logprob"] < 0
        assert e["tokens"] == e["step"] * cfg.batch_size * cfg.seq_len
    assert m["params_non_embedding"] > 0 and set(m["transition"]) == {"recall", "induction"}
    from lmscale.scaling.plots import plot_icl, save

    assert save(plot_icl(res), tmp_path / "icl.png").read_bytes()[:4] == b"\x89PNG"


def test_emergence_cli_on_pythia(shared_data, capsys, tmp_path):
    csv = shared_data / "pythia_zero_shot.csv"
    if not csv.exists():
        pytest.skip("pythia_zero_shot.csv not present")
    assert main(["emergence", "extrapolate", str(csv), "--task", "lambada_openai", "--target", "0.95",
                 "--chance", "0", "--bootstrap", "10"]) == 3
    assert "ceiling" in capsys.readouterr().out
    assert main(["emergence", "fit", str(csv), "--task", "lambada_openai", "--chance", "0", "--json",
                 "--plot", str(tmp_path / "f.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["break_detected"] and (tmp_path / "f.png").exists()


def test_training_takes_the_shared_optimizer_step(monkeypatch):
    """Every step goes through `OptimizerStep`: a non-finite one is skipped, and training goes on."""
    import math

    from lmscale.experiments import icl_tasks
    from lmscale.training.step import OptimizerStep

    seen, real_update, real_loss, calls = [], OptimizerStep.update, icl_tasks._loss, {"n": 0}

    def loss(*args):
        calls["n"] += 1
        return real_loss(*args) * (float("nan") if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(OptimizerStep, "update", lambda self, step_loss: seen.append(real_update(self, step_loss))
                        or seen[-1])
    monkeypatch.setattr(icl_tasks, "_loss", loss)
    cfg = ICLConfig.small()
    cfg.steps, cfg.eval_every = 6, 3
    out = icl_tasks.train_one(cfg, 16)
    assert [r.read()[2] for r in seen] == [False, True, False, False, False, False]
    assert all(math.isfinite(e[task]["answer_logprob"]) for e in out["evals"] for task in ("recall", "induction"))
