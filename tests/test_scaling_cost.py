"""Cost/energy/carbon against published figures (Patterson et al. 2021; Devlin et al. 2019)."""
from __future__ import annotations

import json

import pytest

from lmscale.config import preset_model
from lmscale.errors import LmscaleError
from lmscale.scaling.cost import DEVICES, estimate_cost, implied_utilisation
from lmscale.scaling.counting import training_flops


def test_patterson_gpt3_energy_and_carbon():
    # Patterson et al. 2021, Table 4: 3.14e23 FLOPs, 10,000 V100 at 24.6 TFLOP/s sustained, 330 W,
    # PUE 1.1, 0.429 kgCO2e/kWh -> 14.8 days, 1,287 MWh, 552 tCO2e
    est = estimate_cost(3.14e23, "v100", devices=10_000, sustained_flops=24.6e12, power_w=330, pue=1.1,
                        grid_kg_per_kwh=0.429)
    assert est.energy_kwh / 1e3 == pytest.approx(1287, rel=0.005)
    assert est.co2e_kg / 1e3 == pytest.approx(552, rel=0.005)
    assert est.wall_clock_days == pytest.approx(14.8, rel=0.01)


def test_gpt3_compute_from_preset_then_cost_cli(capsys):
    from lmscale.cli import main

    rc = main(["cost", "--preset", "gpt3-175b", "--tokens", "300e9", "--device", "v100", "--devices", "10000",
               "--sustained-flops", "24.6e12", "--power-w", "330", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"flops", "device_hours", "usd", "energy_kwh", "co2e_kg"} <= set(out)
    assert out["flops"] == pytest.approx(3.14e23, rel=0.01)
    assert out["energy_kwh"] / 1e3 == pytest.approx(1287, rel=0.01)
    assert out["co2e_kg"] / 1e3 == pytest.approx(552, rel=0.01)


def test_bert_large_64_tpu_chips_4_days():
    # Devlin et al. 2019: 1M steps of 256 x 512 tokens on 16 Cloud TPUs (64 TPU v2 chips), 4 days
    flops = training_flops(preset_model("bert-large"), 1e6 * 256 * 512)
    est = estimate_cost(flops, "tpu-v2", devices=64)
    assert 2.0 < est.wall_clock_days < 8.0  # default 40% utilisation: same order as the published 4 days
    u = implied_utilisation(flops, "tpu-v2", 64, 4.0)
    assert 0.1 < u < 0.6
    assert estimate_cost(flops, "tpu-v2", devices=64, utilisation=u).wall_clock_days == pytest.approx(4.0)


def test_device_table_and_linear_scaling():
    for name in ("v100", "a100", "h100", "h200", "tpu-v3", "tpu-v4", "cpu"):
        d = DEVICES[name]
        assert d.peak() > 0 and d.power_w > 0
    a = estimate_cost(1e21, "h100", devices=1)
    b = estimate_cost(1e21, "h100", devices=8)
    assert b.device_hours == pytest.approx(a.device_hours)
    assert b.wall_clock_hours == pytest.approx(a.wall_clock_hours / 8)
    assert estimate_cost(2e21, "h100").usd == pytest.approx(2 * a.usd)
    # H100 bf16 dense peak 989 TFLOP/s at 40%: 1e21 / (0.4 * 989.4e12) seconds
    assert a.device_hours == pytest.approx(1e21 / (0.4 * 989.4e12) / 3600)


def test_bad_inputs(capsys):
    from lmscale.cli import main

    with pytest.raises(LmscaleError):
        estimate_cost(-1, "a100")
    with pytest.raises(LmscaleError):
        estimate_cost(1e20, "a100", utilisation=1.5)
    with pytest.raises(LmscaleError, match="unknown device"):
        estimate_cost(1e20, "b200x")
    with pytest.raises(LmscaleError):
        estimate_cost(1e20, "a100", devices=0)
    assert main(["cost", "--preset", "gpt2-small", "--json"]) == 2
    assert "--tokens" in capsys.readouterr().err
