"""Text generation for decoders and encoder-decoders, with a key/value cache, and T5 span infilling.

With the cache each new token costs one position of attention over stored keys and values instead
of re-running the whole prefix, which is what makes long generations affordable on a CPU (see
`benchmarks/generate.py`). Encoder-decoders encode the input once; their cross-attention keys and
values are computed once by the model and kept in the cache.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from lmscale.errors import LmscaleError
from lmscale.inference.sampling import SamplingConfig, choose_token
from lmscale.models.spec import FamilySpec, family_name, family_spec

# The lecture writes T5's sentinels as <X>, <Y>, <Z>.
SENTINEL_ALIASES = {"<X>": 0, "<Y>": 1, "<Z>": 2}


@dataclass
class GenerationResult:
    token_ids: list[int]  # new tokens only; the end-of-sequence token, or the one completing a stop string, included
    text: str  # decoded new tokens, cut before a stop string
    stop_reason: str  # eos | stop | length | context
    prompt_ids: list[int] = field(default_factory=list)
    prompt_truncated: int = 0  # prompt tokens dropped from the left to fit the context window

    def to_dict(self) -> dict[str, Any]:
        return {"token_ids": self.token_ids, "text": self.text, "stop_reason": self.stop_reason,
                "prompt_tokens": len(self.prompt_ids), "prompt_truncated": self.prompt_truncated}


@dataclass
class InfillResult:
    spans: list[str]
    text: str  # the input with every sentinel replaced by its span
    token_ids: list[int]
    raw: str  # the decoder output as generated, sentinels included

    def to_dict(self) -> dict[str, Any]:
        return {"spans": self.spans, "text": self.text, "token_ids": self.token_ids, "raw": self.raw}


# ----------------------------------------------------------------------------- model plumbing

def model_family(model: Any) -> str:
    """The family name of one of our models or of a `transformers` model (see `family_spec`)."""
    return family_name(model)


def context_limit(model: Any) -> int | None:
    """Longest sequence the decoder can attend over, or None when its positions do not cap it."""
    cfg = model.config
    if getattr(cfg, "family", None) is not None:
        if family_spec(cfg).is_encoder_decoder or cfg.position == "relative":
            return None
        return int(cfg.max_positions)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    tok_eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        ids.add(int(tok_eos))
    elif tokenizer is None:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


def _decoder_start(model: Any) -> int:
    cfg = model.config
    v = getattr(cfg, "decoder_start_token_id", None)
    if v is None:
        v = getattr(cfg, "pad_token_id", 0) or 0
    return int(v)


def _generator(cfg: SamplingConfig, device: torch.device) -> torch.Generator | None:
    """The sampling generator of one sequence: seeded with `cfg.seed` (so every sequence decoded with
    the same seed draws the same numbers, alone or in a batch), else from the system's entropy."""
    if cfg.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed) if cfg.seed is not None else random.SystemRandom().randrange(2**63))
    return gen


