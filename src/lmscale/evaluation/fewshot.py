"""Few-shot in-context evaluation in the GPT-3 protocol (Brown et al. 2020, section 2.4).

For each test item, k demonstrations are drawn at random from the task's other examples, written
before the item in the task's own format, and the model is scored without any weight update:
multiple choice by the log-likelihood of each choice given the prompt (`acc`), also normalised by
the choice's length in characters (`acc_norm`, as lm-evaluation-harness does), and generative
items by exact match of a greedy continuation after normalisation. Every metric has its standard
error (sample standard deviation over items / sqrt(n)), because on tasks of a few hundred items a
difference of a few points is often noise.

The random draws depend only on (seed, k, item index), so a result is reproducible from the seed
and does not change when other items or tasks are added.
"""
from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from lmscale.errors import DataError, LmscaleError
from lmscale.evaluation import results as results_schema
from lmscale.evaluation.lm import ScoringLM
from lmscale.evaluation.tasks import Example, Task

DEFAULT_OUTPUT_REGEX = r"[^\.\?\!\;\n]+"  # BIG-bench's default answer extractor
ITEMS_PER_BATCH = 64  # items whose choices are scored in one batched request


# ----------------------------------------------------------------------------- prompts

def format_item(task: Task, ex: Example, rng: np.random.Generator) -> str:
    """The item as the model sees it, up to where the answer starts (BIG-bench's format)."""
    text = ex.input
    if task.multiple_choice and task.append_choices and ex.choices:
        perm = [str(c) for c in rng.permutation(sorted(ex.choices))]
        text = text + task.choice_prefix + task.choice_prefix.join(perm)
    return task.input_prefix + text + task.output_prefix


def demo_answer(task: Task, ex: Example, rng: np.random.Generator) -> str:
    """The answer written after a demonstration: a best-scoring choice for multiple-choice tasks,
    otherwise one of the targets."""
    options = ex.best_choices if task.multiple_choice and ex.choices else ex.targets
    return options[int(rng.integers(len(options)))]


def _identity(ex: Example) -> tuple:
    return (ex.input.strip(), tuple(sorted(ex.choices)) if ex.choices else None,
            tuple(sorted(ex.targets)))


@dataclass
class Prompt:
    text: str
    demo_indices: list[int]  # example indices of the demonstrations, in prompt order


def build_prompt(task: Task, position: int, k: int, seed: int) -> Prompt:
    """The k-shot prompt for `task.examples[position]`.

    Demonstrations are sampled without replacement from the other examples, excluding any copy of
    the test item (same input and same answers), so the item is never shown with its answer.
    """
    ex = task.examples[position]
    rng = np.random.default_rng([int(seed), int(k), int(ex.index)])
    demos: list[Example] = []
    if k > 0:
        key = _identity(ex)
        pool = [j for j, e in enumerate(task.examples) if j != position and _identity(e) != key]
        if len(pool) < k:
            raise DataError(f"{task.path}: {k}-shot needs {k} demonstrations besides the test item, "
                            f"but only {len(pool)} other distinct examples exist")
        demos = [task.examples[pool[j]] for j in rng.choice(len(pool), size=k, replace=False).tolist()]
    parts = [format_item(task, d, rng) + task.target_delimiter + demo_answer(task, d, rng) for d in demos]
    parts.append(format_item(task, ex, rng))
    return Prompt(task.task_prefix + task.separator.join(parts), [d.index for d in demos])


# ----------------------------------------------------------------------------- scoring math

def normalize_answer(text: str) -> str:
    """Exact-match normalisation: Unicode NFKC, lower case, whitespace collapsed, surrounding
    quotes and trailing sentence punctuation removed. Signs and inner punctuation are kept, so
    '-12' never matches '12'."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = " ".join(text.split())
    text = text.strip("\"'`“”‘’ ")
    text = text.rstrip(".!?,;:")
    return text.strip("\"'`“”‘’ ")


def extract_answer(text: str, output_regex: str | None = None, stop_string: str | None = None) -> str:
    """BIG-bench's post-processing of a generation: cut at the stop string, then take the first
    match of the task's answer regex."""
    if stop_string:
        i = text.find(stop_string)
        if i > 0:
            text = text[: i + len(stop_string)]
    regex = output_regex if output_regex is not None else (None if stop_string else DEFAULT_OUTPUT_REGEX)
    if regex:
        m = re.search(regex, text)
        text = m.group(0) if m else ""
    return text


