"""Pretraining objectives: turn token windows from the sampler into model inputs and labels.

One function per objective family, all over plain numpy windows `[batch, raw_length]`:

- causal LM (GPT): the packed window is the input and the labels (the model shifts internally);
  documents in the stream are already separated by the end-of-text token.
- masked LM (BERT): `[CLS] window [SEP]`; 15% of the non-special tokens are selected, of those
  80% become `[MASK]`, 10% a random token, 10% stay; whole-word, SpanBERT span masking and NSP
  pairs are options.
- span corruption (T5): noise spans replaced by sentinels in the input; the target lists each
  sentinel followed by the tokens it dropped and ends with a final sentinel.

Randomness comes only from the generators passed to `build`, one per example. The training loop
derives each from (seed, step, the example's place in the global batch): a resumed run rebuilds
the same batches without storing generator state, and the masks and spans of a global batch do
not depend on how it is split into micro-batches or over processes (1 process with gradient
accumulation and N data-parallel processes train on the very same inputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from lmscale.config import ConfigError

IGNORE_INDEX = -100


def example_rngs(seed: int, step: int, first: int, n: int, stream: int = 0) -> list[np.random.Generator]:
    """Generators for examples `first .. first + n - 1` of a step's global batch, each a pure
    function of (seed, stream, step, example index): what an example's masking draws does not
    depend on the micro-batch or the process it lands in."""
    return [np.random.default_rng([int(seed), int(stream), int(step), int(first + j)]) for j in range(int(n))]


def _row_rngs(rngs: Sequence[np.random.Generator], n: int) -> list[np.random.Generator]:
    rngs = list(rngs)
    if len(rngs) != n:
        raise ValueError(f"{len(rngs)} generators for {n} rows")
    return rngs


# ----------------------------------------------------------------------------- T5 helpers

def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """Raw tokens needed so span corruption yields `inputs_length` encoder tokens (T5's helper).

    Returns `(tokens_length, targets_length)`. Same arithmetic as T5's
    `random_spans_helper`: inputs hold the non-noise tokens, one sentinel per noise span and EOS;
    targets hold the noise tokens, one sentinel per span and one final token.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    return num_noise_tokens, num_noise_spans


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split `num_items` into `num_segments` non-empty runs uniformly at random (T5)."""
    first_in_segment = np.zeros(num_items, dtype=bool)
    breaks = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(breaks)
    first_in_segment[1:] = breaks
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean noise mask with T5's exact span statistics; the sequence starts with non-noise."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens, num_noise_spans = _noise_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens
    noise_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, dtype=np.int64)
    indicator[span_starts] = 1
    span_num = np.cumsum(indicator)
    return (span_num % 2 == 1)[:orig_length]


def span_corrupt(
    tokens: Sequence[int] | np.ndarray, noise_mask: Sequence[bool] | np.ndarray, sentinel_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each noise span by the next sentinel; the target is sentinel + dropped tokens.

    The target ends with one more sentinel, as in the T5 paper's example:
    `Thank you <X> me to your party <Y> week.` -> `<X> for inviting <Y> last <Z>`.
    No EOS is added here; the batch builder appends it to the input.
    """
    tokens = np.asarray(tokens)
    noise = np.asarray(noise_mask, dtype=bool)
    if tokens.shape != noise.shape:
        raise ValueError(f"tokens {tokens.shape} and noise_mask {noise.shape} differ in shape")
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    n_spans = int(starts.sum())
    if n_spans + 1 > len(sentinel_ids):
        raise ConfigError(
            f"span corruption needs {n_spans + 1} sentinel tokens but the tokenizer has "
            f"{len(sentinel_ids)}; lower objective.noise_density or train.seq_len"
        )
    sentinels = np.asarray(sentinel_ids[: n_spans + 1], dtype=np.int64)
    span_id = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinels[np.clip(span_id, 0, None)], tokens)[~noise | starts]
    noise_pos = np.flatnonzero(noise)
    n_noise = len(noise_pos)
    targets = np.empty(n_noise + n_spans + 1, dtype=np.int64)
    slot = np.arange(n_noise) + span_id[noise_pos] + 1
    targets[slot] = tokens[noise_pos]
    targets[slot[starts[noise_pos]] - 1] = sentinels[:n_spans]
    targets[-1] = sentinels[n_spans]
    return inputs.astype(np.int64), targets


