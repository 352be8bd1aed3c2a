"""Predictions for new inputs from a fine-tuned model (the `lmscale predict` library side).

Every prediction carries where its input came from: `row` (1-based among the inputs) and, for a
file, `line` (the line of the file), so predictions can always be joined back to their inputs.
A classification row also has `score`, the probability of its `label`, so it reads as
`transformers`' `text-classification` pipeline output (`[{"label": ..., "score": ...}]`); a
regression row's `score` is the prediction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from lmscale.finetune.tasks import Example, TaskSpec, read_inputs


def _as_pipeline(r: dict[str, Any]) -> dict[str, Any]:
    if "label" in r and "probabilities" in r:
        return {"label": r["label"], "score": r["probabilities"][r["label"]], **r}
    return r


def predict_texts(model, texts: Sequence[str], text_pair: Optional[str] = None,
                  batch_size: int = 128) -> tuple[list[Example], list[dict[str, Any]]]:
    exs = [Example(" ".join(t.split()), text_pair, source="<argv>", line=i + 1) for i, t in enumerate(texts)]
    return exs, [_as_pipeline({"row": i + 1, **r}) for i, r in enumerate(model.predict(exs, batch_size))]


def predict_file(model, path: str | Path, text_column: Optional[str] = None,
                 text_pair_column: Optional[str] = None, fmt: Optional[str] = None,
                 batch_size: int = 128) -> tuple[list[Example], list[dict[str, Any]]]:
    """Read inputs with the columns the model was trained with (unless overridden)."""
    saved = dict(model.meta.get("task_spec") or {})
    spec = TaskSpec(
        kind=saved.get("kind", model.kind),
        text_column=text_column or saved.get("text_column", "sentence"),
        text_pair_column=text_pair_column or saved.get("text_pair_column"),
        choice_columns=saved.get("choice_columns"),
        input_column=text_column or saved.get("input_column", "input"),
        format=fmt,
    )
    exs = read_inputs(path, spec)
    rows = model.predict(exs, batch_size)
    return exs, [_as_pipeline({"row": i + 1, "line": ex.line, **r}) for i, (ex, r) in enumerate(zip(exs, rows))]
