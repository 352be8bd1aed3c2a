"""Model shapes for a target parameter count by one width/depth rule, for every family.

Scaling laws compare models that differ in size but not in kind: Kaplan et al. 2020 (Fig. 5)
found loss depends only weakly on the shape at fixed N as long as the aspect ratio d_model /
n_layers stays in a broad band, so a sweep keeps that ratio (and the FFN ratio, and the head
width rule) fixed and lets N alone vary. The base config supplies everything else (family,
vocabulary, positions, norms, GLU, ...), and parameters are counted exactly by the config
(`ModelConfig.parameter_counts`), so the shape hits the target within a few percent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from lmscale.config import ConfigError, ModelConfig

# d_model / n_layers; encoder-decoders count one stack's depth (both stacks get n_layers).
DEFAULT_ASPECT_RATIO = {"decoder": 32.0, "encoder": 32.0, "encoder-decoder": 32.0}


@dataclass(frozen=True)
class ShapeRule:
    """How width and depth grow together.

    `aspect_ratio` = d_model / n_layers (None: the family default); `ffn_ratio` = d_ff / d_model;
    heads are ~`d_model / 4` wide up to `max_head_dim` (so tiny models keep 4 heads and large ones
    64-wide heads); widths are multiples of `width_multiple`; `tolerance` is the largest relative
    miss of the target N a shape may have while the aspect ratio is being matched; when no shape
    within `aspect_band` (a factor) of the aspect ratio meets it (small models, whose width steps
    are coarse), the closest shape inside the band is taken instead.
    """

    aspect_ratio: float | None = None
    ffn_ratio: float = 4.0
    max_head_dim: int = 64
    min_head_dim: int = 16
    width_multiple: int = 4
    min_layers: int = 1
    max_layers: int = 96
    tolerance: float = 0.02
    aspect_band: float = 2.0
    count: str = "non_embedding"  # which N the target refers to: non_embedding | total


def _params(cfg: ModelConfig, which: str) -> int:
    return cfg.parameter_counts()["non_embedding" if which == "non_embedding" else "total"]


def _head_target(d_model: int, rule: ShapeRule) -> float:
    return min(rule.max_head_dim, max(rule.min_head_dim, d_model / 4))


def _n_heads(d_model: int, rule: ShapeRule) -> int | None:
    """Heads of even width within 1.5x of the rule's head width, or None if `d_model` has none."""
    t = _head_target(d_model, rule)
    best = None
    for h in range(max(1, int(d_model / (1.5 * t))), int(d_model / (t / 1.5)) + 2):
        if h <= d_model and d_model % h == 0 and (d_model // h) % 2 == 0:
            if best is None or abs(math.log(d_model / h / t)) < abs(math.log(d_model / best / t)):
                best = h
    return best


@lru_cache(maxsize=16)
def _widths(rule: ShapeRule, limit: int = 1 << 16) -> tuple[int, ...]:
    q = rule.width_multiple
    return tuple(d for d in range(q, limit + 1, q) if _n_heads(d, rule) is not None)


def make_shape(base: ModelConfig, d_model: int, n_layers: int, rule: ShapeRule = ShapeRule()) -> ModelConfig:
    """`base` with the given width and depth, heads and FFN width by `rule`."""
    kw = dict(d_model=d_model, n_layers=n_layers, n_heads=_n_heads(d_model, rule), d_head=None,
              d_ff=max(rule.width_multiple, int(round(rule.ffn_ratio * d_model))))
    if base.n_decoder_layers is not None:  # an encoder-decoder: both stacks get the depth
        kw["n_decoder_layers"] = n_layers
    return replace(base, **kw)


def shape_for(target: float, base: ModelConfig, rule: ShapeRule = ShapeRule()) -> ModelConfig:
    """A `base`-family config with ~`target` parameters (non-embedding by default) at the rule's aspect ratio.

    For each depth the width closest to the target is found (counts grow monotonically with
    width); among the shapes within `rule.tolerance` of the target the one nearest the aspect
    ratio wins, else the nearest in N.
    """
    if not target > 0 or not math.isfinite(target):
        raise ConfigError(f"target parameter count must be a positive number, got {target!r}")
    if rule.count not in ("non_embedding", "total"):
        raise ConfigError(f"shape rule count={rule.count!r} must be non_embedding or total")
    aspect = rule.aspect_ratio or DEFAULT_ASPECT_RATIO.get(base.family, 32.0)
    widths = _widths(rule)
    candidates: list[tuple[float, float, ModelConfig]] = []
    for layers in range(rule.min_layers, rule.max_layers + 1):
        lo, hi = 0, len(widths) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if _params(make_shape(base, widths[mid], layers, rule), rule.count) < target:
                lo = mid + 1
            else:
                hi = mid
        for i in {max(0, lo - 1), lo}:
            cfg = make_shape(base, widths[i], layers, rule)
            err = abs(math.log(_params(cfg, rule.count) / target))
            candidates.append((err, abs(math.log((widths[i] / layers) / aspect)), cfg))
        if widths[lo] < layers * aspect / 8:  # far too deep for this width already
            break
    close = [c for c in candidates if c[0] <= math.log1p(rule.tolerance)]
    in_band = [c for c in candidates if c[1] <= math.log(rule.aspect_band)]
    close_in_band = [c for c in in_band if c[0] <= math.log1p(rule.tolerance)]
    if close_in_band:
        return min(close_in_band, key=lambda c: (c[1], c[0]))[2]
    if in_band:
        # small models: width steps are coarse, so no sane shape may land within the tolerance;
        # a near miss in a sane shape beats a close hit at L8-d40
        return min(in_band, key=lambda c: (c[0], c[1]))[2]
    if close:
        return min(close, key=lambda c: (c[1], c[0]))[2]
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def describe(cfg: ModelConfig) -> str:
    return f"L{cfg.n_layers}-d{cfg.d_model}-h{cfg.n_heads}-ff{cfg.ffn_dim}"
