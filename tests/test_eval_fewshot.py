"""Few-shot evaluation: BIG-bench task parsing and validation, prompts in BIG-bench's format with
seeded demonstrations that never include the test item, the scoring math of lm-evaluation-harness,
and the harness end to end on a real BIG-bench task with a tiny model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmscale.config import ModelConfig
from lmscale.errors import DataError
from lmscale.evaluation.fewshot import (
    build_prompt,
    choice_metrics,
    evaluate,
    exact_match,
    extract_answer,
    mean_stderr,
    normalize_answer,
)
from lmscale.evaluation.lm import CausalLM, scoring_lm
from lmscale.evaluation.tasks import load_tasks
from lmscale.models import build_model


def _bb(shared_data: Path) -> Path:
    d = shared_data / "bigbench"
    if not (d / "cause_and_effect").is_dir():
        pytest.skip("BIG-bench tasks are not in the data mirror")
    return d


def _unique(examples: list) -> list:
    seen, out = set(), []
    for e in examples:
        k = json.dumps(e, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


# ----------------------------------------------------------------------------- parsing

def test_real_bigbench_tasks_parse_and_resolve_by_name(shared_data, monkeypatch):
    bb = _bb(shared_data)
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    subtasks = load_tasks(bb / "cause_and_effect")
    assert [t.name for t in subtasks] == ["cause_and_effect/one_sentence", "cause_and_effect/one_sentence_no_prompt",
                                          "cause_and_effect/two_sentences"]
    raw = json.loads((bb / "cause_and_effect" / "two_sentences" / "task.json").read_text())
    t = subtasks[2]
    assert len(t.examples) == len(_unique(raw["examples"]))
    assert t.multiple_choice and not t.generative
    assert t.task_prefix == raw["task_prefix"] and t.output_prefix == raw["example_output_prefix"]
    by_name = load_tasks("arithmetic/2_digit_addition")
    assert len(by_name) == 1 and by_name[0].multiple_choice and by_name[0].generative
    assert by_name[0].output_regex == r"[-+]?\d+"
    assert load_tasks("2_digit_addition")[0].name == "arithmetic/2_digit_addition"
    assert len(load_tasks("arithmetic")) == 20
    with pytest.raises(DataError, match="did you mean"):
        load_tasks("arithmetc/2_digit_addition")


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "task.json"
    p.write_text(json.dumps(data))
    return p


GOOD = {"name": "t", "metrics": ["multiple_choice_grade"],
        "examples": [{"input": f"q{i}", "target_scores": {"yes": 1, "no": 0}} for i in range(5)]}


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d["examples"][3].pop("input"), r"examples\[3\]\.input"),
    (lambda d: d["examples"][2].update(target_scores=["yes", "no"]), r"examples\[2\]\.target_scores"),
    (lambda d: d["examples"][4]["target_scores"].update(no="zero"), r"examples\[4\]\.target_scores\['no'\]"),
    (lambda d: d["examples"][1].update(input=7), r"examples\[1\]\.input"),
    (lambda d: d["examples"][0].pop("target_scores"), r"examples\[0\]"),
    (lambda d: d["examples"].__setitem__(3, "q3"), r"examples\[3\]"),
    (lambda d: d.update(examples=[]), r"examples"),
    (lambda d: d.update(metrics=["exact_str_match"]), r"examples\[0\]\.target"),
    (lambda d: d.update(example_input_prefix=3), r"example_input_prefix"),
])
def test_malformed_task_names_example_and_field(tmp_path, mutate, where):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(DataError, match=where):
        load_tasks(_write(tmp_path, data))


def test_malformed_json_and_jsonl(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"examples": [')
    with pytest.raises(DataError, match="not valid JSON"):
        load_tasks(p)
    q = tmp_path / "t.jsonl"
    q.write_text('{"context": "a", "choices": ["x", "y"], "answer": 0}\n'
                 '{"context": "b", "choices": ["x", "y"], "answer": 5}\n')
    with pytest.raises(DataError, match=r"line 2 \(example 1\)\.answer"):
        load_tasks(q)
    q.write_text('{"context": "a", "choices": ["x", "y"], "answer": "y"}\n{"choices": ["x"], "answer": 0}\n')
    with pytest.raises(DataError, match=r"line 2 \(example 1\)\.context"):
        load_tasks(q)
    q.write_text('{"context": "a", "choices": ["x", "y"], "answer": "y"}\n{"context": "b", "answer": "z"}\n')
    with pytest.raises(DataError, match="mixes"):
        load_tasks(q)


# ----------------------------------------------------------------------------- prompts

def test_zero_shot_prompt_is_bigbench_format(shared_data):
    bb = _bb(shared_data)
    raw = json.loads((bb / "cause_and_effect" / "two_sentences" / "task.json").read_text())
    task = load_tasks(bb / "cause_and_effect" / "two_sentences")[0]
    ex = raw["examples"][0]
    p = build_prompt(task, 0, 0, seed=1).text
    # append_choices_to_input defaults to true in BIG-bench; the order of the choices is permuted
    head = raw["task_prefix"] + raw["example_input_prefix"] + ex["input"]
    assert p.startswith(head) and p.endswith(raw["example_output_prefix"])
    listed = p[len(head):-len(raw["example_output_prefix"])].split("\n  choice: ")[1:]
    assert sorted(listed) == sorted(ex["target_scores"])


def test_demonstrations_are_seeded_and_never_the_test_item(shared_data):
    bb = _bb(shared_data)
    task = load_tasks(bb / "cause_and_effect" / "two_sentences")[0]
    for pos in range(len(task.examples)):
        ex = task.examples[pos]
        p = build_prompt(task, pos, 8, seed=1234)
        assert len(p.demo_indices) == len(set(p.demo_indices)) == 8
        assert ex.index not in p.demo_indices
        demos_text = p.text[: p.text.rindex(task.input_prefix + ex.input)]
        for answer in ex.best_choices:  # the item's answer is never shown among the demonstrations
            assert answer not in demos_text
        assert p.text == build_prompt(task, pos, 8, seed=1234).text
    draws = {tuple(build_prompt(task, 0, 8, seed=s).demo_indices) for s in range(5)}
    assert len(draws) > 1


def test_duplicates_of_the_test_item_are_not_demonstrations(tmp_path):
    data = {"examples": [{"input": "same", "target": "x"}, {"input": "same", "target": "x"},
                         {"input": "other", "target": "y"}, {"input": "same", "target": "z"}]}
    task = load_tasks(_write(tmp_path, data))[0]
    assert len(task.examples) == 3  # the exact duplicate is dropped, as BIG-bench does
    with pytest.raises(DataError, match="3-shot needs 3 demonstrations"):
        build_prompt(task, 0, 3, seed=0)
    for s in range(20):
        p = build_prompt(task, 0, 2, seed=s)
        assert sorted(p.demo_indices) == [2, 3]


# ----------------------------------------------------------------------------- scoring math

def test_choice_metrics_follow_lm_evaluation_harness():
    # acc: argmax of summed log-likelihood; acc_norm: argmax of log-likelihood / len(choice) in chars
    m = choice_metrics([-4.0, -6.0], ["ab", "abcdefgh"], [0.0, 1.0])
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0
    assert choice_metrics([-1.0, -2.0, -3.0], ["a", "b", "c"], [1, 0, 0])["acc"] == 1.0
    vals = [1, 0, 0, 1, 1, 1, 0, 1]
    import statistics

    assert mean_stderr(vals) == pytest.approx(statistics.stdev(vals) / math.sqrt(len(vals)))
    assert mean_stderr([1.0]) is None


def test_exact_match_normalisation_and_extraction():
    assert normalize_answer("  The  Answer. ") == "the answer"
    assert exact_match(' "Paris".', ["paris"]) == 1.0
    assert exact_match("-12", ["12"]) == 0.0
    assert exact_match("parody", ["comedy", "parody"]) == 1.0
    assert extract_answer(" 109\n\nQ: What is", r"[-+]?\d+") == "109"
    assert extract_answer(" the word. More", None) == " the word"
    assert extract_answer("no digits", r"[-+]?\d+") == ""


# ----------------------------------------------------------------------------- with a model

def _tiny_decoder(texts: list[str], max_positions: int = 128, seed: int = 0):
    from lmscale.tokenization import train_tokenizer

    tok = train_tokenizer("bpe", texts * 3, vocab_size=400)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(family="decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1,
                                    n_heads=4, max_positions=max_positions)).eval()
    return model, tok


def _task_texts(task) -> list[str]:
    return [e.input + " " + " ".join(e.choices or e.targets) for e in task.examples] + [task.task_prefix]


def test_loglikelihood_equals_direct_computation():
    model, tok = _tiny_decoder(["the cat sat on the mat", "a dog ran"])
    lm = CausalLM(model, tok, batch_tokens=64)
    reqs = [("the cat sat on the", " mat"), ("a dog", " ran far away"), ("", "the cat")]
    got = lm.loglikelihood(reqs)
    for (ctx, cont), s in zip(reqs, got):
        c = tok.encode(ctx.rstrip()) or [tok.doc_separator_id]
        whole = tok.encode(ctx.rstrip() + cont) if ctx else [tok.doc_separator_id] + tok.encode(cont)
        n = len(whole) - len(c)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0], -1)
        ref = sum(float(lp[i - 1, whole[i]]) for i in range(len(whole) - n, len(whole)))
        assert s.logprob == pytest.approx(ref, abs=1e-4) and s.n_tokens == n and not s.truncated


def test_fewshot_on_real_bigbench_task(shared_data, tmp_path):
    bb = _bb(shared_data)
    task = load_tasks(bb / "cause_and_effect" / "two_sentences")[0]
    model, tok = _tiny_decoder(_task_texts(task), max_positions=128)
    lm = scoring_lm(model, tok)
    res = evaluate(lm, [task], shots=[0, 1, 4], seed=1234, limit=10, keep_samples=True)
    assert set(res["results"]) == {f"{task.name}@{k}shot" for k in (0, 1, 4)}
    for k in (0, 1, 4):
        key = f"{task.name}@{k}shot"
        r = res["results"][key]
        assert r["sample_len"] == 10 and res["n-shot"][key] == k and res["configs"][key]["num_fewshot"] == k
        assert res["n-samples"][key] == {"original": len(task.examples), "effective": 10}
        for m in ("acc", "acc_norm"):
            v = r[f"{m},none"]
            assert 0.0 <= v <= 1.0
            assert r[f"{m}_stderr,none"] == pytest.approx(math.sqrt(v * (1 - v) / 9), abs=1e-9)
        for s in res["lmscale"]["samples"][key]:
            assert s["index"] not in s["demos"] and len(s["demos"]) == k
    assert res["config"]["fewshot_seed"] == 1234 and res["lmscale"]["num_fewshot"] == [0, 1, 4]
    # the same seed gives the same numbers; the limit sample and the demonstrations are seeded
    again = evaluate(lm, [task], shots=[0, 1, 4], seed=1234, limit=10)
    assert again["results"] == res["results"]
    # truncation: a prompt longer than the window is cut from the left and counted
    trunc = res["lmscale"]["truncated"][f"{task.name}@4shot"]
    expected = 0
    for s in res["lmscale"]["samples"][f"{task.name}@4shot"]:
        ex = next(e for e in task.examples if e.index == s["index"])
        longest = max(len(tok.encode(s["prompt"] + c)) for c in ex.choices)
        expected += longest > 128 + 1
    assert trunc == expected and trunc > 0
    assert res["lmscale"]["truncated"][f"{task.name}@0shot"] == 0


def test_generative_task_and_cli(tmp_path, capsys):
    from lmscale.cli import main
    from lmscale.models.serialization import save_model_dir

    q = tmp_path / "add.jsonl"
    rows = [{"context": f"{a} plus {b} is", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (0, 7)]]
    q.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m = tmp_path / "mc.jsonl"
    m.write_text("\n".join(json.dumps({"context": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2})
                           for i in range(6)) + "\n")
    model, tok = _tiny_decoder([r["context"] + " " + r["answer"] for r in rows] + ["Is 4 even? yes no"])
    d = save_model_dir(model, tok, tmp_path / "ckpt")
    out = tmp_path / "res.json"
    assert main(["eval", "fewshot", str(d), "--task", str(q), "--task", str(m), "--shots", "0,2",
                 "--seed", "7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "acc_norm" in printed
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"add@0shot", "add@2shot", "mc@0shot", "mc@2shot"}
    assert set(res["results"]["add@2shot"]) == {"name", "alias", "sample_len", "exact_match,none",
                                                "exact_match_stderr,none"}
    assert set(res["results"]["mc@0shot"]) == {"name", "alias", "sample_len", "acc,none", "acc_stderr,none",
                                               "acc_norm,none", "acc_norm_stderr,none"}
    assert res["lmscale"]["curve"]["mc"]["2"]["acc"] == res["results"]["mc@2shot"]["acc,none"]
    assert res["configs"]["add@2shot"]["output_type"] == "generate_until"
    assert res["higher_is_better"]["mc@0shot"] == {"acc": True, "acc_norm": True}
    assert main(["eval", "fewshot", str(d), "--task", str(m), "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert list(single["results"]) == ["mc"] and single["n-shot"]["mc"] == 0
    assert single["config"]["model"] == "lmscale" and single["config"]["model_args"] == {"pretrained": str(d)}


def test_hf_directory_is_scored_like_the_converted_model(tmp_path):
    """`--hf DIR` (transformers' own model and tokenizer) and our conversion of the same weights
    give the same log-likelihoods through the same harness."""
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from lmscale.evaluation.lm import load_hf_causal_lm
    from lmscale.models.hf import from_hf

    _, tok = _tiny_decoder(["Is 4 even? yes no", "Is 3 even? no"])
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=4,
                                    bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, initializer_range=0.2))
    d = tmp_path / "hf"
    hf.save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>").save_pretrained(d)
    theirs = load_hf_causal_lm(d)
    ours_model, _ = from_hf(hf)
    ours = CausalLM(ours_model, tok)
    reqs = [("Is 4 even?", " yes"), ("Is 4 even?", " no"), ("Is 3", " even? no")]
    a = [s.logprob for s in theirs.loglikelihood(reqs)]
    b = [s.logprob for s in ours.loglikelihood(reqs)]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert theirs.max_length == ours.max_length == 64
    from lmscale.cli import main

    q = tmp_path / "even.jsonl"
    q.write_text("\n".join(json.dumps({"context": f"Is {i} even?", "choices": [" yes", " no"], "answer": i % 2})
                           for i in range(4)) + "\n")
    out = tmp_path / "hf.json"
    assert main(["eval", "fewshot", "--hf", str(d), "--task", str(q), "--shots", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ref = evaluate(ours, load_tasks(q), shots=[1], seed=1234)
    assert res["results"]["even"]["acc,none"] == ref["results"]["even"]["acc,none"]
    assert res["config"]["model"] == "hf" and res["model_name"] == str(d)


def test_encoder_and_encoder_decoder_scoring(tmp_path):
    """Encoders score by pseudo-log-likelihood (each continuation token masked in turn); encoder-
    decoders score the continuation as the decoder's target after a sentinel."""
    from lmscale.evaluation.lm import MaskedLM, Seq2SeqLM
    from lmscale.tokenization import train_tokenizer

    texts = ["is four even? yes", "is three even? no"] * 10
    wp = train_tokenizer("wordpiece", texts, vocab_size=120, lowercase=True)
    torch.manual_seed(0)
    enc = build_model(ModelConfig(family="encoder", vocab_size=wp.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                  max_positions=32)).eval()
    lm = scoring_lm(enc, wp)
    assert isinstance(lm, MaskedLM)
    (s,) = lm.loglikelihood([("is four even?", " yes")])
    ctx, cont = wp.encode("is four even?"), wp.encode(" yes")
    seq = [wp.cls_id] + ctx + cont + [wp.sep_id]
    ref = 0.0
    with torch.no_grad():
        for i in range(1 + len(ctx), 1 + len(ctx) + len(cont)):
            x = list(seq)
            x[i] = wp.mask_id
            ref += float(torch.log_softmax(enc(input_ids=torch.tensor([x])).logits[0, i], -1)[seq[i]])
    assert s.logprob == pytest.approx(ref, abs=1e-4) and s.n_tokens == len(cont)

    ug = train_tokenizer("unigram", texts, vocab_size=120)
    t5 = build_model(ModelConfig(family="encoder-decoder", vocab_size=ug.vocab_size, d_model=32, n_layers=1,
                                 n_heads=4, position="relative", norm="rmsnorm", bias=False, max_positions=32,
                                 pad_token_id=ug.pad_id)).eval()
    lm2 = scoring_lm(t5, ug)
    assert isinstance(lm2, Seq2SeqLM)
    (s2,) = lm2.loglikelihood([("is four even?", " yes")])
    enc_ids = ug.encode("is four even?") + [ug.sentinel_ids[0], ug.eos_id]
    tgt = ug.encode("yes")
    dec = [0, ug.sentinel_ids[0]] + tgt
    with torch.no_grad():
        logits = t5(input_ids=torch.tensor([enc_ids]), decoder_input_ids=torch.tensor([dec[:-1]])).logits[0]
        lp = torch.log_softmax(logits, -1)
    ref2 = sum(float(lp[1 + i, t]) for i, t in enumerate(tgt))
    assert s2.logprob == pytest.approx(ref2, abs=1e-4)

    q = tmp_path / "mc.jsonl"
    q.write_text("\n".join(json.dumps({"context": f"is {w} even?", "choices": ["yes", "no"], "answer": i % 2})
                           for i, w in enumerate(["two", "three", "four", "five"])) + "\n")
    g = tmp_path / "gen.jsonl"
    g.write_text("\n".join(json.dumps({"context": f"is {w} even?", "answer": a})
                           for w, a in [("two", "yes"), ("three", "no"), ("four", "yes")]) + "\n")
    for lm_ in (lm, lm2):
        res = evaluate(lm_, load_tasks(q), shots=[0, 1], seed=3)
        assert res["results"]["mc@1shot"]["sample_len"] == 4
    res = evaluate(lm2, load_tasks(g), shots=[1], seed=3)
    assert res["results"]["gen"]["sample_len"] == 3 and "exact_match,none" in res["results"]["gen"]
    from lmscale.errors import LmscaleError

    with pytest.raises(LmscaleError, match="cannot generate"):
        evaluate(lm, load_tasks(g), shots=[0])
