"""Properties of the readers of user input, checked on generated input: the command-line override
parser, the corpus and task readers that go line by line, and `read_json_file`; and of tokenizing
a long document in pieces, which must give the tokens of the whole.

Each reader either returns what the input holds or raises an `LmscaleError` (the CLI's one-line
error), never another exception; rows end at `\\n` only (a `\\r` before it belongs to the line
end), so a form feed, U+2028 or U+0085 inside a value is text, never a row break. Example counts
are bounded so the file runs in seconds.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from lmscale.config import parse_override_args
from lmscale.data import readers, shards
from lmscale.data.readers import iter_lines, iter_records, text_rows, tsv_texts
from lmscale.errors import LmscaleError
from lmscale.finetune.tasks import iter_rows
from lmscale.io import read_json_file
from lmscale.tokenization import Tokenizer, train_tokenizer

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# characters that line splitting, CSV and JSON treat specially, and some that only look like it
TRICKY = ["\n", "\r", "\r\n", "\t", " ", "\x0c", "\x0b", "\x1c", "\x1e", "\x85", "\u2028", "\u2029", "\xa0", '"',
          "'", ",", "{", "}", "[", "]", ":", "\\", "a", "b", "é", "東", "0", "1", "-", ".", "#", "\x00"]
TEXT = st.lists(st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=("Cs",))), max_size=60).map("".join)
# what a value inside a row may hold: everything but the row break itself
INNER = st.text(st.one_of(st.sampled_from(["\x0c", "\x0b", "\x1c", "\x85", "\u2028", "\u2029", "\r", "a", " ", "é"]),
                          st.characters(exclude_categories=("Cs",), exclude_characters="\n\x00")), max_size=30)


@contextmanager
def _file(name: str, data: str | bytes):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        yield p


def _lines(text: str) -> list[str]:
    """The rows of a file holding `text`: split at `\\n` only, a `\\r` right before it dropped."""
    rows = text.split("\n")
    if rows[-1] == "":
        rows.pop()
    return [r[:-1] if r.endswith("\r") else r for r in rows]


def _non_blank(text: str) -> list[str]:
    return [r for r in _lines(text) if r.strip()]


def _outcome(fn):
    """fn() as a list, or None when it refused the input with an LmscaleError (any other exception escapes)."""
    try:
        return list(fn())
    except LmscaleError:
        return None


# ----------------------------------------------------------------------------- overrides

FRAGMENTS = ["!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!pairs ",
             "!!str ", "!!null ", "!!python/object:os.system ", "2001-13-45", "2001-02-30T25:00:00Z", "1:30",
             "9" * 4400, "0x" + "f" * 4000, "[", "]", "{", "}", ":", ",", "&a ", "*a", "? ", "- ", "\n", " ", "\t",
             "1e5", "3e-4", "yes", "~", "#", "'", '"', "|", ">", "%YAML 1.1\n---\n", "<<: ", "abc", "maybe", "["
             * 70, "\x85", "\u2028", "\ufeff"]
VALUE = st.one_of(TEXT, st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join))
KEY = st.text(st.sampled_from("abz_-.=9 é"), max_size=12)
TOKEN = st.one_of(KEY.map(lambda k: f"--{k}"), st.tuples(KEY, VALUE).map(lambda kv: f"--{kv[0]}={kv[1]}"), VALUE)


@SOME
@given(st.lists(TOKEN, max_size=6))
@example(["--a.b", "2001-13-45"])
@example(["--a.b", "!!int abc"])
@example(["--a.b", "!!bool maybe"])
@example(["--a.b", "!!timestamp x"])
@example(["--a.b", "9" * 5000])
def test_override_parser_returns_a_mapping_or_a_one_line_error(argv):
    out = _outcome(lambda: [parse_override_args(argv)])
    assert out is None or isinstance(out[0], dict)


YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null"}  # YAML's booleans and null, not text
IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True).filter(lambda s: s.lower() not in YAML_WORDS)
SCALAR = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), IDENTIFIER)
DOTTED = st.from_regex(r"[a-z][a-z0-9_]{0,8}\.[a-z][a-z0-9_]{0,8}", fullmatch=True)


def _written(value, form: int) -> str:
    """`value` as a user writes it on a command line (Python's own spelling, or another)."""
    if isinstance(value, bool):
        return ("true" if value else "false") if form else str(value)
    if isinstance(value, float):
        return repr(value) if form else f"{value:.17e}"
    return str(value)


@SOME
@given(DOTTED, SCALAR, st.integers(0, 1), st.booleans())
@example("train.lr", 1e-05, 1, True)
@example("train.lr", 3e-4, 1, False)
@example("train.max_tokens", 1e16, 1, False)
def test_override_scalars_round_trip(key, value, form, with_equals):
    text = _written(value, form)
    argv = [f"--{key}={text}"] if with_equals else [f"--{key}", text]
    got = parse_override_args(argv)[key]
    assert type(got) is type(value) and got == value, (text, got)


# ----------------------------------------------------------------------------- corpus readers


@SOME
@given(TEXT, st.sampled_from([3, 7, 1 << 20]))
def test_file_lines_are_the_text_cut_after_each_newline(text, block):
    with mock.patch.object(readers, "BLOCK_BYTES", block), _file("t.txt", text) as f:
        lines = _outcome(lambda: iter_lines(f))
    if lines is None:  # empty (whitespace only) or binary (a NUL byte)
        assert not text.strip() or "\x00" in text
        return
    assert "".join(lines) == text
    assert len(lines) == len(text.split("\n")) - text.endswith("\n")


@SOME
@given(TEXT)
def test_rows_of_a_text_end_at_newlines_only(text):
    assert text_rows(text) == _lines(text)
    assert "".join(text_rows(text, keepends=True)) == text


@SOME
@given(TEXT, st.sampled_from([5, 1 << 20]))
@example('{"text": "a"}\n' + "[" * 100_000 + "\n", 1 << 20)
@example('{"text": "a", "n": ' + "1" * 5000 + "}\n", 1 << 20)
def test_json_lines_reader_on_any_text(text, block):
    with mock.patch.object(readers, "BLOCK_BYTES", block), _file("c.jsonl", text) as f:
        texts = _outcome(lambda: iter_records(f))
    rows = _non_blank(text)
    if texts is not None and rows and not rows[0].lstrip().startswith("["):  # not one JSON array
        assert len(texts) == len(rows)


@st.composite
def _jsonl(draw):
    """A JSON Lines file of records whose text holds row-break look-alikes, with `\\r\\n` or `\\n`
    line ends, blank lines, and `\\r` as JSON whitespace inside a record."""
    texts = draw(st.lists(INNER, min_size=1, max_size=8))
    out = []
    for t in texts:
        rec = json.dumps({"text": t, "n": 1}, ensure_ascii=draw(st.booleans()),
                         separators=(draw(st.sampled_from([", ", ",\r ", "\t,\r"])), ": "))
        out.append(rec + draw(st.sampled_from(["\n", "\r\n"])))
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(["\n", " \n", "\t\r\n", "\x0c\n", "\u2028\n"])))
    return texts, "".join(out)


