"""Compute-optimal allocation: closed form vs numeric, Hoffmann et al.'s exponents, inference, repeats."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmscale.errors import LmscaleError
from lmscale.scaling.allocation import compute_optimal, inference_aware, repeated_data, rule_of_thumb

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@pytest.mark.parametrize("C", [1e18, 5.76e23, 1e26])
def test_closed_form_equals_numeric(C):
    r = compute_optimal(HOFFMANN, C)
    assert r["numeric"]["N_opt"] == pytest.approx(r["N_opt"], rel=1e-5)
    assert r["numeric"]["loss"] == pytest.approx(r["loss"], rel=1e-12)
    assert 6 * r["N_opt"] * r["D_opt"] == pytest.approx(C)


def test_exponents_match_hoffmann_eq4():
    r = compute_optimal(HOFFMANN, 1e21)
    assert r["exponents"]["a"] == pytest.approx(0.28 / 0.62)
    assert r["exponents"]["b"] == pytest.approx(0.34 / 0.62)
    r2 = compute_optimal(HOFFMANN, 1e23)
    assert r2["N_opt"] / r["N_opt"] == pytest.approx(100 ** (0.28 / 0.62))


def test_rule_of_thumb_is_beside_and_never_better():
    r = compute_optimal(HOFFMANN, 5.76e23)
    t = r["rule_of_thumb_20"]
    assert t["D"] / t["N"] == 20 and 6 * t["N"] * t["D"] == pytest.approx(5.76e23)
    assert t["loss"] >= r["loss"]
    assert rule_of_thumb(None, 6 * 20 * 1e18)["N"] == pytest.approx(1e9)


def test_bootstrap_intervals_contain_point():
    from lmscale.scaling.laws import COARSE_GRID, ChinchillaLaw

    rng = np.random.default_rng(0)
    N, D = 10 ** rng.uniform(7, 10, 60), 10 ** rng.uniform(9, 11.5, 60)
    L = ChinchillaLaw()._predict(HOFFMANN, N, D) * np.exp(rng.normal(0, 0.01, 60))
    law = ChinchillaLaw(grid=COARSE_GRID).fit(N, D, L)
    law.bootstrap(30, seed=0)
    r = compute_optimal(law, 1e22)
    for k in ("N_opt", "D_opt", "loss"):
        assert r["ci"][k][0] <= r[k] <= r["ci"][k][1]


def test_inference_aware_sardana():
    base = inference_aware(HOFFMANN, inference_tokens=0, flops=1e22)
    co = compute_optimal(HOFFMANN, 1e22)
    assert base["N"] == pytest.approx(co["N_opt"], rel=1e-4)  # no inference: Chinchilla-optimal
    heavy = inference_aware(HOFFMANN, inference_tokens=1e13, flops=1e22)
    assert heavy["N"] < base["N"] and heavy["D_train"] > base["D_train"]  # smaller, longer-trained
    assert heavy["total_flops"] <= heavy["chinchilla"]["total_flops"]
    with pytest.raises(LmscaleError):
        inference_aware(HOFFMANN, inference_tokens=1e12, loss=1.5)  # below E


def test_repeated_data():
    p = dict(HOFFMANN, R_D_star=15.4, R_N_star=5.3)
    plenty = repeated_data(p, 1e21, 1e15)
    assert plenty["N_opt"] == pytest.approx(plenty["unlimited_data"]["N_opt"], rel=1e-3)
    scarce = repeated_data(p, 1e22, 1e10)
    assert scarce["epochs"] > 1 and scarce["loss"] > scarce["unlimited_data"]["loss"]
    with pytest.raises(LmscaleError):
        repeated_data(HOFFMANN, 1e21, 1e10)


def test_bad_budget_and_cli(tmp_path, capsys):
    from lmscale.cli import main

    with pytest.raises(LmscaleError):
        compute_optimal(HOFFMANN, -5)
    with pytest.raises(LmscaleError):
        compute_optimal({"E": 1.0}, 1e20)
    assert main(["allocate", "--flops", "0", "--json"]) == 2
    capsys.readouterr()
    assert main(["allocate", "--flops", "1e21", "--inference-tokens", "1e12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"N_opt", "D_opt", "tokens_per_param", "loss", "rule_of_thumb_20", "inference_aware"} <= set(out)
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"law": "chinchilla", "converged": False, "params": HOFFMANN}))
    assert main(["allocate", "--flops", "1e21", "--fit", str(bad)]) == 2
    assert "did not converge" in capsys.readouterr().err
