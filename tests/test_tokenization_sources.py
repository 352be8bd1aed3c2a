"""Tokenizers from other sources: a local `.tiktoken` encoding gives tiktoken's own ids; a BPE
tokenizer's end-of-text token is configurable (`</s>` works for data prepare)."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmscale.data.shards import TokenDataset, prepare
from lmscale.errors import DataError
from lmscale.tokenization import Tokenizer, train_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Numbers 1234 and 56.78, naïve café, 東京タワー!\n"
        "    indented  code\twith\ttabs\r\n") * 20
PROBES = ["Hello world!", "  leading spaces", "1234567 digits", "naïve café", "東京タワー", "don't we'll I'M",
          "tabs\tand\nnewlines\n\n", "<|endoftext|> in text", "emoji 🙂 ok", ""]


@pytest.fixture(scope="module")
def mini_tiktoken(tmp_path_factory):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken._educational import bpe_train

    from lmscale.tokenization.tiktoken_file import known_encoding

    pattern, specials = known_encoding("cl100k_base")
    assert specials["<|endoftext|>"] == 100257  # read from tiktoken's definition, nothing fetched
    ranks = bpe_train(TEXT, 300, pattern)
    f = tmp_path_factory.mktemp("tt") / "mini.tiktoken"
    f.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1])))
    enc = tiktoken.Encoding("mini", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    return f, enc


def test_tiktoken_file_gives_tiktokens_ids(mini_tiktoken):
    f, enc = mini_tiktoken
    tok = Tokenizer.load(f)
    assert tok.kind == "bpe" and tok.eos_id == enc.eot_token and tok.doc_separator_id == enc.eot_token
    for text in PROBES + [TEXT]:
        ids = tok.encode(text)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text
    assert tok.vocab_size == enc.n_vocab


def test_tiktoken_tokenizer_prepares_shards_and_round_trips_through_save(mini_tiktoken, tmp_path):
    f, enc = mini_tiktoken
    tok = Tokenizer.load(f)
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.encode(TEXT) == enc.encode(TEXT) and again.eos_id == enc.eot_token
    docs = ["first document here", "second one, naïve", "third: 1234"]
    (tmp_path / "c.txt").write_text("\n".join(docs) + "\n")
    prepare(tmp_path / "c.txt", again, tmp_path / "shards", valid_fraction=0.0)
    want = [i for d in docs for i in enc.encode(d) + [enc.eot_token]]
    assert TokenDataset.open(tmp_path / "shards", "train").tokens.tolist() == want


def _bpe_with(specials: list[str]) -> Tokenizer:
    b = Backend(models.BPE())
    b.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    b.decoder = decoders.ByteLevel()
    b.train_from_iterator(["some text to learn from"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return Tokenizer(b, kind="bpe")


def test_bpe_end_of_text_token_is_configurable(tmp_path, capsys):
    from lmscale.cli import main

    s = _bpe_with(["<pad>", "</s>"])  # no <|endoftext|>: </s> is found
    assert s.eos_id == s.token_to_id("</s>") and s.doc_separator_id == s.eos_id
    (tmp_path / "c.txt").write_text("some text\n\nto learn\n")
    idx = prepare(tmp_path / "c.txt", s, tmp_path / "a", valid_fraction=0.0)
    assert idx.data["doc_separator_id"] == s.token_to_id("</s>")
    none = _bpe_with(["<pad>"])
    with pytest.raises(DataError, match="no document separator token.*</s>.*set-eos"):
        prepare(tmp_path / "c.txt", none, tmp_path / "b")
    both = train_tokenizer("bpe", ["some text to learn from"] * 20, 300)
    both.add_special_tokens(["</s>"])
    both.save(tmp_path / "tok")
    assert main(["tokenizer", "set-eos", str(tmp_path / "tok"), "--token", "</s>", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eos_token"] == "</s>"
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.eos_token == "</s>" and loaded.hash == both.hash
    first = prepare(tmp_path / "c.txt", both, tmp_path / "c", valid_fraction=0.0)
    second = prepare(tmp_path / "c.txt", loaded, tmp_path / "c", valid_fraction=0.0)
    assert not second.reused  # the separator changed, so the shards are rebuilt
    a, b = (np.asarray(TokenDataset.open(tmp_path / "c", "train").tokens), first.data["doc_separator_id"])
    assert a[-1] == loaded.eos_id != b
    with pytest.raises(DataError, match="not in this tokenizer's vocabulary"):
        loaded.set_eos("<nope>")
    assert main(["tokenizer", "set-eos", str(tmp_path / "tok"), "--token", "<nope>"]) != 0