# ----------------------------------------------------------------------------- objectives

@dataclass
class Objective:
    """Batch builder shared interface: `raw_length(seq_len)` and `build(windows, rng)`."""

    kind: str
    seq_len: int
    pad_id: int

    def raw_length(self, seq_len: int | None = None) -> int:
        """Tokens per window to request from the sampler so a built sequence has `seq_len` tokens."""
        raise NotImplementedError(type(self).__name__)

    def build(self, windows: np.ndarray, rngs: Sequence[np.random.Generator],
              partners: np.ndarray | None = None) -> dict[str, Any]:
        """Model keyword arguments (torch tensors) for a `[batch, raw_length]` array of windows.

        `rngs`: one generator per row (`example_rngs`). `partners`: for
        objectives that pair a window with another random text (NSP), that text for each row
        (default: the next row, cyclically)."""
        raise NotImplementedError(type(self).__name__)

    uses_partners = False
    # whether `build` draws from its per-row generators (callers skip making them otherwise:
    # making one is a visible share of a step's host time at GPU batch sizes)
    uses_example_rngs = True

    def count_targets(self, batch: dict[str, Any]) -> int:
        """Label tokens the model's mean loss averages over (weights micro-batches exactly)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())


def _torch(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in arrays.items()}


@dataclass
class CausalObjective(Objective):
    """Packed contiguous windows; the model predicts token t+1 from the prefix up to t."""

    uses_example_rngs = False

    def raw_length(self, seq_len: int | None = None) -> int:
        return int(seq_len or self.seq_len)

    def build(self, windows: np.ndarray, rngs: Sequence[np.random.Generator] = (),
              partners: np.ndarray | None = None) -> dict[str, Any]:
        ids = np.asarray(windows, dtype=np.int64)
        return _torch({"input_ids": ids, "labels": ids.copy()})

    def count_targets(self, batch: dict[str, Any]) -> int:
        """The model shifts internally, so the first position of each row is never a target."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


