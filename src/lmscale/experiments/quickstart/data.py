"""Stage 1: the corpus, through the catalog or from local text, refused when it is absent or empty."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from lmscale.data.catalog import resolve_corpus
from lmscale.errors import LmscaleError
from lmscale.experiments.quickstart.core import Context, StageResult, StageUnavailable
from lmscale.experiments.quickstart.fragments import render


@dataclass
class DataResult(StageResult):
    stage: ClassVar[str] = "data"
    corpus: str
    splits: dict[str, list[str]]  # split name -> its files
    n_bytes: int

    @property
    def train_files(self) -> list[str]:
        return self.splits["train"]

    def to_dict(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "splits": self.splits, "bytes": self.n_bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataResult:
        return cls(corpus=d["corpus"], splits=d["splits"], n_bytes=d["bytes"])

    def render_console(self, console: Console, ctx: Context) -> None:
        console.print(f"corpus [bold]{self.corpus}[/]: " + ", ".join(
            f"{k} ({sum(Path(p).stat().st_size for p in v) / 1e6:.1f} MB)" for k, v in self.splits.items()))

    def render_html(self) -> str:
        return render("data.html.j2", r=self)


def run(ctx: Context) -> DataResult:
    try:
        corpus = resolve_corpus(ctx.corpus)
    except LmscaleError as exc:
        raise StageUnavailable(
            f"could not obtain the corpus {ctx.corpus!r}: {exc}\n"
            "Without network access, point the quickstart at local text instead:\n"
            "  lmscale quickstart --corpus path/to/texts/   (a .txt, .txt.gz or .jsonl file, or a directory)\n"
            "or set LMSCALE_DATA_DIR to a directory holding wikitext-2/wiki.{train,valid,test}.raw."
        ) from None
    splits = {name: [str(p) for p in paths] for name, paths in corpus.splits.items()}
    n_bytes = sum(Path(p).stat().st_size for paths in splits.values() for p in paths)
    if n_bytes == 0:
        raise StageUnavailable(f"corpus {ctx.corpus!r} is empty; refusing to train on nothing")
    return DataResult(corpus=corpus.name, splits=splits, n_bytes=n_bytes)
