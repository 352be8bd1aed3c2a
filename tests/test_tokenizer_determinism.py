"""`lmscale tokenizer train` writes the same files for the same text in every process.

The Rust WordPiece and Unigram trainers do not: their word counts are kept in a hash map seeded
afresh in each process, so ids and tie-breaks vary. Each kind is trained twice here, each time in
a process of its own, and the saved files must be equal byte for byte.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from lmscale.tokenization import Tokenizer


def _text(shared_data) -> str:
    """The first 400 kB of WikiText-2 when the mirror is here, else made-up words with Zipf-like counts."""
    if shared_data is not None:
        return (shared_data / "wikitext-2" / "wiki.train.raw").read_text(encoding="utf-8")[:400_000]
    rng = random.Random(0)
    stems = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(2, 9))) for _ in range(800)]
    weights = [1 / (i + 1) for i in range(len(stems))]
    lines = [" ".join(rng.choices(stems, weights, k=30)) + rng.choice([".", "!", ", 12."]) for _ in range(3000)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path, request):
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared = None
    path = tmp_path / "corpus.txt"
    path.write_text(_text(shared), encoding="utf-8")
    return path


def _train(kind: str, corpus, out) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    cmd = [sys.executable, "-m", "lmscale", "tokenizer", "train", "--kind", kind, "--vocab-size", "1200",
           "--input", str(corpus), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_training_twice_in_two_processes_gives_the_same_files(kind, corpus, tmp_path):
    _train(kind, corpus, tmp_path / "a")
    _train(kind, corpus, tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tok = Tokenizer.load(tmp_path / "a")
    assert 1000 < tok.vocab_size <= 1200  # Unigram may stop short on a small text
    if kind == "unigram":
        assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.sentinel_ids[0]) == (0, 1, 2, 3)
        words = corpus.read_text(encoding="utf-8").split()[:200]
        assert tok.decode(tok.encode(" ".join(words))).split() == words


def test_wordpiece_marks_continuations_and_keeps_specials(corpus, tmp_path):
    _train("wordpiece", corpus, tmp_path / "wp")
    tok = Tokenizer.load(tmp_path / "wp")
    vocab = tok.backend.get_vocab()
    assert [vocab[s] for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert any(t.startswith("##") and len(t) > 3 for t in vocab)
    assert not any(0xE000 <= ord(c) <= 0xF8FF or ord(c) >= 0xF0000 for t in vocab for c in t)
    assert tok.mask_id == 4 and tok.sep_id == 3
