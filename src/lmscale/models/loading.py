"""Load any model directory the tool meets: an lmscale model directory, a training run directory
(its best checkpoint, else its newest) or a `transformers` directory (converted on the fly), so
every command takes any of the three. `lmscale.load` is this function."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmscale.models.hf import from_hf, is_hf_dir
from lmscale.models.serialization import load_model_dir


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """`(model, tokenizer or None)` from a model dir, a run dir or a `transformers` dir; model in eval mode."""
    p = Path(path)
    if p.is_dir() and is_hf_dir(p):
        model, tokenizer = from_hf(p)
        return model.to(device).eval(), tokenizer
    return load_model_dir(p, device)
