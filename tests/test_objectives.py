"""Pretraining objectives against their published definitions (BERT, SpanBERT, T5) and the
lecture's span-corruption example; rates are checked statistically (within 3 standard errors)."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from lmscale.config import ConfigError, ObjectiveConfig, RunConfig, TrainConfig, load_preset
from lmscale.data.objectives import (
    IGNORE_INDEX,
    compute_input_and_target_lengths,
    example_rngs,
    make_objective,
    random_spans_noise_mask,
    span_corrupt,
)

LECTURE = "Thank you for inviting me to your party last week."
WORDS = LECTURE.split() + ["the", "a", "cat", "dog", "sat", "on", "mat", "running", "jumped", "over", "lazy"]


def _texts(n: int = 400, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    return [LECTURE] * 40 + [" ".join(r.choice(WORDS) for _ in range(20)) for _ in range(n)]


@pytest.fixture(scope="module")
def toks():
    from lmscale.tokenization import train_tokenizer

    texts = _texts()
    return {
        "wordpiece": train_tokenizer("wordpiece", texts, 120),
        "bpe": train_tokenizer("bpe", texts, 300),
        "unigram": train_tokenizer("unigram", texts, 200),
    }


def _cfg(preset: str, seq_len: int = 64, **objective) -> RunConfig:
    cfg = load_preset(preset)
    cfg.train = TrainConfig(seq_len=seq_len, batch_size=8)
    cfg.objective = ObjectiveConfig(**objective)
    cfg.model.max_positions = max(cfg.model.max_positions, 256)
    return cfg


def _stream(tok, n_tokens: int, seed: int = 1) -> np.ndarray:
    ids: list[int] = []
    for t in _texts(2000, seed):
        ids.extend(tok.encode(t))
        ids.append(tok.doc_separator_id)
        if len(ids) >= n_tokens:
            break
    return np.asarray(ids[:n_tokens], dtype=np.int64)


def _windows(tok, batch: int, length: int, seed: int = 1) -> np.ndarray:
    return _stream(tok, batch * length, seed).reshape(batch, length)


def _within_3se(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) <= 3 * np.sqrt(p * (1 - p) / n) + 1e-12


# ----------------------------------------------------------------------------- T5 span corruption

def test_lecture_example_exact():
    """T5 paper Fig. 2 / the lecture: spans "for inviting" and "last"."""
    words = LECTURE.split()
    vocab = {w: i + 10 for i, w in enumerate(words)}
    sentinels = [100, 101, 102, 103]
    names = {v: k for k, v in vocab.items()} | {s: f"<extra_id_{i}>" for i, s in enumerate(sentinels)}
    noise = [w in ("for", "inviting", "last") for w in words]
    inputs, targets = span_corrupt([vocab[w] for w in words], noise, sentinels)
    assert " ".join(names[int(i)] for i in inputs) == "Thank you <extra_id_0> me to your party <extra_id_1> week."
    assert " ".join(names[int(i)] for i in targets) == "<extra_id_0> for inviting <extra_id_1> last <extra_id_2>"


def test_lecture_example_with_unigram_tokenizer(toks):
    tok = toks["unigram"]
    ids = np.asarray(tok.encode(LECTURE))
    word = np.asarray(tok.word_ids(LECTURE))
    noise = np.isin(word, [2, 3, 8])  # for, inviting, last
    inputs, targets = span_corrupt(ids, noise, tok.sentinel_ids)

    def norm(s: str) -> str:  # sentinels are added tokens: the decoder puts no space before them
        return re.sub(r"\s+", " ", re.sub(r"\s*(<extra_id_\d+>)\s*", r" \1 ", s)).strip()

    assert norm(tok.decode(inputs.tolist())) == "Thank you <extra_id_0> me to your party <extra_id_1> week."
    assert norm(tok.decode(targets.tolist())) == "<extra_id_0> for inviting <extra_id_1> last <extra_id_2>"


def test_input_target_lengths_match_t5():
    # Values used by T5 / transformers' run_t5_mlm_flax.py for inputs_length=512: 568 raw, 114 targets.
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)
    for length in (32, 64, 128, 256, 512):
        raw, tgt = compute_input_and_target_lengths(length, 0.15, 3.0)
        noise = int(round(raw * 0.15))
        spans = int(round(noise / 3.0))
        assert raw - noise + spans + 1 <= length  # the largest raw length that fits
        noise1 = int(round((raw + 1) * 0.15))
        assert raw + 1 - noise1 + int(round(noise1 / 3.0)) + 1 > length
        assert tgt == noise + spans + 1


def test_noise_mask_statistics():
    """T5's random_spans_noise_mask: exact noise count, exact span count, starts with non-noise."""
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(300):
        m = random_spans_noise_mask(141, 0.15, 3.0, rng)
        assert m.sum() == round(141 * 0.15)
        starts = m & ~np.concatenate([[False], m[:-1]])
        assert starts.sum() == round(round(141 * 0.15) / 3.0)
        assert not m[0]
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]]))))[::2]
        lengths.extend(runs.tolist())
    assert abs(np.mean(lengths) - 21 / 7) < 1e-9  # noise tokens / spans exactly


