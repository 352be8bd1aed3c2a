"""Fine-tuning: task heads for all three families, task loaders, GLUE metrics.

The trainer and model loading (torch) are imported on first use of their names, so task files
and metrics can be read without torch.
"""
from __future__ import annotations

import importlib

from lmscale.finetune.metrics import (
    accuracy,
    classification_metrics,
    f1,
    matthews_corrcoef,
    pearson,
    regression_metrics,
    spearman,
)
from lmscale.finetune.tasks import (
    Example,
    TaskData,
    TaskSpec,
    load_task,
    mixing_rates,
    read_inputs,
    sample_mixture,
    text_to_text_examples,
)

_LAZY = {
    "FinetuneConfig": "lmscale.finetune.trainer",
    "FinetunedModel": "lmscale.finetune.trainer",
    "finetune": "lmscale.finetune.trainer",
    "load_body": "lmscale.finetune.api",
    "random_body": "lmscale.finetune.api",
    "mixture_task": "lmscale.finetune.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "Example", "TaskData", "TaskSpec", "load_task", "read_inputs", "mixing_rates", "sample_mixture",
    "text_to_text_examples", "accuracy", "f1", "matthews_corrcoef", "pearson", "spearman",
    "classification_metrics", "regression_metrics", *_LAZY,
]
