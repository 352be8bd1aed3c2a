"""Task files, label checks, metrics and T5 mixing: no models involved.

References: scipy.stats for Pearson/Spearman, confusion matrices worked by hand for F1/MCC,
and the T5 paper's examples-proportional mixing formula.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmscale.errors import DataError, LmscaleError
from lmscale.finetune import metrics as M
from lmscale.finetune.tasks import (
    TaskSpec,
    load_task,
    mixing_rates,
    read_inputs,
    sample_mixture,
    text_to_text_examples,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def make_task(tmp_path, train, dev, test=None, ext="tsv"):
    d = tmp_path / "task"
    d.mkdir(exist_ok=True)
    write(d / f"train.{ext}", train)
    write(d / f"dev.{ext}", dev)
    if test is not None:
        write(d / f"test.{ext}", test)
    return d


def test_tsv_task_labels_inferred_from_train_and_indexed(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na good film\tpos\na bad film\tneg\nfine\tpos\n",
                  "sentence\tlabel\nawful\tneg\n", "sentence\tlabel\ngreat\tpos\n")
    task = load_task(d)
    assert task.labels == ["neg", "pos"]
    assert [e.label for e in task.splits["train"]] == [1, 0, 1]
    assert task.splits["dev"][0].label == 0 and task.splits["test"][0].label == 1
    assert task.splits["train"][1].line == 3 and task.splits["train"][1].source.endswith("train.tsv")
    assert task.num_labels == 2


def test_numeric_labels_sort_numerically(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na\t10\nb\t2\nc\t1\n", "sentence\tlabel\nd\t2\n")
    assert load_task(d).labels == ["1", "2", "10"]


def test_unknown_dev_label_names_file_and_line(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na\t0\nb\t1\n", "sentence\tlabel\nc\t0\nd\t2\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: label '2' in the dev split was not seen in training"):
        load_task(d)


def test_empty_text_names_file_and_line(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na\t0\n  \t1\n", "sentence\tlabel\nc\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: empty text in column 'sentence'"):
        load_task(d)


def test_missing_column_names_file_line_and_columns(tmp_path):
    d = make_task(tmp_path, "text\tlabel\na\t0\nb\t1\n", "text\tlabel\nc\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: missing column 'sentence' \(columns: text, label\)"):
        load_task(d)
    task = load_task(d, TaskSpec(text_column="text"))
    assert task.splits["train"][0].text == "a"


def test_errors_are_one_line_cli_errors():
    assert issubclass(DataError, LmscaleError)


def test_ragged_row_and_bad_json_name_the_line(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na\t0\nb\t1\textra\n", "sentence\tlabel\nc\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: 3 fields but the header has 2"):
        load_task(d)
    j = tmp_path / "bad.jsonl"
    write(j, '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_inputs(j, TaskSpec())


def test_regression_scores_must_be_numbers(tmp_path):
    d = make_task(tmp_path, "sentence\tscore\na\t1.5\nb\thigh\n", "sentence\tscore\nc\t0.1\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: regression target 'high'"):
        load_task(d, TaskSpec(kind="regression", label_column="score"))


def test_csv_pair_and_jsonl_with_configured_columns(tmp_path):
    d = make_task(tmp_path, 'premise,hypothesis,gold\n"A man, outside",He is out,yes\nA cat,A dog,no\n',
                  "premise,hypothesis,gold\nX,Y,no\n", ext="csv")
    spec = TaskSpec(text_column="premise", text_pair_column="hypothesis", label_column="gold")
    task = load_task(d, spec)
    assert task.splits["train"][0].text == "A man, outside" and task.splits["train"][0].text_pair == "He is out"
    assert spec.input_format == "pair"
    jd = tmp_path / "j"
    jd.mkdir()
    write(jd / "train.jsonl", "\n".join(json.dumps({"q": f"q{i}", "y": i % 2 == 0}) for i in range(4)) + "\n")
    write(jd / "validation.jsonl", json.dumps({"q": "z", "y": False}) + "\n")
    task = load_task(jd, TaskSpec(text_column="q", label_column="y"))
    assert task.labels == ["0", "1"] and "dev" in task.splits


def test_quoted_tsv_field_as_in_the_sentiment_mirror(tmp_path):
    d = make_task(tmp_path, 'sentence\tscore\tlabel\n"a 9"" portable TV."\t-3.2778\t0\nok\t1.0\t1\n',
                  "sentence\tscore\tlabel\nfine\t2.0\t1\n")
    assert load_task(d).splits["train"][0].text == 'a 9" portable TV.'


def test_multiple_choice_answer_must_be_a_choice_index(tmp_path):
    head = "ctx\ta0\ta1\tlabel\n"
    d = make_task(tmp_path, head + "c\tx\ty\t1\nc\tx\ty\t0\n", head + "c\tx\ty\t2\n")
    spec = TaskSpec(text_column="ctx", choice_columns=["a0", "a1"])
    with pytest.raises(DataError, match=r"dev\.tsv:2: answer '2' must be a choice index 0\.\.1"):
        load_task(d, spec)


def test_single_label_training_set_is_rejected(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\na\t1\nb\t1\n", "sentence\tlabel\nc\t1\n")
    with pytest.raises(DataError, match="only one label"):
        load_task(d)


def test_real_sentiment_mirror(shared_data):
    d = shared_data / "sentiment" / "movieReviewSnippets"
    task = load_task(d)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 8454, "dev": 1057, "test": 1057}
    assert task.labels == ["0", "1"]
    reg = load_task(d, TaskSpec(kind="regression", label_column="score"))
    for a, b in zip(task.splits["dev"], reg.splits["dev"]):
        assert a.label == int(b.label > 0)  # label = score > 0, as the mirror's README says


# ----------------------------------------------------------------------------- metrics

def test_pearson_and_spearman_by_hand_and_nan_where_undefined():
    assert M.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)  # monotone, not linear
    # ties take their average rank: x ranks 1, 2.5, 2.5, 4 -> 4.5 / sqrt(4.5 * 5)
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    for undefined in (([5.0], [1.0]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [0, 0, 0])):
        assert math.isnan(M.pearson(*undefined)) and math.isnan(M.spearman(*undefined))


def test_binary_f1_and_mcc_by_hand():
    # TP=3 (rows 0,2,6), FN=1 (row 1), FP=1 (row 4), TN=3
    t = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 0, 1, 0, 1, 0, 1, 0]
    assert M.f1(t, p) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert M.matthews_corrcoef(t, p) == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))
    assert M.accuracy(t, p) == 0.75


def test_multiclass_mcc_and_macro_f1_by_hand():
    # confusion (rows true, cols pred): [[2,1,0],[0,2,1],[1,0,3]]
    pairs = [(0, 0)] * 2 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 0)] + [(2, 2)] * 3
    t, p = zip(*pairs)
    c, s = 7, 10
    t_k, p_k = np.array([3, 3, 4]), np.array([3, 3, 4])
    want = (c * s - t_k @ p_k) / math.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    assert M.matthews_corrcoef(t, p) == pytest.approx(want)
    f1s = [2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 1), 2 * 3 / (2 * 3 + 1 + 1)]
    assert M.f1(t, p, num_classes=3) == pytest.approx(np.mean(f1s))


def test_mcc_is_zero_for_constant_predictions():
    assert M.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))


# ----------------------------------------------------------------------------- T5 mixtures

def test_examples_proportional_mixing_with_cap():
    rates = mixing_rates({"big": 10_000, "mid": 100, "small": 10}, cap=200)
    assert rates == pytest.approx({"big": 200 / 310, "mid": 100 / 310, "small": 10 / 310})
    assert mixing_rates({"a": 30, "b": 10}) == pytest.approx({"a": 0.75, "b": 0.25})
    # temperature T: rates proportional to min(e, K) ** (1/T)
    r = mixing_rates({"a": 400, "b": 100}, temperature=2.0)
    assert r["a"] == pytest.approx(20 / 30)
    with pytest.raises(DataError):
        mixing_rates({"a": 5}, cap=0)


def test_sample_mixture_follows_rates(tmp_path):
    from lmscale.finetune.tasks import Example

    ex = {"big": [Example(f"b{i}", task="big") for i in range(5000)],
          "small": [Example(f"s{i}", task="small") for i in range(50)]}
    draw = sample_mixture(ex, 3000, seed=0, cap=150)
    share = sum(e.task == "small" for e in draw) / len(draw)
    assert share == pytest.approx(50 / 200, abs=0.03)
    # a small task is cycled through completely before any example repeats
    small = [e.text for e in draw if e.task == "small"][:50]
    assert len(set(small)) == 50
    assert sample_mixture(ex, 100, seed=1, cap=150) == sample_mixture(ex, 100, seed=1, cap=150)


def test_text_to_text_cast_with_task_prefix(tmp_path):
    d = make_task(tmp_path, "sentence\tlabel\nnice\t1\nbad\t0\n", "sentence\tlabel\nok\t1\n")
    task = load_task(d, name="sst2")
    out = text_to_text_examples(task, "train", label_words=["negative", "positive"])
    assert out[0].text == "sst2 sentence: nice" and out[0].label == "positive"
    assert out[1].label == "negative" and out[0].task == "sst2"


def test_sentiment_movies_resolves_through_the_catalog(shared_data, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    task = load_task("sentiment-movies")
    assert task.name == "sentiment-movies" and task.labels == ["0", "1"]
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 8454, "dev": 1057, "test": 1057}
