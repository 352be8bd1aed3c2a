"""Training cost, energy and carbon from FLOPs: the arithmetic behind "how much did it cost".

    device-hours = FLOPs / (peak FLOP/s x utilisation) / 3600
    wall-clock   = device-hours / number of devices
    dollars      = device-hours x price per device-hour
    energy (kWh) = device-hours x power (kW) x PUE
    CO2e (kg)    = energy x grid carbon intensity (kg/kWh)

Every default is overridable; the defaults are *typical*, not measured on your system. Sources:

- Peak FLOP/s and board power: NVIDIA data sheets (V100 SXM2: 15.7 TF fp32, 125 TF fp16 tensor,
  300 W; A100 SXM4 80GB: 19.5 TF fp32, 156 TF tf32, 312 TF bf16/fp16, 400 W; H100 SXM5: 67 TF fp32,
  495 TF tf32, 989 TF bf16/fp16, 1,979 TF fp8 (dense), 700 W; H200 SXM: H100's compute, 700 W);
  Google TPU system-architecture pages and Jouppi et al. 2020 / 2023 (TPU v2: 46 TF bf16, 280 W;
  v3: 123 TF bf16, 450 W; v4: 275 TF bf16, ~192 W). CPU entry: one 64-core AMD EPYC 7763 socket,
  64 cores x 2.45 GHz x 32 fp32 FLOP/cycle (two 256-bit FMA pipes) ~ 5.0 TF fp32, 280 W TDP.
- Prices: representative on-demand cloud rates per device-hour in 2024 (AWS p3 for V100; common
  GPU-cloud list prices for A100/H100/H200; Google Cloud TPU list prices). They vary by a factor
  of 2-3 across providers and commitments: override with `price_per_hour`.
- Utilisation: 0.4 model-FLOPs utilisation, a typical well-tuned large-model run (PaLM reports
  46%, GPT-3-era V100 runs ~20%: Patterson et al. 2021 give 24.6 TFLOP/s sustained per V100).
- PUE 1.1 (Google's and Microsoft's hyperscale data centres, Patterson et al. 2021, Table 4);
  grid intensity 0.429 kg CO2e/kWh (the US average Patterson et al. 2021 use for GPT-3).

Checks against published figures (tests): Patterson et al. 2021 estimate GPT-3's training at
1,287 MWh and 552 tCO2e with 10,000 V100s at 330 W, PUE 1.1, 0.429 kg/kWh and 24.6 TFLOP/s per
GPU on 3.14e23 FLOPs; `estimate_cost` reproduces both when given those inputs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lmscale.errors import LmscaleError

DEFAULT_UTILISATION = 0.4
DEFAULT_PUE = 1.1
DEFAULT_GRID_KG_PER_KWH = 0.429


@dataclass(frozen=True)
class Device:
    """One accelerator: peak dense FLOP/s by dtype, board power, typical price."""

    name: str
    peak_flops: dict[str, float]
    power_w: float
    price_per_hour: float
    default_dtype: str
    description: str = ""
    source: str = ""

    def peak(self, dtype: str | None = None) -> float:
        d = dtype or self.default_dtype
        if d not in self.peak_flops:
            raise LmscaleError(f"device {self.name} has no peak for dtype {d!r}; "
                               f"choose from {', '.join(self.peak_flops)}")
        return self.peak_flops[d]


DEVICES: dict[str, Device] = {
    "v100": Device("v100", {"fp64": 7.8e12, "fp32": 15.7e12, "fp16": 125e12}, 300.0, 3.06, "fp16",
                   "NVIDIA V100 SXM2 32GB", "NVIDIA V100 data sheet; AWS p3 on-demand"),
    "a100": Device("a100", {"fp64": 9.7e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
                   400.0, 2.00, "bf16", "NVIDIA A100 SXM4 80GB", "NVIDIA A100 data sheet"),
    "h100": Device("h100", {"fp64": 34e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12,
                            "fp8": 1978.9e12}, 700.0, 3.00, "bf16", "NVIDIA H100 SXM5 80GB",
                   "NVIDIA H100 data sheet (dense, without sparsity)"),
    "h200": Device("h200", {"fp64": 34e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12,
                            "fp8": 1978.9e12}, 700.0, 3.50, "bf16", "NVIDIA H200 SXM 141GB",
                   "NVIDIA H200 data sheet (H100 compute, larger HBM3e)"),
    "tpu-v2": Device("tpu-v2", {"bf16": 46e12, "fp32": 46e12 / 4}, 280.0, 1.125, "bf16", "Google TPU v2 chip",
                     "Jouppi et al. 2020 (CACM), Google Cloud TPU pricing"),
    "tpu-v3": Device("tpu-v3", {"bf16": 123e12, "fp32": 123e12 / 4}, 450.0, 2.00, "bf16", "Google TPU v3 chip",
                     "Jouppi et al. 2020 (CACM), Google Cloud TPU pricing"),
    "tpu-v4": Device("tpu-v4", {"bf16": 275e12, "int8": 275e12}, 192.0, 3.22, "bf16", "Google TPU v4 chip",
                     "Jouppi et al. 2023 (ISCA), Google Cloud TPU pricing"),
    "cpu": Device("cpu", {"fp32": 5.0e12, "fp64": 2.5e12}, 280.0, 1.50, "fp32",
                  "one AMD EPYC 7763 socket (64 cores, AVX2 FMA)", "AMD EPYC 7763 specifications"),
}
"""Device table; keys are what `--device` accepts."""


def get_device(name: str) -> Device:
    key = name.lower().replace("_", "-")
    key = {"tpuv2": "tpu-v2", "tpuv3": "tpu-v3", "tpuv4": "tpu-v4", "v3": "tpu-v3", "v4": "tpu-v4"}.get(key, key)
    if key not in DEVICES:
        raise LmscaleError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return DEVICES[key]


@dataclass
class CostEstimate:
    flops: float
    device: str
    dtype: str
    peak_flops: float
    utilisation: float
    devices: int
    device_hours: float
    wall_clock_hours: float
    usd: float
    energy_kwh: float
    co2e_kg: float
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_clock_days(self) -> float:
        return self.wall_clock_hours / 24.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wall_clock_days"] = self.wall_clock_days
        return d


def _positive(name: str, v: float) -> float:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise LmscaleError(f"{name}={v!r} must be a positive number")
    return float(v)


def estimate_cost(
    flops: float,
    device: str = "a100",
    *,
    dtype: str | None = None,
    devices: int = 1,
    utilisation: float | None = None,
    peak_flops: float | None = None,
    sustained_flops: float | None = None,
    power_w: float | None = None,
    price_per_hour: float | None = None,
    pue: float = DEFAULT_PUE,
    grid_kg_per_kwh: float = DEFAULT_GRID_KG_PER_KWH,
) -> CostEstimate:
    """Hours, dollars, energy and CO2e for `flops` of training on `devices` x `device`.

    `sustained_flops` (achieved FLOP/s per device) overrides peak x utilisation, which is how
    Patterson et al. state their inputs.
    """
    flops = _positive("flops", flops)
    dev = get_device(device)
    dt = dtype or dev.default_dtype
    peak = _positive("peak_flops", peak_flops) if peak_flops is not None else dev.peak(dt)
    if sustained_flops is not None:
        sustained = _positive("sustained_flops", sustained_flops)
        util = sustained / peak
    else:
        util = _positive("utilisation", utilisation if utilisation is not None else DEFAULT_UTILISATION)
        if util > 1:
            raise LmscaleError(f"utilisation={util} must be at most 1 (a fraction of peak)")
        sustained = peak * util
    if not isinstance(devices, int) or devices < 1:
        raise LmscaleError(f"devices={devices!r} must be a positive integer")
    power = _positive("power_w", power_w) if power_w is not None else dev.power_w
    price = float(price_per_hour) if price_per_hour is not None else dev.price_per_hour
    if not price >= 0 or not math.isfinite(price):
        raise LmscaleError(f"price_per_hour={price} must not be negative")
    pue = _positive("pue", pue)
    if pue < 1.0:
        raise LmscaleError(f"pue={pue} must be at least 1 (total facility energy over the IT equipment's)")
    if grid_kg_per_kwh < 0 or not math.isfinite(grid_kg_per_kwh):
        raise LmscaleError(f"grid_kg_per_kwh={grid_kg_per_kwh} must be a non-negative number")
    device_hours = flops / sustained / 3600.0
    energy = device_hours * power / 1000.0 * pue
    return CostEstimate(
        flops=flops, device=dev.name, dtype=dt, peak_flops=peak, utilisation=util, devices=devices,
        device_hours=device_hours, wall_clock_hours=device_hours / devices, usd=device_hours * price,
        energy_kwh=energy, co2e_kg=energy * grid_kg_per_kwh,
        assumptions={"power_w": power, "price_per_hour": price, "pue": pue,
                     "grid_kg_per_kwh": grid_kg_per_kwh, "sustained_flops_per_device": sustained},
    )


def implied_utilisation(flops: float, device: str, devices: int, days: float, dtype: str | None = None) -> float:
    """The utilisation a published "K chips for T days" claim implies for `flops` of training."""
    dev = get_device(device)
    return _positive("flops", flops) / (dev.peak(dtype) * devices * _positive("days", days) * 86400.0)
