"""lmscale: the pretraining paradigm on your own machine, then scaled up."""
from __future__ import annotations

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a checkpoint directory (or a run directory) as `(model, tokenizer)`."""
    from lmscale.models.serialization import load as _load

    return _load(path, device=device)


__all__ = ["load", "__version__"]