def test_span_batch_roundtrip_and_shapes(toks):
    tok = toks["unigram"]
    cfg = _cfg("t5-tiny", seq_len=64)
    obj = make_objective(cfg, tok)
    raw, tgt = compute_input_and_target_lengths(64, 0.15, 3.0)
    assert obj.raw_length(64) == raw
    windows = _windows(tok, 6, raw)
    batch = obj.build(windows, example_rngs(0, 0, 0, len(windows)))
    assert batch["input_ids"].shape == (6, 64) and batch["labels"].shape == (6, tgt)
    assert (batch["decoder_input_ids"][:, 0] == cfg.model.decoder_start_token_id).all()
    assert (batch["decoder_input_ids"][:, 1:] == batch["labels"][:, :-1].clamp(min=0)).all()
    sentinel = {s: i for i, s in enumerate(tok.sentinel_ids)}
    for r in range(6):
        inp = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        assert inp[-1] == tok.eos_id
        tgt_ids = [t for t in batch["labels"][r].tolist() if t != IGNORE_INDEX]
        # splice the targets back into the input: the original window must come back
        pieces: dict[int, list[int]] = {}
        cur = None
        for t in tgt_ids:
            if t in sentinel:
                cur = sentinel[t]
                pieces[cur] = []
            else:
                pieces[cur].append(t)
        rebuilt = []
        for t in inp[:-1]:
            rebuilt.extend(pieces[sentinel[t]] if t in sentinel else [t])
        assert rebuilt == windows[r].tolist()
        assert tgt_ids[-1] == tok.sentinel_ids[len(pieces) - 1]


def test_span_needs_sentinels(toks):
    with pytest.raises(ConfigError, match="sentinel"):
        make_objective(_cfg("t5-tiny"), toks["bpe"])


# ----------------------------------------------------------------------------- BERT masked LM

def test_mlm_rates_match_bert(toks):
    """15% of non-special tokens selected; 80% [MASK], 10% random, 10% unchanged."""
    tok = toks["wordpiece"]
    obj = make_objective(_cfg("bert-tiny", seq_len=64), tok)
    assert obj.raw_length(64) == 62
    n_sel = n_mask = n_rand = n_keep = 0
    special = sorted(tok.special_ids - {tok.unk_id})
    for step in range(40):
        windows = _windows(tok, 8, 62, seed=step)
        b = obj.build(windows, example_rngs(3, step, 0, len(windows)))
        ids = np.concatenate([np.full((8, 1), tok.cls_id), windows, np.full((8, 1), tok.sep_id)], 1)
        inp, lab = b["input_ids"].numpy(), b["labels"].numpy()
        assert (inp[:, 0] == tok.cls_id).all() and (inp[:, -1] == tok.sep_id).all()
        assert (b["attention_mask"].numpy() == 1).all() and (b["token_type_ids"].numpy() == 0).all()
        sel = lab != IGNORE_INDEX
        cand = ~np.isin(ids, special)
        assert not (sel & ~cand).any()  # specials never selected
        assert (lab[sel] == ids[sel]).all()
        assert (sel.sum(1) == np.maximum(1, np.rint(cand.sum(1) * 0.15))).all()
        n_sel += sel.sum()
        n_mask += (inp[sel] == tok.mask_id).sum()
        n_rand += ((inp[sel] != ids[sel]) & (inp[sel] != tok.mask_id)).sum()
        n_keep += (inp[sel] == ids[sel]).sum()
        assert ((inp != ids) <= sel).all()  # nothing outside the selection changes
    pool = tok.vocab_size - len(tok.special_ids)
    assert _within_3se(n_mask / n_sel, 0.8, n_sel)
    assert _within_3se(n_rand / n_sel, 0.1 * (1 - 1 / pool), n_sel)
    assert _within_3se(n_keep / n_sel, 0.1 + 0.1 / pool, n_sel)


