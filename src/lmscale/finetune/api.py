"""Where a fine-tuning run's body comes from (checkpoint or random preset) and T5-style mixtures."""
from __future__ import annotations

import copy
from typing import Any, Iterable, Optional, Sequence

import torch

from lmscale.config import apply_overrides, load_preset
from lmscale.errors import LmscaleError
from lmscale.finetune.tasks import Example, TaskData, TaskSpec, sample_mixture, text_to_text_examples
from lmscale.models import build_model, family_spec
from lmscale.models.loading import load
from lmscale.tokenization import Tokenizer, train_tokenizer


def random_body(model_cfg, tokenizer, seed: int = 0, fit_vocab: bool = True):
    """A freshly initialised model of `model_cfg`'s shape for `tokenizer`.

    `fit_vocab` sizes the vocabulary to the tokenizer (a preset's default vocabulary is larger
    than a tokenizer trained on one task); without it the shape is kept exactly, as a
    like-for-like baseline of a pretrained checkpoint needs.
    """
    cfg = copy.deepcopy(model_cfg)
    if fit_vocab or cfg.vocab_size < tokenizer.vocab_size:
        cfg.vocab_size = tokenizer.vocab_size
        cfg.pad_token_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        if family_spec(cfg).is_encoder_decoder:
            cfg.decoder_start_token_id = cfg.pad_token_id
    torch.manual_seed(seed)
    return build_model(cfg)


def load_body(
    checkpoint: Optional[str] = None,
    preset: Optional[str] = None,
    tokenizer: Any = None,
    overrides: Optional[dict[str, Any]] = None,
    train_texts: Optional[Iterable[str]] = None,
    vocab_size: int = 4096,
    seed: int = 0,
):
    """`(model, tokenizer)` from a checkpoint (ours or `transformers`), or a random preset.

    A preset has no tokenizer of its own: pass one (object or directory), or one is trained on
    the task's training texts, as the kind the family uses (WordPiece / BPE / Unigram).
    """
    if checkpoint:
        body, tok = load(checkpoint)
        if tokenizer is not None:
            tok = _as_tokenizer(tokenizer)
        if tok is None:
            raise LmscaleError(f"{checkpoint}: no tokenizer in the checkpoint; pass one")
        return body, tok
    if not preset:
        raise LmscaleError("give a checkpoint or a preset")
    run_cfg = load_preset(preset)
    if overrides:
        run_cfg = apply_overrides(run_cfg, overrides)
    model_cfg = run_cfg.model
    if tokenizer is not None:
        tok = _as_tokenizer(tokenizer)
    else:
        if train_texts is None:
            raise LmscaleError(f"--preset {preset}: pass --tokenizer DIR (no texts to train one on)")
        kind = run_cfg.tokenizer_kind
        tok = train_tokenizer(kind, list(train_texts), vocab_size=min(vocab_size, model_cfg.vocab_size),
                              lowercase=run_cfg.tokenizer.lowercase, min_frequency=2)
    return random_body(model_cfg, tok, seed), tok


def _as_tokenizer(tokenizer: Any):
    if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
        return Tokenizer.load(tokenizer)
    return tokenizer


def mixture_task(
    tasks: dict[str, TaskData],
    cap: Optional[int] = None,
    size: Optional[int] = None,
    seed: int = 0,
    label_words: Optional[Sequence[str]] = None,
    temperature: float = 1.0,
) -> TaskData:
    """T5 multi-task training: every task cast as text-to-text with its name as prefix
    (`sst2 sentence: ...` -> `1`), the training examples drawn by examples-proportional mixing
    with cap K; dev/test are the union of the tasks' splits (exact match)."""
    if not tasks:
        raise LmscaleError("a mixture needs at least one task")
    train = {name: text_to_text_examples(t, "train", label_words if t.kind == "classification" else None)
             for name, t in tasks.items()}
    total = size or sum(min(len(v), cap) if cap else len(v) for v in train.values())
    splits: dict[str, list[Example]] = {"train": sample_mixture(train, total, seed, cap, temperature)}
    for split in ("dev", "test"):
        if all(split in t.splits for t in tasks.values()):
            splits[split] = [e for name, t in tasks.items()
                             for e in text_to_text_examples(t, split,
                                                            label_words if t.kind == "classification" else None)]
    name = "+".join(tasks)
    return TaskData(name=name, spec=TaskSpec(kind="text-to-text"), splits=splits, labels=None,
                    files={f"{n}:{s}": f for n, t in tasks.items() for s, f in t.files.items()})