@SOME
@given(_jsonl(), st.sampled_from([5, 1 << 20]))
def test_json_lines_reader_reads_every_record(case, block):
    texts, data = case
    with mock.patch.object(readers, "BLOCK_BYTES", block), _file("c.jsonl", data) as f:
        assert list(iter_records(f)) == texts


@SOME
@given(TEXT)
def test_tsv_corpus_reader_on_any_text(text):
    with _file("c.tsv", text) as f:
        texts = _outcome(lambda: tsv_texts(f, iter_lines(f, allow_empty=True)))
    if texts is not None and '"' not in text:  # quoting aside, a row is a non-blank line after the header
        assert len(texts) == max(0, len(_non_blank(text)) - 1)


CELL = INNER.map(lambda t: t.replace("\r", "").replace("\t", " ").replace('"', "'"))


@SOME
@given(st.lists(CELL.filter(lambda t: t.strip()), min_size=1, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_tsv_corpus_reader_reads_every_row(sentences, end):
    data = f"label\tsentence{end}" + "".join(f"{i % 2}\t{s}{end}" for i, s in enumerate(sentences))
    with _file("c.tsv", data) as f:
        assert list(tsv_texts(f, iter_lines(f))) == sentences
        assert list(tsv_texts(f, data)) == sentences


# ----------------------------------------------------------------------------- task readers


@SOME
@given(TEXT, st.sampled_from(["tsv", "csv", "jsonl"]))
@example('{"sentence": "a", "label": ' + "1" * 5000 + "}\n", "jsonl")
@example("sentence\na\rb\n", "csv")
def test_task_reader_on_any_text(text, fmt):
    with _file(f"t.{fmt}", text) as f:
        rows = _outcome(lambda: iter_rows(f))
    if rows is None:
        return
    lines = _non_blank(text)
    if fmt == "jsonl":
        assert len(rows) == len(lines)
    elif '"' not in text:  # quoting aside, a row is a non-blank line after the header
        assert len(rows) == max(0, len(lines) - 1)


@SOME
@given(st.lists(st.tuples(CELL, CELL), min_size=1, max_size=8), st.sampled_from(["tsv", "jsonl"]),
       st.sampled_from(["\n", "\r\n"]), st.sampled_from([", ", ",\r "]))
def test_task_reader_reads_every_row(pairs, fmt, end, comma):
    pairs = [(a, b) for a, b in pairs if (a + b).strip()] or [("a", "b")]
    if fmt == "tsv":
        data = f"sentence\tlabel{end}" + "".join(f"{a}\t{b}{end}" for a, b in pairs)
    else:  # a `\r` between a record's fields is JSON whitespace, not a line end
        data = "".join(json.dumps({"sentence": a, "label": b}, ensure_ascii=False, separators=(comma, ": ")) + end
                       for a, b in pairs)
    with _file(f"t.{fmt}", data) as f:
        got = [(row["sentence"], row["label"]) for _, row in iter_rows(f)]
    assert got == pairs


# ----------------------------------------------------------------------------- JSON files

JSON_BYTES = [b"{", b"}", b"[", b"]", b'"a"', b":", b",", b"1", b"-", b"1e999", b"NaN", b" ", b"\n", b"\xff",
              b"\xef\xbb\xbf", b"\xc3\xa9", b"1" * 4400, b"[" * 3000, b"null", b"true", b'"\\ud800"', b"\x00"]


@FEW
@given(st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(JSON_BYTES), max_size=8).map(b"".join)),
       st.sampled_from([dict, list]))
