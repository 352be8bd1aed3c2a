"""The effect-of-pretraining experiment: its outputs, and the effect itself end to end.

The end-to-end test pretrains a tiny encoder with the regular training loop (masked LM) on
unlabelled text, then fine-tunes it and a randomly initialised copy of the same architecture on a
few labelled examples. The text is a miniature of the mechanism pretraining exploits: sentiment
words co-occur with words of the same polarity, and the labelled examples use only a few of
them, so only a model that learned the co-occurrences before fine-tuning can label sentences
whose sentiment words it never saw with a label.
"""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from lmscale.config import ModelConfig

torch.set_num_threads(1)

POS = ["good", "great", "superb", "lovely", "brilliant", "charming", "moving", "witty", "fresh", "gripping"]
NEG = ["bad", "awful", "dull", "boring", "tedious", "clumsy", "bland", "messy", "stale", "lifeless"]
FILL = ["the", "film", "movie", "story", "plot", "cast", "was", "is", "a", "and", "with", "its", "this",
        "director", "script", "scenes", "ending", "music", "really", "quite"]
SEEN = 2  # labelled examples use only the first SEEN words of each polarity


def _sentence(rng, words, n_sent, n_fill):
    toks = [rng.choice(words) for _ in range(n_sent)] + [rng.choice(FILL) for _ in range(n_fill)]
    rng.shuffle(toks)
    return " ".join(toks)


