"""Few-shot task files: BIG-bench JSON tasks and a plain JSONL format, validated on load.

A task file is user input, so every problem is reported with the file, the example index and the
field, before any model time is spent.
"""
from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscale.data.catalog import is_local, resolve_corpus
from lmscale.data.readers import text_rows
from lmscale.errors import DataError

# BIG-bench's defaults for fields a task may leave out (bigbench/api/json_task.py).
BIGBENCH_DEFAULTS = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "append_choices_to_input": True,
    "few_shot_example_separator": "\n",
}
MC_METRIC = "multiple_choice_grade"
GEN_METRIC = "exact_str_match"


@dataclass
class Example:
    """One test item. `choices`/`scores` are set for multiple choice, `targets` for generation."""

    index: int
    input: str
    targets: list[str] = field(default_factory=list)
    choices: list[str] | None = None
    scores: list[float] | None = None

    @property
    def best_choices(self) -> list[str]:
        top = max(self.scores or [0.0])
        return [c for c, s in zip(self.choices or [], self.scores or []) if s == top]


@dataclass
class Task:
    """A parsed task plus the formatting that turns an example into a prompt."""

    name: str
    path: Path
    examples: list[Example]
    task_prefix: str = ""
    input_prefix: str = BIGBENCH_DEFAULTS["example_input_prefix"]
    output_prefix: str = BIGBENCH_DEFAULTS["example_output_prefix"]
    choice_prefix: str = BIGBENCH_DEFAULTS["choice_prefix"]
    append_choices: bool = True
    separator: str = "\n"
    target_delimiter: str = ""  # between the prompt and an answer (JSONL: " ")
    multiple_choice: bool = False
    generative: bool = False
    output_regex: str | None = None
    stop_string: str | None = None
    skipped_metrics: list[str] = field(default_factory=list)
    format: str = "bigbench"


