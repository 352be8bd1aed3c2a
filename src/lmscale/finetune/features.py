"""Examples -> token ids for each family, and dynamic-padding batches.

Encoders read `[CLS] a [SEP] b [SEP]` with segment ids, as BERT. Decoders get the GPT input
transformations (Radford et al. 2018): `<|start|> a <|delim|> b <|extract|>`, the classifier
reading the extract token; a symmetric (similarity) pair is encoded in both orders; a multiple
choice example becomes one sequence per answer. Encoder-decoders read `a </s> b </s>` (pooled
head) or a text-to-text prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from lmscale.errors import DataError
from lmscale.finetune.tasks import Example
from lmscale.models.spec import family_spec

GPT_TOKENS = ("<|start|>", "<|delim|>", "<|extract|>")


@dataclass
class Encoded:
    """One example as one or more token sequences (views): 2 for similarity, K for K choices."""

    views: list[list[int]]
    types: list[list[int]]
    label: Any = None
    truncated: bool = False
    target: Optional[list[int]] = None  # text-to-text target ids (ends with eos)


@dataclass
class InputFormat:
    """Everything needed to turn text into ids for one model; saved with a fine-tuned model."""

    family: str
    max_length: int = 64
    input_format: str = "single"  # single | pair | multiple-choice | text-to-text
    symmetric: bool = False  # decoders: run both orders of a pair and add the representations
    padding_side: str = "right"
    special: dict[str, int] = field(default_factory=dict)  # start/delim/extract ids (decoders)
    max_target_length: int = 16

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def add_gpt_tokens(tokenizer) -> dict[str, int]:
    """Add the start/delimiter/extract tokens (idempotent) and return their ids."""
    missing = [t for t in GPT_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    ids = {name: tokenizer.token_to_id(t) for name, t in zip(("start", "delim", "extract"), GPT_TOKENS)}
    return ids


def _truncate(parts: list[list[int]], budget: int) -> tuple[list[list[int]], bool]:
    """Longest-first truncation of the variable parts to `budget` tokens in total."""
    parts = [list(p) for p in parts]
    total = sum(len(p) for p in parts)
    if total <= budget:
        return parts, False
    if budget < len(parts):
        raise DataError(f"max_length leaves room for only {budget} text tokens; raise it")
    while sum(len(p) for p in parts) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[longest].pop()
    return parts, True


class Featurizer:
    """Turns examples into `Encoded` for a given tokenizer and input format."""

    def __init__(self, tokenizer, fmt: InputFormat):
        self.tok = tokenizer
        self.fmt = fmt
        self._ahead: Optional[dict[str, list[int]]] = None  # text -> ids, while `encode_all` runs
        if fmt.padding_side not in ("left", "right"):
            raise DataError(f"padding_side must be left or right, got {fmt.padding_side!r}")
        self.head = family_spec(fmt.family).head
        if self.head == "cls" and (tokenizer.cls_id is None or tokenizer.sep_id is None):
            raise DataError("encoder fine-tuning needs a tokenizer with [CLS] and [SEP] (WordPiece)")
        if self.head == "last_token" and fmt.input_format != "text-to-text" and not fmt.special:
            raise DataError("decoder classification needs the start/delim/extract tokens (add_gpt_tokens)")

    def _ids(self, text: str) -> list[int]:
        if self._ahead is not None and text in self._ahead:
            return self._ahead[text]
        return self.tok.encode(text, add_special_tokens=False)

    def _tokenize_ahead(self, examples: Sequence[Example]) -> None:
        """Tokenize every text of `examples` in one batch call, which the tokenizer runs on its own
        threads, so the per-example encodes that follow look their ids up (the same ids)."""
        batch = getattr(self.tok, "encode_batch_fast", None)
        if batch is None or self.fmt.input_format == "text-to-text":
            return
        texts = sorted({t for ex in examples for t in (ex.text, ex.text_pair, *(ex.choices or ())) if t is not None})
        self._ahead = dict(zip(texts, batch(texts)))

    def _sequence(self, a: list[int], b: Optional[list[int]]) -> tuple[list[int], list[int], bool]:
        L = self.fmt.max_length
        if self.head == "cls":
            cls, sep = self.tok.cls_id, self.tok.sep_id
            if b is None:
                (a,), cut = _truncate([a], L - 2)
                return [cls] + a + [sep], [0] * (len(a) + 2), cut
            (a, b), cut = _truncate([a, b], L - 3)
            return [cls] + a + [sep] + b + [sep], [0] * (len(a) + 2) + [1] * (len(b) + 1), cut
        if self.head == "last_token":
            s = self.fmt.special
            if b is None:
                (a,), cut = _truncate([a], L - 2)
                ids = [s["start"]] + a + [s["extract"]]
            else:
                (a, b), cut = _truncate([a, b], L - 3)
                ids = [s["start"]] + a + [s["delim"]] + b + [s["extract"]]
            return ids, [0] * len(ids), cut
        eos = self.tok.eos_id
        if b is None:
            (a,), cut = _truncate([a], L - 1)
            ids = a + [eos]
        else:
            (a, b), cut = _truncate([a, b], L - 2)
            ids = a + [eos] + b + [eos]
        return ids, [0] * len(ids), cut

    def encode(self, ex: Example) -> Encoded:
        f = self.fmt
        if f.input_format == "text-to-text":
            return self._encode_t2t(ex)
        a = self._ids(ex.text)
        if f.input_format == "multiple-choice":
            if not ex.choices:
                raise DataError(f"{ex.where}: multiple-choice example without choices")
            views, types, cut = [], [], False
            for choice in ex.choices:
                ids, tt, c = self._sequence(a, self._ids(choice))
                views.append(ids)
                types.append(tt)
                cut |= c
            return Encoded(views, types, ex.label, cut)
        b = self._ids(ex.text_pair) if ex.text_pair is not None else None
        ids, tt, cut = self._sequence(a, b)
        views, types = [ids], [tt]
        if f.symmetric and self.head == "last_token" and b is not None:
            ids2, tt2, cut2 = self._sequence(b, a)
            views.append(ids2)
            types.append(tt2)
            cut |= cut2
        return Encoded(views, types, ex.label, cut)

    def _encode_t2t(self, ex: Example) -> Encoded:
        f, eos = self.fmt, self.tok.eos_id
        src = self._ids(ex.text)
        tgt = self._ids(ex.label) + [eos] if isinstance(ex.label, str) else None
        if self.head == "encoder-decoder":
            (src,), cut = _truncate([src], f.max_length - 1)
            ids = src + [eos]
        elif self.head == "last_token":
            s = f.special
            (src,), cut = _truncate([src], f.max_length - 2 - f.max_target_length)
            ids = [s["start"]] + src + [s["delim"]]
        else:
            raise DataError("text-to-text fine-tuning needs a decoder or an encoder-decoder")
        if tgt is not None and len(tgt) > f.max_target_length:
            tgt = tgt[: f.max_target_length - 1] + [eos]
            cut = True
        return Encoded([ids], [[0] * len(ids)], ex.label, cut, tgt)

    def encode_all(self, examples: Sequence[Example]) -> tuple[list[Encoded], int]:
        """Encode a split; returns the encodings and how many examples were truncated."""
        self._tokenize_ahead(examples)
        try:
            out = [self.encode(ex) for ex in examples]
        finally:
            self._ahead = None
        return out, sum(e.truncated for e in out)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              types: Optional[Sequence[Sequence[int]]] = None) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    tt = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
        if types is not None:
            tt[i, sl] = torch.tensor(types[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = tt
    return out


def collate(batch: Sequence[Encoded], pad_id: int, side: str = "right", regression: bool = False) -> dict[str, Any]:
    """Flatten the views of every example into one padded batch; `n_views` restores the grouping."""
    n_views = len(batch[0].views)
    if any(len(e.views) != n_views for e in batch):
        raise DataError("examples in one batch have different numbers of views")
    seqs = [v for e in batch for v in e.views]
    types = [t for e in batch for t in e.types]
    out: dict[str, Any] = pad_batch(seqs, pad_id, side, types)
    out["n_views"] = n_views
    if all(e.label is not None for e in batch):
        out["labels"] = torch.tensor([e.label for e in batch], dtype=torch.float32 if regression else torch.long)
    return out
