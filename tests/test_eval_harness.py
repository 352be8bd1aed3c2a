"""lm-evaluation-harness in both directions, offline, on tasks defined in local YAML over local JSONL:

- our `eval fewshot` JSON has the harness's results schema: the same keys and value types as a
  results file the harness itself writes for the same task, and the harness's own table printer
  (`lm_eval.utils.make_table`) prints the two identically;
- the `lmscale` model inside the harness gives the same accuracy (and per-item log-likelihoods)
  as `lmscale eval fewshot` on the same items, and as the harness's own `hf` model on the
  `--to-hf` export of the same checkpoint; its rolling log-likelihood (perplexity tasks) and its
  generations equal the `hf` model's too; encoder-decoders answer all three request types.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.loggers import EvaluationTracker  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import make_table  # noqa: E402

from lmscale.config import ModelConfig  # noqa: E402
from lmscale.models import build_model  # noqa: E402
from lmscale.models.hf import to_hf  # noqa: E402
from lmscale.models.serialization import save_model_dir  # noqa: E402
from lmscale.tokenization import train_tokenizer  # noqa: E402

pytestmark = pytest.mark.xdist_group("harness")

WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine"]
MC = [{"context": f"Is {w} an even number?", "choices": ["yes", "no", "maybe"], "answer": i % 2}
      for i, w in enumerate(WORDS)]
GEN = [{"context": f"The number after {w} is", "answer": WORDS[(i + 1) % len(WORDS)]} for i, w in enumerate(WORDS)]
TEXTS = [{"text": f"Counting on: {' '.join(WORDS[i:] + WORDS[:i])}. " * 5} for i in range(4)]


def _yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {cache}\ntest_split: test\n{body}metadata:\n  version: 0\n")


MC_BODY = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
GEN_BODY = """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{answer}}"
target_delimiter: " "
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
ROLLING_BODY = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny decoder (saved as an lmscale checkpoint and exported with --to-hf), a tiny T5, the
    three tasks as JSONL items and as harness YAML."""
    root = tmp_path_factory.mktemp("harness")
    texts = [r["context"] + " " + " ".join(r["choices"]) for r in MC] + \
            [r["context"] + " " + r["answer"] for r in GEN] + [r["text"] for r in TEXTS]
    tok = train_tokenizer("bpe", texts * 3, vocab_size=300)
    torch.manual_seed(0)
    dec = build_model(ModelConfig(family="decoder", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                  max_positions=24)).eval()
    with torch.no_grad():  # a sharper random model, so that scores differ clearly between choices
        for p in dec.parameters():
            p.mul_(4.0)
    dec_dir = save_model_dir(dec, tok, root / "gpt")
    hf_dir = to_hf(dec, tok, root / "gpt-hf")
    ug = train_tokenizer("unigram", texts * 3, vocab_size=200)
    t5 = build_model(ModelConfig(family="encoder-decoder", vocab_size=ug.vocab_size, d_model=32, n_layers=1,
                                 n_heads=4, position="relative", norm="rmsnorm", bias=False, max_positions=32,
                                 pad_token_id=ug.pad_id)).eval()
    t5_dir = save_model_dir(t5, ug, root / "t5")
    data = root / "data"
    data.mkdir()
    tasks = root / "tasks"
    tasks.mkdir()
    cache = root / "datasets-cache"
    items = {"mc": _write_jsonl(data / "mc.jsonl", MC), "gen": _write_jsonl(data / "gen.jsonl", GEN),
             "rolling": _write_jsonl(data / "rolling.jsonl", TEXTS)}
    for name, body in (("mc", MC_BODY), ("gen", GEN_BODY), ("rolling", ROLLING_BODY)):
        (tasks / f"{name}.yaml").write_text(_yaml(name, items[name], cache, body), encoding="utf-8")
    return {"root": root, "decoder": dec_dir, "hf": hf_dir, "t5": t5_dir, "items": items,
            "tasks": TaskManager(include_path=str(tasks), include_defaults=False)}


def _harness(world, model: str, pretrained: Path, tasks: list[str], tracker=None) -> dict:
    import lmscale.evaluation.harness  # noqa: F401  registers --model lmscale

    return lm_eval.simple_evaluate(model=model, model_args={"pretrained": str(pretrained)}, tasks=tasks,
                                   task_manager=world["tasks"], device="cpu", batch_size=4, log_samples=True,
                                   bootstrap_iters=100, evaluation_tracker=tracker)


@pytest.fixture(scope="module")
def runs(world):
    """The harness with our adapter and with its own `hf` model on the export of the same weights."""
    tracker = EvaluationTracker(output_path=str(world["root"] / "harness-results"))
    adapter = _harness(world, "lmscale", world["decoder"], ["mc", "gen", "rolling"], tracker)
    return {"lmscale": adapter, "tracker": tracker,
            "hf": _harness(world, "hf", world["hf"], ["mc", "gen", "rolling"])}


def _loglikelihoods(samples: list[dict]) -> list[list[float]]:
    return [[float(r[0][0]) for r in s["resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]


def _fewshot(world, ckpt: Path, task: str, tmp_path: Path, *extra: str) -> dict:
    from lmscale.cli import main

    out = tmp_path / f"{task}.json"
    assert main(["eval", "fewshot", str(ckpt), "--task", str(world["items"][task]), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_adapter_accuracy_equals_eval_fewshot_and_the_hf_model(world, runs, tmp_path):
    ours = _fewshot(world, world["decoder"], "mc", tmp_path, "--samples")
    adapter, hf = runs["lmscale"], runs["hf"]
    for m in ("acc,none", "acc_norm,none"):
        assert adapter["results"]["mc"][m] == ours["results"]["mc"][m] == hf["results"]["mc"][m]
    ll_adapter = _loglikelihoods(adapter["samples"]["mc"])
    ll_hf = _loglikelihoods(hf["samples"]["mc"])
    ll_ours = [s["loglikelihoods"] for s in sorted(ours["lmscale"]["samples"]["mc"], key=lambda s: s["index"])]
    np.testing.assert_allclose(ll_adapter, ll_ours, atol=1e-5)
    np.testing.assert_allclose(ll_adapter, ll_hf, atol=1e-4)
    # the scores separate the choices, so equal accuracies are not a tie of indifferent models
    assert min(abs(a - b) for row in ll_adapter for a, b in zip(row, row[1:])) > 1e-3


def test_adapter_generation_and_rolling_loglikelihood_equal_the_hf_model(runs):
    adapter, hf = runs["lmscale"], runs["hf"]
    gens = {k: [s["resps"][0][0] for s in sorted(r["samples"]["gen"], key=lambda s: s["doc_id"])]
            for k, r in (("lmscale", adapter), ("hf", hf))}
    assert gens["lmscale"] == gens["hf"] and any(g.strip() for g in gens["hf"])
    assert adapter["results"]["gen"]["exact_match,none"] == hf["results"]["gen"]["exact_match,none"]
    # each document is longer than the 24-token window, so several rolling windows are scored
    for m in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert adapter["results"]["rolling"][m] == pytest.approx(hf["results"]["rolling"][m], rel=1e-5)


def test_adapter_serves_encoder_decoders(world, tmp_path):
    from types import SimpleNamespace

    from lmscale.evaluation.harness import LmscaleLM

    res = _harness(world, "lmscale", world["t5"], ["mc", "rolling"])
    ours = _fewshot(world, world["t5"], "mc", tmp_path, "--samples")
    assert res["results"]["mc"]["acc,none"] == ours["results"]["mc"]["acc,none"]
    ll_ours = [s["loglikelihoods"] for s in sorted(ours["lmscale"]["samples"]["mc"], key=lambda s: s["index"])]
    np.testing.assert_allclose(_loglikelihoods(res["samples"]["mc"]), ll_ours, atol=1e-5)
    assert res["results"]["rolling"]["word_perplexity,none"] > 1.0
    # generate_until: T5's greedy answer after the first sentinel, recomputed here step by step
    # without the cache (ended by another sentinel or </s>, special tokens left out)
    lm = LmscaleLM(pretrained=str(world["t5"]))
    model, tok = lm.scorer.model, lm.scorer.tok
    # the random model would end at once: the tokens that end an answer (or pad it) never win here
    banned = [0, tok.eos_id, *tok.sentinel_ids[1:]]
    def ban(module, inputs, out):
        if hasattr(out, "logits"):  # (the encoder-only calls return hidden states)
            out.logits[..., banned] = -1e4

    model.register_forward_hook(ban)
    reqs = [SimpleNamespace(args=(r["context"], {"until": ["\n"], "max_gen_toks": 4})) for r in GEN[:4]]
    want = []
    for r in GEN[:4]:
        enc = torch.tensor([tok.encode(r["context"]) + tok.sentinel_ids[:1] + [tok.eos_id]])
        dec = [model.config.decoder_start_token_id]
        with torch.no_grad():
            for _ in range(5):  # the leading sentinel and 4 answer tokens
                logits = model(input_ids=enc, attention_mask=torch.ones_like(enc),
                               decoder_input_ids=torch.tensor([dec])).logits
                dec.append(int(logits[0, -1].argmax()))
        answer = []
        for t in dec[1:]:
            if t == tok.sentinel_ids[0] and not answer:
                continue
            if t in tok.sentinel_ids or t == tok.eos_id:
                break
            answer.append(t)
        want.append(tok.decode(answer[:4], skip_special_tokens=True).split("\n")[0])
    assert any(want) and lm.generate_until(reqs) == want


def _types(d: dict) -> dict:
    return {k: type(v).__name__ for k, v in d.items()}


def test_fewshot_json_has_the_harness_results_schema(world, runs, tmp_path):
    """Our file against the results file the harness writes for the same task and model."""
    theirs = dict(runs["lmscale"])
    samples = theirs.pop("samples")
    runs["tracker"].save_results_aggregated(results=theirs, samples=samples)
    (written,) = (world["root"] / "harness-results").rglob("results_*.json")
    theirs = json.loads(written.read_text())
    for task in ("mc", "gen"):
        ours = _fewshot(world, world["decoder"], task, tmp_path)
        for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                    "n-samples", "config", "date", "model_source", "model_name", "max_length",
                    "eot_token_id", "total_evaluation_time_seconds"):
            assert key in ours and type(ours[key]) is type(theirs[key]), key
        assert _types(ours["results"][task]) == _types(theirs["results"][task])
        assert ours["n-shot"][task] == theirs["n-shot"][task] == 0
        assert ours["versions"][task] == theirs["versions"][task]
        assert ours["n-samples"][task] == theirs["n-samples"][task]
        assert ours["higher_is_better"][task] == theirs["higher_is_better"][task]
        ours_cfg, their_cfg = ours["configs"][task], theirs["configs"][task]
        assert set(ours_cfg) <= set(their_cfg)
        for k in ("output_type", "target_delimiter", "num_fewshot"):
            assert ours_cfg[k] == their_cfg[k], k
        assert [d["metric"] for d in ours_cfg["metric_list"]] == [d["metric"] for d in their_cfg["metric_list"]]
        assert set(ours["config"]) <= set(theirs["config"])
        assert ours["config"]["model"] == theirs["config"]["model"] == ours["model_source"] == "lmscale"
        assert ours["model_name"] == theirs["model_name"] == str(world["decoder"])
        assert ours["max_length"] == theirs["max_length"] and ours["eot_token_id"] == theirs["eot_token_id"]
        assert ours["config"]["model_args"] == theirs["config"]["model_args"] == {"pretrained": str(world["decoder"])}
    # the harness's own reader prints our multiple-choice results exactly as its own
    ours = _fewshot(world, world["decoder"], "mc", tmp_path)
    only_mc = {k: ({"mc": v["mc"]} if isinstance(v, dict) and "mc" in v else v) for k, v in theirs.items()}
    assert make_table(ours) == make_table(only_mc)


def test_perplexity_json_reads_with_the_harness_table_printer(world, tmp_path, capsys):
    from lmscale.cli import main

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n\n".join(r["text"] for r in TEXTS) + "\n", encoding="utf-8")
    assert main(["eval", "perplexity", str(world["decoder"]), "--corpus", str(corpus), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    table = make_table(res)
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"):
        assert metric in table
    assert "↓" in table  # higher_is_better: False for every perplexity metric
