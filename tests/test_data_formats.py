"""--corpus formats beyond plain text, each against the `.txt` path of the same texts: JSON Lines
(dotted text fields), JSON arrays, Zstandard and gzip, Parquet, directories of these, `datasets`'
save_to_disk, and hf:NAME streaming (offline: one line that says so); the streaming document
splitter against the whole-text one; bounded in-flight chunks."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscale.data import shards
from lmscale.data.catalog import resolve_corpus
from lmscale.data.readers import (
    _split_lines,
    has_paragraph_break,
    iter_file_documents,
    iter_lines,
    iter_split_documents,
    split_documents,
)
from lmscale.data.shards import TokenDataset, prepare
from lmscale.errors import DataError
from lmscale.tokenization import train_tokenizer

WORDS = "model data token window corpus layer attention scaling loss batch naïve café 東京 — “quoted”".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"Doc {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(4, 20)))) + "." for i in range(n)]


DOCS = make_docs(50)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", make_docs(200, seed=1), 320)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bpe):
    """Shards of the plain-text corpus: one document per line."""
    d = tmp_path_factory.mktemp("ref")
    (d / "corpus.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    prepare(d / "corpus.txt", bpe, d / "shards", valid_fraction=0.1, split_seed=5)
    return d / "shards"


def _same_shards(a: Path, b: Path, splits=("train", "valid")) -> None:
    for split in splits:
        x, y = TokenDataset.open(a, split), TokenDataset.open(b, split)
        assert np.array_equal(np.asarray(x.tokens), np.asarray(y.tokens)), split
        assert np.array_equal(x.doc_offsets, y.doc_offsets), split
        for k in ("n_bytes", "n_words", "num_docs"):
            assert x.meta[k] == y.meta[k], (split, k)


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ----------------------------------------------------------------------------- formats


def test_jsonl_json_gzip_and_zstd_round_trip_to_the_txt_shards(tmp_path, bpe, reference):
    zstd = pytest.importorskip("zstandard")
    rows = [{"id": i, "text": d} for i, d in enumerate(DOCS)]
    nested = [{"id": i, "meta": {"body": d, "lang": "en"}} for i, d in enumerate(DOCS)]
    files = {
        "plain.jsonl": (_jsonl(rows), "text"),
        "array.json": (json.dumps(rows, ensure_ascii=False).encode(), "text"),
        "lines.json": (_jsonl(rows), "text"),
        "nested.jsonl.gz": (gzip.compress(_jsonl(nested)), "meta.body"),
        "nested.jsonl.zst": (zstd.ZstdCompressor().compress(_jsonl(nested)), "meta.body"),
        "corpus.txt.zst": (zstd.ZstdCompressor().compress(("\n".join(DOCS) + "\n").encode()), "text"),
    }
    for name, (data, field) in files.items():
        f = tmp_path / name
        f.write_bytes(data)
        out = tmp_path / f"shards-{name}"
        prepare(f, bpe, out, valid_fraction=0.1, split_seed=5, text_field=field)
        _same_shards(reference, out)


def test_parquet_and_directories_of_mixed_formats(tmp_path, bpe, reference):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zstd = pytest.importorskip("zstandard")
    table = pa.table({"id": list(range(len(DOCS))), "text": DOCS,
                      "meta": [{"body": d, "n": i} for i, d in enumerate(DOCS)]})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    prepare(tmp_path / "c.parquet", bpe, tmp_path / "p1", valid_fraction=0.1, split_seed=5)
    _same_shards(reference, tmp_path / "p1")
    prepare(tmp_path / "c.parquet", bpe, tmp_path / "p2", valid_fraction=0.1, split_seed=5, text_field="meta.body")
    _same_shards(reference, tmp_path / "p2")
    # a directory whose file names give the splits, in any mix of formats, equals the .txt directory
    txt, mixed = tmp_path / "txt", tmp_path / "mixed"
    txt.mkdir()
    mixed.mkdir()
    parts = {"train": DOCS[:30], "valid": DOCS[30:40], "test": DOCS[40:]}
    for split, docs in parts.items():
        (txt / f"{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": parts["train"]}), mixed / "train.parquet")
    (mixed / "valid.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(_jsonl({"text": d} for d in parts["valid"])))
    (mixed / "test.json").write_bytes(_jsonl({"text": d} for d in parts["test"]))
    prepare(txt, bpe, tmp_path / "s-txt")
    prepare(mixed, bpe, tmp_path / "s-mixed")
    _same_shards(tmp_path / "s-txt", tmp_path / "s-mixed", ("train", "valid", "test"))
    with pytest.raises(DataError, match=r"c\.parquet: no column 'body' for text field 'body' \(columns: id, text"):
        list(iter_file_documents(tmp_path / "c.parquet", text_field="body"))


def test_datasets_save_to_disk_round_trips(tmp_path, bpe, reference):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": DOCS, "id": list(range(len(DOCS)))})
    ds.save_to_disk(str(tmp_path / "single"), max_shard_size="2KB")  # several Arrow files, in order
    prepare(tmp_path / "single", bpe, tmp_path / "s1", valid_fraction=0.1, split_seed=5)
    _same_shards(reference, tmp_path / "s1")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:30]}),
                               "validation": datasets.Dataset.from_dict({"text": DOCS[30:40]}),
                               "test": datasets.Dataset.from_dict({"text": DOCS[40:]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    txt = tmp_path / "txt"
    txt.mkdir()
    for split, docs in (("train", DOCS[:30]), ("valid", DOCS[30:40]), ("test", DOCS[40:])):
        (txt / f"{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    corpus = resolve_corpus(tmp_path / "dict")
    assert corpus.available_splits == ["train", "valid", "test"] and not corpus.derived_valid
    prepare(tmp_path / "dict", bpe, tmp_path / "s2")
    prepare(txt, bpe, tmp_path / "s3")
    _same_shards(tmp_path / "s3", tmp_path / "s2", ("train", "valid", "test"))
    from lmscale.evaluation.perplexity import corpus_documents

    assert list(corpus_documents(str(tmp_path / "dict"), "test")) == DOCS[40:]  # eval perplexity reads that split


def test_hub_streaming_offline_says_so_and_online_streams(tmp_path, bpe, reference, monkeypatch):
    datasets = pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"offline .*hf:wikitext.*save_to_disk"):
        prepare("hf:wikitext:wikitext-2-raw-v1@train", bpe, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # online: the hub's streaming loader, here pointed at a local JSON Lines file
    data = tmp_path / "hub.jsonl"
    data.write_bytes(_jsonl({"text": d, "n": i} for i, d in enumerate(DOCS)))
    real = datasets.load_dataset
    calls = []

    def load_dataset(name, config=None, **kw):
        calls.append((name, config, kw.get("split"), kw.get("streaming")))
        return real("json", data_files={"train": str(data)}, split=kw["split"], streaming=kw["streaming"])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    prepare("hf:someone/texts:default@train", bpe, tmp_path / "hub", valid_fraction=0.1, split_seed=5)
    _same_shards(reference, tmp_path / "hub")
    assert calls[0] == ("someone/texts", "default", "train", True)


def test_bad_records_name_the_file_line_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"meta": {"body": "ok"}}\n\n{"meta": {"title": "no body"}}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: record has no 'meta\.body' field"):
        list(iter_file_documents(f, text_field="meta.body"))
    g = tmp_path / "bad.json"
    g.write_text('[{"text": "a"}, {"text": 3}]')
    with pytest.raises(DataError, match=r"bad\.json: record 1: field 'text' is not a string"):
        list(iter_file_documents(g))


# ----------------------------------------------------------------------------- streaming


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    return out + ([parts[-1]] if parts[-1] else [])


PIECES = st.sampled_from(["a", "b c", " ", "\t", "\n", "\n\n", " \n", "\r", "\r\n", " = T = \n", " = = S = = \n",
                          "= 1790_x =\n", "\x0c", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_streamed_documents_equal_split_documents(text):
    lines = _lines(text)
    assert list(_split_lines(lines)) == text.splitlines()
    for fmt in ("paragraphs", "wikitext", "headers", "lines", "file"):
        want = [d for d in split_documents(text, fmt) if d.strip()]
        got = list(iter_split_documents(lines, fmt, has_paragraph_break(lines)))
        assert got == want, fmt


def test_file_lines_are_read_in_blocks(tmp_path, monkeypatch):
    from lmscale.data import readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 7)  # lines and UTF-8 sequences cut across blocks
    text = "".join(f"line {i} café 東京\n\n" if i % 3 else f" = H{i} = \n" for i in range(40))
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    assert "".join(iter_lines(f)) == text
    for fmt in ("paragraphs", "wikitext", "lines"):
        assert list(iter_file_documents(f, doc_format=fmt)) == [d for d in split_documents(text, fmt) if d.strip()]


def test_tokenizing_keeps_a_bounded_number_of_chunks_in_flight(bpe, monkeypatch):
    monkeypatch.setattr(shards, "MIN_PARALLEL_BYTES", 0)
    pulled = []

    def chunks():
        for i in range(40):
            pulled.append(i)
            yield [f"document number {i}"]

    with shards._Tokenizing(bpe, 2, None) as pool:
        results = pool.map(chunks(), np.dtype(np.uint16))
        for k, (arr, lens, _, _) in enumerate(results):
            assert len(pulled) <= k + 1 + 2 * shards.IN_FLIGHT_PER_WORKER
            assert arr.tolist() == bpe.encode(f"document number {k}") + [bpe.eos_id] and lens.tolist() == [len(arr)]
    assert len(pulled) == 40


def test_data_prepare_cli_text_field(tmp_path, bpe, reference, capsys):
    from lmscale.cli import main

    f = tmp_path / "nested.jsonl"
    f.write_bytes(_jsonl({"meta": {"body": d}} for d in DOCS))
    bpe.save(tmp_path / "tok")
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", str(tmp_path / "tok"), "--out",
                 str(tmp_path / "out"), "--text-field", "meta.body", "--valid-fraction", "0.1", "--split-seed", "5",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"]["num_docs"] + out["splits"]["valid"]["num_docs"] == len(DOCS)
    _same_shards(reference, tmp_path / "out")


def test_held_out_share_is_split_off_in_small_blocks(tmp_path, bpe, monkeypatch):
    monkeypatch.setattr(shards, "HOLD_OUT_BLOCK_TOKENS", 40)  # many blocks, cut between whole documents
    f = tmp_path / "c.txt"
    f.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    prepare(f, bpe, tmp_path / "s", valid_fraction=0.2, split_seed=9)
    corpus = resolve_corpus(f, valid_fraction=0.2, split_seed=9)
    for split in ("train", "valid"):
        docs = corpus.documents(split)
        ds = TokenDataset.open(tmp_path / "s", split)
        assert ds.tokens.tolist() == [i for d in docs for i in bpe.encode(d) + [bpe.eos_id]]
        assert ds.num_docs == len(docs) and ds.meta["n_bytes"] == sum(len(d.encode()) for d in docs)


def test_damaged_saved_datasets_are_one_line_errors(tmp_path, bpe):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:30]}),
                               "validation": datasets.Dataset.from_dict({"text": DOCS[30:]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": 5}')
    with pytest.raises(DataError, match=r"dataset_dict.json: splits must be a list"):
        prepare(tmp_path / "dict", bpe, tmp_path / "never")
    ds = datasets.Dataset.from_dict({"text": DOCS * 20})
    ds.save_to_disk(str(tmp_path / "single"))
    arrow = next((tmp_path / "single").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(DataError, match=r"Arrow"):
        prepare(tmp_path / "single", bpe, tmp_path / "never2")


def test_without_a_terminal_a_long_preparation_prints_where_it_is(capsys):
    from lmscale.data.shards import _LogLines

    lines = _LogLines(None, "tokenizing c into out", 2_000_000, every_s=0.0)  # pytest's stderr is no terminal
    lines.update(1_000_000)
    assert "lmscale: tokenizing c into out: 1.0 of 2.0 MB (50%) after" in capsys.readouterr().err
    quiet = _LogLines(False, "tokenizing c", 2_000_000, every_s=0.0)  # progress=False: nothing
    quiet.update(1_000_000)
    slow = _LogLines(None, "tokenizing c", 2_000_000)  # the first line only after every_s
    slow.update(1_000_000)
    assert capsys.readouterr().err == ""


def test_work_without_progress_of_its_own_says_it_is_alive_in_a_log(capsys):
    import time

    from lmscale.io import heartbeat

    with heartbeat("training a bpe tokenizer", every_s=0.05):
        time.sleep(0.3)
    assert "lmscale: training a bpe tokenizer (" in capsys.readouterr().err
    with heartbeat("quick work", every_s=5.0):
        pass
    assert capsys.readouterr().err == ""
