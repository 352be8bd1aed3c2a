"""Fine-tuning heads for all three families, GPT input transformations, text-to-text, results.json,
`lmscale finetune` / `lmscale predict`. Tiny models (d_model 32, one layer) on synthetic tasks a
bag of words separates, so a few dozen steps decide.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from lmscale.config import ModelConfig
from lmscale.errors import DataError
from lmscale.finetune.api import random_body
from lmscale.finetune.features import GPT_TOKENS, Featurizer, InputFormat, add_gpt_tokens, collate
from lmscale.finetune.heads import SequenceHead, last_token_index
from lmscale.finetune.tasks import Example, TaskSpec, load_task
from lmscale.finetune.trainer import FinetuneConfig, FinetunedModel, finetune, prepare

torch.set_num_threads(1)

GOOD = ["good", "great", "fine", "lovely", "superb"]
BAD = ["bad", "awful", "poor", "dull", "boring"]
FILL = ["the", "film", "was", "a", "plot", "and", "actors", "story", "very", "quite", "it", "this"]


def sentence(rng, positive):
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), rng.choice(GOOD if positive else BAD))
    return " ".join(words)


def write_task(d, n_train=160, n_dev=40, n_test=40, seed=0, pair=False):
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = ["sentence\tother\tscore\tlabel"]
        for i in range(n):
            pos = i % 2 == 0
            s = sentence(rng, pos)
            score = (1.5 if pos else -1.5) + rng.uniform(-0.5, 0.5)
            rows.append(f"{s}\t{sentence(rng, rng.random() < 0.5)}\t{score:.3f}\t{'pos' if pos else 'neg'}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return d


_TOKS: dict = {}


def word_unigram():
    """A word-level Unigram tokenizer with T5's specials: trained Unigram vocabularies on a corpus
    this small are character-level, which makes text-to-text targets needlessly long."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    from lmscale.tokenization import Tokenizer

    words = GOOD + BAD + FILL + ["toy", "sst", "other", "sentence:", "sentence1:", "sentence2:", "negative",
                                 "positive", "which", "one", "is", "nice"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz:0123456789"] + [("\u2581", -5.0)]
    backend = Backend(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return Tokenizer(backend, kind="unigram")


def tokenizer(kind):
    from lmscale.tokenization import train_tokenizer

    if kind == "unigram":
        return _TOKS.setdefault(kind, word_unigram())
    if kind not in _TOKS:
        rng = random.Random(1)
        texts = [sentence(rng, i % 2 == 0) for i in range(300)] * 3
        _TOKS[kind] = train_tokenizer(kind, texts, vocab_size=400)
    return _TOKS[kind]


def tiny(family, tok, seed=0):
    common = dict(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_positions=64,
                  pad_token_id=tok.pad_id)
    if family == "encoder":
        cfg = ModelConfig(family="encoder", type_vocab_size=2, embedding_norm=True, **common)
    elif family == "decoder":
        cfg = ModelConfig(family="decoder", **common)
    else:
        cfg = ModelConfig(family="encoder-decoder", position="relative", norm="rmsnorm", bias=False,
                          relative_buckets=8, relative_max_distance=32, tie_embeddings=False, **common)
    return random_body(cfg, tok, seed=seed)


TOK_KIND = {"encoder": "wordpiece", "decoder": "bpe", "encoder-decoder": "unigram"}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("ft") / "toy")


# ----------------------------------------------------------------------------- heads

def test_last_token_index_for_left_and_right_padding():
    m = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(m).tolist() == [2, 4, 4, 4]


def _featurize(family, tok, examples, **kw):
    special = add_gpt_tokens(tok) if family == "decoder" else {}
    fmt = InputFormat(family=family, special=special, **kw)
    return Featurizer(tok, fmt).encode_all(examples)[0]


def test_decoder_left_and_right_padding_give_the_same_prediction():
    from lmscale.finetune.trainer import copy_tokenizer

    tok = copy_tokenizer(tokenizer("bpe"))
    exs = [Example("the film was good"), Example("a very very dull and boring plot it was quite"), Example("fine")]
    encs = _featurize("decoder", tok, exs)
    body = tiny("decoder", tok)
    body.resize_token_embeddings(tok.vocab_size)
    head = SequenceHead(body, "decoder", 2, dropout=0.0).eval()
    with torch.no_grad():
        outs = {side: head(**{k: v for k, v in collate(encs, tok.pad_id, side).items() if k != "token_type_ids"})
                for side in ("left", "right")}
        alone = torch.cat([head(**{k: v for k, v in collate([e], tok.pad_id).items() if k != "token_type_ids"})
                           for e in encs])
    assert torch.allclose(outs["left"], outs["right"], atol=1e-5)
    assert torch.allclose(outs["right"], alone, atol=1e-5)
    # the head reads the extract token, the last real token of each sequence
    assert all(e.views[0][-1] == tok.token_to_id("<|extract|>") for e in encs)


@pytest.mark.parametrize("family,pooling", [("encoder", "cls"), ("encoder", "mean"), ("encoder-decoder", "mean"),
                                            ("encoder-decoder", "first")])
def test_pooled_heads_ignore_padding(family, pooling):
    tok = tokenizer(TOK_KIND[family])
    exs = [Example("the film was good", "a plot"), Example("it was a very dull and boring story", "quite")]
    encs = _featurize(family, tok, exs, input_format="pair")
    head = SequenceHead(tiny(family, tok), family, 3, pooling=pooling, dropout=0.0).eval()
    with torch.no_grad():
        batch = head(**{k: v for k, v in collate(encs, tok.pad_id).items()})
        alone = torch.cat([head(**collate([e], tok.pad_id)) for e in encs])
    assert batch.shape == (2, 3)
    assert torch.allclose(batch, alone, atol=1e-5)


def test_encoder_pair_layout_and_truncation_count():
    tok = tokenizer("wordpiece")
    long = " ".join(["the film"] * 40)
    encs, cut = Featurizer(tok, InputFormat("encoder", max_length=16, input_format="pair")).encode_all(
        [Example("good", "bad"), Example(long, "a plot")])
    ids, tt = encs[0].views[0], encs[0].types[0]
    assert ids[0] == tok.cls_id and ids.count(tok.sep_id) == 2 and ids[-1] == tok.sep_id
    assert tt == [0] * (ids.index(tok.sep_id) + 1) + [1] * (len(ids) - ids.index(tok.sep_id) - 1)
    assert len(encs[1].views[0]) == 16 and cut == 1


def test_unknown_pooling_is_rejected():
    tok = tokenizer("wordpiece")
    with pytest.raises(ValueError, match="pooling 'last' is not available for encoder"):
        SequenceHead(tiny("encoder", tok), "encoder", 2, pooling="last")


# ----------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("family", ["encoder", "decoder", "encoder-decoder"])
def test_classification_learns_for_every_family(family, task_dir, tmp_path):
    tok = tokenizer(TOK_KIND[family])
    task = load_task(task_dir)
    cfg = FinetuneConfig(epochs=8, lr=3e-3, batch_size=16, patience=None, seed=0, dropout=0.0)
    res = finetune(tiny(family, tok), tok, task, cfg, out_dir=tmp_path / "run")
    assert res["dev"]["accuracy"] >= 0.85, res["dev"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["dev"]) == {"accuracy", "f1", "mcc"} and set(saved["test"]) == {"accuracy", "f1", "mcc"}
    assert saved["dev"] == pytest.approx(res["dev"])
    assert saved["truncated"] == {"train": 0, "dev": 0, "test": 0}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == saved["evaluations"] == saved["epochs_run"] == 8 and json.loads(lines[0])["event"] == "eval"
    # the best checkpoint reloads and reproduces the dev metrics
    model = FinetunedModel.load(tmp_path / "run")
    dev = [e for e in task.splits["dev"]]
    preds = model.predict(dev)
    acc = sum(p["label_index"] == e.label for p, e in zip(preds, dev)) / len(dev)
    assert acc == pytest.approx(res["dev"]["accuracy"])
    assert preds[0]["label"] in ("neg", "pos") and sum(preds[0]["probabilities"].values()) == pytest.approx(1.0)


def test_a_nonfinite_loss_is_skipped_and_counted_as_in_pretraining(task_dir, monkeypatch):
    """Fine-tuning takes pretraining's optimizer step: a non-finite step leaves the weights as they
    were and training goes on; `max_bad_steps` (5) in a row stop it."""
    from lmscale.training.step import OptimizerStep

    bad, real_loss, calls = {"calls": {3}}, FinetunedModel.loss, {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        out = real_loss(self, batch)
        return out * float("nan") if self.training and calls["n"] in bad["calls"] else out

    steps, real_update = [], OptimizerStep.update

    def update(self, step_loss):
        before = [p.detach().clone() for p in self.params]
        result = real_update(self, step_loss)
        steps.append((result.read()[2], all(torch.equal(a, p) for a, p in zip(before, self.params))))
        return result

    monkeypatch.setattr(FinetunedModel, "loss", loss)
    monkeypatch.setattr(OptimizerStep, "update", update)
    tok = tokenizer("wordpiece")
    task = load_task(task_dir)
    res = finetune(tiny("encoder", tok), tok, task, FinetuneConfig(epochs=1, batch_size=32, patience=None))
    assert res["steps"] == 5 and steps == [(False, False), (False, False), (True, True), (False, False),
                                           (False, False)]
    calls["n"], bad["calls"] = 0, set(range(2, 100))
    with pytest.raises(DataError, match=r"5 consecutive steps with a non-finite loss or gradient \(up to step 6\)"):
        finetune(tiny("encoder", tok), tok, task, FinetuneConfig(epochs=2, batch_size=32, patience=None))


def test_regression_head_scores_correlate(task_dir):
    tok = tokenizer("wordpiece")
    task = load_task(task_dir, TaskSpec(kind="regression", label_column="score"))
    cfg = FinetuneConfig(epochs=8, lr=5e-3, batch_size=16, patience=None, dropout=0.0, pooling="mean")
    res = finetune(tiny("encoder", tok), tok, task, cfg)
    assert set(res["dev"]) == {"pearson", "spearman", "mse"}
    assert res["dev"]["pearson"] > 0.8 and res["metric"] == "pearson"


def test_gpt_transformation_adds_tokens_and_learns_their_embeddings(task_dir):
    tok = tokenizer("bpe")
    n0 = tok.vocab_size
    task = load_task(task_dir, TaskSpec(text_pair_column="other"))
    body = tiny("decoder", tok)
    before = body.get_input_embeddings().weight.detach().clone()
    cfg = FinetuneConfig(epochs=2, lr=1e-2, batch_size=16, freeze_body=True, patience=None)
    res = finetune(body, tok, task, cfg)
    model = res["model"]
    assert tok.vocab_size == n0  # the caller's tokenizer is untouched
    ids = [model.tokenizer.token_to_id(t) for t in GPT_TOKENS]
    assert ids == list(range(n0, n0 + 3)) and model.tokenizer.vocab_size == n0 + 3
    assert model.body.config.vocab_size == n0 + 3
    enc = model.encode(task.splits["dev"][0])
    v = enc.views[0]
    assert v[0] == ids[0] and v[-1] == ids[2] and v.count(ids[1]) == 1
    after = model.body.get_input_embeddings().weight.detach()
    # frozen body (linear probe): pretrained rows unchanged, the new token rows exist and train
    assert torch.equal(after[:n0], before)
    assert after.shape[0] == n0 + 3


def test_gpt_new_token_embeddings_change_during_training():
    from lmscale.finetune.tasks import TaskData

    tok = tokenizer("bpe")
    rng = random.Random(0)
    exs = [Example(sentence(rng, i % 2 == 0), label=i % 2) for i in range(64)]
    task = TaskData("toy", TaskSpec(), {"train": exs, "dev": exs[:16]}, labels=["neg", "pos"])
    body = tiny("decoder", tok)
    torch.manual_seed(0)
    model = prepare(body, tok, task, FinetuneConfig())
    n0 = tok.vocab_size
    start = model.body.get_input_embeddings().weight.detach()[n0:n0 + 3].clone()
    torch.manual_seed(0)
    res = finetune(tiny("decoder", tok), tok, task, FinetuneConfig(epochs=2, lr=1e-2, freeze_body=True, patience=None))
    end = res["model"].body.get_input_embeddings().weight.detach()[n0:n0 + 3]
    assert not torch.allclose(start, end)


def test_decoder_similarity_is_symmetric_in_the_pair(task_dir):
    tok = tokenizer("bpe")
    task = load_task(task_dir, TaskSpec(text_pair_column="other"))
    res = finetune(tiny("decoder", tok), tok, task, FinetuneConfig(epochs=1, symmetric=True, dropout=0.0))
    model = res["model"]
    a = model.predict([Example("the film was good", "a dull plot")])
    b = model.predict([Example("a dull plot", "the film was good")])
    assert a[0]["probabilities"]["pos"] == pytest.approx(b[0]["probabilities"]["pos"], abs=1e-6)
    assert len(model.encode(Example("x", "y")).views) == 2


def test_multiple_choice_softmax_over_choices(tmp_path):
    rng = random.Random(0)
    d = tmp_path / "mc"
    d.mkdir()
    for split, n in (("train", 96), ("dev", 24)):
        rows = ["question\tc0\tc1\tc2\tlabel"]
        for _ in range(n):
            k = rng.randrange(3)
            choices = [rng.choice(BAD) for _ in range(3)]
            choices[k] = rng.choice(GOOD)
            rows.append("which one is nice\t" + "\t".join(choices) + f"\t{k}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    task = load_task(d, TaskSpec(text_column="question", choice_columns=["c0", "c1", "c2"]))
    for family in ("decoder", "encoder"):
        tok = tokenizer(TOK_KIND[family])
        cfg = FinetuneConfig(epochs=6, lr=5e-3, batch_size=16, patience=None, dropout=0.0)
        res = finetune(tiny(family, tok), tok, task, cfg)
        assert res["dev"]["accuracy"] > 0.8, (family, res["dev"])
        p = res["model"].predict([Example("which one is nice", choices=["dull", "superb", "poor"])])[0]
        assert len(p["probabilities"]) == 3 and p["label"] == "1"


def test_encoder_decoder_text_to_text_with_label_words(task_dir):
    tok = tokenizer("unigram")
    task = load_task(task_dir)
    cfg = FinetuneConfig(mode="text-to-text", label_words=["negative", "positive"], epochs=4, lr=1e-2,
                         batch_size=16, patience=None)
    res = finetune(tiny("encoder-decoder", tok), tok, task, cfg)
    assert res["mode"] == "text-to-text" and res["dev"]["accuracy"] >= 0.9, res["dev"]
    model = res["model"]
    enc = model.encode(task.splits["train"][0])
    assert tok.decode(enc.views[0]).startswith("toy sentence:")
    assert tok.decode(enc.target, skip_special_tokens=True).strip() in ("negative", "positive")


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_free_form_text_to_text_generates(family, tmp_path):
    d = tmp_path / "t2t"
    d.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 128), ("dev", 16)):
        rows = []
        for _ in range(n):
            pos = rng.random() < 0.5
            rows.append(json.dumps({"input": sentence(rng, pos), "target": "great" if pos else "bad"}))
        (d / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    task = load_task(d, TaskSpec(kind="text-to-text"))
    tok = tokenizer(TOK_KIND[family])
    cfg = FinetuneConfig(epochs=10, lr=1e-2, batch_size=16, patience=None, max_target_length=4,
                         padding_side="left" if family == "decoder" else "right")
    res = finetune(tiny(family, tok), tok, task, cfg)
    assert res["metric"] == "exact_match" and res["dev"]["exact_match"] >= 0.75, res["dev"]
    out = res["model"].predict([Example("the film was superb")])[0]["output"]
    assert out == "great"


def test_encoder_cannot_do_text_to_text(task_dir):
    tok = tokenizer("wordpiece")
    with pytest.raises(DataError, match="encoders cannot generate"):
        finetune(tiny("encoder", tok), tok, load_task(task_dir), FinetuneConfig(mode="text-to-text"))


# ----------------------------------------------------------------------------- CLI

def test_cli_finetune_preset_predict_and_errors(task_dir, tmp_path, capsys):
    from lmscale.cli import main

    run = tmp_path / "run"
    rc = main(["finetune", "--preset", "bert-tiny", "--task", str(task_dir), "--out", str(run),
               "--epochs", "6", "--lr", "5e-3", "--batch-size", "16", "--tokenizer-vocab-size", "200", "--json",
               "--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.d_ff", "64"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)
    assert set(res) >= {"dev", "test"} and res["dev"]["accuracy"] >= 0.9
    assert json.loads((run / "results.json").read_text())["dev"] == res["dev"]
    assert (run / "best" / "model" / "config.json").is_file() and (run / "best" / "head.safetensors").is_file()
    rc = main(["predict", str(run), "the film was superb", "it was awful and dull", "--json"])
    preds = json.loads(capsys.readouterr().out)
    assert rc == 0 and [p["label"] for p in preds] == ["pos", "neg"]
    rc = main(["predict", str(run / "best"), "--input", str(task_dir / "test.tsv")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 40
    # a dev label unseen in train: one-line error naming file and line
    bad = tmp_path / "bad"
    write_task(bad, 20, 5, 5)
    (bad / "dev.tsv").write_text((bad / "dev.tsv").read_text() + "x\ty\t0.0\tneutral\n")
    rc = main(["finetune", "--preset", "bert-tiny", "--task", str(bad), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert rc == 2 and "dev.tsv:7: label 'neutral'" in err and len(err.strip().splitlines()) == 1


def test_cli_t5_mixture_with_cap(tmp_path, capsys):
    from lmscale.cli import main

    a = write_task(tmp_path / "sst", 120, 16, 16, seed=1)
    b = write_task(tmp_path / "other", 40, 16, 16, seed=2)
    tok = tokenizer("unigram")
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    rc = main(["finetune", "--preset", "t5-tiny", "--tokenizer", str(tok_dir), "--task", f"sst={a}",
               "--task", f"other={b}", "--mixing-cap", "60", "--label-words", "negative,positive",
               "--out", str(tmp_path / "run"), "--epochs", "1", "--json", "--max-target-length", "4",
               "--model.d_model", "32", "--model.n_layers", "1", "--model.n_decoder_layers", "1",
               "--model.d_head", "16", "--model.n_heads", "2", "--model.d_ff", "64"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and "exact_match" in res["dev"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["train_examples"] == 60 + 40 and saved["kind"] == "text-to-text"
    assert set(saved["dev_by_task"]) == {"sst", "other"} and "exact_match" in saved["dev_by_task"]["sst"]


def test_finetune_from_a_transformers_bert_directory(task_dir, tmp_path):
    """A `BertModel` directory (no MLM head, as all-MiniLM-L6-v2 ships): its [CLS] / mean
    features equal transformers' last_hidden_state, and it fine-tunes like our own checkpoints."""
    transformers = pytest.importorskip("transformers")
    from lmscale.finetune.api import load_body
    from lmscale.finetune.heads import body_features

    tok = tokenizer("wordpiece")
    vocab = sorted(tok.backend.get_vocab().items(), key=lambda kv: kv[1])
    hf_dir = tmp_path / "hf"
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    hf.save_pretrained(hf_dir)
    (hf_dir / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    body, hf_tok = load_body(str(hf_dir))
    encs = _featurize("encoder", hf_tok, [Example("the film was good", "a plot"), Example("dull", "boring story")],
                      input_format="pair")
    batch = collate(encs, hf_tok.pad_id)
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"]).last_hidden_state
        for pooling, want in (("cls", ref[:, 0]),
                              ("mean", (ref * batch["attention_mask"][..., None]).sum(1)
                               / batch["attention_mask"].sum(1, keepdim=True))):
            got = body_features(body, "encoder", pooling, batch["input_ids"], batch["attention_mask"],
                                batch["token_type_ids"])
            assert torch.allclose(got, want, atol=1e-5), pooling
    res = finetune(body, hf_tok, load_task(task_dir), FinetuneConfig(epochs=1, lr=3e-3, patience=None))
    assert set(res["dev"]) == {"accuracy", "f1", "mcc"}


def test_finetune_from_random_weights_learns_with_default_flags(tmp_path, capsys):
    """600 examples that one keyword separates perfectly: `finetune --preset bert-tiny` with no
    learning-rate flag trains at the random-initialisation rate and learns the task."""
    from lmscale.cli import main

    rng = random.Random(3)
    words = "the a film plot actor scene was is quite very long short story music cast".split()
    d = tmp_path / "keyword"
    d.mkdir()
    for split, n in (("train", 600), ("dev", 100), ("test", 100)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            pos = i % 2 == 0
            ws = [rng.choice(words) for _ in range(rng.randint(5, 12))]
            ws.insert(rng.randint(0, len(ws)), "excellent" if pos else "mediocre")
            rows.append(f"{' '.join(ws)}\t{'pos' if pos else 'neg'}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["finetune", "--preset", "bert-tiny", "--task", str(d), "--out", str(tmp_path / "run"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["accuracy"] >= 0.9
