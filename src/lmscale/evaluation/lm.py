"""One scoring interface over every model the harness evaluates.

`loglikelihood(context, continuation)` and `greedy_until(context, stop)` are the two requests of
the GPT-3 evaluation protocol (and of lm-evaluation-harness). Decoders score the continuation
left to right; encoder-decoders score it as the decoder's target given the context, in the
span-corruption shape they were trained on; encoders use pseudo-log-likelihood (each token masked
in turn, Salazar et al. 2020). Our checkpoints and local `transformers` causal LMs go through the
same code.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lmscale.errors import LmscaleError
from lmscale.inference.generate import _decoder_start, context_limit, iter_token_ids, model_family
from lmscale.inference.sampling import SamplingConfig
from lmscale.models.spec import family_spec


@dataclass
class Score:
    logprob: float  # summed log-probability of the continuation, natural log
    n_tokens: int
    greedy: bool  # every continuation token is the argmax (lm-evaluation-harness's is_greedy)
    truncated: bool  # context (or continuation) cut from the left to fit the window


class TokenizerShim:
    """`encode`/`decode` over either our Tokenizer or a `transformers` tokenizer."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.is_hf = not hasattr(tok, "backend")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.is_hf:
            return list(self.tok(text, add_special_tokens=add_special_tokens)["input_ids"])
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _get(self, ours: str, hf: str) -> int | None:
        v = getattr(self.tok, hf if self.is_hf else ours, None)
        return int(v) if isinstance(v, int) else None

    @property
    def eos_id(self) -> int | None:
        return self._get("eos_id", "eos_token_id")

    @property
    def doc_separator_id(self) -> int | None:
        return self.eos_id if self.is_hf else self._get("doc_separator_id", "")

    @property
    def mask_id(self) -> int | None:
        return self._get("mask_id", "mask_token_id")

    @property
    def cls_id(self) -> int | None:
        return self._get("cls_id", "cls_token_id")

    @property
    def sep_id(self) -> int | None:
        return self._get("sep_id", "sep_token_id")

    @property
    def sentinel_ids(self) -> list[int]:
        if self.is_hf:
            return []
        return list(getattr(self.tok, "sentinel_ids", []) or [])


