"""Two-step downstream prediction (Bhagia et al. 2024): recovers a known two-step model, runs on Pythia."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmscale.errors import DataError
from lmscale.scaling.emergence import (
    LadderData,
    SigmoidFit,
    TaskLossLaw,
    ladder_predict,
    nominal_size,
    read_pythia_ladder,
)

TRUE_LAW = {"E": 1.2, "A": 400.0, "alpha": 0.34, "B": 2000.0, "beta": 0.28}
TRUE_SIG = {"lo": 0.25, "hi": 0.85, "k": 2.0, "x0": -4.0}  # accuracy against -L


def _two_step_data(seed=0, noise_loss=0.005, noise_acc=0.005) -> LadderData:
    """Five 'small' and two 'large' models, 12 checkpoints each, drawn from a known two-step model."""
    rng = np.random.default_rng(seed)
    sizes = [2e7, 5e7, 1.2e8, 3e8, 7e8, 3e9, 1e10]
    rows = []
    for s in sizes:
        for d in np.geomspace(1e9, 3e11, 12):
            L = TRUE_LAW["E"] + TRUE_LAW["A"] / s ** TRUE_LAW["alpha"] + TRUE_LAW["B"] / d ** TRUE_LAW["beta"]
            L *= math.exp(rng.normal(0, noise_loss))
            acc = SigmoidFit.curve(-L, *TRUE_SIG.values()) + rng.normal(0, noise_acc)
            rows.append((f"m-{s:.0e}", s, d, L, acc))
    m, n, dd, lo, ac = zip(*rows)
    return LadderData(list(m), np.array(n), np.array(n), np.array(dd), np.array(lo), np.array(ac), "synthetic",
                      "synthetic loss")


def test_nominal_size_from_names():
    assert nominal_size("pythia-6.9b") == pytest.approx(6.9e9)
    assert nominal_size("pythia-70m-deduped") == pytest.approx(7e7)
    assert nominal_size("EleutherAI/pythia-12b") == pytest.approx(1.2e10)
    assert nominal_size("gpt-tiny") is None


def test_task_loss_law_recovers_its_exponents():
    d = _two_step_data(noise_loss=0.002)
    law = TaskLossLaw("nd").fit(d.N, d.D, d.loss)
    r = law.readable()
    assert r["alpha"] == pytest.approx(TRUE_LAW["alpha"], abs=0.04)
    assert r["beta"] == pytest.approx(TRUE_LAW["beta"], abs=0.04)
    assert r["E"] == pytest.approx(TRUE_LAW["E"], rel=0.1)
    assert not any(law.at_bound().values())


def test_two_step_recovers_the_generating_model_and_predicts_large_models():
    d = _two_step_data()
    r = ladder_predict(d, fit_below=1e9, predict=[3e9, 1e10], chance=0.25, n_bootstrap=40, loss_min_fraction=0.0)
    assert r.fit_models == ["m-2e+07", "m-5e+07", "m-1e+08", "m-3e+08", "m-7e+08"]
    assert r.loss_law["alpha"]["value"] == pytest.approx(TRUE_LAW["alpha"], abs=0.05)
    assert r.loss_law["beta"]["value"] == pytest.approx(TRUE_LAW["beta"], abs=0.05)
    assert all(v["identified"] for v in r.loss_law.values())
    assert r.acc_vs_loss["k"]["value"] == pytest.approx(TRUE_SIG["k"], rel=0.2)
    assert r.acc_vs_loss["x0"]["value"] == pytest.approx(TRUE_SIG["x0"], abs=0.05)
    assert r.acc_vs_loss["hi"]["value"] == pytest.approx(TRUE_SIG["hi"], abs=0.03)
    for p in r.predictions:
        assert p.acc_observed is not None and p.abs_err_two_step < 0.02
        lo, hi = p.acc_two_step_ci95
        assert lo <= p.acc_two_step <= hi
        assert p.compute == pytest.approx(6 * p.N * p.D)
    # the generating model is two-step; the one-step sigmoid in compute is the misspecified one
    assert max(p.abs_err_two_step for p in r.predictions) < max(p.abs_err_one_step for p in r.predictions)


def test_unidentified_parameters_are_flagged():
    """Accuracies that never leave chance give the loss->accuracy sigmoid nothing to hold its ceiling."""
    d = _two_step_data()
    d.acc = 0.25 + np.random.default_rng(3).normal(0, 0.005, d.acc.size)
    r = ladder_predict(d, fit_below=1e9, predict=[1e10], chance=0.25, n_bootstrap=20)
    assert not all(v["identified"] for v in r.acc_vs_loss.values())


def test_too_few_models_and_sizes_not_in_the_data():
    d = _two_step_data()
    with pytest.raises(DataError, match="at least 2 model sizes"):
        ladder_predict(d, fit_below=3e7, predict=[1e10], n_bootstrap=0)
    r = ladder_predict(d, fit_below=1e9, predict=[5e10], n_bootstrap=5, tokens=1e12)
    p = r.predictions[0]
    assert p.N == 5e10 and p.D == 1e12 and p.acc_observed is None and p.abs_err_two_step is None


@pytest.fixture
def pythia(shared_data):
    p = shared_data / "pythia_zero_shot.csv"
    if not p.is_file():
        pytest.skip("pythia_zero_shot.csv not in the shared data")
    return p


def test_pythia_reader_joins_accuracy_with_its_loss(pythia):
    d = read_pythia_ladder(pythia, "lambada_openai")
    assert "own loss" in d.loss_source
    assert len(d.acc) == 7 * 26  # 7 standard models (no standard 1b) x 26 trained checkpoints
    i = d.model.index("pythia-12b") + 25
    assert d.model[i] == "pythia-12b" and d.D[i] == 143000 * 2097152
    assert math.exp(d.loss[i]) == pytest.approx(3.924, abs=1e-3)  # published lambada ppl of the final 12b
    with pytest.raises(DataError, match="proxy"):
        read_pythia_ladder(pythia, "arc_easy")
    assert "proxy" in read_pythia_ladder(pythia, "arc_easy", loss_task="lambada_openai").loss_source


@pytest.mark.parametrize("task,loss_task,chance", [("lambada_openai", None, 0.0),
                                                    ("arc_easy", "lambada_openai", 0.25)])
def test_pythia_two_step_and_one_step_both_run(pythia, task, loss_task, chance):
    d = read_pythia_ladder(pythia, task, loss_task=loss_task)
    r = ladder_predict(d, fit_below=1e9, predict=[6.9e9, 1.2e10], chance=chance, n_bootstrap=10)
    assert r.fit_models == ["pythia-70m", "pythia-160m", "pythia-410m"]
    assert [p.model for p in r.predictions] == ["pythia-6.9b", "pythia-12b"]
    for p in r.predictions:
        assert 0.6 < p.acc_observed < 0.75  # published final accuracies
        assert chance <= p.acc_two_step <= 1 and chance <= p.acc_one_step <= 1
        assert p.abs_err_two_step == pytest.approx(abs(p.acc_two_step - p.acc_observed))
        # neither method is told the answer: both land within 0.2 of it here, not on it
        assert 0 < p.abs_err_two_step < 0.2 and 0 < p.abs_err_one_step < 0.2


def test_cli_ladder_table_and_json(pythia, capsys):
    from lmscale.cli import main

    argv = ["emergence", "ladder", str(pythia), "--task", "lambada_openai", "--fit-below", "1e9",
            "--predict", "6.9e9,1.2e10", "--chance", "0", "--bootstrap", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pythia-6.9b" in out and "two-step" in out and "absolute error" in out
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {p["model"] for p in res["predictions"]} == {"pythia-6.9b", "pythia-12b"}
    assert set(res["loss_law"]) == {"logE", "logA", "alpha", "logB", "beta"}
