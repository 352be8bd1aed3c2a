"""Sweeps in WSD mode: one stable run per size, every (N, D) point a cooldown branch of it."""
from __future__ import annotations

import sqlite3

import pytest

from lmscale.config import ConfigError
from lmscale.experiments.sweep import SweepConfig, plan, run_sweep
from lmscale.scaling.registry import Registry
from lmscale.scaling.runs import read_runs
from test_sweep_e2e import _corpus


def _sweep(**kw) -> SweepConfig:
    data = dict(name="w", design="grid", preset="gpt-tiny", schedule="wsd", decay_fraction=0.25,
                base={"train": {"batch_size": 2, "seq_len": 16}, "model": {"vocab_size": 256}},
                sizes=[2e4, 8e4], tokens=[256, 512, 1024], seeds=[0], evals_per_run=2)
    data.update(kw)
    return SweepConfig.from_dict(data)


def test_wsd_plan_is_one_stable_run_per_size_and_a_branch_per_point(tmp_path):
    specs = plan(_sweep(), tmp_path)
    stable = [s for s in specs if s.role == "stable"]
    branches = [s for s in specs if s.role == "branch"]
    assert len(stable) == 2 and len(branches) == 6 and specs[:2] == stable  # stable runs are claimed first
    tps = 32
    for s in stable:
        t = s.config.train
        assert t.schedule == "wsd" and t.decay_fraction == 0.0 and t.max_steps == 24  # 32 steps less the cooldown
        assert t.branch_points == [6 * tps, 12 * tps, 24 * tps]
    for b in branches:
        t, parent = b.config.train, next(s for s in stable if s.run_id == b.parent)
        assert t.max_steps * tps == t.max_tokens == b.tokens  # the branch trains exactly the point's D
        cool = t.max_steps - t.branch["at_tokens"] // tps
        assert cool == round(0.25 * t.max_steps) and t.branch["at_tokens"] in parent.config.train.branch_points
        assert t.branch["parent"] == str((tmp_path / "runs" / parent.name).absolute())
        assert b.lineage == {**t.branch, "parent": parent.run_id}
        assert b.flops == pytest.approx(6 * b.params["params_non_embedding"] * b.tokens)
        assert t.warmup_steps == parent.config.train.warmup_steps
    # cost per size: the stable run plus the cooldowns, against a full run per point
    spent = sum(s.tokens for s in stable) + sum(b.tokens - b.config.train.branch["at_tokens"] for b in branches)
    assert spent / sum(b.tokens for b in branches) == pytest.approx((24 + 2 + 4 + 8) / 56)
    # ids do not depend on where the sweep lives, and the cosine plan is what it always was
    assert [s.run_id for s in plan(_sweep(), tmp_path / "elsewhere")] == [s.run_id for s in specs]
    cosine = plan(_sweep(schedule=None), tmp_path)
    assert [s.run_id for s in plan(_sweep(schedule="cosine"), tmp_path)] == [s.run_id for s in cosine]
    assert {s.role for s in cosine} == {None} and len(cosine) == 6


def test_wsd_sweep_config_errors_say_what_to_change():
    with pytest.raises(ConfigError, match="schedule"):
        _sweep(schedule="step")
    with pytest.raises(ConfigError, match="decay_fraction"):
        _sweep(decay_fraction=1.0)
    with pytest.raises(ConfigError, match="too short"):
        plan(_sweep(tokens=[32], decay_fraction=0.9), "/tmp/x")


