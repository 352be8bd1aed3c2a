"""Effective data transferred (Hernandez et al. 2021) read off a random-init curve, and the
transfer law's fit, against curves whose answer is known in closed form."""
import math

import numpy as np
import pytest

from lmscale.errors import LmscaleError
from lmscale.scaling.transfer import (
    EXTRAPOLATED,
    INTERPOLATED,
    NONE_TRANSFERRED,
    NOT_IDENTIFIED,
    effective_data,
    equivalent_labels,
    fit_transfer_law,
)

SIZES = [100, 300, 1000, 3000]


def random_curve(n):
    """Accuracy linear in log labels: 0.5 at 100, +0.05 per factor e."""
    return 0.5 + 0.05 * np.log(np.asarray(n, dtype=float) / 100)


def test_matching_the_random_curve_at_ten_times_the_labels_is_a_factor_of_ten():
    scores = random_curve(SIZES)
    (p,) = effective_data(SIZES, scores, [100], [float(random_curve(1000))])
    assert p.how == INTERPOLATED
    assert p.equivalent_labels == pytest.approx(1000, rel=1e-9)
    assert p.factor == pytest.approx(10.0, rel=1e-9)
    assert p.transferred == pytest.approx(900, rel=1e-9)


def test_interpolation_is_linear_in_log_labels_between_points():
    scores = random_curve(SIZES)
    d_e, how = equivalent_labels(float(random_curve(math.sqrt(300 * 1000))), SIZES, scores)
    assert how == INTERPOLATED and d_e == pytest.approx(math.sqrt(300 * 1000), rel=1e-9)


def test_beyond_the_curve_is_extrapolated_and_said_so():
    scores = random_curve(SIZES)
    (p,) = effective_data(SIZES, scores, [100], [float(random_curve(30000))])
    assert p.how == EXTRAPOLATED
    assert p.factor == pytest.approx(300, rel=1e-6)
    assert "extrapolated" in p.describe()


def test_pretrained_at_or_below_random_transfers_nothing():
    scores = random_curve(SIZES)
    pts = effective_data(SIZES, scores, [100, 1000], [0.49, float(random_curve(1000)) - 0.01])
    assert [p.how for p in pts] == [NONE_TRANSFERRED, NONE_TRANSFERRED]
    assert all(p.factor == 1.0 and p.transferred == 0.0 for p in pts)


def test_a_flat_curve_cannot_be_extrapolated():
    d_e, how = equivalent_labels(0.8, SIZES, [0.6, 0.6, 0.6, 0.6])
    assert d_e is None and how == NOT_IDENTIFIED


def test_a_noisy_dip_in_the_random_curve_reads_its_running_maximum():
    d_e, how = equivalent_labels(0.62, SIZES, [0.55, 0.62, 0.60, 0.70])
    assert how == INTERPOLATED and d_e == pytest.approx(300)


def test_too_few_random_points_is_an_error():
    with pytest.raises(LmscaleError):
        equivalent_labels(0.6, [100], [0.5])


def test_transfer_law_recovers_known_exponents_with_intervals():
    rng = np.random.default_rng(0)
    d_f = np.tile([100, 300, 1000, 3000], 3)
    n = np.repeat([1e5, 1e6, 1e7], 4)
    d_t = 2.0 * d_f ** 0.4 * n ** 0.3 * np.exp(rng.normal(0, 0.02, len(d_f)))
    law = fit_transfer_law(d_f, d_t, n)
    assert law.identified, law.not_identified
    assert law.params["alpha"] == pytest.approx(0.4, abs=0.03)
    assert law.params["beta"] == pytest.approx(0.3, abs=0.03)
    lo, hi = law.intervals["alpha"]
    assert lo < 0.4 < hi
    assert law.predict([1000], [1e6])[0] == pytest.approx(2.0 * 1000 ** 0.4 * 1e6 ** 0.3, rel=0.1)


def test_one_pretraining_budget_does_not_identify_beta():
    law = fit_transfer_law([100, 300, 1000], [900, 2000, 4000], [1e6, 1e6, 1e6])
    assert "beta" in law.not_identified and "beta" not in law.params
    assert "not identified" in law.describe()


def test_two_points_do_not_identify_a_two_parameter_law():
    law = fit_transfer_law([100, 1000], [900, 4000])
    assert not law.identified and math.isnan(law.params["alpha"])
