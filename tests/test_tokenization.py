"""Tokenizers against transformers' own tokenizers, and the BPE explainer against the textbook."""
from __future__ import annotations

import gzip
import inspect
import json
import re
from collections import defaultdict

import pytest

from lmscale.data.readers import iter_texts
from lmscale.errors import DataError
from lmscale.tokenization import Tokenizer, explain_chars, explain_words, format_explanation, train_tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "University of Minnesota is located in Minneapolis, Minnesota.",
    "Tokenizers split words like unbelievably into smaller pieces.",
    "Numbers such as 1234 and 56.78 appear in text too!",
    "A language model predicts the next token; a masked one fills blanks.",
]
PROBES = ["Hello world, the fox jumps.", "Unseen wörds: naïve café, 東京 and 🙂.", "  spaces   and\ttabs\n"]


def small_corpus(n: int = 40) -> list[str]:
    return [f"{s} Line {i} says {s.lower()}" for i in range(n) for s in SENTENCES]


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    text = small_corpus()
    return {"bpe": train_tokenizer("bpe", text, 400),
            "wordpiece": train_tokenizer("wordpiece", text, 300),
            "unigram": train_tokenizer("unigram", text, 250)}


def test_special_tokens_follow_each_family(trained):
    bpe, wp, uni = trained["bpe"], trained["wordpiece"], trained["unigram"]
    assert bpe.token_to_id("<|endoftext|>") == 0 == bpe.eos_id == bpe.pad_id == bpe.doc_separator_id
    assert bpe.mask_id is None and bpe.bos_id is None and bpe.sentinel_ids == []
    assert [wp.token_to_id(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]] == [0, 1, 2, 3, 4]
    assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (0, 1, 2, 3, 4)
    assert wp.bos_id == wp.cls_id and wp.eos_id == wp.sep_id == wp.doc_separator_id
    assert (uni.pad_id, uni.eos_id, uni.unk_id) == (0, 1, 2)
    assert uni.sentinel_ids == list(range(3, 103))
    assert uni.id_to_token(uni.sentinel_ids[0]) == "<extra_id_0>" and uni.id_to_token(102) == "<extra_id_99>"
    assert uni.doc_separator_id == uni.eos_id and uni.mask_id is None
    assert set(range(103)) <= uni.special_ids and wp.special_ids == {0, 1, 2, 3, 4}
    for tok in trained.values():
        assert tok.vocab_size == len(tok.backend.get_vocab())


