"""Evaluation results in lm-evaluation-harness's schema.

The harness writes one JSON object per run (`results_<date>.json`), and the tools that read
harness results (its own table printer `lm_eval.utils.make_table`, leaderboards, trackers) look
for these keys:

- `results`: task -> {"name", "alias", "sample_len", "METRIC,FILTER": value,
  "METRIC_stderr,FILTER": value or "N/A"}; lmscale applies no filters, so FILTER is `none`;
- `group_subtasks`, `configs` (task -> the task's configuration: output type, delimiters,
  `num_fewshot`, `metric_list`, `metadata.version`), `versions`, `n-shot`, `higher_is_better`
  (task -> metric -> bool), `n-samples` (task -> {"original", "effective"});
- `config`: the model and run settings (`model`, `model_args`, `limit`, seeds, ...);
- run metadata: `date`, `model_source`, `model_name`, `max_length`, `eot_token_id`,
  `total_evaluation_time_seconds` (a string, as the harness writes it).

What lmscale measures beyond the harness (prompts cut to fit the window, the in-context learning
curve, per-item records, perplexity's window and stride) sits under one extra top-level key,
`lmscale`, which harness readers ignore.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

FILTER = "none"
NOT_AVAILABLE = "N/A"  # what the harness writes for a standard error it cannot compute


def metric_key(metric: str, filter_name: str = FILTER) -> str:
    return f"{metric},{filter_name}"


def stderr_key(metric: str, filter_name: str = FILTER) -> str:
    return f"{metric}_stderr,{filter_name}"


def task_entry(name: str, sample_len: int, metrics: Mapping[str, float | None],
               stderrs: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """One `results` entry: the task's name and alias, its number of documents, and every metric
    with its standard error (`N/A` where there is none) under `METRIC,none` keys."""
    entry: dict[str, Any] = {"name": name, "alias": name, "sample_len": int(sample_len)}
    for m, v in metrics.items():
        entry[metric_key(m)] = v
        se = (stderrs or {}).get(m)
        entry[stderr_key(m)] = NOT_AVAILABLE if se is None else se
    return entry


def metric_list(metrics: Iterable[tuple[str, str, bool]]) -> list[dict[str, Any]]:
    """A task config's `metric_list` from (metric, aggregation, higher_is_better)."""
    return [{"metric": m, "aggregation": agg, "higher_is_better": hib} for m, agg, hib in metrics]


def from_entries(results: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]],
                 n_original: Mapping[str, int], *, model: str, model_args: Mapping[str, Any],
                 model_name: str, max_length: int | None, eot_token_id: int | None,
                 run_config: Mapping[str, Any], started: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The whole results object from per-task entries and configs (same keys)."""
    higher = {t: {d["metric"]: d["higher_is_better"] for d in c["metric_list"]} for t, c in configs.items()}
    return {
        "results": results,
        "group_subtasks": {},
        "configs": configs,
        "versions": {t: c.get("metadata", {}).get("version", 0) for t, c in configs.items()},
        "n-shot": {t: int(c.get("num_fewshot", 0)) for t, c in configs.items()},
        "higher_is_better": higher,
        "n-samples": {t: {"original": int(n_original[t]), "effective": int(results[t]["sample_len"])}
                      for t in results},
        "config": {"model": model, "model_args": dict(model_args), **run_config},
        "date": started,
        "model_source": model,
        "model_name": model_name,
        "max_length": max_length,
        "eot_token_id": eot_token_id,
        "total_evaluation_time_seconds": str(time.time() - started),
        "lmscale": extra,
    }
