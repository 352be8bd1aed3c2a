"""Perplexity of a corpus split, comparable across tokenizers.

Token-level perplexity depends on the tokenizer (a model with a bigger vocabulary predicts fewer,
harder tokens), so alongside it we report the same total negative log-likelihood normalised by
the corpus's whitespace-separated words (word-level perplexity) and by its UTF-8 bytes (bits per
byte). Those two compare models with different tokenizers.

Decoders are scored with a sliding window: every token is predicted exactly once, from at least
`window - stride` tokens of context once the window is full. Encoders have no left-to-right
factorisation; they get pseudo-perplexity (each token masked in turn and predicted from both
sides, Salazar et al. 2020), which is *not* comparable with a decoder's perplexity. Encoder-
decoders predict each chunk of `stride` tokens with the decoder, the preceding text given to the
encoder with a sentinel where the chunk belongs (the span-corruption shape they were trained on).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from lmscale.data.catalog import resolve_corpus
from lmscale.data.readers import expand_paths, is_saved_dataset, iter_file_documents
from lmscale.errors import DataError, LmscaleError
from lmscale.evaluation import results as results_schema
from lmscale.inference.generate import _decoder_start
from lmscale.models.spec import FamilySpec, family_spec


@dataclass
class PerplexityResult:
    kind: str  # perplexity | pseudo-perplexity | conditional perplexity
    nll: float  # total negative log-likelihood in nats
    n_tokens: int  # tokens predicted
    n_words: int
    n_bytes: int
    n_documents: int
    window: int
    stride: int
    n_windows: int

    @property
    def loss(self) -> float:
        return self.nll / max(1, self.n_tokens)

    @property
    def token_perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def word_perplexity(self) -> float | None:
        return math.exp(min(self.nll / self.n_words, 700.0)) if self.n_words else None

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll / (math.log(2) * self.n_bytes) if self.n_bytes else None

    @property
    def byte_perplexity(self) -> float | None:
        return math.exp(min(self.nll / self.n_bytes, 700.0)) if self.n_bytes else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(loss=self.loss, token_perplexity=self.token_perplexity,
                 word_perplexity=self.word_perplexity, byte_perplexity=self.byte_perplexity,
                 bits_per_byte=self.bits_per_byte)
        return d

    def to_harness(self, task: str, *, corpus: str, split: str, model: str = "lmscale",
                   model_args: dict[str, Any] | None = None, model_name: str = "", device: str | None = None,
                   max_tokens: int | None = None, started: float | None = None) -> dict[str, Any]:
        """The result in lm-evaluation-harness's results schema, under the metric names of its
        wikitext task (`word_perplexity`, `byte_perplexity`, `bits_per_byte`; lower is better)
        plus `token_perplexity`; `lmscale` holds every count and the window and stride."""
        metrics = {"word_perplexity": self.word_perplexity, "byte_perplexity": self.byte_perplexity,
                   "bits_per_byte": self.bits_per_byte, "token_perplexity": self.token_perplexity}
        aggregation = {"bits_per_byte": "bits_per_byte"}
        config = {
            "task": task, "dataset_path": corpus, "test_split": split, "output_type": "loglikelihood_rolling",
            "num_fewshot": 0, "repeats": 1,
            "metric_list": results_schema.metric_list(
                (m, aggregation.get(m, "weighted_perplexity"), False) for m in metrics),
            "metadata": {"version": 0, "kind": self.kind},
        }
        entry = results_schema.task_entry(task, self.n_documents, metrics)
        return results_schema.from_entries(
            {task: entry}, {task: config}, {task: self.n_documents}, model=model, model_args=model_args or {},
            model_name=model_name, max_length=self.window, eot_token_id=None,
            run_config={"batch_size": None, "device": device, "limit": max_tokens, "bootstrap_iters": 0},
            started=time.time() if started is None else started,
            extra={"corpus": corpus, "split": split, **self.to_dict()})


# ----------------------------------------------------------------------------- window bookkeeping

def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Decoder windows as (begin, end, first_target): the model reads tokens[begin:end] and is
    scored on targets first_target..end-1, each predicted from the tokens before it in the window.

    Position 0 has no context and is never a target; every other position is a target exactly once
    (with stride == window, windows overlap by one token so that no target starts a window).
    """
    if window < 2 or stride < 1 or stride > window:
        raise LmscaleError(f"need window >= 2 and 1 <= stride <= window (got window={window}, stride={stride})")
    out: list[tuple[int, int, int]] = []
    prev_end, begin = 1, 0
    while n > 1:
        end = min(begin + window, n)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
        begin = min(begin + stride, end - 1)  # the next target needs one token of context in its window
    return out


