"""The quickstart's yardsticks on inputs with known answers: the compute-frontier law, the
induction switch, the ridge probe, the generation metrics, and each stage's checks."""
from __future__ import annotations

import numpy as np
import pytest

from lmscale.experiments.icl_tasks import switch
from lmscale.experiments.quickstart import distinct_n, emergence, finetune, repeated_ngram, scaling, use
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


def _fill(prompt, *words):
    return use.FillMask(prompt, [{"token": w, "token_id": i, "probability": 0.5 / (i + 1)}
                                 for i, w in enumerate(words)])


def _infill(*spans):
    return use.Infill("x", list(spans), " ".join(spans))


def test_use_checks_judge_the_fixed_prompts_and_answers():
    facts = [_fill(p, a if i < 3 else "the") for i, (p, a) in enumerate(use.FACTUAL_PROMPTS)]
    fill = [_fill(use.PLACE_PROMPT, "the", "##Minneapolis", ",")] + facts
    checks = use._lecture_checks(fill, [False] * 4 + [True], 0.59, [_infill("for inviting", "1")])
    assert [(c.measured, c.ok) for c in checks] == [
        ("minneapolis", True), ("3 of 5 (france, ocean, month)", True), ("4 of 5", False), ("0.59", False),
        ("1 of 2", False)]
    assert [c.target for c in checks] == ["in the top 5", ">= 3 of 5 in the top 5", "5 of 5 prompts", ">= 0.6",
                                          "2 of 2"]
    misses = use._lecture_checks([_fill(p, "the") for p in [use.PLACE_PROMPT] + [q for q, _ in use.FACTUAL_PROMPTS]],
                                 [False] * 5, 0.8, [_infill("for", "next")])
    assert [c.ok for c in misses] == [False, False, True, True, True] and misses[0].measured == "none"


def test_in_domain_checks_count_answers_of_the_asked_kind():
    """Movie-review prompts: an answer counts when it is of the kind the sentence asks for (an
    evaluative adjective, a superlative, a film-making noun), fixed before training."""
    prompts = [p for p, _ in use.DOMAIN_FILL_PROMPTS]
    answers = [("the", "good"), ("it", "the"), ("worst",), ("the", "cinematography"), ("effects",), (".", ",")]
    fill = [_fill(p, *a) for p, a in zip(prompts, answers)]
    checks = use._domain_checks(fill, "rank 57 (minneapolis)", [True] * 5, [False] * 5, 0.71, 0.97,
                                [_infill("for inviting", "next"), _infill(",", "great")])
    by_name = {c.check: c for c in checks}
    fm = by_name["fill-mask: in-domain prompts answered"]
    assert fm.measured == "4 of 6 (good, worst, cinematography, effects)" and fm.ok
    assert by_name["fill-mask: a place name for Minnesota"].ok is None
    assert by_name["sampled text: words seen in the training text"].ok
    assert by_name["greedy text: no repeated 4-gram in 40 tokens"].ok is None  # shown, not judged
    t5 = by_name["T5 fills every span with words"]
    assert (t5.measured, t5.ok) == ("3 of 4", False)
    low = use._domain_checks(fill[:3] + [_fill(p, "the") for p in prompts[3:]], "-", [False] * 5,
                             [False] * 4 + [True], 0.5, 0.9, [_infill("a", "b")])
    assert [c.ok for c in low if c.ok is not None] == [False, False, False, False, True]


def test_generated_words_are_checked_against_the_training_vocabulary():
    assert use.words_of("It's a GREAT film, isn't it? 10/10") == ["it's", "a", "great", "film", "isn't", "it"]
    assert use.seen_share(["a great film", "a grate flim"], {"a", "great", "film"}) == pytest.approx(4 / 6)


def test_finetune_checks_need_a_lead_beyond_one_std_at_every_size():
    table = {"pretrained": {"50": {"mean": 0.70, "std": 0.02}, "100": {"mean": 0.71, "std": 0.02}},
             "random": {"50": {"mean": 0.60, "std": 0.05}, "100": {"mean": 0.70, "std": 0.01}}}
    by_size = finetune.leads(table, "pretrained", "random")
    assert by_size["50"].ahead and not by_size["100"].ahead and by_size["50"].std == 0.05
    checks = finetune._checks(by_size, None, None)
    assert len(checks) == 1 and checks[0].ok is False
    assert checks[0].measured == "50 labels +0.100 (std 0.050); 100 labels +0.010 (std 0.020)"
    assert finetune._checks({}, {}, None)[1].ok is None  # nothing to compare: not judged


def test_scaling_checks_fall_back_to_the_frontier_when_the_full_law_is_not_identified():
    fit = {"holdout_check": {"holdout": [{"rel_error": 0.01}, {"rel_error": -0.04}]}}
    frontier = {"interval_ratio": {"L0": 1.01, "alpha": 2.5}, "identified": True}
    checks, identified = scaling._checks(fit, frontier, 1.7, 1.5)
    assert not identified
    assert [(c.target, c.measured, c.ok) for c in checks] == [
        (">= 1.5 decades", "1.70", True), ("within 3%", "+1.0%, -4.0%", False),
        ("every 95% interval within x3", "L0 x1.01, alpha x2.50", True)]
    assert "reduced" in checks[2].check
    assert len(scaling._checks({}, None, 1.0, 2.5)[0]) == 2


def test_emergence_check_counts_the_widths_that_switch_quickly():
    quick = {"switched": True, "step_fraction": 0.2}
    switches = {32: quick, 64: {"switched": True, "step_fraction": 0.5}, 128: {"switched": False}}
    (check,) = emergence._checks(switches)
    assert check.measured == "1 of 3 widths ([32])" and check.ok is False
    assert check.check == "induction switches on (accuracy <= 0.1 to >= 0.9 within 20% of the steps)"
    assert emergence._checks({**switches, 128: quick})[0].ok is True