def test_mlm_positions_uniform(toks):
    """Each candidate position is equally likely to be chosen (BERT shuffles candidate indices)."""
    tok = toks["wordpiece"]
    obj = make_objective(_cfg("bert-tiny", seq_len=32), tok)
    windows = np.tile(_stream(tok, 30, seed=5)[None], (64, 1))
    windows[windows == tok.doc_separator_id] = tok.unk_id
    hits = np.zeros(32)
    n = 0
    for step in range(30):
        b = obj.build(windows, example_rngs(1, step, 0, len(windows)))
        hits += (b["labels"].numpy() != IGNORE_INDEX).sum(0)
        n += 64
    p = round(30 * 0.15) / 30
    assert hits[0] == 0 and hits[-1] == 0
    z = (hits[1:-1] / n - p) / np.sqrt(p * (1 - p) / n)
    assert np.abs(z).max() < 4.0  # 30 positions: max |z| under 4 is > 99.8% likely


def test_whole_word_masking(toks):
    tok = toks["wordpiece"]
    obj = make_objective(_cfg("bert-tiny", seq_len=64, whole_word_mask=True), tok)
    sel_total = cand_total = 0
    for step in range(20):
        windows = _windows(tok, 8, 62, seed=step)
        b = obj.build(windows, example_rngs(0, step, 0, len(windows)))
        sel = b["labels"].numpy() != IGNORE_INDEX
        for r in range(8):
            toks_r = [tok.id_to_token(int(i)) for i in np.concatenate([[tok.cls_id], windows[r], [tok.sep_id]])]
            # a continuation piece (##x) is selected exactly when the piece before it is
            for j in range(1, len(toks_r)):
                if toks_r[j].startswith("##"):
                    assert sel[r, j] == sel[r, j - 1]
        cand = ~np.isin(np.concatenate([np.full((8, 1), tok.cls_id), windows, np.full((8, 1), tok.sep_id)], 1),
                        sorted(tok.special_ids - {tok.unk_id}))
        assert (sel.sum(1) <= np.maximum(1, np.rint(cand.sum(1) * 0.15))).all()
        sel_total += sel.sum()
        cand_total += cand.sum()
    assert 0.12 < sel_total / cand_total < 0.16


def test_span_masking_spanbert(toks):
    """SpanBERT: contiguous whole-word spans within the 15% budget."""
    tok = toks["wordpiece"]
    obj = make_objective(_cfg("bert-tiny", seq_len=128, span_mask=True), tok)
    rate, n_rows, contiguous_runs = 0.0, 0, []
    for step in range(20):
        windows = _windows(tok, 8, 126, seed=step)
        b = obj.build(windows, example_rngs(0, step, 0, len(windows)))
        sel = b["labels"].numpy() != IGNORE_INDEX
        for r in range(8):
            row = np.concatenate([[tok.cls_id], windows[r], [tok.sep_id]])
            cand = ~np.isin(row, sorted(tok.special_ids - {tok.unk_id}))
            rate += sel[r].sum() / cand.sum()
            n_rows += 1
            edges = np.flatnonzero(np.diff(np.concatenate([[0], sel[r].astype(int), [0]])))
            for s, e in zip(edges[::2], edges[1::2]):
                contiguous_runs.append(e - s)
    assert 0.13 < rate / n_rows < 0.16
    assert np.mean(contiguous_runs) > 2.0  # spans, not single tokens (BERT's token masking gives ~1.2)


def test_nsp_pairs(toks):
    tok = toks["wordpiece"]
    cfg = _cfg("bert-tiny", seq_len=64, nsp=True)
    cfg.model.pooler = True
    cfg.model.nsp_head = True
    obj = make_objective(cfg, tok)
    raw = obj.raw_length(64)
    labels = []
    for step in range(40):
        windows = _windows(tok, 8, raw, seed=step)
        b = obj.build(windows, example_rngs(0, step, 0, len(windows)))
        ids, tt = b["input_ids"].numpy(), b["token_type_ids"].numpy()
        lab = b["labels"].numpy()
        orig = np.where(lab != IGNORE_INDEX, lab, ids)
        for r in range(8):
            assert orig[r, 0] == tok.cls_id and orig[r, -1] == tok.sep_id
            a_end = int(np.argmax(tt[r] == 1)) - 1  # position of the middle [SEP]
            assert orig[r, a_end] == tok.sep_id and (tt[r, : a_end + 1] == 0).all() and (tt[r, a_end + 1:] == 1).all()
            seg_a, seg_b = orig[r, 1:a_end], orig[r, a_end + 1:-1]
            assert (seg_a == windows[r, : len(seg_a)]).all()
            is_next = (seg_b == windows[r, len(seg_a): len(seg_a) + len(seg_b)]).all()
            if b["next_sentence_label"][r] == 0:
                assert is_next
            labels.append(int(b["next_sentence_label"][r]))
    assert _within_3se(np.mean(labels), 0.5, len(labels))


