"""Stage 2: BPE, WordPiece and Unigram trained on the corpus, how each splits rare words, and the
classic BPE algorithm walked step by step."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from rich.console import Console
from rich.table import Table

from lmscale.data.readers import iter_texts
from lmscale.experiments.quickstart.core import Context, StageResult
from lmscale.experiments.quickstart.data import DataResult
from lmscale.experiments.quickstart.fragments import render
from lmscale.io import heartbeat
from lmscale.tokenization import train_tokenizer
from lmscale.tokenization.explain import explain_bpe

# (kind, lower-cased?) in the order they are trained and shown
KINDS = (("bpe", False), ("wordpiece", True), ("unigram", False))
RARE_WORDS = ["photosynthesis", "unbelievably", "Minneapolis", "tokenization"]
BPE_EXAMPLE, BPE_MERGES = "aaabdaaabac", 3


@dataclass
class TrainedTokenizer:
    dir: str
    vocab_size: int
    train_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"dir": self.dir, "vocab_size": self.vocab_size, "train_s": self.train_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainedTokenizer:
        return cls(dir=d["dir"], vocab_size=d["vocab_size"], train_s=d["train_s"])


@dataclass
class TokenizersResult(StageResult):
    stage: ClassVar[str] = "tokenizers"
    tokenizers: dict[str, TrainedTokenizer]  # kind -> trained tokenizer
    rare_words: dict[str, dict[str, list[str]]]  # kind -> word -> its tokens
    bpe_explain: dict[str, Any]
    bpe_explain_text: str

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizers": {k: t.to_dict() for k, t in self.tokenizers.items()}, "rare_words": self.rare_words,
                "bpe_explain": self.bpe_explain, "bpe_explain_text": self.bpe_explain_text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizersResult:
        return cls(tokenizers={k: TrainedTokenizer.from_dict(t) for k, t in d["tokenizers"].items()},
                   rare_words=d["rare_words"], bpe_explain=d["bpe_explain"],
                   bpe_explain_text=d["bpe_explain_text"])

    @property
    def columns(self) -> list[str]:
        return [f"{kind} ({tok.vocab_size})" for kind, tok in self.tokenizers.items()]

    @property
    def words(self) -> list[str]:
        return list(next(iter(self.rare_words.values()), {}))

    def splits_of(self, word: str) -> list[str]:
        """How each tokenizer splits `word`, in tokenizer order."""
        return [" ".join(self.rare_words[k][word]) for k in self.tokenizers]

    def render_console(self, console: Console, ctx: Context) -> None:
        table = Table(title="How each tokenizer splits rare words")
        table.add_column("word")
        for col in self.columns:
            table.add_column(col)
        for w in self.words:
            table.add_row(w, *self.splits_of(w))
        console.print(table)
        console.print(self.bpe_explain_text)

    def render_html(self) -> str:
        return render("tokenizers.html.j2", r=self)


def _head_lines(files: list[str], max_bytes: int) -> Iterator[str]:
    """The first `max_bytes` of the training text, line by line (a quicker tokenizer fit)."""
    seen = 0
    for text in iter_texts(files, errors="replace"):
        seen += len(text)
        if seen > max_bytes:
            return
        yield text


def run(ctx: Context) -> TokenizersResult:
    spec = ctx.profile["tokenizers"]
    train_files = ctx.need(DataResult).train_files
    trained: dict[str, TrainedTokenizer] = {}
    rare: dict[str, dict[str, list[str]]] = {}
    for kind, lower in KINDS:
        t0 = time.perf_counter()
        source = _head_lines(train_files, spec["max_bytes"]) if spec["max_bytes"] else iter_texts(train_files)
        with heartbeat(f"training the {kind} tokenizer"):
            tok = train_tokenizer(kind, source, vocab_size=spec["vocab_size"], lowercase=lower)
        d = ctx.path("tokenizers", kind)
        tok.save(d)
        trained[kind] = TrainedTokenizer(dir=str(d), vocab_size=tok.vocab_size,
                                         train_s=round(time.perf_counter() - t0, 2))
        rare[kind] = {w: tok.tokens(w) for w in RARE_WORDS}
    steps = explain_bpe(BPE_EXAMPLE, merges=BPE_MERGES)
    return TokenizersResult(tokenizers=trained, rare_words=rare, bpe_explain=steps.to_dict(),
                            bpe_explain_text=steps.render())
