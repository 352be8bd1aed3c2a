"""Emergence fits: a known break is found, no break is invented, extrapolation refuses when it must."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lmscale.errors import DataError
from lmscale.scaling.emergence import (
    BrokenPowerLawFit,
    ScaleMetric,
    SigmoidFit,
    analyze,
    compare_metrics,
    extrapolate,
    read_pythia,
    read_scale_metric_csv,
)

X = np.linspace(18, 24, 60)


def _broken(seed=0, xb=21.0, noise=0.01):
    rng = np.random.default_rng(seed)
    err = BrokenPowerLawFit.curve(X - xb, 0.05, math.log10(0.7), 0.0, 1.5, 0.0, 0.1)
    return ScaleMetric(10 ** X, 1 - err + rng.normal(0, noise, X.size), label="synthetic acc", metric="acc")


def test_known_break_is_detected_at_its_location():
    for xb in (20.0, 21.5):
        r = analyze(_broken(xb=xb), chance=0.25)
        assert r.break_detected, r.break_reason
        assert abs(math.log10(r.break_compute) - xb) < 0.25
        assert r.slopes["before"] == pytest.approx(0.0, abs=0.1)


def test_plain_power_law_has_no_break():
    rng = np.random.default_rng(1)
    err = 0.05 + 10 ** (math.log10(0.7) - 0.1 * (X - 18))
    r = analyze(ScaleMetric(10 ** X, 1 - err + rng.normal(0, 0.005, X.size)))
    assert not r.break_detected and "no evidence" in r.break_reason


def test_sigmoid_recovers_parameters_and_width():
    rng = np.random.default_rng(2)
    y = SigmoidFit.curve(X, 0.25, 0.9, 3.0, 21.0) + rng.normal(0, 0.005, X.size)
    s = SigmoidFit(chance=0.25).fit(X, y)
    assert s.params_["x0"] == pytest.approx(21.0, abs=0.05)
    assert s.params_["k"] == pytest.approx(3.0, rel=0.1)
    assert s.width_decades == pytest.approx(2 * math.log(9) / 3.0, rel=0.1)
    assert s.inverse(0.8) == pytest.approx(21.0 + math.log((0.55 / 0.65) / (0.1 / 0.65)) / 3.0, abs=0.05)


def _partial_sigmoid(seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(18, 21.8, 50)
    return ScaleMetric(10 ** x, SigmoidFit.curve(x, 0.25, 0.95, 2.5, 21.5) + rng.normal(0, 0.01, x.size))


def test_extrapolation_with_interval_covers_the_truth():
    data = _partial_sigmoid()
    e = extrapolate(data, 0.8, chance=0.25, n_bootstrap=100)
    truth = 21.5 + math.log(0.55 / 0.15) / 2.5  # where the generating sigmoid reaches 0.8
    assert e.ok, e.reason
    lo, hi = (math.log10(v) for v in e.compute_ci95)
    assert lo <= truth <= hi and abs(math.log10(e.compute) - truth) < 0.15
    assert e.extra_compute_factor > 1 and e.params == pytest.approx(math.sqrt(e.compute / 120))


def test_extrapolation_refuses_with_reasons():
    data = _partial_sigmoid()
    far = extrapolate(data, 0.85, chance=0.25, n_bootstrap=50, max_decades=0.2)
    assert not far.ok and "decades beyond" in far.reason
    above = extrapolate(ScaleMetric(10 ** X, SigmoidFit.curve(X, 0.25, 0.6, 3, 20)), 0.9, chance=0.25, n_bootstrap=20)
    assert not above.ok and ("ceiling" in above.reason)
    rng = np.random.default_rng(4)
    flat = ScaleMetric(10 ** X, 0.25 + rng.normal(0, 0.01, X.size))
    none = extrapolate(flat, 0.5, chance=0.25, n_bootstrap=20)
    assert not none.ok and "no rise above chance" in none.reason
    assert not extrapolate(data, 1.5, chance=0.25).ok


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError):
        ScaleMetric([1, 2], [0.1, 0.2])
    p = tmp_path / "m.csv"
    p.write_text("flops,acc\n1e18,0.1\n1e19,oops\n")
    with pytest.raises(DataError, match="m.csv:3"):
        read_scale_metric_csv(p, "acc", scale_col="flops")
    with pytest.raises(DataError, match="missing column"):
        read_scale_metric_csv(p, "accuracy", scale_col="flops")


def test_generic_csv_with_params_and_tokens(tmp_path):
    p = tmp_path / "m.csv"
    rows = ["N,D,acc"] + [f"{n},{20 * n},{a}" for n, a in zip(10 ** np.linspace(6, 9, 8), np.linspace(0.1, 0.8, 8))]
    p.write_text("\n".join(rows) + "\n")
    d = read_scale_metric_csv(p, "acc", params_col="N", tokens_col="D")
    assert d.compute[0] == pytest.approx(6 * 1e6 * 2e7)


@pytest.fixture
def pythia(shared_data):
    p = shared_data / "pythia_zero_shot.csv"
    if not p.exists():
        pytest.skip("pythia_zero_shot.csv not present")
    return p


def test_pythia_lambada_accuracy_breaks_and_is_compared_with_perplexity(pythia):
    acc = read_pythia(pythia, "lambada_openai", "acc")
    ppl = read_pythia(pythia, "lambada_openai", "ppl")
    # 14 non-deduped checkpoints-with-compute x 7 models... every published row with step >= 1
    assert len(acc.x) == len(ppl.x) == 7 * 26
    # Pythia paper (Biderman et al. 2023): pythia-70m has 18,915,328 non-embedding parameters
    assert acc.params.min() == pytest.approx(18_915_328, rel=0.005)
    r = analyze(acc, chance=0.0)
    assert r.break_detected
    # the published curves: near 0 until ~1e19 FLOPs, ~0.7 for the largest models at the end
    assert 18.5 < math.log10(r.break_compute) < 21.0
    assert 0.65 < r.sigmoid["hi"] < 0.8
    cmp = compare_metrics(acc, ppl)
    assert cmp["discontinuous"]["width_decades"] > 0 and cmp["continuous"]["width_decades"] > 0
    # accuracy lags the likelihood: its rise is centred at higher compute than log-perplexity's
    assert cmp["discontinuous"]["midpoint_log10_compute"] > cmp["continuous"]["midpoint_log10_compute"]


def test_pythia_extrapolation_refuses_beyond_the_plateau(pythia):
    acc = read_pythia(pythia, "lambada_openai", "acc")
    e = extrapolate(acc, 0.95, chance=0.0, n_bootstrap=20)
    assert not e.ok and "ceiling" in e.reason
    arc = read_pythia(pythia, "arc_challenge", "acc")
    e2 = extrapolate(arc, 0.6, chance=0.25, n_bootstrap=20)
    assert not e2.ok
