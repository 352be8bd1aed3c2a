"""lmscale: the pretraining paradigm on your own machine, then scaled up."""
from __future__ import annotations

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a model directory, a run directory or a `transformers` directory as `(model, tokenizer)`."""
    # on use: `import lmscale` (and so every `lmscale` command, `--help` included) stays free of torch
    from lmscale.models.loading import load as _load  # noqa: PLC0415

    return _load(path, device=device)


__all__ = ["load", "__version__"]
