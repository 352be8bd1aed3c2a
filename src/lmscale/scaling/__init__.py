"""Scaling science: exact counting, cost and carbon, scaling-law fits, compute-optimal allocation.

Only the core modules are imported here. The rest are imported by their own names: `runs` (the
one reader of runs tables: registry, its CSV export, any CSV), `fitting` (Chinchilla fits with
their held-out check), `registry`, `emergence`, `plots` and `report` (matplotlib).
"""
from __future__ import annotations

from lmscale.scaling.allocation import (
    closed_form,
    compute_optimal,
    inference_aware,
    repeated_data,
    rule_of_thumb,
)
from lmscale.scaling.cost import DEVICES, CostEstimate, Device, estimate_cost, get_device, implied_utilisation
from lmscale.scaling.counting import (
    CONVENTIONS,
    count_parameters,
    flops_per_token,
    parameter_breakdown,
    training_flops,
)
from lmscale.scaling.laws import (
    COARSE_GRID,
    HOFFMANN_GRID,
    LAWS,
    BootstrapResult,
    BrokenPowerLaw,
    ChinchillaLaw,
    DataConstrainedLaw,
    EnvelopeAllocation,
    FitError,
    IsoFLOPAllocation,
    KaplanLaw,
    PowerLaw,
    make_law,
)

__all__ = [
    "CONVENTIONS", "count_parameters", "flops_per_token", "parameter_breakdown", "training_flops",
    "DEVICES", "CostEstimate", "Device", "estimate_cost", "get_device", "implied_utilisation",
    "COARSE_GRID", "HOFFMANN_GRID", "LAWS", "BootstrapResult", "BrokenPowerLaw", "ChinchillaLaw",
    "DataConstrainedLaw", "EnvelopeAllocation", "FitError", "IsoFLOPAllocation", "KaplanLaw", "PowerLaw",
    "make_law", "closed_form", "compute_optimal", "inference_aware", "repeated_data", "rule_of_thumb",
]