def test_mlm_needs_mask_token(toks):
    with pytest.raises(ConfigError, match="MASK"):
        make_objective(_cfg("bert-tiny"), toks["bpe"])


# ----------------------------------------------------------------------------- causal LM

def test_causal_packing(toks):
    tok = toks["bpe"]
    obj = make_objective(_cfg("gpt-tiny", seq_len=64), tok)
    assert obj.raw_length(64) == 64
    windows = _windows(tok, 4, 64)
    b = obj.build(windows, example_rngs(0, 0, 0, len(windows)))
    assert (b["input_ids"].numpy() == windows).all() and (b["labels"].numpy() == windows).all()
    assert (windows == tok.eos_id).any()  # documents separated by <|endoftext|> inside windows
    assert obj.count_targets(b) == 4 * 63


# ----------------------------------------------------------------------------- reproducibility

@pytest.mark.parametrize("preset,kind,extra", [
    ("bert-tiny", "wordpiece", {}),
    ("bert-tiny", "wordpiece", {"whole_word_mask": True}),
    ("bert-tiny", "wordpiece", {"span_mask": True}),
    ("t5-tiny", "unigram", {}),
])
def test_reproducible_from_seed(toks, preset, kind, extra):
    tok = toks[kind]
    obj = make_objective(_cfg(preset, seq_len=64, **extra), tok)
    windows = _windows(tok, 4, obj.raw_length(64))
    a = obj.build(windows, example_rngs(7, 3, 0, len(windows)))
    b = obj.build(windows, example_rngs(7, 3, 0, len(windows)))
    c = obj.build(windows, example_rngs(8, 3, 0, len(windows)))
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


@pytest.mark.parametrize("preset,kind,extra", [
    ("bert-tiny", "wordpiece", {}),
    ("bert-tiny", "wordpiece", {"whole_word_mask": True}),
    ("bert-tiny", "wordpiece", {"span_mask": True}),
    ("bert-tiny", "wordpiece", {"nsp": True}),
    ("t5-tiny", "unigram", {}),
])
def test_each_example_depends_only_on_its_own_generator(toks, preset, kind, extra):
    """With one generator per example (as the training loop passes them), an example comes out
    the same whichever batch it is built in: what makes micro-batching and data parallelism
    leave the inputs unchanged. NSP's random second segments come from the given partners."""
    tok = toks[kind]
    cfg = _cfg(preset, seq_len=64, **extra)
    cfg.model.pooler = cfg.model.nsp_head = bool(extra.get("nsp"))
    obj = make_objective(cfg, tok)
    assert obj.uses_partners == bool(extra.get("nsp"))
    windows = _windows(tok, 6, obj.raw_length(64))
    partners = _windows(tok, 6, obj.raw_length(64), seed=99)
    whole = obj.build(windows, example_rngs(5, 2, 0, 6), partners)
    for lo, hi in ((0, 2), (2, 3), (3, 6)):
        part = obj.build(windows[lo:hi], example_rngs(5, 2, lo, hi - lo), partners[lo:hi])
        assert all((part[k] == whole[k][lo:hi]).all() for k in whole)
    if extra.get("nsp"):
        ids, tt, lab = (whole[k].numpy() for k in ("input_ids", "token_type_ids", "labels"))
        orig = np.where(lab != IGNORE_INDEX, lab, ids)
        nsp = whole["next_sentence_label"].numpy()
        assert 0 < nsp.sum() < 6  # both kinds of pair among six (fixed seeds)
        for r in np.flatnonzero(nsp):
            seg_b = orig[r, tt[r] == 1][:-1]
            hits = [i for i in range(partners.shape[1] - len(seg_b) + 1)
                    if (partners[r, i:i + len(seg_b)] == seg_b).all()]
            assert hits, "the random segment is a piece of the row's partner window"
    with pytest.raises(ValueError, match="5 generators for 6 rows"):
        obj.build(windows, example_rngs(5, 2, 0, 5), partners)
