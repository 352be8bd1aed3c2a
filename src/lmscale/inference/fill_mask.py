"""Fill-mask: the masked-language-model head asked directly, as in the lecture's tables.

Probabilities are a softmax over the whole vocabulary at each masked position (all masks are
predicted in the same forward pass, each independently), which is what `transformers`'
fill-mask pipeline reports, so the numbers can be compared one to one.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from lmscale.errors import LmscaleError

BLANK = re.compile(r"_{3,}")  # the lecture writes the blank as ___


def _mask_token(tokenizer: Any) -> str:
    mask_id = getattr(tokenizer, "mask_id", None)
    if mask_id is None:
        raise LmscaleError("this tokenizer has no [MASK] token; fill-mask needs an encoder (BERT-style) checkpoint")
    return tokenizer.id_to_token(mask_id)


def prepare_text(text: str, tokenizer: Any) -> str:
    """Replace the lecture's `___` blanks (and a literal `[MASK]`) with the tokenizer's mask token."""
    mask = _mask_token(tokenizer)
    text = BLANK.sub(mask, text)
    return text.replace("[MASK]", mask) if mask != "[MASK]" else text


def _target_ids(tokenizer: Any, targets: Sequence[str]) -> list[tuple[int, str, bool]]:
    out = []
    for word in targets:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if not ids:
            raise LmscaleError(f"target {word!r} encodes to no tokens")
        out.append((int(ids[0]), word, len(ids) > 1))
    return out


def _token_str(tokenizer: Any, tid: int) -> str:
    s = tokenizer.decode([tid], skip_special_tokens=False).strip()
    return s or tokenizer.id_to_token(tid)


def _predict(
    model: Any,
    tokenizer: Any,
    text: str,
    top_k: int,
    targets: Sequence[str] | None,
) -> tuple[list[int], list[int], list[list[tuple[int, float, str | None]]]]:
    """-> (input ids, mask positions, per mask `(token id, probability, word when the id is only
    the first sub-token of a target)` best first)."""
    if top_k < 1:
        raise LmscaleError(f"top_k={top_k} must be at least 1")
    text = prepare_text(text, tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=True)
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise LmscaleError("no mask in the text; write [MASK] (or ___) where a word should be predicted")
    limit = getattr(model.config, "max_positions", None)
    if limit and len(ids) > limit:
        raise LmscaleError(f"the text is {len(ids)} tokens; this model reads at most {limit}")
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(x)}
    if getattr(model.config, "type_vocab_size", 0):
        kwargs["token_type_ids"] = torch.zeros_like(x)
    model.eval()
    with torch.inference_mode():
        logits = model(input_ids=x, **kwargs).logits[0, positions]
    probs = torch.softmax(logits.float(), dim=-1)
    chosen = _target_ids(tokenizer, targets) if targets else None
    out: list[list[tuple[int, float, str | None]]] = []
    for row in probs:
        if chosen is not None:
            cand = torch.tensor([c[0] for c in chosen], device=row.device)
            vals, order = torch.topk(row[cand], min(top_k, len(chosen)))
            out.append([(chosen[j][0], float(v), chosen[j][1] if chosen[j][2] else None)
                        for v, j in zip(vals.tolist(), order.tolist())])
        else:
            vals, idx = torch.topk(row, min(top_k, row.numel()))
            out.append([(int(t), float(v), None) for v, t in zip(vals.tolist(), idx.tolist())])
    return ids, positions, out


def fill_mask(
    model: Any,
    tokenizer: Any,
    text: str,
    top_k: int = 5,
    targets: Sequence[str] | None = None,
) -> list[list[dict]]:
    """One list per mask, in text order, of `{"token", "token_id", "probability"}` best first.

    With `targets`, only those words are scored (each by its first sub-token; such entries carry
    `"first_subtoken_of": word` so a multi-token word is never silently mistaken for one token).
    `fill_mask_pipeline` gives the same predictions in the shape of transformers' pipeline.
    """
    _, _, predictions = _predict(model, tokenizer, text, top_k, targets)
    results: list[list[dict]] = []
    for row in predictions:
        entries = []
        for tid, prob, word in row:
            e: dict[str, Any] = {"token": _token_str(tokenizer, tid), "token_id": tid, "probability": prob}
            if word is not None:
                e["first_subtoken_of"] = word
            entries.append(e)
        results.append(entries)
    return results


def fill_mask_pipeline(
    model: Any,
    tokenizer: Any,
    text: str,
    top_k: int = 5,
    targets: Sequence[str] | None = None,
) -> list[dict] | list[list[dict]]:
    """The predictions of `fill_mask` shaped as `transformers`' fill-mask pipeline returns them:
    `{"score", "token" (the id), "token_str", "sequence" (the text with this token in the blank)}`
    best first; a list of these for one mask, one such list per mask for several (where, as there,
    the other masks and the special tokens stay in `sequence`)."""
    ids, positions, predictions = _predict(model, tokenizer, text, top_k, targets)
    single = len(positions) == 1
    pad = getattr(tokenizer, "pad_id", None)
    results: list[list[dict]] = []
    for pos, row in zip(positions, predictions):
        entries = []
        for tid, prob, word in row:
            filled = [tid if i == pos else t for i, t in enumerate(ids)]
            filled = [t for t in filled if t != pad]
            e: dict[str, Any] = {"score": prob, "token": tid, "token_str": tokenizer.decode([tid]),
                                 "sequence": tokenizer.decode(filled, skip_special_tokens=single)}
            if word is not None:
                e["first_subtoken_of"] = word
            entries.append(e)
        results.append(entries)
    return results[0] if single else results
