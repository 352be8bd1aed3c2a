"""A frozen-feature probe: a body's pooled features with a ridge classifier on top.

Fine-tuning a 22M-parameter encoder once per training-set size and seed takes minutes on a CPU.
With the body frozen, each example's features are computed once, and every (size, seed) fit is a
closed-form solve, so a pretrained encoder can be compared with its random-weight twin over
several seeds in seconds. The probe measures what the weights already encode, which is the
effect of pretraining itself.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from lmscale.errors import LmscaleError
from lmscale.finetune.features import Featurizer, InputFormat, collate
from lmscale.finetune.heads import body_features
from lmscale.finetune.metrics import accuracy
from lmscale.finetune.tasks import TaskData
from lmscale.models.spec import family_spec


@torch.no_grad()
def pooled_features(body: torch.nn.Module, tokenizer: Any, examples: Sequence[Any], pooling: str = "mean",
                    max_length: int = 64, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """[n, d] float64 features of single-sentence examples (mean of the final hidden states by
    default; the first token, or the last for decoders, when `pooling` says so)."""
    family = body.config.family
    fmt = InputFormat(family=family, max_length=max_length)
    encoded, _ = Featurizer(tokenizer, fmt).encode_all(examples)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    body = body.to(device).eval()
    out = []
    for i in range(0, len(encoded), batch_size):
        b = collate(encoded[i:i + batch_size], pad)
        f = body_features(body, family, pooling, b["input_ids"].to(device), b["attention_mask"].to(device),
                          b.get("token_type_ids", None) if family_spec(family).uses_segments else None)
        out.append(f.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, body.config.d_model))


def ridge_classifier(X: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Least squares onto one-hot targets with an L2 penalty, on standardised features: (W, b)
    for `argmax(X @ W + b)`. Closed form, so the same data always gives the same classifier."""
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-8
    Z = (X - mu) / sd
    T = np.eye(n_classes)[y] - 1.0 / n_classes
    W = np.linalg.solve(Z.T @ Z + l2 * len(Z) * np.eye(Z.shape[1]), Z.T @ T)
    return W / sd[:, None], -(mu / sd) @ W


def probe(body: torch.nn.Module, tokenizer: Any, task: TaskData, sizes: Sequence[Optional[int]],
          seeds: Sequence[int], init: str, pooling: str = "mean", max_length: int = 64, max_train: int = 1000,
          l2: float = 1.0, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Dev accuracy of a ridge probe per (size, seed); `seed` picks which labelled examples of the
    first `max_train` training examples are used. Rows have the shape of the fine-tuning runs'."""
    if task.kind != "classification":
        raise LmscaleError(f"the feature probe is a classifier; {task.name} is a {task.kind} task")
    train, dev = task.splits["train"][:max_train], task.splits["dev"]
    X_train = pooled_features(body, tokenizer, train, pooling, max_length, device=device)
    X_dev = pooled_features(body, tokenizer, dev, pooling, max_length, device=device)
    y_train = np.array([int(e.label) for e in train])
    y_dev = np.array([int(e.label) for e in dev])
    rows = []
    for size in sizes:
        n = len(train) if size is None else min(int(size), len(train))
        for seed in seeds:
            idx = np.random.default_rng(seed).permutation(len(train))[:n]
            W, b = ridge_classifier(X_train[idx], y_train[idx], task.num_labels, l2)
            pred = (X_dev @ W + b).argmax(axis=1)
            rows.append({"kind": "classification", "init": init, "seed": int(seed), "train_examples": n,
                         "dev": {"accuracy": accuracy(y_dev.tolist(), pred.tolist())}, "probe": "ridge",
                         "l2": l2, "pooling": pooling})
    return rows
