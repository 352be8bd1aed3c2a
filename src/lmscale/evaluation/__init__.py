"""Measuring pretrained models: perplexity (token, word, bits per byte; pseudo-perplexity for
encoders) and few-shot in-context evaluation of BIG-bench tasks."""
from __future__ import annotations

from lmscale.evaluation.fewshot import build_prompt, evaluate, evaluate_task
from lmscale.evaluation.lm import load_hf_causal_lm, scoring_lm
from lmscale.evaluation.perplexity import PerplexityResult, perplexity
from lmscale.evaluation.tasks import load_tasks

__all__ = ["perplexity", "PerplexityResult", "evaluate", "evaluate_task", "build_prompt",
           "load_tasks", "scoring_lm", "load_hf_causal_lm"]
