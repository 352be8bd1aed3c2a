"""Scaling-law fitters: synthetic recovery, the published Chinchilla data, invariances, bad input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lmscale.errors import DataError
from lmscale.scaling.laws import (
    COARSE_GRID,
    BrokenPowerLaw,
    ChinchillaLaw,
    DataConstrainedLaw,
    EnvelopeAllocation,
    FitError,
    IsoFLOPAllocation,
    KaplanLaw,
    PowerLaw,
    _chinchilla_n_opt_for_tokens,
)

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022, eq. 10
# Besiroglu et al. 2024 (Chinchilla Scaling: A replication attempt), Approach 3 on the Figure 4 data
BESIROGLU = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def _rel(got: dict, want: dict) -> dict:
    return {k: abs(got[k] / want[k] - 1) for k in want}


def _synthetic(n=120, noise=1e-4, seed=0):
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7, 10, n)
    D = 10 ** rng.uniform(9, 11.5, n)
    L = ChinchillaLaw()._predict(HOFFMANN, N, D) * np.exp(rng.normal(0, noise, n))
    return N, D, L


def test_chinchilla_recovers_known_parameters():
    N, D, L = _synthetic()
    law = ChinchillaLaw(grid=COARSE_GRID).fit(N, D, L)
    assert law.converged_
    assert max(_rel(law.params_, HOFFMANN).values()) < 0.01
    assert law.derived_["a"] == pytest.approx(0.28 / 0.62, rel=0.01)
    assert law.predict(1e9, 1e11) == pytest.approx(ChinchillaLaw()._predict(HOFFMANN, 1e9, 1e11), rel=1e-3)


def test_scipy_every_start_agrees_with_batched_grid():
    N, D, L = _synthetic(n=60, seed=3)
    small = {"e": (0.0, 1.0), "a": (0.0, 10.0), "b": (0.0, 10.0), "alpha": (0.5,), "beta": (0.5,)}
    a = ChinchillaLaw(grid=small).fit(N, D, L)
    b = ChinchillaLaw(grid=small, method="scipy").fit(N, D, L)
    assert a.objective_ == pytest.approx(b.objective_, rel=1e-6)
    assert max(_rel(a.params_, b.params_).values()) < 1e-4


def test_chinchilla_fit_is_invariant_to_units_of_d():
    N, D, L = _synthetic(n=80, noise=3e-3, seed=1)
    base = ChinchillaLaw(grid=COARSE_GRID).fit(N, D, L)
    scaled = ChinchillaLaw(grid=COARSE_GRID).fit(N / 1e6, D / 1e9, L)
    for k in ("E", "alpha", "beta"):
        assert scaled.params_[k] == pytest.approx(base.params_[k], rel=1e-4)
    # B / D^beta is unchanged when D is measured in billions: B' = B * 1e9^-beta
    assert scaled.params_["B"] * 1e9 ** scaled.params_["beta"] == pytest.approx(base.params_["B"], rel=1e-3)
    np.testing.assert_allclose(scaled.predict(N / 1e6, D / 1e9), base.predict(N, D), rtol=1e-5)


def test_power_law_in_c_is_invariant_to_units():
    rng = np.random.default_rng(2)
    C = 10 ** rng.uniform(15, 22, 60)
    L = (1.5 + 30 * C ** -0.1) * np.exp(rng.normal(0, 1e-4, 60))
    a = PowerLaw("C").fit(C, L)
    assert max(_rel(a.params_, {"E": 1.5, "A": 30.0, "alpha": 0.1}).values()) < 0.01
    b = PowerLaw("C").fit(C / 1e15, L)
    assert b.params_["alpha"] == pytest.approx(a.params_["alpha"], rel=1e-4)
    np.testing.assert_allclose(b.predict(C / 1e15), a.predict(C), rtol=1e-5)


def test_kaplan_recovers_known_parameters():
    rng = np.random.default_rng(4)
    N, D = 10 ** rng.uniform(6, 10, 80), 10 ** rng.uniform(8, 11, 80)
    true = {"Nc": 8.8e13, "Dc": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}  # Kaplan et al. 2020, Table 2
    L = KaplanLaw()._predict(true, N, D) * np.exp(rng.normal(0, 1e-4, 80))
    law = KaplanLaw().fit(N, D, L)
    assert max(_rel(law.params_, true).values()) < 0.01


def test_broken_power_law_recovers_known_parameters():
    rng = np.random.default_rng(1)
    X = 10 ** rng.uniform(0, 6, 80)
    true = {"a": 0.5, "b": 5.0, "c0": 0.2, "c1": 0.4, "d1": 1e3, "f1": 0.5}
    Y = BrokenPowerLaw()._predict(true, X) * np.exp(rng.normal(0, 1e-4, 80))
    law = BrokenPowerLaw("C").fit(X, Y)
    assert max(_rel(law.params_, true).values()) < 0.01


def test_data_constrained_recovers_repetition_constants():
    rng = np.random.default_rng(1)
    n = 150
    U = 10 ** rng.uniform(8.5, 10.5, n)
    D = U * 10 ** rng.uniform(-0.5, 1.7, n)
    N = 10 ** rng.uniform(7, 10, n)
    single = D <= U
    N[single] = np.minimum(N[single], _chinchilla_n_opt_for_tokens(HOFFMANN, D[single]))
    true = dict(HOFFMANN, R_D_star=15.4, R_N_star=5.3)  # Muennighoff et al. 2023, eq. 5 fit
    L = DataConstrainedLaw()._predict(true, N, D, U) * np.exp(rng.normal(0, 1e-4, n))
    law = DataConstrainedLaw(base_grid=COARSE_GRID).fit(N, D, U, L)
    assert max(_rel(law.params_, true).values()) < 0.01


def test_isoflop_and_envelope_recover_allocation_exponents():
    # noise-free IsoFLOP profiles of a known law: N_opt ~ C^a with a = beta/(alpha+beta)
    a_true = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    Cs = np.logspace(18, 22, 9)
    N, D, g = [], [], []
    G = (HOFFMANN["alpha"] * HOFFMANN["A"] / (HOFFMANN["beta"] * HOFFMANN["B"])) ** (1 / 0.62)
    for i, C in enumerate(Cs):
        centre = np.log10(G * (C / 6) ** a_true)  # a centred, narrow IsoFLOP grid keeps the parabola unbiased
        sizes = np.logspace(centre - 0.5, centre + 0.5, 25)
        N.extend(sizes)
        D.extend(C / (6 * sizes))
        g.extend([i] * sizes.size)
    N, D, g = np.array(N), np.array(D), np.array(g)
    L = ChinchillaLaw()._predict(HOFFMANN, N, D)
    iso = IsoFLOPAllocation().fit(N, D, L, runs=g)
    assert iso.params_["a"] == pytest.approx(a_true, rel=0.01)
    assert iso.params_["a"] + iso.params_["b"] == pytest.approx(1.0, abs=1e-9)
    env = EnvelopeAllocation(n_bins=9).fit(N, D, L)
    assert env.params_["a"] == pytest.approx(a_true, rel=0.05)
    boot = iso.bootstrap(50, seed=0)
    lo, hi = boot.ci()["a"]
    assert lo <= iso.params_["a"] <= hi


def _chinchilla_csv(shared_data):
    path = shared_data / "chinchilla_fig4_epoch.csv"
    if not path.exists():
        pytest.skip("chinchilla_fig4_epoch.csv not in the data mirror")
    rows = list(csv.DictReader(path.open()))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    return path, N, C / (6 * N), L


def test_published_chinchilla_data_reproduces_besiroglu_and_is_stable(shared_data):
    _, N, D, L = _chinchilla_csv(shared_data)
    assert N.size == 245
    keep = np.argsort(L)[:-5]  # Besiroglu et al. drop the five highest-loss outliers
    fits = []
    shifted = {k: tuple(v + (0.25 if k in ("e", "alpha", "beta") else 2.5) for v in vals)
               for k, vals in COARSE_GRID.items()}
    for grid in (COARSE_GRID, shifted):
        fits.append(ChinchillaLaw(grid=grid).fit(N[keep], D[keep], L[keep]))
    for f in fits:
        r = _rel(f.params_, BESIROGLU)
        assert r["E"] < 0.01 and r["alpha"] < 0.01 and r["beta"] < 0.01
        assert r["A"] < 0.03 and r["B"] < 0.05
    assert max(_rel(fits[0].params_, fits[1].params_).values()) < 1e-5
    law = fits[0]
    b1 = law.bootstrap(40, seed=1)
    b2 = law.bootstrap(40, seed=2)
    assert b1.n_failed == 0 and b2.n_failed == 0
    for b in (b1, b2):
        lo, hi = b.ci()["alpha"]
        assert lo < law.params_["alpha"] < hi and hi - lo < 0.1
    pi = law.prediction_interval(np.array([7e10]), np.array([1.4e12]))
    assert pi["pi_low"][0] < pi["ci_low"][0] <= pi["prediction"][0] <= pi["ci_high"][0] < pi["pi_high"][0]


def test_holdout_largest_reports_relative_errors(shared_data):
    _, N, D, L = _chinchilla_csv(shared_data)
    law = ChinchillaLaw(grid=COARSE_GRID).fit(N, D, L, holdout="largest", n_holdout=10)
    h = law.holdout_
    C = 6 * N * D
    assert sorted(h["indices"]) == sorted(np.argsort(C)[-10:].tolist())
    assert h["mean_abs_relative_error"] < 0.05
    assert law.n_points_ == 235


def test_fit_cli_on_published_csv(shared_data, tmp_path, capsys):
    from lmscale.cli import main

    path, *_ = _chinchilla_csv(shared_data)
    out = tmp_path / "fit.json"
    rc = main(["fit", str(path), "--law", "chinchilla", "--grid", "coarse", "--exclude-top-loss", "5",
               "--bootstrap", "20", "--out", str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert {"law", "params", "ci95", "n_points", "objective"} <= set(res)
    assert set(res["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert res["n_points"] == 240
    assert res["params"]["alpha"] == pytest.approx(BESIROGLU["alpha"], rel=0.01)
    assert main(["allocate", "--flops", "5.76e23", "--fit", str(out), "--json"]) == 0
    alloc = json.loads(capsys.readouterr().out)
    assert alloc["ci"]["N_opt"][0] <= alloc["N_opt"] <= alloc["ci"]["N_opt"][1]


def test_fit_cli_bad_csv(tmp_path, capsys):
    from lmscale.cli import main

    p = tmp_path / "runs.csv"
    p.write_text("N,loss\n1e8,3.0\n2e8,2.9\n")
    assert main(["fit", str(p), "--law", "chinchilla", "--json"]) == 2
    assert "needs D" in capsys.readouterr().err
    p.write_text("N,D,loss\n1e8,1e9,3.0\n2e8,oops,2.9\n")
    assert main(["fit", str(p), "--json"]) == 2
    assert "runs.csv:3" in capsys.readouterr().err
    p.write_text("N,D\n1e8,1e9\n")
    assert main(["fit", str(p), "--json"]) == 2
    assert "no loss column" in capsys.readouterr().err


def test_bad_input_is_rejected_clearly():
    N, D, L = _synthetic(n=20)
    with pytest.raises(DataError, match="positive"):
        ChinchillaLaw(grid=COARSE_GRID).fit(-N, D, L)
    with pytest.raises(DataError, match="positive"):
        ChinchillaLaw(grid=COARSE_GRID).fit(N, D * 0, L)
    bad = L.copy()
    bad[3] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        ChinchillaLaw(grid=COARSE_GRID).fit(N, D, bad)
    with pytest.raises(DataError, match="at least 6"):
        ChinchillaLaw(grid=COARSE_GRID).fit(N[:5], D[:5], L[:5])
    with pytest.raises(DataError, match="different lengths"):
        ChinchillaLaw(grid=COARSE_GRID).fit(N, D[:-1], L)


def test_non_convergence_is_an_error_not_a_result():
    N, D, L = _synthetic(n=40)
    law = ChinchillaLaw(grid=COARSE_GRID, maxiter=1, batch_maxiter=1)
    with pytest.raises(FitError, match="did not converge"):
        law.fit(N, D, L)
    assert law.converged_ is False
    with pytest.raises(FitError):
        law.predict(1e9, 1e10)