def _err(path: Path, where: str, msg: str) -> DataError:
    return DataError(f"{path}: {where}: {msg}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _parse_bigbench_example(path: Path, i: int, ex: Any, want_mc: bool, want_gen: bool) -> Example:
    where = f"examples[{i}]"
    if not isinstance(ex, dict):
        raise _err(path, where, f"each example must be an object, got {type(ex).__name__}")
    if "input" not in ex:
        raise _err(path, f"{where}.input", "missing (every example needs an 'input' string)")
    if not isinstance(ex["input"], str):
        raise _err(path, f"{where}.input", f"must be a string, got {type(ex['input']).__name__}")
    if "target" not in ex and "target_scores" not in ex:
        raise _err(path, where, "needs 'target' (generation) or 'target_scores' (multiple choice)")
    targets: list[str] = []
    if "target" in ex:
        t = ex["target"]
        if isinstance(t, str):
            targets = [t]
        elif isinstance(t, list) and t and all(isinstance(x, str) for x in t):
            targets = list(t)
        else:
            raise _err(path, f"{where}.target", "must be a string or a non-empty list of strings")
    choices = scores = None
    if "target_scores" in ex:
        ts = ex["target_scores"]
        if not isinstance(ts, dict) or not ts:
            raise _err(path, f"{where}.target_scores",
                       "must be a non-empty mapping of choice text -> score")
        for k, v in ts.items():
            if not _is_number(v):
                raise _err(path, f"{where}.target_scores[{k!r}]", f"score must be a number, got {v!r}")
        if len(ts) < 2:
            raise _err(path, f"{where}.target_scores", "multiple choice needs at least two choices")
        choices, scores = list(ts.keys()), [float(v) for v in ts.values()]
    if want_mc and choices is None:
        raise _err(path, f"{where}.target_scores", "missing, but the task's metrics ask for "
                   f"{MC_METRIC}")
    if want_gen and not targets:
        raise _err(path, f"{where}.target", f"missing, but the task's metrics ask for {GEN_METRIC}")
    return Example(index=i, input=ex["input"], targets=targets, choices=choices, scores=scores)


def parse_bigbench(path: Path, data: Any, name: str | None = None) -> Task:
    """Validate and parse one BIG-bench `task.json` document."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with an 'examples' list")
    for key in ("task_prefix", "example_input_prefix", "example_output_prefix", "choice_prefix",
                "few_shot_example_separator", "output_regex", "stop_string"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise _err(path, key, f"must be a string, got {type(data[key]).__name__}")
    if "append_choices_to_input" in data and not isinstance(data["append_choices_to_input"], bool):
        raise _err(path, "append_choices_to_input", "must be true or false")
    metrics = data.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise _err(path, "metrics", "must be a list of metric names")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _err(path, "examples", "must be a non-empty list of examples")
    if metrics:
        want_mc, want_gen = MC_METRIC in metrics, GEN_METRIC in metrics
        skipped = [m for m in metrics if m not in (MC_METRIC, GEN_METRIC)]
    else:
        want_mc = want_gen = False
        skipped = []
    parsed: list[Example] = []
    seen: set[str] = set()
    for i, ex in enumerate(examples):
        e = _parse_bigbench_example(path, i, ex, want_mc, want_gen)
        key = json.dumps(ex, sort_keys=True)
        if key in seen:  # BIG-bench drops exact duplicates, so a demonstration cannot be the test item
            continue
        seen.add(key)
        parsed.append(e)
    if not metrics:
        want_mc = all(e.choices is not None for e in parsed)
        want_gen = not want_mc and all(e.targets for e in parsed)
    if not (want_mc or want_gen):
        raise _err(path, "metrics", f"none of {metrics} can be scored here; use {MC_METRIC} "
                   f"(needs target_scores) or {GEN_METRIC} (needs target)")
    g = lambda k: data.get(k) if data.get(k) is not None else BIGBENCH_DEFAULTS[k]  # noqa: E731
    return Task(
        name=name or str(data.get("name") or path.parent.name),
        path=path, examples=parsed,
        task_prefix=g("task_prefix"), input_prefix=g("example_input_prefix"),
        output_prefix=g("example_output_prefix"), choice_prefix=g("choice_prefix"),
        append_choices=g("append_choices_to_input"), separator=g("few_shot_example_separator"),
        multiple_choice=want_mc, generative=want_gen,
        output_regex=data.get("output_regex"), stop_string=data.get("stop_string"),
        skipped_metrics=skipped,
    )


def parse_jsonl(path: Path, text: str) -> Task:
    """`{"context", "choices", "answer"}` per line (answer: index or choice text); without choices,
    `answer` is a string to generate exactly."""
    examples: list[Example] = []
    n_mc = 0
    for lineno, line in enumerate(text_rows(text), start=1):
        if not line.strip():
            continue
        i = len(examples)
        where = f"line {lineno} (example {i})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _err(path, where, f"not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise _err(path, where, "JSON nested too deeply to be an example") from None
        if not isinstance(row, dict):
            raise _err(path, where, "each line must be a JSON object")
        ctx = row.get("context")
        if not isinstance(ctx, str):
            raise _err(path, f"{where}.context", "missing or not a string")
        if "answer" not in row:
            raise _err(path, f"{where}.answer", "missing")
        ans = row["answer"]
        if "choices" in row:
            ch = row["choices"]
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
                raise _err(path, f"{where}.choices", "must be a list of at least two strings")
            if isinstance(ans, bool) or not isinstance(ans, (int, str)):
                raise _err(path, f"{where}.answer", "must be a choice index or the choice text")
            if isinstance(ans, int):
                if not 0 <= ans < len(ch):
                    raise _err(path, f"{where}.answer", f"index {ans} out of range for {len(ch)} choices")
                gold = ans
            else:
                if ans not in ch:
                    raise _err(path, f"{where}.answer", f"{ans!r} is not one of the choices")
                gold = ch.index(ans)
            scores = [1.0 if j == gold else 0.0 for j in range(len(ch))]
            examples.append(Example(index=i, input=ctx, targets=[ch[gold]], choices=list(ch), scores=scores))
            n_mc += 1
        else:
            if isinstance(ans, str):
                targets = [ans]
            elif isinstance(ans, list) and ans and all(isinstance(a, str) for a in ans):
                targets = list(ans)
            else:
                raise _err(path, f"{where}.answer", "without 'choices', must be a string (or list of strings)")
            examples.append(Example(index=i, input=ctx, targets=targets))
    if not examples:
        raise DataError(f"{path}: no examples (expected one JSON object per line)")
    if 0 < n_mc < len(examples):
        first = next(e for e in examples if (e.choices is None) == (examples[0].choices is not None))
        raise _err(path, f"example {first.index}.choices",
                   "mixes multiple-choice and generative examples; split them into two files")
    return Task(
        name=path.stem, path=path, examples=examples, task_prefix="", input_prefix="",
        output_prefix="", choice_prefix="", append_choices=False, separator="\n\n",
        target_delimiter=" ", multiple_choice=n_mc > 0, generative=n_mc == 0, format="jsonl",
    )


def load_task_file(path: str | os.PathLike, name: str | None = None) -> Task:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".jsonl":
        return parse_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_bigbench(path, data, name=name)


def _bigbench_root(download: bool = False) -> Path | None:
    """The BIG-bench task directory, through the data catalog (the `LMSCALE_DATA_DIR` mirror, the
    cache, or, with `download`, a fetch of the PyPI sdist)."""
    if not download and not is_local("bigbench"):
        return None
    root = resolve_corpus("bigbench", download=download).root
    return Path(root) if root is not None and Path(root).is_dir() else None


def _expand_dir(d: Path, name: str) -> list[Task]:
    """A task directory: its own task.json when it has examples, else its subtasks."""
    own = d / "task.json"
    subdirs = sorted(p.parent for p in d.glob("*/task.json"))
    if own.is_file():
        try:
            data = json.loads(own.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{own}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not (isinstance(data, dict) and "examples" not in data and subdirs):
            return [parse_bigbench(own, data, name=name)]
    if not subdirs:
        raise DataError(f"{d}: no task.json here or in its subdirectories")
    return [load_task_file(s / "task.json", name=f"{name}/{s.name}") for s in subdirs]


def is_task_path(spec: str | os.PathLike) -> bool:
    """Whether a --task value names a local file or directory (not a BIG-bench task name)."""
    return Path(spec).exists()


def load_tasks(spec: str | os.PathLike, download: bool = False) -> list[Task]:
    """A task file, a task directory, or a BIG-bench task name (`arithmetic`,
    `arithmetic/2_digit_addition`, `2_digit_addition`); a parent task expands to its subtasks.
    BIG-bench (358 MB) is fetched for a name only with `download`; otherwise a name needs it here
    already (the `LMSCALE_DATA_DIR` mirror or an earlier `lmscale data fetch bigbench`)."""
    p = Path(spec)
    if p.is_file():
        name = p.parent.name if p.name == "task.json" else p.stem
        if p.name == "task.json" and p.parent.parent.joinpath("task.json").is_file():
            name = f"{p.parent.parent.name}/{p.parent.name}"
        return [load_task_file(p, name=name)]
    if p.is_dir():
        return _expand_dir(p, p.name)
    root = _bigbench_root(download)
    if root is None:
        raise DataError(
            f"task {str(spec)!r} is not a file or directory, and BIG-bench (358 MB download) is not here "
            "to look it up by name: pass --download to fetch it, fetch it once with `lmscale data fetch "
            "bigbench`, or set LMSCALE_DATA_DIR to a mirror with bigbench/"
        )
    name = str(spec).strip("/").replace(":", "/")
    cand = root / name
    if cand.is_dir():
        return _expand_dir(cand, name)
    matches = sorted(q.parent for q in root.glob(f"*/{name}/task.json"))
    if len(matches) == 1:
        m = matches[0]
        return [load_task_file(m / "task.json", name=f"{m.parent.name}/{m.name}")]
    names = sorted({q.parent.name for q in root.glob("*/task.json")}
                   | {f"{q.parent.parent.name}/{q.parent.name}" for q in root.glob("*/*/task.json")})
    near = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known tasks: {', '.join(names[:20])} ..."
    raise DataError(f"unknown BIG-bench task {name!r} under {root}{hint}")
