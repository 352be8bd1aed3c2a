"""`lmscale cost`: device-hours, dollars, energy and CO2e of a training run."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import at_least, nonnegative_float, positive_float, positive_int
from lmscale.io import dumps_json

HELP = "estimate training time, dollars, energy and CO2e from FLOPs or a preset and token count"


def _utilisation(text: str) -> float:
    value = positive_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"is a fraction of peak in (0, 1], got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--flops", type=positive_float, help="total training FLOPs")
    src.add_argument("--preset", help="preset name (FLOPs = FLOPs/token x --tokens)")
    src.add_argument("--config", help="YAML config file (FLOPs = FLOPs/token x --tokens)")
    p.add_argument("--tokens", type=positive_float, help="training tokens (with --preset/--config)")
    p.add_argument("--convention", default="6N", help="FLOP convention (see `lmscale count`); default 6N")
    p.add_argument("--seq-len", type=positive_int, default=None, help="context length for per-token conventions")
    p.add_argument("--device", default="a100", help="v100, a100, h100, h200, tpu-v2, tpu-v3, tpu-v4, cpu")
    p.add_argument("--dtype", default=None, help="precision for the peak (default: the device's usual)")
    p.add_argument("--devices", type=positive_int, default=1, help="number of devices (for wall-clock time)")
    p.add_argument("--utilisation", type=_utilisation, default=None, help="fraction of peak achieved (default 0.4)")
    p.add_argument("--sustained-flops", type=positive_float, default=None, help="achieved FLOP/s per device "
                   "(overrides peak x utilisation)")
    p.add_argument("--peak-flops", type=positive_float, default=None, help="override the device's peak FLOP/s")
    p.add_argument("--power-w", type=positive_float, default=None, help="average power per device, watts")
    p.add_argument("--price", type=nonnegative_float, default=None, help="dollars per device-hour")
    p.add_argument("--pue", type=at_least(1.0), default=None, help="data-centre PUE (default 1.1)")
    p.add_argument("--grid", type=nonnegative_float, default=None, help="grid intensity, kg CO2e/kWh (default 0.429)")
    p.add_argument("--days", type=positive_float, default=None, help="published wall-clock days: report the "
                   "utilisation that claim implies")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from lmscale.config import ConfigError
    from lmscale.scaling.cost import DEFAULT_GRID_KG_PER_KWH, DEFAULT_PUE, estimate_cost, implied_utilisation

    if args.flops is not None:
        flops = args.flops
        if args.tokens is not None:
            raise ConfigError("--tokens goes with --preset/--config, not with --flops")
    else:
        from lmscale.cli.commands.count import load_model_config
        from lmscale.scaling.counting import flops_per_token

        if args.tokens is None or not args.tokens > 0:
            raise ConfigError("--tokens (a positive number) is needed with --preset/--config")
        cfg, seq_len, _ = load_model_config(args.preset or args.config)
        try:
            fpt = flops_per_token(cfg, seq_len=args.seq_len or seq_len, convention=args.convention)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        flops = fpt[args.convention] * args.tokens
    est = estimate_cost(
        flops, args.device, dtype=args.dtype, devices=args.devices, utilisation=args.utilisation,
        peak_flops=args.peak_flops, sustained_flops=args.sustained_flops, power_w=args.power_w,
        price_per_hour=args.price, pue=args.pue if args.pue is not None else DEFAULT_PUE,
        grid_kg_per_kwh=args.grid if args.grid is not None else DEFAULT_GRID_KG_PER_KWH,
    )
    out = {"flops": est.flops, "device_hours": est.device_hours, "usd": est.usd, "energy_kwh": est.energy_kwh,
           "co2e_kg": est.co2e_kg, "wall_clock_hours": est.wall_clock_hours, "wall_clock_days": est.wall_clock_days,
           "device": est.device, "devices": est.devices, "dtype": est.dtype, "utilisation": est.utilisation,
           "assumptions": est.assumptions}
    if args.days is not None:
        out["implied_utilisation"] = implied_utilisation(flops, args.device, args.devices, args.days, args.dtype)
    if args.json:
        print(dumps_json(out, indent=2))
        return 0
    print(f"training FLOPs      {est.flops:.4g}")
    print(f"device              {est.devices} x {est.device} ({est.dtype}, peak {est.peak_flops:.3g} FLOP/s, "
          f"utilisation {est.utilisation:.1%})")
    print(f"device-hours        {est.device_hours:,.1f}")
    print(f"wall clock          {est.wall_clock_hours:,.1f} h ({est.wall_clock_days:,.2f} days)")
    print(f"cost                ${est.usd:,.0f}")
    print(f"energy              {est.energy_kwh:,.1f} kWh (PUE {est.assumptions['pue']})")
    print(f"CO2e                {est.co2e_kg:,.1f} kg ({est.assumptions['grid_kg_per_kwh']} kg/kWh)")
    if args.days is not None:
        print(f"implied utilisation {out['implied_utilisation']:.1%} for {args.days} days on {args.devices} devices")
    return 0