def centered_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Bidirectional windows as (begin, end, score_from, score_to): scored tokens sit in the middle
    of their window, so they have context on both sides; every position is scored exactly once."""
    if window < 1 or stride < 1 or stride > window:
        raise LmscaleError(f"need 1 <= stride <= window (got window={window}, stride={stride})")
    margin = (window - stride) // 2
    out = []
    for s in range(0, n, stride):
        e = min(s + stride, n)
        begin = max(0, s - margin)
        end = min(n, begin + window)
        begin = max(0, end - window)
        out.append((begin, end, s, e))
    return out


# ----------------------------------------------------------------------------- scorers

def _decoder_nll(model: Any, ids: list[int], window: int, stride: int, batch_size: int,
                 progress: Callable[[int], None] | None) -> tuple[float, int, int]:
    wins = sliding_windows(len(ids), window, stride)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(wins), batch_size):
            chunk = wins[b: b + batch_size]
            T = max(e - s for s, e, _ in chunk)
            x = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, (s, e, _) in enumerate(chunk):
                x[r, : e - s] = torch.tensor(ids[s:e])
            logp = torch.log_softmax(model(input_ids=x.to(device)).logits.float(), dim=-1)
            for r, (s, e, f) in enumerate(chunk):
                tgt = torch.tensor(ids[f:e], device=logp.device)
                lp = logp[r, f - s - 1: e - s - 1].gather(-1, tgt[:, None])
                nll -= float(lp.sum())
                count += e - f
            if progress is not None:
                progress(sum(e - f for _, e, f in chunk))
    return nll, count, len(wins)


def encoder_pll(model: Any, tok: Any, ids: list[int], window: int, stride: int, batch_size: int,
                 progress: Callable[[int], None] | None) -> tuple[float, int, int]:
    mask_id = getattr(tok, "mask_id", None)
    if mask_id is None:
        raise LmscaleError("pseudo-perplexity needs a tokenizer with a [MASK] token")
    cls = [tok.cls_id] if getattr(tok, "cls_id", None) is not None else []
    sep = [tok.sep_id] if getattr(tok, "sep_id", None) is not None else []
    inner = window - len(cls) - len(sep)
    wins = centered_windows(len(ids), inner, min(stride, inner))
    device = next(model.parameters()).device
    segments = bool(getattr(model.config, "type_vocab_size", 0))
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin, end, s, e in wins:
            seq = cls + ids[begin:end] + sep
            positions = [len(cls) + p - begin for p in range(s, e)]
            for b in range(0, len(positions), batch_size):
                pos = positions[b: b + batch_size]
                x = torch.tensor([seq] * len(pos), device=device)
                rows = torch.arange(len(pos), device=device)
                p = torch.tensor(pos, device=device)
                x[rows, p] = mask_id
                kw: dict[str, Any] = {"attention_mask": torch.ones_like(x)}
                if segments:
                    kw["token_type_ids"] = torch.zeros_like(x)
                logits = model(input_ids=x, **kw).logits[rows, p].float()
                tgt = torch.tensor([seq[i] for i in pos], device=logits.device)
                nll -= float(torch.log_softmax(logits, -1).gather(-1, tgt[:, None]).sum())
                count += len(pos)
            if progress is not None:
                progress(e - s)
    return nll, count, len(wins)


def seq2seq_nll(model: Any, tok: Any, ids: list[int], window: int, stride: int,
                 progress: Callable[[int], None] | None) -> tuple[float, int, int]:
    sentinel = list(getattr(tok, "sentinel_ids", []) or [])[:1]
    eos = [tok.eos_id] if getattr(tok, "eos_id", None) is not None else []
    ctx_len = window - len(sentinel) - len(eos)
    start = _decoder_start(model)
    device = next(model.parameters()).device
    nll, count, n_win = 0.0, 0, 0
    with torch.inference_mode():
        for s in range(0, len(ids), stride):
            target = ids[s: s + stride]
            enc = ids[max(0, s - ctx_len): s] + sentinel + eos
            dec = [start] + sentinel + target[:-1]
            x = torch.tensor([enc], device=device)
            logits = model(input_ids=x, attention_mask=torch.ones_like(x),
                           decoder_input_ids=torch.tensor([dec], device=device)).logits[0, -len(target):]
            tgt = torch.tensor(target, device=logits.device)
            nll -= float(torch.log_softmax(logits.float(), -1).gather(-1, tgt[:, None]).sum())
            count += len(target)
            n_win += 1
            if progress is not None:
                progress(len(target))
    return nll, count, n_win


# ----------------------------------------------------------------------------- public API

def token_stream(tokenizer: Any, documents: Iterable[str], max_tokens: int | None = None,
                 family: str | FamilySpec = "decoder") -> tuple[list[int], int, int, int]:
    """Documents -> one token list with the tokenizer's document separator after each document
    (as in the pretraining shards) and, for decoders, before the first, so the first word is
    predicted too. Returns (ids, n_words, n_bytes, n_documents); with `max_tokens`, whole documents
    are taken until the budget is reached, so the word and byte counts match the tokens scored. A
    document far longer than the budget left is cut first (at a space within 16 characters per token
    left), so a cap never pays for tokenizing a huge document in full."""
    sep = getattr(tokenizer, "doc_separator_id", None)
    ids: list[int] = [int(sep)] if (sep is not None and family_spec(family).causal) else []
    n_words = n_bytes = n_docs = 0
    for doc in documents:
        if not doc.strip():
            continue
        if max_tokens is not None:
            limit = max(4096, 16 * (max_tokens - len(ids)))
            if len(doc) > limit:
                cut = doc.rfind(" ", 0, limit)
                doc = doc[:cut if cut > 0 else limit]
        ids.extend(tokenizer.encode(doc))
        if sep is not None:
            ids.append(int(sep))
        n_words += len(doc.split())
        n_bytes += len(doc.encode("utf-8"))
        n_docs += 1
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if n_docs == 0:
        raise DataError("no text to evaluate (every document is empty)")
    return ids, n_words, n_bytes, n_docs


def perplexity(
    model: Any,
    tokenizer: Any,
    documents: Iterable[str] | str,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Score `documents` (an iterable of texts, or one text). `window` defaults to the model's
    context length, `stride` to half of it (decoders, encoders) or 64 tokens (encoder-decoders)."""
    if isinstance(documents, str):
        documents = [documents]
    spec = family_spec(model)
    model.eval()
    cfg = model.config
    window = int(window or getattr(cfg, "max_positions", 512))
    if getattr(cfg, "position", "learned") == "learned" and window > cfg.max_positions:
        raise LmscaleError(f"window={window} is longer than the model's {cfg.max_positions} positions")
    if spec.scoring == "none":
        raise LmscaleError(f"{spec.name!r} models do not score text, so they have no perplexity")
    ids, n_words, n_bytes, n_docs = token_stream(tokenizer, documents, max_tokens, spec)
    stride = int(stride or default_stride(spec, window))
    if spec.scoring == "causal":
        nll, n, n_win = _decoder_nll(model, ids, window, stride, batch_size, progress)
        kind = "perplexity"
    elif spec.scoring == "pseudo-likelihood":
        nll, n, n_win = encoder_pll(model, tokenizer, ids, window, stride, batch_size * 4, progress)
        kind = "pseudo-perplexity"
    else:
        nll, n, n_win = seq2seq_nll(model, tokenizer, ids, window, stride, progress)
        kind = "conditional perplexity"
    return PerplexityResult(kind=kind, nll=nll, n_tokens=n, n_words=n_words, n_bytes=n_bytes,
                            n_documents=n_docs, window=window, stride=stride, n_windows=n_win)


def default_stride(family: str | FamilySpec, window: int) -> int:
    """Tokens between window starts: half a window (a decoder; an encoder, whose windows hold two
    special tokens), 64 tokens for an encoder-decoder, whose cost grows with every window."""
    scoring = family_spec(family).scoring
    if scoring == "causal":
        return max(1, window // 2)
    if scoring == "pseudo-likelihood":
        return max(1, (window - 2) // 2)
    return min(64, window)


def corpus_documents(corpus: str, split: str, errors: str = "strict") -> Iterable[str]:
    """Documents of a corpus split, streamed: a catalog name (`wikitext-2`), `hf:NAME...`, a saved
    `datasets` directory (that split), or a local file/directory (all of it, cut into documents as
    the data pipeline cuts them); `errors="replace"` replaces undecodable bytes instead of failing."""
    p = Path(corpus).expanduser()
    if p.exists() and not is_saved_dataset(p):
        files = expand_paths(p)
        return (d for f in files for d in iter_file_documents(f, errors))
    return resolve_corpus(corpus, errors=errors).iter_documents(split)