def test_branches_wait_for_their_stable_run(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    from lmscale.scaling.registry import RunRecord

    reg.add_run(RunRecord(run_id="p", name="p", sweep="s", idx=0, role="stable"))
    reg.add_run(RunRecord(run_id="b", name="b", sweep="s", idx=1, role="branch", parent="p",
                          lineage={"parent": "p", "at_tokens": 64, "decay_fraction": 0.25}))
    assert reg.claim("b", "w") is None and reg.waiting("s") == ["b"]
    rec, _ = reg.claim_next("w1", sweep="s")
    assert rec.run_id == "p" and reg.claim_next("w2", sweep="s") is None  # b waits for p
    assert reg.waiting("s") == ["b"] and reg.waiting("s", tried={"b"}) == []
    reg.finish("p", final_val_loss=3.0)
    rec, _ = reg.claim_next("w2", sweep="s")
    assert rec.run_id == "b" and rec.lineage["at_tokens"] == 64 and rec.role == "branch"
    reg.fail("b", "x")
    assert reg.waiting("s") == []


def test_a_v1_registry_gains_the_new_columns_as_unknown(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, sweep TEXT NOT NULL DEFAULT '', idx INTEGER NOT NULL DEFAULT 0,
            name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', config TEXT NOT NULL DEFAULT '{}',
            family TEXT, params_total INTEGER, params_embedding INTEGER, params_non_embedding INTEGER,
            tokens REAL, flops REAL, seed INTEGER, final_val_loss REAL, best_val_loss REAL,
            loss_curve TEXT NOT NULL DEFAULT '[]', train_curve TEXT NOT NULL DEFAULT '[]', wall_s REAL,
            steps INTEGER, tokens_trained REAL, flops_trained REAL, run_dir TEXT, error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, host TEXT, pid INTEGER, created_at REAL,
            started_at REAL, heartbeat_at REAL, finished_at REAL, updated_at REAL);
        INSERT INTO runs (run_id, name, status, params_non_embedding, tokens, flops, final_val_loss)
            VALUES ('old', 'old', 'finished', 1000, 2000, 1.2e7, 3.5);
    """)
    con.commit()
    con.close()
    reg = Registry(path)
    rec = reg.get("old")
    assert rec.final_val_loss == 3.5 and rec.unique_tokens is None and rec.epochs is None and rec.role is None
    assert reg.get_meta("schema_version") == "2"
    reg.update("old", unique_tokens=500.0, epochs=4.0)
    assert Registry(path).get("old").epochs == 4.0


@pytest.mark.slow
def test_real_wsd_sweep_trains_stable_runs_then_branches(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    sw = SweepConfig.from_dict({
        "name": "wsd", "design": "grid", "preset": "gpt-tiny", "schedule": "wsd", "decay_fraction": 0.25,
        "base": {"model": {"vocab_size": 320, "max_positions": 32}, "tokenizer": {"vocab_size": 320},
                 "data": {"corpus": str(corpus), "valid_fraction": 0.1},
                 "train": {"seq_len": 32, "batch_size": 4, "eval_batches": 2, "log_every": 1, "device": "cpu",
                           "decay_shape": "1-sqrt"}},
        "sizes": [2e4, 6e4], "tokens": [1024, 2048], "evals_per_run": 2,
    })
    out = tmp_path / "sweep"
    res = run_sweep(sw, out, workers=2, threads_per_worker=1, heartbeat_s=2)
    assert res.counts["finished"] == 6, [o.error for o in res.outcomes]
    reg = Registry(res.registry)
    runs = reg.runs("wsd")
    stable = {r.run_id: r for r in runs if r.role == "stable"}
    branches = [r for r in runs if r.role == "branch"]
    assert len(stable) == 2 and len(branches) == 4
    for b in branches:
        parent = stable[b.parent]
        assert b.started_at >= parent.finished_at  # a branch starts from its parent's finished stable run
        assert b.tokens_trained == b.tokens and b.steps == b.tokens // 128
        fpt = b.flops_trained / b.tokens_trained
        assert parent.flops_trained == pytest.approx(fpt * parent.tokens_trained)
        assert b.lineage["parent"] == parent.run_id and b.config["train"]["decay_shape"] == "1-sqrt"
        assert b.loss_curve[-1][0] == b.steps and b.final_val_loss is not None
        assert b.unique_tokens > 0 and b.epochs == pytest.approx(b.tokens_trained / b.unique_tokens)
    t = read_runs(res.registry)
    assert sorted(t.names) == sorted(b.name for b in branches)  # stable runs are not points
    again = run_sweep(sw, out, workers=1)
    assert {o.status for o in again.outcomes} == {"skipped"}


def _muennighoff_registry(path, n=120):
    """Runs drawn from Muennighoff et al.'s law (their fitted constants over Hoffmann's base), with
    the unique tokens and epochs a sweep records."""
    import numpy as np

    from lmscale.scaling.laws import DataConstrainedLaw, _chinchilla_n_opt_for_tokens
    from lmscale.scaling.registry import RunRecord

    base = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    true = dict(base, R_D_star=15.4, R_N_star=5.3)
    rng = np.random.default_rng(3)
    U = 10 ** rng.uniform(8.5, 10.5, n)
    D = U * 10 ** rng.uniform(-0.5, 1.7, n)
    N = 10 ** rng.uniform(7, 10, n)
    single = D <= U
    N[single] = np.minimum(N[single], _chinchilla_n_opt_for_tokens(base, D[single]))
    L = DataConstrainedLaw()._predict(true, N, D, U) * np.exp(rng.normal(0, 1e-4, n))
    reg = Registry(path)
    for i in range(n):
        reg.add_run(RunRecord(run_id=f"r{i}", name=f"r{i}", sweep="dc", idx=i, status="finished",
                              params_non_embedding=int(N[i]), params_total=int(N[i]), tokens=float(D[i]),
                              flops=6 * N[i] * D[i], final_val_loss=float(L[i]), tokens_trained=float(D[i]),
                              unique_tokens=float(U[i]), epochs=float(D[i] / U[i])))
    return true


def test_recorded_unique_tokens_feed_the_data_constrained_law(tmp_path, capsys):
    """Registry -> export -> `lmscale fit` (law auto) picks the data-constrained law because runs
    repeated their data, says so, and recovers Muennighoff's constants; `sweep fit` picks it too,
    and a Chinchilla fit asked of the same runs warns in one line that they repeat their data."""
    import json

    from lmscale.cli import main

    reg_path = tmp_path / "registry.sqlite"
    true = _muennighoff_registry(reg_path)
    t = read_runs(reg_path)
    assert "U" in t.values and t.columns["U"] == "unique_tokens"
    assert main(["sweep", "export", str(reg_path), "-o", str(tmp_path / "runs.csv")]) == 0
    capsys.readouterr()
    assert main(["fit", str(tmp_path / "runs.csv"), "--json", "--bootstrap", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["law"] == "data-constrained" and "past 4 epochs" in res["law_choice"]
    assert set(res["ci95"]) >= set(true)  # every fitted number has its interval, the base law's too
    for k in ("alpha", "beta", "R_D_star"):
        lo, hi = res["ci95"][k]
        assert lo <= true[k] * 1.02 and hi >= true[k] * 0.98, k
    for k in ("R_D_star", "R_N_star", "alpha", "beta"):
        assert res["params"][k] == pytest.approx(true[k], rel=0.02), k
    assert main(["sweep", "fit", str(reg_path), "--holdout", "none"]) == 0
    out = capsys.readouterr().out
    assert "law data-constrained" in out and "chosen:" in out and "past 4 epochs" in out
    assert main(["sweep", "fit", str(reg_path), "--holdout", "none", "--law", "chinchilla"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warn = [line for line in err if "epochs" in line]
    assert len(warn) == 1 and "chinchilla law" in warn[0] and "warning" in warn[0]


def test_auto_law_keeps_chinchilla_for_single_epoch_runs_and_says_why(tmp_path, capsys):
    """Runs within 4 epochs of their data, or without unique-token counts, get the chinchilla law,
    with the reason in the fit's output; too few single-epoch runs for the base law is a warning."""
    import numpy as np

    from lmscale.scaling.fitting import choose_law

    D = np.array([1e9, 2e9, 4e9, 8e9, 1.6e10, 3.2e10])
    assert choose_law("auto", D, D * 2)[0] == "chinchilla" and "at most 0.50" in choose_law("auto", D, D * 2)[1]
    assert choose_law("auto", D, None) == ("chinchilla", "no unique-token count for every run, so every token "
                                                         "is taken as new")
    law, why = choose_law("auto", D, D / 10)  # every run at 10 epochs: no single-epoch run for the base law
    assert law == "chinchilla" and why.startswith("warning:") and "needs more than 5 single-epoch" in why
    assert choose_law("data-constrained", D, D / 10) == ("data-constrained", "")
    assert choose_law("chinchilla", D, D * 2) == ("chinchilla", "")