@example(b'{"a": ' + b"1" * 5000 + b"}", dict)
@example(b"[" * 100_000, list)
def test_read_json_file_returns_or_raises_a_data_error(data, kind):
    with _file("x.json", data) as f:
        out = _outcome(lambda: [read_json_file(f, kind=kind)])
    assert out is None or isinstance(out[0], kind)


def test_read_json_file_names_the_file_of_an_overlong_number(tmp_path):
    f = tmp_path / "fit.json"
    f.write_text('{"a": ' + "1" * 5000 + "}")
    with pytest.raises(LmscaleError, match="fit.json"):
        read_json_file(f)


# ----------------------------------------------------------------------------- long documents in pieces

PIECES = ["the", "cat", "sat", " ", "  ", " ", "\n", "\t", ".", ",", "1", "23", "don't", "'s", "é", "東京", "İ", "ΑΣ",
          "ﬁ", "½", "x²", "\u0301", "\u200b", "\x0b", "\u3000", "\xa0", "<|endoftext|>", "[MASK]", "<extra_id_0>",
          "</s>", "\ufffd", "▁"]
DOC = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
TRAIN = ["the cat sat on the mat. don't go, it's 23 cats!", "東京 é ﬁ ½ x² İ ΑΣ words and more words",
         "a cat and a dog sat there"] * 20


