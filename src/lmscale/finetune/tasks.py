"""GLUE-style fine-tuning tasks read from TSV / CSV / JSONL files.

A task is a directory with `train`, `dev` (or `validation`/`valid`) and optionally `test` files,
or explicit files per split. Every example remembers the file and line it came from, so a bad
row is reported where the user can fix it, before any training starts.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from lmscale.data.catalog import resolve_corpus
from lmscale.data.readers import one_line_rows, text_rows
from lmscale.errors import DataError

KINDS = ("classification", "regression", "text-to-text")
FORMATS = ("tsv", "csv", "jsonl")
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"), "test": ("test",)}
EXTENSIONS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}

csv.field_size_limit(2**31 - 1)


@dataclass
class Example:
    """One input: a sentence, a sentence pair, or a context with answer choices.

    `label` is the class index (classification / multiple choice), a float (regression) or the
    target string (text-to-text); None for unlabelled inputs given to `predict`.
    """

    text: str
    text_pair: Optional[str] = None
    choices: Optional[list[str]] = None
    label: Any = None
    source: str = ""
    line: int = 0
    task: Optional[str] = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class TaskSpec:
    """How to read a task's files: column names and what the label is."""

    kind: str = "classification"  # classification | regression | text-to-text
    text_column: str = "sentence"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    choice_columns: Optional[list[str]] = None  # multiple choice: one column per answer
    input_column: str = "input"  # text-to-text
    target_column: str = "target"
    format: Optional[str] = None  # tsv | csv | jsonl; default from the extension
    labels: Optional[list[str]] = None  # fixed label set (order = class index); default inferred

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"task kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.format is not None and self.format not in FORMATS:
            raise DataError(f"task format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.choice_columns is not None and len(self.choice_columns) < 2:
            raise DataError("multiple choice needs at least two choice columns")

    @property
    def input_format(self) -> str:
        if self.kind == "text-to-text":
            return "text-to-text"
        if self.choice_columns:
            return "multiple-choice"
        return "pair" if self.text_pair_column else "single"


@dataclass
class TaskData:
    """Examples per split plus the label set inferred from train (class index = position)."""

    name: str
    spec: TaskSpec
    splits: dict[str, list[Example]]
    labels: Optional[list[str]] = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def num_labels(self) -> int:
        if self.spec.kind == "regression":
            return 1
        if self.spec.choice_columns:
            return len(self.spec.choice_columns)
        return len(self.labels or [])

    def subset(self, split: str, n: Optional[int], seed: int) -> list[Example]:
        """A seeded random subset of `n` examples (all when n is None or >= the split size)."""
        exs = self.splits[split]
        if n is None or n >= len(exs):
            return list(exs)
        idx = sorted(random.Random(seed).sample(range(len(exs)), n))
        return [exs[i] for i in idx]


# ----------------------------------------------------------------------------- raw rows

def detect_format(path: Path, fmt: Optional[str] = None) -> str:
    if fmt:
        return fmt
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from the extension; use .tsv, .csv or .jsonl "
                        "(or pass the format explicitly)")
    return EXTENSIONS[ext]