def exact_match(prediction: str, targets: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(t) for t in targets))


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean with the sample standard deviation (lm-evaluation-harness)."""
    n = len(values)
    if n < 2:
        return None
    arr = np.asarray(values, dtype=float)
    return float(arr.std(ddof=1) / math.sqrt(n))


def choice_metrics(logliks: Sequence[float], choices: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """`acc` is the score of the argmax choice (BIG-bench's multiple_choice_grade: 1/0 for a single
    correct answer); `acc_norm` picks by log-likelihood per character of the choice."""
    ll = np.asarray(logliks, dtype=float)
    lengths = np.asarray([max(1, len(c)) for c in choices], dtype=float)
    pred = int(np.argmax(ll))
    pred_norm = int(np.argmax(ll / lengths))
    return {"acc": float(scores[pred]), "acc_norm": float(scores[pred_norm]), "pred": pred,
            "pred_norm": pred_norm}


# ----------------------------------------------------------------------------- evaluation

@dataclass
class TaskResult:
    task: str
    shots: int
    n: int
    metrics: dict[str, float | None]
    truncated: int  # items whose prompt was cut from the left to fit the model's window
    samples: list[dict[str, Any]] = field(default_factory=list)


def _max_gen_tokens(lm: ScoringLM, task: Task) -> int:
    longest = max((len(lm.tok.encode(t)) for e in task.examples for t in e.targets), default=8)
    return min(128, longest + 8)


def _stop_strings(task: Task) -> list[str]:
    stops = []
    if task.separator.strip() == "" and task.separator:
        stops.append(task.separator if "\n" in task.separator else "\n")
    if "\n" not in "".join(stops):
        stops.append("\n")
    return stops


def evaluate_task(
    lm: ScoringLM,
    task: Task,
    shots: int,
    seed: int = 1234,
    limit: int | None = None,
    keep_samples: bool = False,
    progress: Callable[[int], None] | None = None,
    gen_tokens: int | None = None,
) -> TaskResult:
    """Score one task at one number of shots (`gen_tokens`: the generation budget, when the caller
    already knows it from the task's targets)."""
    positions = list(range(len(task.examples)))
    if limit is not None and limit < len(positions):
        rng = np.random.default_rng([int(seed), 0x5EED])
        positions = sorted(rng.choice(len(positions), size=limit, replace=False).tolist())
    if gen_tokens is None:
        gen_tokens = _max_gen_tokens(lm, task) if task.generative else 0
    stops = _stop_strings(task)
    per: dict[str, list[float]] = {}
    samples: list[dict[str, Any]] = []
    truncated = 0
    generative = task.generative and lm.can_generate
    for g in range(0, len(positions), ITEMS_PER_BATCH):
        group = positions[g: g + ITEMS_PER_BATCH]
        prompts = [build_prompt(task, pos, shots, seed) for pos in group]
        choice_scores: list[list] = [[] for _ in group]
        if task.multiple_choice:  # all choices of a group of items in one batched request
            flat = [(i, (prompts[i].text, task.target_delimiter + c))
                    for i, pos in enumerate(group) for c in task.examples[pos].choices or []]
            for (i, _), sc in zip(flat, lm.loglikelihood([r for _, r in flat])):
                choice_scores[i].append(sc)
        for i, pos in enumerate(group):
            ex, prompt = task.examples[pos], prompts[i]
            rec: dict[str, Any] = {"index": ex.index, "demos": prompt.demo_indices}
            trunc = False
            if task.multiple_choice:
                scores = choice_scores[i]
                trunc = any(sc.truncated for sc in scores)
                m = choice_metrics([sc.logprob for sc in scores], ex.choices or [], ex.scores or [])
                per.setdefault("acc", []).append(m["acc"])
                per.setdefault("acc_norm", []).append(m["acc_norm"])
                rec.update(loglikelihoods=[sc.logprob for sc in scores], pred=m["pred"], acc=m["acc"],
                           acc_norm=m["acc_norm"])
            if generative:
                text, t2 = lm.greedy_until(prompt.text, stops, gen_tokens)
                trunc = trunc or t2
                answer = extract_answer(text, task.output_regex, task.stop_string)
                em = exact_match(answer, ex.targets)
                per.setdefault("exact_match", []).append(em)
                rec.update(generation=text, answer=answer, exact_match=em)
            truncated += int(trunc)
            rec["truncated"] = trunc
            if keep_samples:
                rec["prompt"] = prompt.text
                samples.append(rec)
        if progress is not None:
            progress(len(group))
    metrics: dict[str, float | None] = {}
    for name, vals in per.items():
        metrics[name] = float(np.mean(vals))
        metrics[f"{name}_stderr"] = mean_stderr(vals)
    return TaskResult(task=task.name, shots=shots, n=len(positions), metrics=metrics,
                      truncated=truncated, samples=samples)


def _task_config(task: Task, key: str, k: int, gen_tokens: int, can_generate: bool) -> dict[str, Any]:
    """The task as lm-evaluation-harness describes a task in its results' `configs`."""
    metrics: list[tuple[str, str, bool]] = []
    if task.multiple_choice:
        metrics += [("acc", "mean", True), ("acc_norm", "mean", True)]
    if task.generative and can_generate:
        metrics.append(("exact_match", "mean", True))
    cfg: dict[str, Any] = {
        "task": key, "dataset_path": str(task.path), "test_split": "examples",
        "output_type": "multiple_choice" if task.multiple_choice else "generate_until",
        "description": task.task_prefix, "target_delimiter": task.target_delimiter,
        "fewshot_delimiter": task.separator, "num_fewshot": k, "metric_list": results_schema.metric_list(metrics),
        "repeats": 1, "metadata": {"version": 0, "format": task.format},
    }
    if task.generative and can_generate:
        cfg["generation_kwargs"] = {"until": _stop_strings(task), "max_gen_toks": gen_tokens, "do_sample": False}
    return cfg


def evaluate(
    lm: ScoringLM,
    tasks: Sequence[Task],
    shots: Sequence[int] = (0,),
    seed: int = 1234,
    limit: int | None = None,
    keep_samples: bool = False,
    progress: Callable[[int], None] | None = None,
    model_args: str | dict[str, Any] | None = None,
    model: str = "lmscale",
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate every task at every shot count; returns results in lm-evaluation-harness's schema
    (`lmscale.evaluation.results`).

    `results` has one entry per (task, shots): the task's name, suffixed `@{k}shot` when several
    shot counts were asked, with `acc,none`, `acc_norm,none`, `exact_match,none` and their
    standard errors. `lmscale.curve` holds the same numbers as task -> shots -> metric -> value,
    `lmscale.truncated` the number of prompts cut to fit the window. `model` and `model_args`
    name the model as the harness would (`lmscale`/`hf`, `{"pretrained": DIR}`).
    """
    shots = list(shots)
    if not shots or any(k < 0 for k in shots):
        raise LmscaleError(f"shots must be non-negative integers, got {shots}")
    if not lm.can_generate and all(t.generative and not t.multiple_choice for t in tasks):
        raise LmscaleError("encoders (BERT-style) cannot generate, and every task asked needs exact match")
    started = time.time()
    results: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    n_original: dict[str, int] = {}
    curve: dict[str, dict[str, Any]] = {}
    all_samples: dict[str, list] = {}
    truncated: dict[str, int] = {}
    unscored: dict[str, list[str]] = {}
    for task in tasks:
        gen_tokens = _max_gen_tokens(lm, task) if task.generative else 0
        for k in shots:
            r = evaluate_task(lm, task, k, seed=seed, limit=limit, keep_samples=keep_samples,
                              progress=progress, gen_tokens=gen_tokens)
            key = task.name if len(shots) == 1 else f"{task.name}@{k}shot"
            names = [m for m in r.metrics if not m.endswith("_stderr")]
            results[key] = results_schema.task_entry(
                key, r.n, {m: r.metrics[m] for m in names}, {m: r.metrics.get(f"{m}_stderr") for m in names})
            configs[key] = _task_config(task, key, k, gen_tokens, lm.can_generate)
            n_original[key] = len(task.examples)
            truncated[key] = r.truncated
            skipped = list(task.skipped_metrics)
            if task.generative and not lm.can_generate:
                skipped.append("exact_str_match")
            if skipped:
                unscored[key] = skipped
            curve.setdefault(task.name, {})[str(k)] = {m: r.metrics[m] for m in names}
            if keep_samples:
                all_samples[key] = r.samples
    if isinstance(model_args, str):
        model_args = {"pretrained": model_args}
    extra: dict[str, Any] = {
        "model_family": lm.family,
        "curve": curve,
        "truncated": truncated,
        "unscored_metrics": unscored,
        "num_fewshot": shots,
        "seed": seed,
        "tasks": {t.name: str(t.path) for t in tasks},
        "protocol": "GPT-3 in-context: k seeded demonstrations from the task's other examples; "
                    "acc = log-likelihood argmax, acc_norm = per-character, exact_match = greedy",
    }
    if keep_samples:
        extra["samples"] = all_samples
    run_config = {"batch_size": None, "device": device, "limit": limit, "bootstrap_iters": 0,
                  "gen_kwargs": None, "fewshot_seed": seed}
    return results_schema.from_entries(
        results, configs, n_original, model=model, model_args=model_args or {},
        model_name=str((model_args or {}).get("pretrained", lm.name)),
        max_length=lm.max_length, eot_token_id=lm.tok.eos_id, run_config=run_config, started=started,
        extra=extra)


def format_table(result: dict[str, Any]) -> list[list[str]]:
    """Rows of task, shots, metric, value, stderr, n, truncated for printing."""
    rows = []
    for key, entry in result["results"].items():
        k = result["n-shot"][key]
        task = key.rsplit("@", 1)[0] if key.endswith("shot") and "@" in key else key
        for metric in ("acc", "acc_norm", "exact_match"):
            v = entry.get(results_schema.metric_key(metric))
            if v is None:
                continue
            se = entry.get(results_schema.stderr_key(metric))
            rows.append([task, str(k), metric, f"{v:.4f}", se if isinstance(se, str) else f"{se:.4f}",
                         str(entry["sample_len"]), str(result["lmscale"]["truncated"][key])])
    return rows
