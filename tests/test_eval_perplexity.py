"""Perplexity: the sliding-window bookkeeping, the numbers against direct full-sequence
computations, word-level perplexity and bits per byte, and encoder pseudo-perplexity."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscale.config import ModelConfig
from lmscale.evaluation.perplexity import centered_windows, perplexity, sliding_windows, token_stream
from lmscale.models import build_model

DOCS = ["The cat sat on the mat.", "A dog ran across the busy street, barking at cars.",
        "Minnesota winters are long and cold; summers are short."]


@given(n=st.integers(1, 200), window=st.integers(2, 40), data=st.data())
@settings(max_examples=200, deadline=None)
def test_every_token_is_scored_once_with_full_context(n, window, data):
    stride = data.draw(st.integers(1, window))
    targets: list[int] = []
    for begin, end, first in sliding_windows(n, window, stride):
        assert end - begin <= window and begin < first < end or first == end
        for j in range(first, end):
            # context of target j is tokens[begin:j]: full window or everything before j
            assert j - begin >= min(j, window - stride)
        targets.extend(range(first, end))
    assert targets == list(range(1, n))


@given(n=st.integers(1, 150), window=st.integers(1, 40), data=st.data())
@settings(max_examples=200, deadline=None)
def test_bidirectional_windows_cover_each_token_once(n, window, data):
    stride = data.draw(st.integers(1, window))
    scored: list[int] = []
    for begin, end, s, e in centered_windows(n, window, stride):
        assert 0 <= begin <= s < e <= end <= n and end - begin <= window
        scored.extend(range(s, e))
    assert scored == list(range(n))


@pytest.fixture(scope="module")
def bpe_tok():
    from lmscale.tokenization import train_tokenizer

    return train_tokenizer("bpe", DOCS * 10, vocab_size=300)


def _decoder(tok, max_positions=64, position="learned"):
    torch.manual_seed(0)
    return build_model(ModelConfig(family="decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=2,
                                   n_heads=4, max_positions=max_positions, position=position)).eval()


def test_full_window_equals_the_models_own_loss(bpe_tok):
    model = _decoder(bpe_tok, max_positions=128)
    ids, n_words, n_bytes, _ = token_stream(bpe_tok, DOCS)
    assert len(ids) <= 128
    res = perplexity(model, bpe_tok, DOCS, window=128)
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = float(model(input_ids=x, labels=x).loss)
    assert res.n_tokens == len(ids) - 1
    assert res.loss == pytest.approx(loss, rel=1e-5)
    assert res.token_perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert n_words == sum(len(d.split()) for d in DOCS)
    assert n_bytes == sum(len(d.encode()) for d in DOCS)
    assert res.word_perplexity == pytest.approx(math.exp(loss * res.n_tokens / n_words), rel=1e-5)
    assert res.bits_per_byte == pytest.approx(loss * res.n_tokens / (n_bytes * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 16), (12, 5)])
def test_sliding_window_equals_direct_computation(bpe_tok, window, stride):
    """Each target's log-probability, computed one at a time from exactly its window's context."""
    model = _decoder(bpe_tok, max_positions=16, position="rope")
    ids, *_ = token_stream(bpe_tok, DOCS)
    assert len(ids) > 2 * window
    res = perplexity(model, bpe_tok, DOCS, window=window, stride=stride, batch_size=3)
    nll = 0.0
    with torch.no_grad():
        for begin, end, first in sliding_windows(len(ids), window, stride):
            for j in range(first, end):
                logits = model(input_ids=torch.tensor([ids[begin:j]])).logits[0, -1]
                nll -= float(torch.log_softmax(logits, -1)[ids[j]])
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.n_tokens == len(ids) - 1


def test_encoder_pseudo_perplexity_equals_masking_each_token(tmp_path):
    from lmscale.tokenization import train_tokenizer

    tok = train_tokenizer("wordpiece", DOCS * 10, vocab_size=200, lowercase=True)
    torch.manual_seed(1)
    model = build_model(ModelConfig(family="encoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                    max_positions=24, type_vocab_size=2, embedding_norm=True)).eval()
    res = perplexity(model, tok, DOCS, stride=10, batch_size=2)
    assert res.kind == "pseudo-perplexity"
    ids, *_ = token_stream(tok, DOCS, family="encoder")
    nll = 0.0
    with torch.no_grad():
        for begin, end, s, e in centered_windows(len(ids), 22, 10):
            seq = [tok.cls_id] + ids[begin:end] + [tok.sep_id]
            for p in range(s, e):
                x = list(seq)
                x[1 + p - begin] = tok.mask_id
                logits = model(input_ids=torch.tensor([x])).logits[0, 1 + p - begin]
                nll -= float(torch.log_softmax(logits, -1)[ids[p]])
    assert res.n_tokens == len(ids)
    assert res.nll == pytest.approx(nll, rel=1e-5)


def test_encoder_decoder_perplexity_runs(tmp_path):
    from lmscale.tokenization import train_tokenizer

    tok = train_tokenizer("unigram", DOCS * 10, vocab_size=150)
    torch.manual_seed(2)
    model = build_model(ModelConfig(family="encoder-decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1,
                                    n_heads=4, position="relative", norm="rmsnorm", bias=False,
                                    max_positions=32)).eval()
    res = perplexity(model, tok, DOCS, stride=8)
    ids, *_ = token_stream(tok, DOCS, family="encoder-decoder")
    assert res.n_tokens == len(ids) and res.n_windows == math.ceil(len(ids) / 8)
    assert 1.0 < res.token_perplexity < 10 * tok.vocab_size


def test_perplexity_cli(bpe_tok, tmp_path, capsys):
    from lmscale.cli import main
    from lmscale.models.serialization import save_model_dir

    model = _decoder(bpe_tok, max_positions=32)
    d = save_model_dir(model, bpe_tok, tmp_path / "ckpt")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS) + "\n")
    assert main(["eval", "perplexity", str(d), "--corpus", str(corpus), "--stride", "8", "--json",
                 "--out", str(tmp_path / "ppl.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "ppl.json").read_text()) == out
    from lmscale.evaluation.perplexity import corpus_documents

    docs = list(corpus_documents(str(corpus), "test"))
    assert [d.strip() for d in docs] == DOCS
    ref = perplexity(model, bpe_tok, docs, stride=8)
    task = "corpus.txt:test"
    assert out["results"][task]["token_perplexity,none"] == pytest.approx(ref.token_perplexity)
    assert out["results"][task]["word_perplexity,none"] == pytest.approx(ref.word_perplexity)
    assert out["results"][task]["bits_per_byte,none"] == pytest.approx(ref.bits_per_byte)
    assert out["results"][task]["byte_perplexity,none"] == pytest.approx(2 ** ref.bits_per_byte)
    assert out["higher_is_better"][task] == {"word_perplexity": False, "byte_perplexity": False,
                                             "bits_per_byte": False, "token_perplexity": False}
    extra = out["lmscale"]
    assert extra["n_words"] == ref.n_words and extra["stride"] == 8 and extra["window"] == 32
    assert main(["eval", "perplexity", str(d), "--corpus", str(corpus)]) == 0
    text = capsys.readouterr().out
    assert "word-level" in text and "bits/byte" in text


def test_perplexity_on_wikitext2_test(shared_data, bpe_tok, monkeypatch):
    if not (shared_data / "wikitext-2" / "wiki.test.raw").is_file():
        pytest.skip("WikiText-2 is not in the data mirror")
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    from lmscale.evaluation.perplexity import corpus_documents

    docs = corpus_documents("wikitext-2", "test")
    model = _decoder(bpe_tok, max_positions=32)
    res = perplexity(model, bpe_tok, docs, max_tokens=300, stride=16)
    assert res.n_tokens >= 299 and res.n_words > 0 and res.n_bytes > res.n_words
    assert res.word_perplexity > res.token_perplexity  # several tokens per word with a tiny vocabulary