def iter_rows(path: str | os.PathLike, fmt: Optional[str] = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, row_dict)`; TSV/CSV need a header row, JSONL one object per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = detect_format(path, fmt)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")  # not read_text: its newline translation makes a `\r` in a field a row break
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {exc.start})") from None
    del raw
    if fmt == "jsonl":
        for i, line in enumerate(text_rows(text), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
                raise DataError(f"{path}:{i}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
            except RecursionError:
                raise DataError(f"{path}:{i}: JSON nested too deeply to be a row") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: each JSONL line must be an object with named fields")
            yield i, obj
        return
    # fields may be quoted (some TSV exports quote), but an example is one line (`one_line_rows`)
    header: Optional[list[str]] = None
    for line, row in one_line_rows(path, text, "\t" if fmt == "tsv" else ",", at=lambda n: f"{path}:{n}"):
        if header is None:
            header = [h.strip() for h in row]
            if not any(header):
                raise DataError(f"{path}:{line}: the first row must name the columns")
            continue
        if not any(f.strip() for f in row):  # a blank line, tabs or commas and spaces only
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: {len(row)} fields but the header has {len(header)} "
                f"({', '.join(header)})"
            )
        yield line, dict(zip(header, row))


def _get(row: dict[str, Any], col: str, path: Path, line: int) -> Any:
    if col not in row:
        raise DataError(
            f"{path}:{line}: missing column {col!r} (columns: {', '.join(map(str, row.keys()))})"
        )
    return row[col]


def _text(row: dict[str, Any], col: str, path: Path, line: int) -> str:
    value = _get(row, col, path, line)
    if value is None or not str(value).strip():
        raise DataError(f"{path}:{line}: empty text in column {col!r}")
    return " ".join(str(value).split())


def _label_str(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_examples(path: str | os.PathLike, spec: TaskSpec, labelled: bool = True) -> list[Example]:
    """Read one split; labels stay raw strings here (mapped to indices by `load_task`)."""
    path = Path(path)
    out: list[Example] = []
    for line, row in iter_rows(path, spec.format):
        if spec.kind == "text-to-text":
            ex = Example(text=_text(row, spec.input_column, path, line), source=str(path), line=line)
            if labelled:
                ex.label = _text(row, spec.target_column, path, line)
            out.append(ex)
            continue
        ex = Example(text=_text(row, spec.text_column, path, line), source=str(path), line=line)
        if spec.text_pair_column:
            ex.text_pair = _text(row, spec.text_pair_column, path, line)
        if spec.choice_columns:
            ex.choices = [_text(row, c, path, line) for c in spec.choice_columns]
        if labelled:
            raw = _get(row, spec.label_column, path, line)
            if raw is None or _label_str(raw) == "":
                raise DataError(f"{path}:{line}: empty label in column {spec.label_column!r}")
            if spec.kind == "regression":
                try:
                    value = float(raw)
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}:{line}: regression target {raw!r} in column "
                        f"{spec.label_column!r} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise DataError(f"{path}:{line}: regression target {raw!r} is not finite")
                ex.label = value
            else:
                ex.label = _label_str(raw)
        out.append(ex)
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def _sort_labels(labels: Iterable[str]) -> list[str]:
    labels = set(labels)
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


RARE_LABEL_SHARE = 0.01  # a training label rarer than this is taken for a typo unless --labels lists it


def _check_rare_labels(train: list[Example], spec: TaskSpec) -> None:
    """A label in under 1% of the training rows is more likely a stray value than a class: it is an
    error unless the label set is given (`--labels`), so it never silently becomes a class."""
    if spec.labels:
        return
    counts: dict[str, list[Example]] = {}
    for ex in train:
        counts.setdefault(ex.label, []).append(ex)
    n = len(train)
    for label, exs in sorted(counts.items(), key=lambda kv: len(kv[1])):
        if len(exs) / n < RARE_LABEL_SHARE:
            seen = ",".join(_sort_labels(counts))
            raise DataError(
                f"{exs[0].where}: label {label!r} is in only {len(exs)} of {n} training rows (under 1%); "
                f"fix the row if it is a stray value, or, if it is a real class, list the labels with "
                f"--labels {seen}"
            )


def _index_labels(examples: list[Example], labels: list[str], split: str, spec: TaskSpec) -> None:
    index = {label: i for i, label in enumerate(labels)}
    for ex in examples:
        if spec.choice_columns:
            try:
                k = int(ex.label)
            except ValueError:
                k = -1
            if not 0 <= k < len(spec.choice_columns):
                raise DataError(
                    f"{ex.where}: answer {ex.label!r} must be a choice index 0..{len(spec.choice_columns) - 1}"
                )
            ex.label = k
            continue
        if ex.label not in index:
            given = "is not in --labels" if spec.labels else "was not seen in training"
            raise DataError(
                f"{ex.where}: label {ex.label!r} in the {split} split {given} "
                f"(labels: {', '.join(labels)}); fix the row, or list every label with --labels"
            )
        ex.label = index[ex.label]


# ----------------------------------------------------------------------------- tasks

def find_split_files(directory: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for split, names in SPLIT_ALIASES.items():
        for name in names:
            hits = [directory / f"{name}{ext}" for ext in EXTENSIONS if (directory / f"{name}{ext}").is_file()]
            if hits:
                files[split] = hits[0]
                break
    return files


def resolve_task_files(task: str | os.PathLike | dict[str, Any]) -> tuple[str, dict[str, Path]]:
    """Task name and split files from a directory, a dict of split -> file, or a catalog name."""
    if isinstance(task, dict):
        files = {k: Path(v) for k, v in task.items() if v is not None}
        name = Path(files.get("train", next(iter(files.values())))).parent.name
        return name, files
    path = Path(task)
    if path.is_dir():
        files = find_split_files(path)
        if "train" not in files:
            raise DataError(f"{path}: no train.tsv / train.csv / train.jsonl in this task directory")
        return path.name, files
    if path.is_file():
        return path.stem, {"train": path}
    labeled = _catalog_labeled_splits(str(task))
    if labeled is not None:
        return str(task), labeled
    raise DataError(f"task {str(task)!r}: not a directory, a file or a labelled corpus in the catalog")


def _catalog_labeled_splits(name: str) -> Optional[dict[str, Path]]:
    """The catalog's labelled splits for `name`, falling back to the `LMSCALE_DATA_DIR` mirror."""
    try:
        corpus = resolve_corpus(name)
    except Exception:  # unknown name or unavailable source: try the mirror below
        corpus = None
    if corpus is not None and hasattr(corpus, "labeled_splits"):
        return {k: Path(v) for k, v in corpus.labeled_splits().items()}
    mirror_names = {"sentiment-movies": "sentiment/movieReviewSnippets"}
    root = os.environ.get("LMSCALE_DATA_DIR")
    if name in mirror_names and root:
        d = Path(root) / mirror_names[name]
        if d.is_dir():
            return find_split_files(d)
    return None


def load_task(
    task: str | os.PathLike | dict[str, Any],
    spec: Optional[TaskSpec] = None,
    name: Optional[str] = None,
) -> TaskData:
    """Read and check every split: the label set comes from train and is enforced on dev/test."""
    spec = spec or TaskSpec()
    task_name, files = resolve_task_files(task)
    if "train" not in files:
        raise DataError(f"task {task_name}: a train split is required")
    splits = {split: read_examples(f, spec) for split, f in files.items()}
    labels: Optional[list[str]] = None
    if spec.kind == "classification":
        if spec.choice_columns:
            labels = [str(i) for i in range(len(spec.choice_columns))]
        else:
            _check_rare_labels(splits["train"], spec)
            labels = list(spec.labels) if spec.labels else _sort_labels(ex.label for ex in splits["train"])
            if len(labels) < 2:
                raise DataError(
                    f"{files['train']}: only one label ({labels[0]!r}) in column "
                    f"{spec.label_column!r}; classification needs at least two"
                )
        for split in splits:
            _index_labels(splits[split], labels, split, spec)
    return TaskData(name=name or task_name, spec=spec, splits=splits, labels=labels,
                    files={k: str(v) for k, v in files.items()})


def read_inputs(path: str | os.PathLike, spec: TaskSpec) -> list[Example]:
    """Unlabelled inputs for prediction (a label column, when present, is ignored)."""
    return read_examples(path, spec, labelled=False)


# ----------------------------------------------------------------------------- T5-style mixtures

def text_to_text_examples(task: TaskData, split: str, label_words: Optional[Sequence[str]] = None,
                          prefix: Optional[str] = None) -> list[Example]:
    """Cast a classification task as text-to-text with a task prefix (`sst2 sentence: ...`).

    Label words default to the label strings; the T5 paper uses words such as `positive`.
    """
    if task.kind == "text-to-text":
        return [Example(text=f"{prefix} {ex.text}" if prefix else ex.text, label=ex.label,
                        source=ex.source, line=ex.line, task=task.name) for ex in task.splits[split]]
    if task.kind != "classification" or task.spec.choice_columns:
        raise DataError(f"task {task.name}: only classification tasks can be cast as text-to-text")
    words = list(label_words) if label_words else list(task.labels or [])
    if len(words) != len(task.labels or []):
        raise DataError(f"task {task.name}: {len(words)} label words for {len(task.labels or [])} labels")
    prefix = prefix if prefix is not None else task.name
    out = []
    for ex in task.splits[split]:
        if ex.text_pair is not None:
            text = f"{prefix} sentence1: {ex.text} sentence2: {ex.text_pair}"
        else:
            text = f"{prefix} sentence: {ex.text}"
        out.append(Example(text=text, label=words[ex.label] if ex.label is not None else None,
                           source=ex.source, line=ex.line, task=task.name))
    return out


def mixing_rates(sizes: dict[str, int], cap: Optional[int] = None, temperature: float = 1.0) -> dict[str, float]:
    """Examples-proportional mixing (T5 sec. 3.5.2): r_m = min(e_m, K) / sum_n min(e_n, K).

    The cap K keeps a huge task from drowning the small ones; `temperature` T > 1 flattens the
    rates further (r_m ** (1/T), renormalised), also as in T5.
    """
    if not sizes:
        raise DataError("a mixture needs at least one task")
    if cap is not None and cap <= 0:
        raise DataError(f"mixing cap {cap} must be positive")
    capped = {k: float(min(v, cap) if cap is not None else v) for k, v in sizes.items()}
    if any(v <= 0 for v in capped.values()):
        raise DataError("every task in a mixture needs at least one example")
    if temperature != 1.0:
        capped = {k: v ** (1.0 / temperature) for k, v in capped.items()}
    total = sum(capped.values())
    return {k: v / total for k, v in capped.items()}


def sample_mixture(examples: dict[str, list[Example]], n: int, seed: int, cap: Optional[int] = None,
                   temperature: float = 1.0) -> list[Example]:
    """Draw `n` examples: a task by its mixing rate, then an example of that task, each epoch-wise
    shuffled so a task's examples repeat only after all of them were used."""
    rng = random.Random(seed)
    rates = mixing_rates({k: len(v) for k, v in examples.items()}, cap, temperature)
    names = list(rates)
    weights = [rates[k] for k in names]
    orders: dict[str, list[int]] = {k: [] for k in names}
    out = []
    for _ in range(n):
        k = rng.choices(names, weights)[0]
        if not orders[k]:
            orders[k] = list(range(len(examples[k])))
            rng.shuffle(orders[k])
        out.append(examples[k][orders[k].pop()])
    return out
