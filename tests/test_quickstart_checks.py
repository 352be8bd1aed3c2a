"""The quickstart's yardsticks on inputs with known answers: the compute-frontier law, the
induction switch, the ridge probe, and the generation metrics."""
from __future__ import annotations

import numpy as np
import pytest

from lmscale.experiments.icl_tasks import switch
from lmscale.experiments.quickstart import distinct_n, repeated_ngram
from lmscale.finetune.probe import ridge_classifier
from lmscale.scaling.frontier import fit_frontier, frontier_indices, predict_frontier
from lmscale.scaling.laws import FitError


def test_frontier_recovers_a_power_law_and_keeps_only_the_lower_envelope():
    rng = np.random.default_rng(0)
    C = np.logspace(10, 12, 9)
    loss = 4.0 * (C / 1e11) ** -0.08 * np.exp(rng.normal(0, 0.002, len(C)))
    worse = np.column_stack([C * 1.01, loss * 1.2])  # runs above the frontier at similar compute
    allC, allL = np.concatenate([C, worse[:, 0]]), np.concatenate([loss, worse[:, 1]])
    fit = fit_frontier(allC, allL, n_bootstrap=300)
    assert sorted(frontier_indices(allC, allL).tolist()) == list(range(9))
    assert fit["params"]["alpha"] == pytest.approx(0.08, abs=0.005) and fit["identified"]
    assert predict_frontier(fit, [1e11])[0] == pytest.approx(4.0, rel=0.01)
    lo, hi = fit["ci95"]["alpha"]
    assert lo < 0.08 < hi and hi / lo < 3


def test_frontier_without_a_trend_is_not_identified_and_too_few_points_fail():
    rng = np.random.default_rng(1)
    C = np.logspace(10, 10.3, 6)
    loss = np.sort(5.0 + rng.normal(0, 0.05, 6))[::-1]
    assert not fit_frontier(C, loss, n_bootstrap=300)["identified"]
    with pytest.raises(FitError, match="at least 3"):
        fit_frontier([1e10, 2e10], [5.0, 4.0])


def _evals(accs, every=10):
    return [{"step": every * (i + 1), "induction": {"accuracy": a}} for i, a in enumerate(accs)]


def test_switch_measures_the_window_from_low_to_high_accuracy():
    sw = switch(_evals([0.02, 0.05, 0.04, 0.3, 0.95, 0.99]), total_steps=60)
    assert sw["switched"] and (sw["from_step"], sw["to_step"]) == (30, 50)
    assert sw["step_fraction"] == pytest.approx(20 / 60)
    slow = switch(_evals([0.5, 0.6, 0.7, 0.8, 0.85, 0.92]), total_steps=60)
    assert slow["switched"] and slow["from_step"] == 0 and slow["step_fraction"] == 1.0
    assert not switch(_evals([0.02, 0.4, 0.6]), total_steps=30)["switched"]


def test_ridge_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 1, (50, 5)), rng.normal(2, 1, (50, 5))])
    y = np.array([0] * 50 + [1] * 50)
    W, b = ridge_classifier(X, y, 2, l2=1e-3)
    assert ((X @ W + b).argmax(axis=1) == y).mean() == 1.0


def test_generation_metrics():
    assert repeated_ngram("a b c d a b c d".split()) and not repeated_ngram("a b c d e f g".split())
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)