def test_family_wrapping_of_inputs(trained):
    wp, uni, bpe = trained["wordpiece"], trained["unigram"], trained["bpe"]
    ids = wp.encode("the fox", add_special_tokens=True)
    assert ids[0] == wp.cls_id and ids[-1] == wp.sep_id
    assert wp.encode("the fox") == ids[1:-1]
    ids = uni.encode("the fox", add_special_tokens=True)
    assert ids[-1] == uni.eos_id and uni.encode("the fox") == ids[:-1]
    assert bpe.encode("the fox", add_special_tokens=True) == bpe.encode("the fox")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_saved_tokenizer_json_loads_in_transformers(trained, kind, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = trained[kind]
    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in SENTENCES + PROBES:
        assert hf(text, add_special_tokens=True)["input_ids"] == tok.encode(text, add_special_tokens=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    for text in SENTENCES:  # (tokens of unknown characters differ in spelling only)
        assert hf.convert_ids_to_tokens(tok.encode(text)) == tok.tokens(text)
    ids = tok.encode(SENTENCES[1])
    assert hf.decode(ids) == tok.decode(ids)


def test_byte_level_bpe_round_trips_any_text(trained):
    bpe = trained["bpe"]
    for text in PROBES + SENTENCES:
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.unk_id is None


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_save_load_round_trip_and_hash(trained, kind, tmp_path):
    tok = trained[kind]
    tok.save(tmp_path / "dir")
    again = Tokenizer.load(tmp_path / "dir")
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.hash == tok.hash
    assert again.encode_batch(SENTENCES) == tok.encode_batch(SENTENCES)
    bare = Tokenizer.load(tmp_path / "dir" / "tokenizer.json")  # kind inferred from the model type
    assert bare.kind == kind and bare.special_ids == tok.special_ids
    meta = json.loads((tmp_path / "dir" / "tokenizer_meta.json").read_text())
    assert meta["kind"] == kind and meta["hash"] == tok.hash


def test_hash_changes_with_the_vocabulary():
    a = train_tokenizer("bpe", small_corpus(), 400)
    b = train_tokenizer("bpe", small_corpus(), 380)
    assert a.hash != b.hash
    assert a.hash == train_tokenizer("bpe", small_corpus(), 400).hash


def test_word_ids_match_transformers(trained, tmp_path):
    from transformers import PreTrainedTokenizerFast

    wp = trained["wordpiece"]
    wp.save(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "unbelievably quick tokenizers"
    assert wp.word_ids(text) == hf(text, add_special_tokens=False).word_ids()
    assert wp.word_ids(text, add_special_tokens=True) == hf(text).word_ids()
    assert len(set(i for i in wp.word_ids(text))) == 3


def test_add_special_tokens_are_never_split(trained, tmp_path):
    tok = Tokenizer.load(trained["bpe"].save(tmp_path))
    before = tok.hash
    ids = tok.add_special_tokens(["<|start|>", "<|extract|>"])
    assert ids == [tok.vocab_size - 2, tok.vocab_size - 1]
    assert tok.encode("a <|start|>b<|extract|>")[-3:] == [ids[0], tok.encode("b")[0], ids[1]]
    assert set(ids) <= tok.special_ids and tok.hash != before


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    from conftest import _shared_data_dir

    d = _shared_data_dir()
    if d is None:
        pytest.skip("real-data mirror ../shared/data is not present")
    return Tokenizer.load(d / "gpt2-tokenizer")


def test_gpt2_vocab_and_merges_give_transformers_ids(shared_data, gpt2):
    from transformers import GPT2TokenizerFast

    d = shared_data / "gpt2-tokenizer"
    ours = gpt2
    params = inspect.signature(GPT2TokenizerFast.__init__).parameters
    if "vocab_file" in params:
        ref = GPT2TokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
    else:  # transformers 5 takes the files as `vocab` / `merges`
        ref = GPT2TokenizerFast(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))
    assert ours.encode("Hello world") == [15496, 995] == ref("Hello world")["input_ids"]
    assert ours.vocab_size == 50257 == len(ref) and ours.eos_id == 50256 == ref.eos_token_id
    lines = (shared_data / "wikitext-2" / "wiki.test.raw").read_text("utf-8").splitlines()[:2000]
    assert ours.encode_batch(lines) == ref(lines)["input_ids"]
    assert ours.encode("a<|endoftext|>b") == ref("a<|endoftext|>b")["input_ids"] == [64, 50256, 65]
    text = "\n".join(lines[:50])
    assert ours.decode(ours.encode(text)) == text


def test_training_reads_files_gz_and_jsonl(tmp_path):
    lines = small_corpus(10)
    (tmp_path / "a.txt").write_text("\n".join(lines[:20]))
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("\n".join(lines[20:40]).encode()))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in lines[40:]))
    # byte-level BPE training is deterministic (the WordPiece/Unigram trainers break ties in hash order)
    from_dir = train_tokenizer("bpe", iter_texts(tmp_path), 300)
    files = [tmp_path / "a.txt", tmp_path / "b.txt.gz", tmp_path / "c.jsonl"]
    from_list = train_tokenizer("bpe", iter_texts(files), 300)
    from_texts = train_tokenizer("bpe", lines, 300)
    assert from_dir.hash == from_list.hash == from_texts.hash


def test_training_rejects_bad_requests(tmp_path):
    with pytest.raises(DataError, match="too small"):
        train_tokenizer("bpe", SENTENCES, 100)
    with pytest.raises(DataError, match="kind"):
        train_tokenizer("sentencepiece", SENTENCES, 1000)
    with pytest.raises(DataError, match="empty"):
        train_tokenizer("bpe", ["", "  "], 300)
    (tmp_path / "a.txt").write_text("some text\n")
    with pytest.raises(DataError, match="no such file"):
        iter_texts([tmp_path / "a.txt", tmp_path / "missing.txt"])  # every path is checked before reading
    # a path or a single string is not an iterable of texts (it would be read character by character)
    for single in (tmp_path / "a.txt", str(tmp_path / "a.txt"), "one text"):
        with pytest.raises(DataError, match="iter_texts"):
            train_tokenizer("bpe", single, 300)
    with pytest.raises(DataError, match="iter_texts"):
        train_tokenizer("bpe", [tmp_path / "a.txt"], 300)
    with pytest.raises(DataError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)


# ----------------------------------------------------------------------------- the BPE explainer


