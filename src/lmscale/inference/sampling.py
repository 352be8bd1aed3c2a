"""Turning next-token logits into a choice: repetition penalty, temperature, top-k, top-p.

The order and the arithmetic follow `transformers`' logits processors (repetition penalty on the raw
logits, then temperature, top-k and nucleus filtering), so a setting means the same thing here as
in the papers and tools people compare against.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lmscale.errors import LmscaleError


@dataclass
class SamplingConfig:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off; CTRL's penalty (Keskar et al. 2019)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise LmscaleError(f"temperature={self.temperature} must be > 0 (use --greedy for argmax)")
        if self.top_k < 0:
            raise LmscaleError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise LmscaleError(f"top_p={self.top_p} must be in (0, 1]")
        if not self.repetition_penalty > 0:
            raise LmscaleError(f"repetition_penalty={self.repetition_penalty} must be > 0")


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already in the sequence less likely: positive logits are divided by the
    penalty and negative ones multiplied, so the push is always downwards."""
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    squeeze = logits.dim() == 1
    if squeeze:
        logits, prev_ids = logits.unsqueeze(0), prev_ids.reshape(1, -1)
    score = torch.gather(logits, 1, prev_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    score = score.clamp(max=torch.finfo(score.dtype).max)  # a tiny penalty must not make a logit +inf (NaN softmax)
    logits = logits.scatter(1, prev_ids, score)
    return logits[0] if squeeze else logits


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of tokens whose probability
    mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)
    remove[..., -min_keep:] = False
    remove = remove.scatter(-1, sorted_idx, remove)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, prev_ids: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The full warp pipeline; greedy decoding only applies the repetition penalty."""
    logits = apply_repetition_penalty(logits.float(), prev_ids, cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    if cfg.temperature != 1.0:
        scaled = logits / cfg.temperature
        if not bool(torch.isfinite(scaled.amax(dim=-1)).all()):  # a tiny temperature overflows: shift
            # first (the same softmax), in float64, where 1e-300 is not 0
            shifted = (logits.double() - logits.double().amax(dim=-1, keepdim=True)) / cfg.temperature
            scaled = shifted.clamp(min=torch.finfo(logits.dtype).min).to(logits.dtype)
        logits = scaled
    logits = top_k_filter(logits, cfg.top_k)
    return top_p_filter(logits, cfg.top_p)


def choose_token(logits: torch.Tensor, prev_ids: Sequence[int], cfg: SamplingConfig,
                 generator: torch.Generator | None) -> int:
    """The next token after `prev_ids`; their tensor is built only for a repetition penalty (the
    one step that reads them), not once per token of every generation."""
    prev = (torch.tensor(list(prev_ids), dtype=torch.long, device=logits.device) if cfg.repetition_penalty != 1.0
            else logits.new_empty(0, dtype=torch.long))
    logits = process_logits(logits, prev, cfg)
    if cfg.greedy:
        return int(torch.argmax(logits, dim=-1))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