@dataclass
class MLMObjective(Objective):
    """BERT's masked LM (create_pretraining_data.py), with optional whole-word / span masking and NSP."""

    cls_id: int = 0
    sep_id: int = 0
    mask_id: int = 0
    vocab_size: int = 0
    special_ids: frozenset = frozenset()
    word_start: np.ndarray | None = None  # bool per vocab id: token begins a word
    mlm_probability: float = 0.15
    mask_token_fraction: float = 0.8
    random_token_fraction: float = 0.1
    whole_word_mask: bool = False
    span_mask: bool = False
    nsp: bool = False
    span_geometric_p: float = 0.2  # SpanBERT
    span_max_words: int = 10
    _random_pool: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _special_table: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        table = np.zeros(self.vocab_size, dtype=bool)
        for i in self.special_ids:
            if 0 <= i < self.vocab_size:
                table[i] = True
        self._special_table = table
        self._random_pool = np.flatnonzero(~table).astype(np.int64)
        if (self.whole_word_mask or self.span_mask) and self.word_start is None:
            raise ConfigError("whole-word/span masking needs word boundaries from the tokenizer")

    def raw_length(self, seq_len: int | None = None) -> int:
        n = int(seq_len or self.seq_len)
        if self.nsp:
            return 2 * (n - 3)
        return n - 2

    # -- pieces

    def _is_special(self, ids: np.ndarray) -> np.ndarray:
        clipped = np.clip(ids, 0, self.vocab_size - 1)
        return self._special_table[clipped] | (ids >= self.vocab_size) | (ids < 0)

    def _word_starts(self, ids: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """A candidate starts a word when its token says so or the previous token is not a candidate."""
        starts = self.word_start[np.clip(ids, 0, len(self.word_start) - 1)].copy()
        prev_cand = np.zeros_like(candidate)
        prev_cand[:, 1:] = candidate[:, :-1]
        return candidate & (starts | ~prev_cand)

    def _select_tokens(self, candidate: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        """Exactly round(p * candidates) positions per row (at least one), chosen uniformly."""
        n_cand = candidate.sum(axis=1)
        k = np.where(n_cand > 0, np.maximum(1, np.rint(n_cand * self.mlm_probability)), 0).astype(np.int64)
        scores = np.stack([g.random(candidate.shape[1]) for g in rngs])
        scores[~candidate] = np.inf
        ranks = np.argsort(np.argsort(scores, axis=1, kind="stable"), axis=1, kind="stable")
        return ranks < k[:, None]

    def _select_words(self, ids: np.ndarray, candidate: np.ndarray,
                      rngs: list[np.random.Generator]) -> tuple[np.ndarray, list]:
        """Whole-word (BERT) or SpanBERT span selection; returns the mask and the chosen groups."""
        starts = self._word_starts(ids, candidate)
        selected = np.zeros_like(candidate)
        groups_all: list[list[np.ndarray]] = []
        for r in range(ids.shape[0]):
            rng = rngs[r]
            cand_pos = np.flatnonzero(candidate[r])
            n_cand = len(cand_pos)
            if n_cand == 0:
                groups_all.append([])
                continue
            budget = max(1, int(round(n_cand * self.mlm_probability)))
            word_id = np.cumsum(starts[r][cand_pos]) - 1
            n_words = int(word_id[-1]) + 1
            bounds = np.searchsorted(word_id, np.arange(n_words + 1))
            words = [cand_pos[bounds[w]:bounds[w + 1]] for w in range(n_words)]
            chosen: list[np.ndarray] = []
            count = 0
            if not self.span_mask:
                for w in rng.permutation(n_words):
                    if count >= budget:
                        break
                    if count + len(words[w]) > budget:
                        continue
                    chosen.append(words[w])
                    count += len(words[w])
            else:
                taken = np.zeros(n_words, dtype=bool)
                tries = 0
                while count < budget and tries < 10 * n_words:
                    tries += 1
                    span_len = min(int(rng.geometric(self.span_geometric_p)), self.span_max_words)
                    start = int(rng.integers(n_words))
                    end = min(start + span_len, n_words)
                    if taken[start:end].any():
                        continue
                    toks = np.concatenate(words[start:end])
                    if count + len(toks) > budget:
                        toks = toks[: budget - count]
                    taken[start:end] = True
                    chosen.append(toks)
                    count += len(toks)
            for g in chosen:
                selected[r, g] = True
            groups_all.append(chosen)
        return selected, groups_all

    @property  # type: ignore[override]
    def uses_partners(self) -> bool:
        return self.nsp

    def _nsp_pairs(self, windows: np.ndarray, rngs: list[np.random.Generator],
                   partners: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = windows.shape[0]
        n = self.seq_len - 3
        ids = np.empty((b, self.seq_len), dtype=np.int64)
        types = np.zeros((b, self.seq_len), dtype=np.int64)
        is_random = np.zeros(b, dtype=bool)
        if partners is None and b > 1:
            partners = np.roll(windows, -1, axis=0)
        for r in range(b):
            rng = rngs[r]
            is_random[r] = rng.random() < 0.5
            a_len = int(rng.integers(1, n))
            a = windows[r, :a_len]
            b_len = n - a_len
            if is_random[r]:
                # a segment of another window (a random place in the corpus); with no other
                # window, the far half of this one
                if partners is None:
                    seg_b = windows[r, n : n + b_len]
                else:
                    off = int(rng.integers(0, partners.shape[1] - b_len + 1))
                    seg_b = partners[r, off : off + b_len]
            else:
                seg_b = windows[r, a_len:n]
            row = np.concatenate([[self.cls_id], a, [self.sep_id], seg_b, [self.sep_id]])
            ids[r] = row
            types[r, a_len + 2 :] = 1
        return ids, types, is_random.astype(np.int64)

    def build(self, windows: np.ndarray, rngs: Sequence[np.random.Generator],
              partners: np.ndarray | None = None) -> dict[str, Any]:
        windows = np.asarray(windows, dtype=np.int64)
        b = windows.shape[0]
        rngs = _row_rngs(rngs, b)
        nsp_label = None
        if self.nsp:
            ids, types, nsp_label = self._nsp_pairs(windows, rngs, partners)
        else:
            ids = np.empty((b, windows.shape[1] + 2), dtype=np.int64)
            ids[:, 0] = self.cls_id
            ids[:, 1:-1] = windows
            ids[:, -1] = self.sep_id
            types = np.zeros_like(ids)
        candidate = ~self._is_special(ids)
        if self.whole_word_mask or self.span_mask:
            selected, groups = self._select_words(ids, candidate, rngs)
        else:
            selected, groups = self._select_tokens(candidate, rngs), None
        labels = np.where(selected, ids, IGNORE_INDEX)
        inputs = ids.copy()
        p_mask = self.mask_token_fraction
        p_rand = self.random_token_fraction
        if self.span_mask and groups is not None:
            # SpanBERT decides replace/random/keep once per span
            decision = np.full(ids.shape, 2, dtype=np.int8)
            for r, chosen in enumerate(groups):
                for g in chosen:
                    u = rngs[r].random()
                    decision[r, g] = 0 if u < p_mask else (1 if u < p_mask + p_rand else 2)
        else:
            u = np.stack([g.random(ids.shape[1]) for g in rngs])
            decision = np.where(u < p_mask, 0, np.where(u < p_mask + p_rand, 1, 2)).astype(np.int8)
        random_tokens = self._random_pool[
            np.stack([g.integers(0, len(self._random_pool), size=ids.shape[1]) for g in rngs])
        ]
        inputs = np.where(selected & (decision == 0), self.mask_id, inputs)
        inputs = np.where(selected & (decision == 1), random_tokens, inputs)
        arrays = {
            "input_ids": inputs,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": types,
            "labels": labels,
        }
        if nsp_label is not None:
            arrays["next_sentence_label"] = nsp_label
        return _torch(arrays)


@dataclass
class SpanObjective(Objective):
    """T5 span corruption over packed windows of `compute_input_and_target_lengths` tokens."""

    eos_id: int = 1
    sentinel_ids: tuple = ()
    decoder_start_id: int = 0
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self) -> None:
        tokens_length, self.targets_length = compute_input_and_target_lengths(
            self.seq_len, self.noise_density, self.mean_noise_span_length
        )
        self.tokens_length = tokens_length
        _, n_spans = _noise_counts(tokens_length, self.noise_density, self.mean_noise_span_length)
        if n_spans + 1 > len(self.sentinel_ids):
            raise ConfigError(
                f"span corruption at train.seq_len={self.seq_len} needs {n_spans + 1} sentinel tokens, "
                f"the tokenizer has {len(self.sentinel_ids)}; use a unigram tokenizer "
                "(tokenizer.kind=unigram has <extra_id_0..99>) or a shorter train.seq_len"
            )

    def raw_length(self, seq_len: int | None = None) -> int:
        if seq_len is None or seq_len == self.seq_len:
            return self.tokens_length
        return compute_input_and_target_lengths(seq_len, self.noise_density, self.mean_noise_span_length)[0]

    def build(self, windows: np.ndarray, rngs: Sequence[np.random.Generator],
              partners: np.ndarray | None = None) -> dict[str, Any]:
        windows = np.asarray(windows, dtype=np.int64)
        b, length = windows.shape
        rngs = _row_rngs(rngs, b)
        enc = np.full((b, self.seq_len), self.pad_id, dtype=np.int64)
        enc_mask = np.zeros((b, self.seq_len), dtype=np.int64)
        labels = np.full((b, self.targets_length), IGNORE_INDEX, dtype=np.int64)
        for r in range(b):
            noise = random_spans_noise_mask(length, self.noise_density, self.mean_noise_span_length, rngs[r])
            inp, tgt = span_corrupt(windows[r], noise, self.sentinel_ids)
            inp = np.concatenate([inp, [self.eos_id]])[: self.seq_len]
            tgt = tgt[: self.targets_length]
            enc[r, : len(inp)] = inp
            enc_mask[r, : len(inp)] = 1
            labels[r, : len(tgt)] = tgt
        dec = np.full_like(labels, self.pad_id)
        dec[:, 0] = self.decoder_start_id
        dec[:, 1:] = np.where(labels[:, :-1] == IGNORE_INDEX, self.pad_id, labels[:, :-1])
        return _torch(
            {"input_ids": enc, "attention_mask": enc_mask, "decoder_input_ids": dec, "labels": labels}
        )


# ----------------------------------------------------------------------------- construction

def word_start_table(tokenizer: Any) -> np.ndarray:
    """Which vocabulary entries begin a word, read from the subword markers of each model kind.

    WordPiece marks continuations with `##`; byte-level BPE marks word starts with `Ġ` (a space);
    Unigram/SentencePiece marks them with `▁`. Special tokens count as word starts.
    """
    n = int(tokenizer.vocab_size)
    kind = getattr(tokenizer, "kind", "wordpiece")
    table = np.ones(n, dtype=bool)
    specials = set(getattr(tokenizer, "special_ids", ()) or ())
    for i in range(n):
        if i in specials:
            continue
        tok = tokenizer.id_to_token(i)
        if tok is None:
            continue
        if kind == "wordpiece":
            table[i] = not tok.startswith("##")
        elif kind == "bpe":
            table[i] = tok.startswith("Ġ") or tok.startswith(" ")
        else:
            table[i] = tok.startswith("▁")
    return table


def make_objective(run_config: Any, tokenizer: Any) -> Objective:
    """The objective the run's config asks for, wired to the tokenizer's special tokens."""
    kind = run_config.objective_kind
    oc = run_config.objective
    seq_len = int(run_config.train.seq_len)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    if kind == "causal":
        return CausalObjective(kind="causal", seq_len=seq_len, pad_id=pad_id)
    if kind == "mlm":
        if tokenizer.mask_id is None:
            raise ConfigError(
                "the masked-LM objective needs a [MASK] token but the tokenizer has none; "
                "use a wordpiece tokenizer (tokenizer.kind=wordpiece) or objective.kind=causal"
            )
        cls_id = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
        sep_id = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
        if cls_id is None or sep_id is None:
            raise ConfigError("the masked-LM objective needs [CLS] and [SEP] tokens; use a wordpiece tokenizer")
        if oc.nsp and seq_len < 8:
            raise ConfigError(f"NSP pairs need train.seq_len >= 8 (got {seq_len})")
        if oc.nsp and not getattr(run_config.model, "nsp_head", False):
            raise ConfigError("objective.nsp=true needs model.nsp_head=true and model.pooler=true")
        need_words = oc.whole_word_mask or oc.span_mask
        specials = set(tokenizer.special_ids) - ({tokenizer.unk_id} if tokenizer.unk_id is not None else set())
        return MLMObjective(
            kind="mlm",
            seq_len=seq_len,
            pad_id=pad_id,
            cls_id=int(cls_id),
            sep_id=int(sep_id),
            mask_id=int(tokenizer.mask_id),
            vocab_size=int(tokenizer.vocab_size),
            special_ids=frozenset(int(i) for i in specials),
            word_start=word_start_table(tokenizer) if need_words else None,
            mlm_probability=oc.mlm_probability,
            mask_token_fraction=oc.mask_token_fraction,
            random_token_fraction=oc.random_token_fraction,
            whole_word_mask=oc.whole_word_mask,
            span_mask=oc.span_mask,
            nsp=oc.nsp,
        )
    if kind == "span":
        sentinels = tuple(int(i) for i in (getattr(tokenizer, "sentinel_ids", None) or ()))
        if not sentinels:
            raise ConfigError(
                "span corruption needs sentinel tokens <extra_id_N>; use tokenizer.kind=unigram "
                "(or objective.kind=causal / mlm)"
            )
        start = run_config.model.decoder_start_token_id
        return SpanObjective(
            kind="span",
            seq_len=seq_len,
            pad_id=pad_id,
            eos_id=int(tokenizer.eos_id),
            sentinel_ids=sentinels,
            decoder_start_id=int(start if start is not None else pad_id),
            noise_density=oc.noise_density,
            mean_noise_span_length=oc.mean_noise_span_length,
        )
    raise ConfigError(f"unknown objective {kind!r}")
