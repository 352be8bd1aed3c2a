"""Model families over shared blocks, each declared once as a `FamilySpec` in one registry.

`build_model(cfg)` builds `cfg.family` through its spec; `family_spec(model_or_cfg)` answers what a
family can do; `register_family(spec)` adds an architecture. Checkpoints load with `lmscale.load(path)`.

Layout: `spec` (the registry and the forward protocol), `families` (the built-in specs),
`blocks` (the architecture's layers), `kernels` (how the heavier operations run),
`base`/`encoder`/`decoder`/`encdec` (the model classes), `serialization` (lmscale model
directories), `hf` (transformers conversion, one module per architecture) and `loading` (either
kind of directory, or a run directory).
"""
from __future__ import annotations

from lmscale.models import families as _families  # noqa: F401  (registers the built-ins)
from lmscale.models.base import ModelOutput
from lmscale.models.decoder import DecoderModel
from lmscale.models.encdec import EncoderDecoderModel
from lmscale.models.encoder import EncoderModel
from lmscale.models.spec import (
    FamilySpec,
    LanguageModel,
    build_model,
    family_name,
    family_names,
    family_spec,
    register_family,
    unregister_family,
)

__all__ = [
    "DecoderModel", "EncoderDecoderModel", "EncoderModel", "FamilySpec", "LanguageModel", "ModelOutput",
    "build_model", "family_name", "family_names", "family_spec", "register_family", "unregister_family",
]
