"""A real sweep: `lmscale pretrain` subprocesses on a small corpus, recorded in the registry."""
from __future__ import annotations

import random

import pytest

from lmscale.experiments.launch import execute_run, pretrain_command
from lmscale.experiments.sweep import SweepConfig, run_sweep
from lmscale.scaling.registry import Registry


def _corpus(path):
    rng = random.Random(0)
    words = "the a model learns to predict next token from context and scales with data compute parameters".split()
    paras = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(300)]
    path.write_text("\n\n".join(paras) + "\n")
    return path


@pytest.mark.slow
def test_real_sweep_trains_records_skips_and_records_failures(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    sw = SweepConfig.from_dict({
        "name": "e2e", "design": "grid", "preset": "gpt-tiny",
        "base": {"model": {"vocab_size": 320, "max_positions": 32}, "tokenizer": {"vocab_size": 320},
                 "data": {"corpus": str(corpus), "valid_fraction": 0.1},
                 "train": {"seq_len": 32, "batch_size": 4, "eval_batches": 2, "log_every": 1, "device": "cpu"}},
        "sizes": [2e4, 6e4], "tokens": [512], "evals_per_run": 2,
    })
    out = tmp_path / "sweep"
    res = run_sweep(sw, out, workers=1, threads_per_worker=1, heartbeat_s=2)
    assert res.counts["finished"] == 2, [o.error for o in res.outcomes]
    reg = Registry(res.registry)
    for r in reg.runs("e2e"):
        assert r.final_val_loss is not None and r.best_val_loss <= r.final_val_loss + 1e-9
        assert r.tokens_trained == r.tokens == 512 and r.steps == 4
        assert r.loss_curve and r.loss_curve[-1][0] == 4
        # the engine's own count agrees with the plan's analytic count
        m = r.config["model"]
        assert r.params_non_embedding == pytest.approx(m["d_model"] ** 2 * 12 * m["n_layers"], rel=0.1)
        assert r.config["data"]["tokenizer"] == str(out / "data" / "tokenizer")
    again = run_sweep(sw, out, workers=1)
    assert {o.status for o in again.outcomes} == {"skipped"}
    # a run the engine rejects is recorded with the engine's message and does not raise
    rec = reg.runs("e2e")[0]
    rec.config["data"]["tokenizer"] = str(tmp_path / "no-such-tokenizer")
    rec.run_id, rec.name, rec.run_dir = "broken", "broken", str(out / "runs" / "broken")
    rec.config["out"] = rec.run_dir
    rec.status = "pending"
    reg.add_run(rec)
    assert reg.claim("broken", worker="t") == "pending"
    o = execute_run(reg, reg.get("broken"), out, "t",
                    lambda c, r, resume: pretrain_command(c, r, resume), 1, 2)
    assert o.status == "failed"
    assert "no-such-tokenizer" in reg.get("broken").error