@pytest.fixture(scope="module")
def tokenizers_of_every_kind() -> list[Tokenizer]:
    """The kinds lmscale trains, and GPT-2's own when the real-data mirror is there."""
    toks = [train_tokenizer("bpe", TRAIN, 300), train_tokenizer("bpe", TRAIN, 300, lowercase=True),
            train_tokenizer("wordpiece", TRAIN, 200), train_tokenizer("unigram", TRAIN, 150)]
    for d in (os.environ.get("LMSCALE_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if d and (Path(d) / "gpt2-tokenizer").is_dir():
            toks.append(Tokenizer.load(Path(d) / "gpt2-tokenizer"))
            break
    return toks


def _stream(tok, docs: list[str], piece_chars, chunk_bytes: int = 64, workers: int = 1):
    """(tokens, tokens per document, bytes, words) of `docs` as `prepare` writes them."""
    with shards._Tokenizing(tok, workers, None) as pool:
        parts = list(pool.map(shards._chunks(docs, chunk_bytes, piece_chars), np.dtype(np.uint32)))
    return tuple(np.concatenate([p[i] for p in parts]).tolist() for i in range(4))


@FEW
@given(st.lists(DOC, min_size=1, max_size=4), st.integers(1, 30))
@example(["the cat sat " * 20, "a", "x² 東京 the cat " * 9], 5)
def test_a_document_in_pieces_has_the_tokens_of_the_whole(tokenizers_of_every_kind, docs, size):
    pieces = [list(shards._pieces(d, size)) for d in docs]
    assert ["".join(p) for p in pieces] == docs
    for tok in tokenizers_of_every_kind:
        assert shards._cuts_are_exact(tok), tok
        for d, ps in zip(docs, pieces):
            assert [i for p in ps for i in tok.encode(p)] == tok.encode(d), (tok, ps)
        assert _stream(tok, docs, size) == _stream(tok, docs, None)


def test_pieces_are_cut_only_where_tokenizers_split(tokenizers_of_every_kind):
    doc = "word " * 50 + "東京" * 30 + " x"
    pieces = list(shards._pieces(doc, 7))
    assert "".join(pieces) == doc and len(pieces) > 20
    assert all(p[:1] == " " and p[1:2].isalnum() for p in pieces[1:])
    assert pieces[-2] == " " + "東京" * 30  # no space between letters or digits in it: it stays whole
    bpe = tokenizers_of_every_kind[0]
    for change in (lambda b: setattr(b, "normalizer", normalizers.Prepend("▁")),
                   lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Split(" x", "isolated")),
                   lambda b: b.enable_truncation(8),
                   lambda b: b.add_tokens([AddedToken("ab cd")])):
        backend = Backend.from_str(bpe.backend.to_str())
        change(backend)
        assert not shards._cuts_are_exact(Tokenizer(backend, kind="bpe"))


def test_a_long_document_gives_the_same_shards_in_pieces(tmp_path, tokenizers_of_every_kind, monkeypatch):
    """`prepare` with documents cut into pieces writes the very bytes it writes without cutting."""
    corpus = tmp_path / "c.jsonl"
    docs = [("the cat sat on the mat, 23 times. " * 400) + "東京 é", "a short one", "x " * 3000]
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    monkeypatch.setattr(shards, "MIN_PARALLEL_BYTES", 0)
    for tok in tokenizers_of_every_kind[:2]:
        monkeypatch.setattr(shards, "PIECE_CHARS", 1 << 30)
        whole = shards.prepare(corpus, tok, tmp_path / "whole", workers=1, valid_fraction=0.4, split_seed=1)
        monkeypatch.setattr(shards, "PIECE_CHARS", 100)
        cut = shards.prepare(corpus, tok, tmp_path / "cut", workers=2, valid_fraction=0.4, split_seed=1, force=True)
        assert cut.data["workers"] == 2 and whole.data["splits"] == cut.data["splits"]
        for f in sorted((tmp_path / "whole").iterdir()):
            if f.name != "index.json":
                assert f.read_bytes() == (tmp_path / "cut" / f.name).read_bytes(), f.name
