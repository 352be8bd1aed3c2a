"""Fill-mask, generation and infilling checked against `transformers` on randomly initialised
models built from small configs (no download), and against the lecture's examples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscale.config import ModelConfig
from lmscale.errors import LmscaleError
from lmscale.inference import fill_mask, generate, infill, iter_token_ids
from lmscale.inference.generate import reassemble, split_spans
from lmscale.inference.sampling import SamplingConfig
from lmscale.models import build_model

transformers = pytest.importorskip("transformers")

WORDS = ("the a university of minnesota is located in paris london city state table fork down on put i "
         "my his her woman walked across street checking for traffic over shoulder").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + ["##s", "##ed", "##ing", "walk"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A random-init BertForMaskedLM and a small WordPiece tokenizer saved as a transformers dir."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    d = tmp_path_factory.mktemp("bert")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_pair(bert_dir):
    from transformers import BertForMaskedLM, BertTokenizerFast, pipeline

    from lmscale.models.hf import from_hf

    hf = BertForMaskedLM.from_pretrained(bert_dir).eval()
    pipe = pipeline("fill-mask", model=hf, tokenizer=BertTokenizerFast.from_pretrained(bert_dir))
    ours, tok = from_hf(bert_dir)
    return pipe, ours, tok


def _assert_same(ours: list[dict], theirs: list[dict]) -> None:
    assert [e["token_id"] for e in ours] == [e["token"] for e in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["probability"] - b["score"]) <= 1e-5


@pytest.mark.parametrize("text", [
    "University of Minnesota is located in [MASK], Minnesota.",
    "I put [MASK] fork down on the [MASK].",
])
def test_fill_mask_matches_transformers_pipeline(bert_pair, text):
    pipe, ours, tok = bert_pair
    got = fill_mask(ours, tok, text, top_k=5)
    ref = pipe(text, top_k=5)
    ref = [ref] if isinstance(ref[0], dict) else ref
    assert len(got) == len(ref) == text.count("[MASK]")
    for g, r in zip(got, ref):
        _assert_same(g, r)
        assert [e["token"] for e in g] == [e["token_str"] for e in r]


def test_fill_mask_targets_and_lecture_blank(bert_pair):
    pipe, ours, tok = bert_pair
    text = "University of Minnesota is located in [MASK], Minnesota."
    got = fill_mask(ours, tok, text, top_k=3, targets=["paris", "london", "city"])
    _assert_same(got[0], pipe(text, targets=["paris", "london", "city"], top_k=3))
    # ___ is the lecture's blank, and means the same as [MASK]
    blank = fill_mask(ours, tok, "University of Minnesota is located in ___, Minnesota.", top_k=5)
    assert blank == fill_mask(ours, tok, text, top_k=5)
    # a word the vocabulary splits is scored by its first sub-token, and says so
    multi = fill_mask(ours, tok, text, top_k=2, targets=["walking", "paris"])
    flagged = [e for e in multi[0] if "first_subtoken_of" in e]
    assert flagged and flagged[0]["first_subtoken_of"] == "walking"
    assert flagged[0]["token_id"] == tok.token_to_id("walk")
    with pytest.raises(LmscaleError, match="no mask"):
        fill_mask(ours, tok, "no blank here", top_k=5)


def _same_as_pipeline(ours, theirs) -> None:
    """Pipeline-shaped records: same keys, tokens, strings and sequences; scores within 1e-5."""
    assert type(ours) is type(theirs) and len(ours) == len(theirs)
    if theirs and isinstance(theirs[0], list):
        for a, b in zip(ours, theirs):
            _same_as_pipeline(a, b)
        return
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == {"score", "token", "token_str", "sequence"}
        assert (a["token"], a["token_str"], a["sequence"]) == (b["token"], b["token_str"], b["sequence"])
        assert abs(a["score"] - b["score"]) <= 1e-5


@pytest.mark.parametrize("text,targets", [
    ("University of Minnesota is located in [MASK], Minnesota.", None),
    ("I put [MASK] fork down on the [MASK].", None),
    ("University of Minnesota is located in [MASK], Minnesota.", ["paris", "london", "city"]),
], ids=["one-mask", "two-masks", "targets"])
def test_fill_mask_pipeline_shape_equals_transformers(bert_pair, text, targets):
    from lmscale.inference import fill_mask_pipeline

    pipe, ours, tok = bert_pair
    kw = {"targets": targets} if targets else {}
    _same_as_pipeline(fill_mask_pipeline(ours, tok, text, top_k=3, **kw), pipe(text, top_k=3, **kw))


def test_fill_mask_cli_json(bert_pair, bert_dir, capsys):
    from lmscale.cli import main

    pipe = bert_pair[0]
    text = "I put ___ fork down on the [MASK]."
    assert main(["fill-mask", str(bert_dir), text, "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and all(len(m) == 3 for m in out)
    _same_as_pipeline(out, pipe("I put [MASK] fork down on the [MASK].", top_k=3))
    assert main(["fill-mask", str(bert_dir), "located in [MASK].", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert isinstance(one[0], dict) and one[0]["sequence"].startswith("located in ")
    assert main(["fill-mask", str(bert_dir), "located in [MASK].", "--targets", "paris,walking"]) == 0
    assert "first sub-token of 'walking'" in capsys.readouterr().out


# ----------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def gpt2_pair():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmscale.models.hf import from_hf

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0, initializer_range=0.5)).eval()
    ours, _ = from_hf(hf)
    return hf, ours


@pytest.fixture(scope="module")
def t5_pair():
    from transformers import T5Config, T5ForConditionalGeneration

    from lmscale.models.hf import from_hf

    torch.manual_seed(2)
    hf = T5ForConditionalGeneration(T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="relu",
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=True,
        initializer_factor=3.0)).eval()
    ours, _ = from_hf(hf)
    return hf, ours


@pytest.mark.parametrize("prompt,penalty", [([5, 17, 42, 8], 1.0), ([3], 1.0), ([3], 1.3)])
def test_greedy_matches_transformers_gpt2(gpt2_pair, prompt, penalty):
    hf, ours = gpt2_pair
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, max_new_tokens=24, pad_token_id=0,
                      repetition_penalty=penalty)[0, len(prompt):].tolist()
    got = generate(ours, None, prompt, greedy=True, max_new_tokens=24, eos_ids=[0], repetition_penalty=penalty)
    assert got.token_ids == ref
    assert len(set(ref)) > 3  # a varied continuation, not one token repeated


@pytest.mark.parametrize("src,penalty", [([7, 9, 23, 54, 1], 1.0), ([7, 9, 23, 54, 1], 1.5), ([33, 1], 1.5)])
def test_greedy_matches_transformers_t5(t5_pair, src, penalty):
    hf, ours = t5_pair
    ref = hf.generate(torch.tensor([src]), attention_mask=torch.ones(1, len(src), dtype=torch.long),
                      do_sample=False, max_new_tokens=20, repetition_penalty=penalty)[0, 1:].tolist()
    got = generate(ours, None, src, greedy=True, max_new_tokens=20, eos_ids=[1], repetition_penalty=penalty)
    assert got.token_ids == ref
    assert len(set(ref)) >= 2


@pytest.mark.parametrize("family,extra", [
    ("decoder", {}),
    ("decoder", {"position": "rope", "norm": "rmsnorm", "gated_mlp": True, "activation": "silu"}),
    ("encoder-decoder", {"position": "relative", "norm": "rmsnorm", "bias": False}),
])
def test_kv_cache_equals_no_cache(family, extra):
    torch.manual_seed(3)
    cfg = ModelConfig(family=family, vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_positions=48, **extra)
    model = build_model(cfg).eval()
    prompt = [4, 9, 16, 25, 36]
    for sampling in (dict(greedy=True), dict(seed=5, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2)):
        a = list(iter_token_ids(model, prompt, SamplingConfig(**sampling), 30, use_cache=True))
        b = list(iter_token_ids(model, prompt, SamplingConfig(**sampling), 30, use_cache=False))
        assert a == b
    # the cached step's logits equal the full recomputation's last position
    with torch.inference_mode():
        if family == "decoder":
            full = model(input_ids=torch.tensor([prompt + [7]])).logits[0, -1]
            first = model(input_ids=torch.tensor([prompt]), use_cache=True)
            step = model(input_ids=torch.tensor([[7]]), past_key_values=first.past_key_values, use_cache=True)
        else:
            x = torch.tensor([prompt])
            enc = model.encode(x, torch.ones_like(x))
            full = model(encoder_hidden_states=enc, decoder_input_ids=torch.tensor([[0, 7]])).logits[0, -1]
            first = model(encoder_hidden_states=enc, decoder_input_ids=torch.tensor([[0]]), use_cache=True)
            step = model(encoder_hidden_states=enc, decoder_input_ids=torch.tensor([[7]]),
                         past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[0, -1], full, atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_from_seed(gpt2_pair):
    _, ours = gpt2_pair
    kw = dict(temperature=0.9, top_k=30, top_p=0.95, repetition_penalty=1.3, max_new_tokens=20, eos_ids=[])
    a = generate(ours, None, [5, 6, 7], seed=11, **kw).token_ids
    b = generate(ours, None, [5, 6, 7], seed=11, **kw).token_ids
    c = generate(ours, None, [5, 6, 7], seed=12, **kw).token_ids
    assert a == b and len(a) == 20
    assert a != c


# ----------------------------------------------------------------------------- sampling math

def test_logits_processors_match_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from lmscale.inference.sampling import apply_repetition_penalty, process_logits, top_k_filter, top_p_filter

    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 3
    prev = torch.tensor([[3, 7, 7, 20, 41]])
    torch.testing.assert_close(apply_repetition_penalty(logits, prev, 1.4),
                               RepetitionPenaltyLogitsProcessor(1.4)(prev, logits.clone()))
    torch.testing.assert_close(top_k_filter(logits, 7), TopKLogitsWarper(7)(prev, logits.clone()))
    torch.testing.assert_close(top_p_filter(logits, 0.8), TopPLogitsWarper(0.8)(prev, logits.clone()))
    cfg = SamplingConfig(temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.3)
    ref = logits.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(10),
                 TopPLogitsWarper(0.9)):
        ref = proc(prev, ref)
    torch.testing.assert_close(process_logits(logits[0], prev[0], cfg), ref[0])


class _Scripted(torch.nn.Module):
    """A stand-in model that emits a fixed token sequence, to test decoding control in isolation."""

    def __init__(self, script: list[int], vocab: int, family: str = "decoder") -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script = script
        self.vocab = vocab
        self.config = ModelConfig(family=family, vocab_size=vocab, d_model=8, n_layers=1, n_heads=1,
                                  max_positions=512, position="relative" if family != "decoder" else "learned")
        self.calls = 0

    def encode(self, ids, mask=None):
        return torch.zeros(ids.shape[0], ids.shape[1], 8)

    def forward(self, input_ids=None, decoder_input_ids=None, past_key_values=None, use_cache=False, **kw):
        x = decoder_input_ids if decoder_input_ids is not None else input_ids
        logits = torch.full((x.shape[0], x.shape[1], self.vocab), -10.0)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        from lmscale.models import ModelOutput

        return ModelOutput(logits=logits, past_key_values=[(torch.zeros(1, 1, self.calls, 1),)] if use_cache else None)


@pytest.fixture(scope="module")
def unigram_tok():
    from lmscale.tokenization import train_tokenizer

    text = ["Thank you for inviting me to your party last week.",
            "We were happy to see you at the party last week.",
            "Thanks for having me over, the food was great."] * 20
    return train_tokenizer("unigram", text, vocab_size=200)


def test_stop_strings_and_streaming(unigram_tok):
    tok = unigram_tok
    script = tok.encode("for inviting me to your party") + tok.encode(" last week.")
    model = _Scripted(script + [tok.eos_id], tok.vocab_size)
    pieces: list[str] = []
    res = generate(model, tok, "Thank you", greedy=True, max_new_tokens=40, stop=["party"], on_text=pieces.append)
    assert res.stop_reason == "stop"
    assert "party" not in res.text and res.text.rstrip().endswith("your")
    assert "".join(pieces) == res.text  # streamed text is exactly the final text
    model.calls = 0
    res = generate(model, tok, "Thank you", greedy=True, max_new_tokens=40)
    assert res.stop_reason == "eos" and res.token_ids[-1] == tok.eos_id
    assert res.text.strip() == "for inviting me to your party last week."


def test_t5_infill_reassembles_the_lecture_sentence(unigram_tok):
    tok = unigram_tok
    s = tok.sentinel_ids
    out = [s[0]] + tok.encode("for inviting") + [s[1]] + tok.encode("last") + [s[2]]
    spans = [tok.decode(x).strip() for x in split_spans(out, s, 2)]
    assert spans == ["for inviting", "last"]
    sentence = "Thank you <extra_id_0> me to your party <extra_id_1> week."
    assert reassemble(sentence, spans) == "Thank you for inviting me to your party last week."
    assert reassemble("Thank you <X> me to your party <Y> week.", spans) == \
        "Thank you for inviting me to your party last week."
    # end to end through the decoding loop: stops at <extra_id_2>, never reads past it
    model = _Scripted(out + tok.encode("garbage"), tok.vocab_size, family="encoder-decoder")
    res = infill(model, tok, "Thank you <X> me to your party <Y> week.")
    assert res.spans == ["for inviting", "last"]
    assert res.text == "Thank you for inviting me to your party last week."
    assert res.token_ids[-1] == s[2]


def test_infill_with_a_random_t5_and_the_cli(unigram_tok, tmp_path, capsys):
    from lmscale.cli import main
    from lmscale.models.serialization import save_model_dir

    tok = unigram_tok
    torch.manual_seed(4)
    cfg = ModelConfig(family="encoder-decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=4,
                      position="relative", norm="rmsnorm", bias=False, max_positions=64,
                      pad_token_id=tok.pad_id)
    model = build_model(cfg).eval()
    res = infill(model, tok, "Thank you <extra_id_0> me to your party <extra_id_1> week.", max_new_tokens=8)
    assert len(res.spans) == 2 and "<extra_id" not in res.text
    assert res.text.startswith("Thank you") and res.text.endswith("week.")
    d = save_model_dir(model, tok, tmp_path / "t5")
    assert main(["generate", str(d), "Thank you <X> me to your party <Y> week.", "--max-new-tokens", "8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["generated_text"] == res.text
    assert out[0]["spans"] == res.spans and out[0]["text"] == res.text


@pytest.fixture(scope="module")
def bpe_tok():
    from lmscale.tokenization import train_tokenizer

    return train_tokenizer("bpe", ["the cat sat on the mat and the dog sat on the log"] * 30, vocab_size=300)


BATCH_PROMPTS = ["the cat", "the dog sat on the mat and the", "a", "the log sat on the cat sat on the dog and"]


@pytest.mark.parametrize("variant", [
    dict(),
    dict(position="rope", norm="rmsnorm", gated_mlp=True, activation="silu", bias=False, n_kv_heads=2),
    dict(position="rope", rotary_fraction=0.25, parallel_residual=True, tie_embeddings=False),
], ids=["gpt2-learned", "llama-gqa", "pythia"])
def test_batched_generation_gives_each_prompt_its_own_tokens(bpe_tok, variant):
    """Several prompts decoded together (left padding, KV cache) give the tokens each gets alone:
    greedy, seeded sampling with a repetition penalty, a stop string, without the cache, and with
    prompts that reach the context limit."""
    from lmscale.inference import generate_batch

    tok = bpe_tok
    torch.manual_seed(5)
    cfg = ModelConfig(family="decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                      max_positions=24, init_std=0.3, **variant)
    model = build_model(cfg).eval()
    prompts = BATCH_PROMPTS + ["the mat " * 15]  # longer than the window: cut from the left
    first = generate(model, tok, prompts[1], greedy=True, max_new_tokens=12).text
    stop = first[len(first) // 2: len(first) // 2 + 2]  # met half-way by one prompt, perhaps by others
    settings = [dict(greedy=True), dict(seed=7, temperature=1.3, top_k=40, repetition_penalty=1.2),
                dict(greedy=True, stop=[stop]), dict(seed=3, use_cache=False)]
    for kw in settings:
        alone = [generate(model, tok, p, max_new_tokens=12, **kw) for p in prompts]
        together = generate_batch(model, tok, prompts, max_new_tokens=12, batch_size=3, **kw)
        for a, b in zip(alone, together):
            assert (b.token_ids, b.text, b.stop_reason) == (a.token_ids, a.text, a.stop_reason), kw
            assert (b.prompt_ids, b.prompt_truncated) == (a.prompt_ids, a.prompt_truncated)
        reasons = {r.stop_reason for r in together}
        assert "stop" in reasons if "stop" in kw else reasons <= {"length", "context", "eos"}
    assert together[-1].prompt_truncated > 0


def test_batched_generation_encoder_decoder(unigram_tok):
    from lmscale.inference import generate_batch

    tok = unigram_tok
    torch.manual_seed(4)
    cfg = ModelConfig(family="encoder-decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                      position="relative", norm="rmsnorm", bias=False, max_positions=64, pad_token_id=tok.pad_id,
                      init_std=0.3)
    model = build_model(cfg).eval()
    prompts = ["Thank you for inviting me", "the party", "We were happy to see you at the party last week."]
    for kw in (dict(greedy=True), dict(seed=1)):
        alone = [generate(model, tok, p, max_new_tokens=8, **kw).token_ids for p in prompts]
        assert [r.token_ids for r in generate_batch(model, tok, prompts, max_new_tokens=8, **kw)] == alone


def test_generate_cli_streams_and_json(tmp_path, capsys, bpe_tok):
    from lmscale.cli import main
    from lmscale.models.serialization import save_model_dir

    tok = bpe_tok
    torch.manual_seed(5)
    model = build_model(ModelConfig(family="decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1,
                                    n_heads=4, max_positions=32)).eval()
    d = save_model_dir(model, tok, tmp_path / "gpt")
    assert main(["generate", str(d), "the cat", "--greedy", "--max-new-tokens", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = generate(model, tok, "the cat", greedy=True, max_new_tokens=10)
    assert out == [{"generated_text": "the cat" + ref.text, "token_ids": ref.token_ids,
                    "stop_reason": ref.stop_reason, "prompt_truncated": 0}]
    # several prompts, as arguments and from a file: one list per prompt, as transformers' pipeline
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(BATCH_PROMPTS[2:]) + "\n\n")
    assert main(["generate", str(d), *BATCH_PROMPTS[:2], "--file", str(f), "--greedy", "--max-new-tokens", "6",
                 "--json"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert len(many) == 4 and all(len(r) == 1 for r in many)
    for p, r in zip(BATCH_PROMPTS, many):
        assert r[0]["generated_text"] == p + generate(model, tok, p, greedy=True, max_new_tokens=6).text
    assert main(["generate", str(d), *BATCH_PROMPTS[:2], "--greedy", "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"[{i + 1}/2] {many[i][0]['generated_text']}" for i in range(2)]
    assert main(["generate", str(d)]) == 2
    assert "give a PROMPT" in capsys.readouterr().err
    assert main(["generate", str(d), "the cat", "--greedy", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == "the cat" + ref.text + "\n"
    # a prompt longer than the context is cut from the left, and generation stops at the window
    long = generate(model, tok, "the cat sat on the mat " * 20, greedy=True, max_new_tokens=50)
    assert long.prompt_truncated > 0
    assert len(long.prompt_ids) + len(long.token_ids) <= 32
    with pytest.raises(LmscaleError, match="temperature"):
        generate(model, tok, "the", temperature=0.0)
