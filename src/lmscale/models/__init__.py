"""The three model families (encoder, decoder, encoder-decoder) over shared blocks.

`build_model(cfg)` picks the class from `cfg.family`; checkpoints load with `lmscale.load(path)`.
"""
from __future__ import annotations

from torch import nn

from lmscale.config import ModelConfig
from lmscale.models.base import ModelOutput
from lmscale.models.decoder import DecoderModel


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "decoder":
        return DecoderModel(cfg)
    if cfg.family == "encoder":
        from lmscale.models.encoder import EncoderModel

        return EncoderModel(cfg)
    if cfg.family == "encoder-decoder":
        from lmscale.models.encdec import EncoderDecoderModel

        return EncoderDecoderModel(cfg)
    raise ValueError(f"unknown model family {cfg.family!r}")


def __getattr__(name: str):
    if name == "EncoderModel":
        from lmscale.models.encoder import EncoderModel

        return EncoderModel
    if name == "EncoderDecoderModel":
        from lmscale.models.encdec import EncoderDecoderModel

        return EncoderDecoderModel
    raise AttributeError(name)


__all__ = ["build_model", "ModelOutput", "DecoderModel", "EncoderModel", "EncoderDecoderModel"]