def _write_split(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")


def make_data(root, n_train=24, n_dev=200, seed=0, seen=SEEN, name="task"):
    """The unlabelled corpus and a labelled task whose train split uses only the first `seen`
    sentiment words of each polarity; dev/test use the others (all of them when `seen` is all)."""
    rng = random.Random(seed)
    corpus = root / "unlabelled.txt"
    # reviews of one polarity each, long enough to fill a pretraining window
    docs = [_sentence(rng, POS if rng.random() < 0.5 else NEG, 48, 16) for _ in range(400)]
    if not corpus.exists():
        corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    task = root / name
    task.mkdir()
    train_words = (POS[:seen], NEG[:seen])
    dev_words = (POS[seen:], NEG[seen:]) if seen < len(POS) else (POS, NEG)
    _write_split(task / "train.tsv", [(_sentence(rng, train_words[i % 2], 1, rng.randint(2, 5)), 1 - i % 2)
                                      for i in range(n_train)])
    for split in ("dev", "test"):
        _write_split(task / f"{split}.tsv", [(_sentence(rng, dev_words[i % 2], 1, rng.randint(2, 5)), 1 - i % 2)
                                             for i in range(n_dev)])
    return corpus, task


def tiny_encoder_checkpoint(path, seed=0):
    """A saved, randomly initialised tiny encoder with a WordPiece tokenizer."""
    from lmscale.finetune.api import random_body
    from lmscale.models.serialization import save_model_dir
    from lmscale.tokenization import train_tokenizer

    tok = train_tokenizer("wordpiece", [" ".join(POS + NEG + FILL)] * 20, vocab_size=120, min_frequency=1)
    cfg = ModelConfig(family="encoder", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                      max_positions=32, type_vocab_size=2, embedding_norm=True)
    save_model_dir(random_body(cfg, tok, seed=seed), tok, path)
    return path


def test_experiment_writes_table_plot_and_results(tmp_path):
    from lmscale.experiments.pretraining_effect import PretrainingEffectConfig, run_pretraining_effect

    _, task = make_data(tmp_path, n_train=40, n_dev=30)
    ck = tiny_encoder_checkpoint(tmp_path / "ck")
    # a regression column for the STS-B-style case
    for split in ("train", "dev", "test"):
        f = task / f"{split}.tsv"
        lines = f.read_text().splitlines()
        f.write_text("sentence\tlabel\tscore\n" + "".join(f"{row}\t{float(row.split(chr(9))[1]) * 2 - 1 + 0.1 * i}\n"
                                                            for i, row in enumerate(lines[1:])))
    lines_out = []
    cfg = PretrainingEffectConfig(tmp_path / "exp", checkpoint=ck, task=task, sizes=(10, None), seeds=(0, 1),
                                  epochs=1, min_steps=2, max_steps=4, evaluations=2)
    res = run_pretraining_effect(cfg, log=lines_out.append)
    saved = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert saved["sizes"] == [10, 40] and saved["seeds"] == [0, 1]
    assert set(saved["tables"]) == {"accuracy", "pearson", "spearman"}
    assert set(saved["tables"]["accuracy"]) == {"pretrained", "random"}
    cell = saved["tables"]["accuracy"]["pretrained"]["10"]
    assert cell["n"] == 2 and 0.0 <= cell["mean"] <= 1.0
    runs = saved["runs"]
    assert len(runs) == 2 * 2 * 2 * 2  # kinds x sizes x inits x seeds
    acc = [r["dev"]["accuracy"] for r in runs if r["kind"] == "classification" and r["init"] == "random"
           and r["train_examples"] == 10]
    assert cell is not None and saved["tables"]["accuracy"]["random"]["10"]["mean"] == pytest.approx(np.mean(acc))
    png = tmp_path / "exp" / "pretraining_effect.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dev accuracy (mean ± std over seeds)" in lines_out[-1] and res["plot"] == str(png)
    # the data transferred, read off the random-init curve at each size the pretrained start ran
    points = saved["transfer"]["pretrained"]
    assert [p["labels"] for p in points] == [10, 40]
    assert all(p["factor"] is None or p["factor"] >= 1.0 for p in points)
    assert "effective data transferred" in lines_out[-1]


def test_a_task_without_scores_runs_classification_only(tmp_path):
    """imdb has labels but no human scores: the regression is skipped and says so, instead of failing."""
    from lmscale.experiments.pretraining_effect import run_pretraining_effect

    _, task = make_data(tmp_path, n_train=20, n_dev=10)
    ck = tiny_encoder_checkpoint(tmp_path / "ck")
    lines = []
    res = run_pretraining_effect(tmp_path / "exp", checkpoint=ck, task=task, sizes=(10, 20), seeds=(0,),
                                 epochs=1, min_steps=2, max_steps=2, evaluations=1, log=lines.append)
    assert set(res["tables"]) == {"accuracy"}
    assert any("no 'score' column" in line for line in lines)


def test_experiment_real_encoder_comes_with_its_random_twin(tmp_path):
    """(c) a real encoder is compared with the same architecture and tokenizer from random weights,
    only at the sizes asked for it."""
    from lmscale.experiments.pretraining_effect import run_pretraining_effect

    _, task = make_data(tmp_path, n_train=40, n_dev=30)
    ck = tiny_encoder_checkpoint(tmp_path / "ck")
    real = tiny_encoder_checkpoint(tmp_path / "real", seed=7)
    res = run_pretraining_effect(tmp_path / "exp", checkpoint=ck, minilm=real, task=task, sizes=(10, 20),
                                 minilm_sizes=(10,), seeds=(0,), regression=False, epochs=1, min_steps=2,
                                 max_steps=2, evaluations=1, log=None)
    table = res["tables"]["accuracy"]
    assert set(table) == {"pretrained", "random", "minilm", "minilm-random"}
    assert set(table["minilm"]) == set(table["minilm-random"]) == {"10"}
    assert res["lr"]["minilm-random"] == res["lr"]["minilm"]


@pytest.mark.slow
def test_pretrained_initialisation_beats_random(tmp_path):
    """MLM-pretrain for 400 steps, then fine-tune from it and from random weights, mean dev
    accuracy over 3 seeds: (1) 24 labels that use 2 of the 10 sentiment words per polarity, dev
    sentences using the other 8; (2) labels drawing on all the words, 8 of them against 200: the
    pretrained start wins, and by more with few labels (with 200, random weights see every word
    labelled and catch up). The outcome depends on the tokenizer, which the `tokenizers`
    library's WordPiece trainer does not reproduce from one process to the next (ties broken in
    hash-map order): nine runs gave four distinct outcomes, 8-label gaps of 0.40-0.42 against
    0.11-0.12 with 200 labels in seven and 0.17 against 0.09 in two (at lr 0.01 instead of 0.005,
    one draw in six failed: 0.10 against 0.11)."""
    from lmscale.config import load_run_config
    from lmscale.finetune.api import random_body
    from lmscale.finetune.tasks import load_task
    from lmscale.finetune.trainer import FinetuneConfig, finetune
    from lmscale.models.loading import load
    from lmscale.training.loop import pretrain

    corpus, unseen_task = make_data(tmp_path)
    _, all_words_task = make_data(tmp_path, n_train=200, seen=len(POS), name="all-words", seed=1)
    run = tmp_path / "pretrain"
    cfg = load_run_config(preset="bert-tiny", overrides={
        "data.corpus": str(corpus), "out": str(run), "model.d_model": 32, "model.n_layers": 1,
        "model.n_heads": 2, "model.d_ff": 64, "model.max_positions": 32, "model.vocab_size": 256,
        "tokenizer.vocab_size": 256, "tokenizer.min_frequency": 1, "train.seq_len": 16,
        "train.batch_size": 32, "train.max_steps": 400, "train.lr": 0.005, "train.warmup_steps": 20,
        "train.eval_every": 200, "train.eval_batches": 2, "train.log_every": 200, "train.device": "cpu",
        "train.seed": 0})
    summary = pretrain(cfg)
    assert summary["status"] == "finished"
    body, tok = load(run)

    def mean_accuracy(task_dir, n_labels=None):
        task = load_task(task_dir)
        acc = {"pretrained": [], "random": []}
        for seed in range(3):
            for init in acc:
                b = copy.deepcopy(body) if init == "pretrained" else random_body(body.config, tok, seed=100 + seed,
                                                                                 fit_vocab=False)
                ft = FinetuneConfig(lr=3e-3, epochs=1, min_steps=30, seed=seed, patience=None, eval_every=10,
                                    pooling="mean", dropout=0.0, train_examples=n_labels)
                acc[init].append(finetune(b, tok, task, ft)["dev"]["accuracy"])
        return {k: float(np.mean(v)) for k, v in acc.items()}, acc

    unseen, runs = mean_accuracy(unseen_task)
    assert unseen["pretrained"] > unseen["random"] + 0.1, runs
    few, runs_few = mean_accuracy(all_words_task, 8)
    many, runs_many = mean_accuracy(all_words_task, 200)
    print(unseen, few, many)
    assert few["pretrained"] > few["random"], runs_few
    assert few["pretrained"] - few["random"] > many["pretrained"] - many["random"], (runs_few, runs_many)