def test_explain_reproduces_the_textbook_compression_example():
    r = explain_chars("aaabdaaabac", 3)
    steps = r["steps"]
    assert (steps[0]["pair"], steps[0]["symbol"], steps[0]["sequence"]) == (["a", "a"], "Z", "ZabdZabac")
    # second step: "ab" and "Za" both occur twice; the stated rule picks the leftmost one
    assert steps[1]["count"] == 2 and ["a", "b"] in steps[1]["tied_with"]
    assert steps[1]["pair"] == ["Z", "a"] and steps[1]["sequence"] == "YbdYbac"
    assert steps[2]["pair"] == ["Y", "b"] and r["final"] == "XdXac"
    assert r["expanded"] == {"Z": "aa", "Y": "aaa", "X": "aaab"}
    text = format_explanation(r)
    assert "ties:" in text and "ZabdZabac" in text and "XdXac" in text


def _sennrich_reference(vocab: dict[str, int], num_merges: int) -> list[tuple[str, str]]:
    """Algorithm 1 of Sennrich et al. (2016), as printed in the paper."""

    def get_stats(vocab):
        pairs = defaultdict(int)
        for word, freq in vocab.items():
            symbols = word.split()
            for i in range(len(symbols) - 1):
                pairs[symbols[i], symbols[i + 1]] += freq
        return pairs

    def merge_vocab(pair, v_in):
        v_out = {}
        bigram = re.escape(" ".join(pair))
        p = re.compile(r"(?<!\S)" + bigram + r"(?!\S)")
        for word in v_in:
            v_out[p.sub("".join(pair), word)] = v_in[word]
        return v_out

    merges = []
    for _ in range(num_merges):
        pairs = get_stats(vocab)
        best = max(pairs, key=pairs.get)
        vocab = merge_vocab(best, vocab)
        merges.append(best)
    return merges


def test_explain_words_matches_sennrich_algorithm_1():
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    text = " ".join(w for w, c in counts.items() for _ in range(c))
    ref = _sennrich_reference({" ".join(w) + " </w>": c for w, c in counts.items()}, 10)
    r = explain_words(text, 10, ["lowest"])
    assert [tuple(s["pair"]) for s in r["steps"]] == ref
    assert r["segmentations"]["lowest"] == ["low", "est</w>"]  # a rare word split into known units
    assert "</w>" in format_explanation(r)


def test_tokenizer_cli_train_encode_explain(tmp_path, capsys):
    from lmscale.cli import main

    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(small_corpus(10)))
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "200", "--input", str(src),
                 "--out", str(tmp_path / "tok"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "wordpiece" and info["vocab_size"] <= 200
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "the fox", "--special", "--json"]) == 0
    enc = json.loads(capsys.readouterr().out)
    assert enc["tokens"][0] == "[CLS]" and enc["tokens"][-1] == "[SEP]" and enc["ids"][0] == 2
    assert main(["tokenizer", "explain", "aaabdaaabac", "--merges", "3"]) == 0
    out = capsys.readouterr().out
    assert "ZabdZabac" in out and "ties:" in out
    assert main(["tokenizer", "explain", "low low lower newest", "--merges", "4", "--words", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "words"
    assert main(["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input",
                 str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t2")]) == 2
    assert "nope.txt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bulk encoder


def test_cached_byte_level_encoder_equals_the_library_on_any_text(trained):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lmscale.tokenization import fast_bpe

    bpe = trained["bpe"]
    assert fast_bpe.applicable(bpe)
    assert not fast_bpe.applicable(trained["wordpiece"]) and not fast_bpe.applicable(trained["unigram"])
    enc = fast_bpe.CachedByteLevelEncoder(bpe)
    alphabet = st.one_of(st.characters(), st.sampled_from(list(" \n\t\r\u00a0\u2003\u200b\x1c\x85's1!a")))

    @settings(max_examples=50, deadline=None, derandomize=True)
    @given(st.lists(st.text(alphabet, max_size=40), min_size=1, max_size=4))
    def check(texts):
        assert enc.encode_batch(texts) == bpe.encode_batch(texts)

    check()
    assert enc.encode_batch(["a<|endoftext|>b"]) == [bpe.encode("a<|endoftext|>b")]  # added tokens: library path


def test_cached_encoder_on_gpt2_and_wikitext(shared_data, gpt2):
    from lmscale.tokenization import fast_bpe

    tok = gpt2
    lines = (shared_data / "wikitext-2" / "wiki.valid.raw").read_text("utf-8").splitlines(keepends=True)[:1000]
    docs = ["".join(lines[i:i + 50]) for i in range(0, len(lines), 50)]
    enc = fast_bpe.CachedByteLevelEncoder(tok)
    assert enc.encode_batch(docs) == tok.encode_batch(docs) and enc.fallback_docs == 0