def iter_token_ids(
    model: Any,
    input_ids: Sequence[int],
    cfg: SamplingConfig,
    max_new_tokens: int,
    eos_ids: set[int] | frozenset[int] = frozenset(),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time until an end-of-sequence id or `max_new_tokens`.

    For decoders `input_ids` is the prompt; for encoder-decoders it is the encoder input and
    decoding starts from the decoder start token.
    """
    spec = family_spec(model)
    device = next(model.parameters()).device
    gen = _generator(cfg, device)
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    with torch.inference_mode():
        if spec.is_encoder_decoder:
            enc_mask = torch.ones_like(ids)
            enc = model.encode(ids, enc_mask)
            seq = [_decoder_start(model)]

            def step(new: list[int], past: Any) -> tuple[torch.Tensor, Any]:
                dec = torch.tensor([new if use_cache else seq], dtype=torch.long, device=device)
                out = model(attention_mask=enc_mask, decoder_input_ids=dec, encoder_hidden_states=enc,
                            past_key_values=past if use_cache else None, use_cache=use_cache)
                return out.logits[0, -1], (out.past_key_values if use_cache else None)
        elif spec.causal:
            seq = list(input_ids)

            def step(new: list[int], past: Any) -> tuple[torch.Tensor, Any]:
                x = torch.tensor([new if use_cache else seq], dtype=torch.long, device=device)
                out = model(input_ids=x, past_key_values=past if use_cache else None, use_cache=use_cache)
                return out.logits[0, -1], (out.past_key_values if use_cache else None)
        else:
            raise LmscaleError("encoders (BERT-style) do not generate text; use fill-mask, "
                               "or a decoder / encoder-decoder checkpoint")
        past = None
        new = list(seq)
        for _ in range(max_new_tokens):
            logits, past = step(new, past)
            tok = choose_token(logits, seq, cfg, gen)
            seq.append(tok)
            new = [tok]
            yield tok
            if tok in eos_ids:
                return


def _generating_spec(model: Any) -> FamilySpec:
    spec = family_spec(model)
    if not spec.can_generate:
        raise LmscaleError("encoders (BERT-style) do not generate text; use fill-mask, "
                           "or a decoder / encoder-decoder checkpoint")
    return spec


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


def _prompt_ids(tokenizer: Any, prompt: str | Sequence[int], spec: FamilySpec) -> list[int]:
    """The prompt as token ids; an empty decoder prompt starts from the document separator."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise LmscaleError("a text prompt needs a tokenizer")
        ids = tokenizer.encode(prompt, add_special_tokens=spec.is_encoder_decoder)
    else:
        ids = [int(i) for i in prompt]
    if spec.causal and not ids:
        start = getattr(tokenizer, "doc_separator_id", None) if tokenizer is not None else None
        start = start if start is not None else (getattr(tokenizer, "eos_id", None) if tokenizer else None)
        if start is None:
            raise LmscaleError("the prompt is empty and the tokenizer has no document separator to start from")
        ids = [int(start)]
    return ids


def _fit_context(model: Any, spec: FamilySpec, ids: list[int], max_new_tokens: int) -> tuple[list[int], int, int]:
    """-> (prompt ids cut from the left to fit the context, tokens cut, new tokens that still fit).

    A prompt that fills a decoder's window is cut to leave room for the new tokens (at most half
    the window); an encoder-decoder's prompt is cut only where its positions have a hard limit
    (not under T5's relative bias)."""
    truncated = 0
    limit = context_limit(model) if spec.causal else None
    budget = max_new_tokens
    if limit is not None:
        if len(ids) >= limit:
            keep = max(1, limit - min(max_new_tokens, limit // 2))
            truncated = len(ids) - keep
            ids = ids[-keep:]
        budget = min(max_new_tokens, limit - len(ids))
    elif spec.is_encoder_decoder:
        enc_limit = getattr(model.config, "max_positions", None)
        if getattr(model.config, "position", None) not in (None, "relative") and enc_limit and len(ids) > enc_limit:
            truncated = len(ids) - enc_limit
            ids = ids[-enc_limit:]
    return ids, truncated, budget


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    *,
    max_new_tokens: int = 50,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    eos_ids: Sequence[int] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Continue `prompt` (text, or token ids used as given) and return the new tokens and text.

    `on_text` receives each piece of text as soon as it is final, which is how the CLI streams;
    text that might be the start of a stop string is held back until it is decided. `eos_ids`
    overrides the end-of-sequence ids taken from the tokenizer (or the model's config).
    """
    cfg = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, stop=list(stop or []))
    if max_new_tokens < 1:
        raise LmscaleError(f"max_new_tokens={max_new_tokens} must be at least 1")
    spec = _generating_spec(model)
    ids, truncated, budget = _fit_context(model, spec, _prompt_ids(tokenizer, prompt, spec), max_new_tokens)
    eos = set()
    if stop_at_eos:
        eos = {int(e) for e in eos_ids} if eos_ids is not None else _eos_ids(model, tokenizer)
    new_ids: list[int] = []
    emitted = 0
    text = ""
    reason = "length" if budget == max_new_tokens else "context"

    def decode(toks: list[int]) -> str:
        if tokenizer is None:
            return ""
        body = [t for t in toks if t not in eos]
        return tokenizer.decode(body, skip_special_tokens=False)

    for tok in iter_token_ids(model, ids, cfg, budget, eos, use_cache=use_cache):
        new_ids.append(tok)
        if tok in eos:
            reason = "eos"
            break
        text = decode(new_ids)
        if cfg.stop:
            hits = [text.find(s) for s in cfg.stop if s and s in text]
            if hits:
                text = text[: min(hits)]
                reason = "stop"
                break
        if on_text is not None:
            safe = len(text) - _held_back(text, cfg.stop)
            while safe > emitted and text[safe - 1] == "\ufffd":  # an incomplete multi-byte character
                safe -= 1
            if safe > emitted:
                on_text(text[emitted:safe])
                emitted = safe
    else:
        text = decode(new_ids)
    if on_text is not None and len(text) > emitted:
        on_text(text[emitted:])
    return GenerationResult(token_ids=new_ids, text=text, stop_reason=reason, prompt_ids=list(ids),
                            prompt_truncated=truncated)


# ----------------------------------------------------------------------------- several prompts at once

class _Continuation:
    """One sequence of a batch: its new tokens, text and why it stopped, decided as `generate` does."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], truncated: int, budget: int, max_new_tokens: int,
                 eos: set[int], stops: Sequence[str]) -> None:
        self.tokenizer, self.eos, self.stops = tokenizer, eos, [s for s in stops if s]
        self.prompt_ids, self.truncated, self.budget = prompt_ids, truncated, budget
        self.new_ids: list[int] = []
        self.text = ""
        self.reason = "length" if budget == max_new_tokens else "context"
        self.done = budget < 1

    def _decode(self) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([t for t in self.new_ids if t not in self.eos], skip_special_tokens=False)

    def add(self, tok: int) -> None:
        self.new_ids.append(tok)
        if tok in self.eos:
            self.reason, self.done = "eos", True
            return
        if self.stops:
            self.text = self._decode()
            hits = [self.text.find(s) for s in self.stops if s in self.text]
            if hits:
                self.text = self.text[: min(hits)]
                self.reason, self.done = "stop", True
                return
        if len(self.new_ids) >= self.budget:
            self.done = True

    def result(self) -> GenerationResult:
        if self.reason not in ("stop",):
            self.text = self._decode()
        return GenerationResult(token_ids=self.new_ids, text=self.text, stop_reason=self.reason,
                                prompt_ids=self.prompt_ids, prompt_truncated=self.truncated)


def _decode_batch(model: Any, spec: FamilySpec, rows: list[_Continuation], cfg: SamplingConfig,
                  use_cache: bool) -> None:
    """Decode every row to its end together: decoders left-pad the prompts (positions come from the
    attention mask, so a padded row computes what it computes alone), encoder-decoders right-pad the
    encoder input under a mask and start every decoder row together. A finished decoder row is fed
    padding that its mask hides (so its positions stop growing), until the last row ends."""
    device = next(model.parameters()).device
    gens = [_generator(cfg, device) for _ in rows]
    pad = int(getattr(model.config, "pad_token_id", 0) or 0)
    n = len(rows)
    seqs = [list(r.prompt_ids) for r in rows] if spec.causal else [[_decoder_start(model)] for _ in rows]
    width = max(len(r.prompt_ids) for r in rows)
    enc = enc_mask = None
    with torch.inference_mode():
        if spec.causal:
            ids = torch.full((n, width), pad, dtype=torch.long, device=device)
            mask = torch.zeros((n, width), dtype=torch.long, device=device)
            for i, r in enumerate(rows):
                k = len(r.prompt_ids)
                ids[i, width - k:] = torch.tensor(r.prompt_ids, device=device)
                mask[i, width - k:] = 1
        else:
            src = torch.full((n, width), pad, dtype=torch.long, device=device)
            enc_mask = torch.zeros((n, width), dtype=torch.long, device=device)
            for i, r in enumerate(rows):
                src[i, : len(r.prompt_ids)] = torch.tensor(r.prompt_ids, device=device)
                enc_mask[i, : len(r.prompt_ids)] = 1
            enc = model.encode(src, enc_mask)
            ids = torch.tensor([s[:1] for s in seqs], dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
        full, full_mask, past = ids, mask, None
        new, new_mask = ids, mask
        while not all(r.done for r in rows):
            x, m = (new, full_mask) if use_cache else (full, full_mask)
            if spec.causal:
                out = model(input_ids=x, attention_mask=m, past_key_values=past, use_cache=use_cache)
            else:
                # decoder rows stay aligned (no padding): a finished row's outputs are simply not read
                out = model(attention_mask=enc_mask, decoder_input_ids=x, encoder_hidden_states=enc,
                            past_key_values=past, use_cache=use_cache)
            past = out.past_key_values if use_cache else None
            logits = out.logits[:, -1]
            step, live = [], []
            for i, r in enumerate(rows):
                if r.done:
                    step.append(pad)
                    live.append(0)
                    continue
                tok = choose_token(logits[i], seqs[i], cfg, gens[i])
                seqs[i].append(tok)
                r.add(tok)
                step.append(tok)
                live.append(1)
            new = torch.tensor(step, dtype=torch.long, device=device)[:, None]
            new_mask = torch.tensor(live, dtype=torch.long, device=device)[:, None]
            if not use_cache:  # with the cache only the new tokens go in
                full = torch.cat((full, new), 1)
            full_mask = torch.cat((full_mask, new_mask), 1)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 50,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: Sequence[str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    eos_ids: Sequence[int] | None = None,
    batch_size: int = 16,
) -> list[GenerationResult]:
    """`generate` for several prompts, `batch_size` at a time through one forward pass per token
    (decoders: left padding and the KV cache). Each result is what `generate(prompt, ...)` returns
    with the same settings: the same tokens under greedy decoding, and under sampling with a `seed`
    too, since every sequence draws from its own generator seeded with it."""
    cfg = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, stop=list(stop or []))
    if max_new_tokens < 1:
        raise LmscaleError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if batch_size < 1:
        raise LmscaleError(f"batch_size={batch_size} must be at least 1")
    spec = _generating_spec(model)
    eos: set[int] = set()
    if stop_at_eos:
        eos = {int(e) for e in eos_ids} if eos_ids is not None else _eos_ids(model, tokenizer)
    rows = []
    for prompt in prompts:
        ids, truncated, budget = _fit_context(model, spec, _prompt_ids(tokenizer, prompt, spec), max_new_tokens)
        rows.append(_Continuation(tokenizer, list(ids), truncated, budget, max_new_tokens, eos, cfg.stop))
    for b in range(0, len(rows), batch_size):
        chunk = [r for r in rows[b: b + batch_size] if not r.done]
        if chunk:
            _decode_batch(model, spec, chunk, cfg, use_cache)
    return [r.result() for r in rows]


# ----------------------------------------------------------------------------- T5 span infilling

def normalize_sentinels(text: str) -> str:
    """Accept the lecture's `<X>`, `<Y>`, `<Z>` for T5's `<extra_id_0>`, `<extra_id_1>`, ..."""
    for alias, i in SENTINEL_ALIASES.items():
        text = text.replace(alias, f"<extra_id_{i}>")
    return text


def split_spans(token_ids: Sequence[int], sentinel_ids: Sequence[int], n_spans: int) -> list[list[int]]:
    """Cut T5's output `<extra_id_0> a <extra_id_1> b <extra_id_2>` into per-sentinel token lists.

    A span the model never reached comes back empty, so the result always has `n_spans` entries.
    """
    index = {int(s): i for i, s in enumerate(sentinel_ids)}
    spans: list[list[int]] = [[] for _ in range(n_spans)]
    current: int | None = None
    for t in token_ids:
        if int(t) in index:
            current = index[int(t)]
            if current >= n_spans:
                break
            continue
        if current is not None:
            spans[current].append(int(t))
    return spans


def reassemble(text: str, spans: Sequence[str]) -> str:
    """Put each span where its sentinel stood, keeping the sentence's own spacing."""
    text = normalize_sentinels(text)

    def sub(m: re.Match) -> str:
        i = int(m.group(1))
        return spans[i].strip() if i < len(spans) else ""

    out = re.sub(r"<extra_id_(\d+)>", sub, text)
    out = re.sub(r"[ \t]{2,}", " ", out)
    return re.sub(r" +([.,;:!?])", r"\1", out).strip()


def infill(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
) -> InfillResult:
    """Fill T5 sentinels (`<extra_id_N>` or `<X>`/`<Y>`/`<Z>`) and return the spans and the sentence.

    The decoder stops at the sentinel after the last one in the input (or at `</s>`), which is the
    pretraining target's shape: `<extra_id_0> span0 <extra_id_1> span1 <extra_id_2>`.
    """
    if not family_spec(model).is_encoder_decoder:
        raise LmscaleError("span infilling needs an encoder-decoder (T5-style) checkpoint")
    sentinels = list(getattr(tokenizer, "sentinel_ids", []) or [])
    if not sentinels:
        raise LmscaleError("this tokenizer has no <extra_id_N> sentinel tokens to infill")
    text = normalize_sentinels(text)
    used = [int(m) for m in re.findall(r"<extra_id_(\d+)>", text)]
    if not used:
        raise LmscaleError("no sentinel in the text; mark the gaps with <extra_id_0>, <extra_id_1>, ... "
                           "(or <X>, <Y>, <Z>)")
    n = max(used) + 1
    if n > len(sentinels):
        raise LmscaleError(f"<extra_id_{n - 1}> is beyond the tokenizer's {len(sentinels)} sentinels")
    ids = tokenizer.encode(text, add_special_tokens=True)
    cfg = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed)
    stop_ids = set(_eos_ids(model, tokenizer))
    if n < len(sentinels):
        stop_ids.add(int(sentinels[n]))
    out = list(iter_token_ids(model, ids, cfg, max_new_tokens, stop_ids, use_cache=use_cache))
    spans_ids = split_spans(out, sentinels, n)
    spans = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in spans_ids]
    raw = tokenizer.decode(out, skip_special_tokens=False)
    return InfillResult(spans=spans, text=reassemble(text, spans), token_ids=out, raw=raw)