def _batches(order: list[int], lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        L = max(longest, lengths[i])
        if cur and (L * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur, L = [], lengths[i]
        cur.append(i)
        longest = L
    if cur:
        out.append(cur)
    return out


class ScoringLM(abc.ABC):
    """Base: request encoding (lm-evaluation-harness's whitespace rule) and truncation counting."""

    family = "decoder"  # the family whose scoring this is (reported with results)
    scoring = "causal"  # how text is scored: a `FamilySpec.scoring`
    can_generate = True

    def __init__(self, model: Any, tokenizer: Any, batch_tokens: int = 2048, max_batch: int = 32,
                 name: str = "lmscale") -> None:
        self.model = model.eval()
        self.tok = TokenizerShim(tokenizer)
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        self.name = name
        self.device = next(model.parameters()).device

    @property
    def max_length(self) -> int:
        return context_limit(self.model) or int(getattr(self.model.config, "max_positions", 512))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenize context+continuation together and split, moving the context's trailing spaces
        into the continuation, so ' yes' is one BPE token as it would be in running text."""
        n = len(context) - len(context.rstrip())
        if n:
            continuation = context[-n:] + continuation
            context = context[:-n]
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        ctx_len = len(ctx)
        if whole[:ctx_len] != ctx:  # a merge across the boundary: fall back to separate encodings
            return ctx, self.tok.encode(continuation)
        return whole[:ctx_len], whole[ctx_len:]

    @abc.abstractmethod
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
        """Summed log-probability of each continuation given its context."""

    @abc.abstractmethod
    def greedy_until(self, context: str, stop: Sequence[str], max_new_tokens: int,
                     sampling: SamplingConfig | None = None) -> tuple[str, bool]:
        """Greedy continuation (or one sampled with `sampling`) cut at the first stop string, and
        whether the context was truncated."""


class CausalLM(ScoringLM):
    """Decoders: ours and `transformers` causal LMs."""

    family = "decoder"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
        pairs = []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            if not ctx:
                start = self.tok.doc_separator_id
                if start is None:
                    raise LmscaleError("empty context and no document separator token to start from")
                ctx = [start]
            if not cont:
                raise LmscaleError(f"continuation {continuation!r} encodes to no tokens")
            pairs.append((ctx, cont))
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        """Summed log-probability of each continuation's token ids given the context's (at least
        one context token); the pair is cut from the left to the model's window."""
        W = self.max_length
        prepared = []
        for ctx, cont in pairs:
            full = list(ctx) + list(cont)
            truncated = len(full) > W + 1
            full = full[-(W + 1):]
            n_cont = min(len(cont), len(full) - 1)
            prepared.append((full[:-1], full[-n_cont:], n_cont, truncated))
        results: list[Score | None] = [None] * len(prepared)
        lengths = [len(p[0]) for p in prepared]
        order = sorted(range(len(prepared)), key=lambda i: -lengths[i])
        with torch.inference_mode():
            for batch in _batches(order, lengths, self.batch_tokens, self.max_batch):
                T = max(lengths[i] for i in batch)
                x = torch.zeros(len(batch), T, dtype=torch.long)
                for r, i in enumerate(batch):  # right padding never reaches earlier positions
                    x[r, : lengths[i]] = torch.tensor(prepared[i][0])
                logp = torch.log_softmax(self._forward(x.to(self.device)).float(), dim=-1)
                for r, i in enumerate(batch):
                    inp, target, n, trunc = prepared[i]
                    L = lengths[i]
                    lp = logp[r, L - n: L]
                    tgt = torch.tensor(target, device=lp.device)
                    tok_lp = lp.gather(-1, tgt[:, None])[:, 0]
                    greedy = bool((lp.argmax(-1) == tgt).all())
                    results[i] = Score(float(tok_lp.sum()), n, greedy, trunc)
        return results  # type: ignore[return-value]

    def greedy_until(self, context: str, stop: Sequence[str], max_new_tokens: int,
                     sampling: SamplingConfig | None = None) -> tuple[str, bool]:
        ids = self.tok.encode(context)
        if not ids:
            ids = [self.tok.doc_separator_id or 0]
        room = self.max_length - max_new_tokens
        truncated = len(ids) > room
        if truncated:
            ids = ids[-max(1, room):]
        eos = {self.tok.eos_id} if self.tok.eos_id is not None else set()
        out: list[int] = []
        text = ""
        for t in iter_token_ids(self.model, ids, sampling or SamplingConfig(greedy=True), max_new_tokens, eos):
            if t in eos:
                break
            out.append(t)
            text = self.tok.decode(out)
            if any(s and s in text for s in stop):
                break
        return _cut(text, stop), truncated


class Seq2SeqLM(ScoringLM):
    """Encoder-decoders: the context goes to the encoder with a sentinel where the answer belongs,
    and the decoder scores `<extra_id_0> continuation`, the span-corruption target shape."""

    family = "encoder-decoder"
    scoring = "seq2seq"

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_positions", 512))

    def _encoder_ids(self, context: str) -> tuple[list[int], bool]:
        return self._encoder_token_ids(self.tok.encode(context))

    def _encoder_token_ids(self, ids: list[int]) -> tuple[list[int], bool]:
        sent = self.tok.sentinel_ids[:1]
        eos = [self.tok.eos_id] if self.tok.eos_id is not None else []
        room = self.max_length - len(sent) - len(eos)
        truncated = len(ids) > room
        ids = ids[-room:] if truncated else ids
        return ids + sent + eos, truncated

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
        pairs = []
        for context, continuation in requests:
            cont = self.tok.encode(continuation.strip()) or self.tok.encode(continuation)
            if not cont:
                raise LmscaleError(f"continuation {continuation!r} encodes to no tokens")
            pairs.append((self.tok.encode(context.rstrip()), cont))
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        """The continuation's token ids as the decoder's target after the first sentinel, the
        context's (cut from the left to fit) to the encoder with that sentinel after it."""
        out: list[Score] = []
        start = _decoder_start(self.model)
        sent = self.tok.sentinel_ids[:1]
        with torch.inference_mode():
            for ctx, cont in pairs:
                enc_ids, trunc = self._encoder_token_ids(list(ctx))
                cont = list(cont)
                dec = [start] + sent + cont
                x = torch.tensor([enc_ids], device=self.device)
                d = torch.tensor([dec[:-1]], device=self.device)
                logits = self.model(input_ids=x, attention_mask=torch.ones_like(x), decoder_input_ids=d).logits
                lp = torch.log_softmax(logits[0, -len(cont):].float(), dim=-1)
                tgt = torch.tensor(cont, device=lp.device)
                out.append(Score(float(lp.gather(-1, tgt[:, None]).sum()), len(cont),
                                 bool((lp.argmax(-1) == tgt).all()), trunc))
        return out

    def greedy_until(self, context: str, stop: Sequence[str], max_new_tokens: int,
                     sampling: SamplingConfig | None = None) -> tuple[str, bool]:
        enc_ids, trunc = self._encoder_ids(context.rstrip())
        first = self.tok.sentinel_ids[:1]
        eos = {self.tok.eos_id} if self.tok.eos_id is not None else set()
        ends = (set(self.tok.sentinel_ids) - set(first)) | eos
        out: list[int] = []
        text = ""
        for t in iter_token_ids(self.model, enc_ids, sampling or SamplingConfig(greedy=True),
                                max_new_tokens + len(first), ends):
            if t in ends:
                break
            if first and t == first[0]:
                if out:
                    break
                continue
            out.append(t)
            text = self.tok.decode(out, skip_special_tokens=True)
            # one extra step is allowed for a leading sentinel, not for a longer answer
            if any(s and s in text for s in stop) or len(out) == max_new_tokens:
                break
        return _cut(text, stop), trunc


class MaskedLM(ScoringLM):
    """Encoders: pseudo-log-likelihood of the continuation, each of its tokens masked in turn with
    the context and the rest of the continuation visible."""

    family = "encoder"
    scoring = "pseudo-likelihood"
    can_generate = False

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_positions", 512))

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Score]:
        mask = self.tok.mask_id
        if mask is None:
            raise LmscaleError("this encoder's tokenizer has no [MASK] token to score with")
        cls = [self.tok.cls_id] if self.tok.cls_id is not None else []
        sep = [self.tok.sep_id] if self.tok.sep_id is not None else []
        out: list[Score] = []
        with torch.inference_mode():
            for context, continuation in requests:
                ctx, cont = self.encode_pair(context, continuation)
                room = self.max_length - len(cls) - len(sep)
                truncated = len(ctx) + len(cont) > room
                cont = cont[-room:]
                ctx = ctx[len(ctx) - max(0, room - len(cont)):] if truncated else ctx
                seq = cls + ctx + cont + sep
                start = len(cls) + len(ctx)
                pos = list(range(start, start + len(cont)))
                total, greedy = 0.0, True
                for b in range(0, len(pos), self.max_batch):
                    chunk = pos[b: b + self.max_batch]
                    x = torch.tensor([seq] * len(chunk), device=self.device)
                    rows = torch.arange(len(chunk), device=self.device)
                    p = torch.tensor(chunk, device=self.device)
                    x[rows, p] = mask
                    kw: dict[str, Any] = {"attention_mask": torch.ones_like(x)}
                    if getattr(self.model.config, "type_vocab_size", 0):
                        kw["token_type_ids"] = torch.zeros_like(x)
                    logits = self.model(input_ids=x, **kw).logits[rows, p].float()
                    lp = torch.log_softmax(logits, dim=-1)
                    tgt = torch.tensor([seq[i] for i in chunk], device=lp.device)
                    total += float(lp.gather(-1, tgt[:, None]).sum())
                    greedy = greedy and bool((lp.argmax(-1) == tgt).all())
                out.append(Score(total, len(cont), greedy, truncated))
        return out

    def greedy_until(self, context: str, stop: Sequence[str], max_new_tokens: int,
                     sampling: SamplingConfig | None = None) -> tuple[str, bool]:
        raise LmscaleError("encoders (BERT-style) cannot generate, so exact-match tasks need a "
                           "decoder or an encoder-decoder")


def _cut(text: str, stop: Sequence[str]) -> str:
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text


def scoring_lm(model: Any, tokenizer: Any, **kw: Any) -> ScoringLM:
    """The right scorer for a model's family."""
    scoring = family_spec(model).scoring
    scorers: dict[str, Callable[..., ScoringLM]] = {s.scoring: s for s in (CausalLM, Seq2SeqLM, MaskedLM)}
    if scoring not in scorers:
        raise LmscaleError(f"{model_family(model)!r} models do not score text (scoring={scoring!r})")
    return scorers[scoring](model, tokenizer, **kw)


def load_hf_causal_lm(path: str | Path, device: str = "cpu", **kw: Any) -> CausalLM:
    """A local `transformers` causal LM directory, loaded without touching the network."""
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise LmscaleError(f"--hf {p}: not a transformers model directory (no config.json)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415  optional (lmscale[hf])
    except ImportError:
        raise LmscaleError("--hf needs the transformers package: pip install 'lmscale[hf]'") from None
    if not any(p.glob("*.safetensors")):
        pickled = sorted(f.name for f in p.glob("*.bin"))
        raise LmscaleError(f"--hf {p}: no .safetensors weights" + (
            f"; {', '.join(pickled)} is a pickle, which lmscale never loads (it can run code): save the model "
            "with safe_serialization=True" if pickled else ""))
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, use_safetensors=True).to(device)
    except (OSError, ValueError) as exc:
        raise LmscaleError(f"--hf {p}: cannot load as a causal LM ({str(exc).splitlines()[0]})") from None
    return CausalLM(model, tok, name=f"hf:{p.name}", **kw)
