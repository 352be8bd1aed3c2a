"""`convert --to-hf` on `lmscale finetune` outputs: BertForSequenceClassification and
GPT2ForSequenceClassification give our logits (and regression predictions) through
`from_pretrained`; heads without a `transformers` class, and pre-LN BERT, are refused with what to
change; `predict --json` rows read as the text-classification pipeline's."""
from __future__ import annotations

import json
import random

import pytest
import torch

from lmscale.cli.main import main

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

GOOD = "superb wonderful great moving witty brilliant".split()
BAD = "awful dull boring poor tedious bland".split()
FILL = "the film was a story with its cast and plot".split()
SMALL = ["--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.d_ff", "64",
         "--epochs", "2", "--lr", "5e-3", "--batch-size", "16", "--tokenizer-vocab-size", "300"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    rng = random.Random(0)
    for split, n in (("train", 64), ("dev", 16), ("test", 16)):
        rows = ["sentence\tscore\tlabel"]
        for i in range(n):
            pos = i % 2 == 0
            words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))] + [rng.choice(GOOD if pos else BAD)]
            rng.shuffle(words)
            rows.append(f"{' '.join(words)}\t{(1.5 if pos else -1.5) + rng.uniform(-.5, .5):.3f}\t"
                        f"{'pos' if pos else 'neg'}")
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return d


def _finetune(task, out, *extra) -> None:
    assert main(["finetune", "--task", str(task), "--out", str(out), *SMALL, *extra]) == 0


def _parity(run, hf_dir, hf_class):
    from lmscale.finetune.features import collate
    from lmscale.finetune.tasks import Example
    from lmscale.finetune.trainer import FinetunedModel

    ft = FinetunedModel.load(run).eval()
    texts = ["the film was superb", "a dull and boring story with its cast", "witty"]  # unequal lengths: padding
    encs = [ft.encode(Example(t)) for t in texts]
    batch = collate(encs, ft.tokenizer.pad_id, ft.fmt.padding_side)
    with torch.no_grad():
        ours = ft.head_logits(batch).float()
        theirs = hf_class.from_pretrained(hf_dir).eval()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            **({"token_type_ids": batch["token_type_ids"]} if ft.body.config.type_vocab_size else {})).logits
    return ft, ours, theirs, [Example(t) for t in texts]


def test_bert_classifier_exports_with_the_same_logits(task, tmp_path, capsys):
    run, hf = tmp_path / "sst", tmp_path / "hf"
    _finetune(task, run, "--preset", "bert-tiny", "--model.norm_position", "post", "--model.pooler", "true",
              "--pooling", "pooler")
    assert main(["convert", "--to-hf", str(run), "--out", str(hf)]) == 0
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neg", "1": "pos"} or config["id2label"] == {"0": "pos", "1": "neg"}
    _, ours, theirs, _ = _parity(run, hf, transformers.BertForSequenceClassification)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)

    capsys.readouterr()
    assert main(["predict", str(run), "the film was superb", "awful", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    probs = torch.softmax(ours[:1], -1)[0]
    for r in rows:
        assert list(r)[:2] == ["label", "score"] and r["score"] == r["probabilities"][r["label"]]
    assert rows[0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert rows[0]["label"] == config["id2label"][str(int(probs.argmax()))]


def test_gpt_regression_exports_with_the_same_predictions(task, tmp_path):
    run, hf = tmp_path / "reg", tmp_path / "hf"
    _finetune(task, run, "--preset", "gpt-tiny", "--kind", "regression", "--label-column", "score")
    assert main(["convert", "--to-hf", str(run), "--out", str(hf)]) == 0
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["problem_type"] == "regression"
    ft, _, theirs, examples = _parity(run, hf, transformers.GPT2ForSequenceClassification)
    scores = [r["score"] for r in ft.predict(examples)]
    torch.testing.assert_close(theirs[:, 0], torch.tensor(scores), atol=1e-4, rtol=1e-4)


def test_heads_and_bodies_without_a_transformers_class_are_refused(task, tmp_path, capsys):
    run = tmp_path / "cls"
    _finetune(task, run, "--preset", "bert-tiny", "--model.norm_position", "post")  # pooling: [CLS], no pooler
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(run), "--out", str(tmp_path / "hf1")]) == 2
    assert "--pooling pooler" in capsys.readouterr().err
    pre_ln = tmp_path / "pre"
    _finetune(task, pre_ln, "--preset", "bert-tiny", "--model.pooler", "true", "--pooling", "pooler")
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(pre_ln / "best" / "model"), "--out", str(tmp_path / "hf2")]) == 2
    assert "--model.norm_position post" in capsys.readouterr().err
    assert main(["convert", "--to-hf", str(pre_ln), "--out", str(tmp_path / "hf3")]) == 2
    assert "--model.norm_position post" in capsys.readouterr().err
    assert not any((tmp_path / f"hf{i}").exists() for i in (1, 2, 3))
