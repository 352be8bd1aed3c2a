"""Using a pretrained model: fill-mask (encoders), generation with a KV cache and T5 span infilling."""
from __future__ import annotations

from lmscale.inference.fill_mask import fill_mask, fill_mask_pipeline
from lmscale.inference.generate import (
    GenerationResult,
    InfillResult,
    generate,
    generate_batch,
    infill,
    iter_token_ids,
)
from lmscale.inference.sampling import SamplingConfig

__all__ = ["fill_mask", "fill_mask_pipeline", "generate", "generate_batch", "infill", "iter_token_ids",
           "GenerationResult", "InfillResult", "SamplingConfig"]
