"""The three model families (encoder, decoder, encoder-decoder) over shared blocks.

`build_model(cfg)` picks the class from `cfg.family`; checkpoints load with `lmscale.load(path)`.

Layout: `blocks` (the architecture's layers), `kernels` (how the heavier operations run),
`base`/`encoder`/`decoder`/`encdec` (the families), `serialization` (lmscale model directories),
`hf` (transformers conversion) and `loading` (either kind of directory, or a run directory).
"""
from __future__ import annotations

from torch import nn

from lmscale.config import ModelConfig
from lmscale.models.base import ModelOutput
from lmscale.models.decoder import DecoderModel
from lmscale.models.encdec import EncoderDecoderModel
from lmscale.models.encoder import EncoderModel


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "decoder":
        return DecoderModel(cfg)
    if cfg.family == "encoder":
        return EncoderModel(cfg)
    if cfg.family == "encoder-decoder":
        return EncoderDecoderModel(cfg)
    raise ValueError(f"unknown model family {cfg.family!r}")


__all__ = ["build_model", "ModelOutput", "DecoderModel", "EncoderModel", "EncoderDecoderModel"]
