"""lmscale checkpoints inside lm-evaluation-harness: the `lmscale` model type.

    pip install 'lmscale[harness]'
    lmscale-lm-eval run --model lmscale --model_args pretrained=runs/gpt --tasks lambada_openai
    python -m lmscale.evaluation.harness run --model lmscale --model_args pretrained=runs/gpt ...

The harness finds models in its own registry and loads no plugins, so `lmscale-lm-eval` (or
`python -m lmscale.evaluation.harness`) registers `lmscale` and then runs the harness's own command
line with every argument unchanged. From Python, importing this module registers it:

    import lm_eval, lmscale.evaluation.harness
    lm_eval.simple_evaluate(model="lmscale", model_args="pretrained=runs/gpt", tasks=[...])

`pretrained` is anything `lmscale.load` takes: an lmscale model directory, a training run (its best
checkpoint) or a `transformers` directory. Requests are answered by the same scorers as
`lmscale eval fewshot` (`lmscale.evaluation.lm`), so a task's prompts score the same through
either door:

- `loglikelihood`: decoders score the continuation after the context (an empty context starts
  from the end-of-text token, as the harness's own models do); encoder-decoders score it as the
  decoder's target after the first sentinel, the context given to the encoder; encoders give the
  pseudo-log-likelihood;
- `loglikelihood_rolling`: decoders use the harness's own disjoint rolling windows of the model's
  context length (every token predicted once, the first from the end-of-text token);
  encoder-decoders and encoders the windows of `lmscale eval perplexity`;
- `generate_until`: greedy (or sampled with `do_sample`, `temperature`, `top_p`, `top_k`) until a
  stop string, the end-of-text token or `max_gen_toks` (capped to fit a learned-position model's
  window).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmscale.errors import LmscaleError
from lmscale.evaluation.lm import ScoringLM, scoring_lm
from lmscale.evaluation.perplexity import default_stride, encoder_pll, seq2seq_nll
from lmscale.inference.generate import context_limit
from lmscale.inference.sampling import SamplingConfig
from lmscale.models.loading import load
from lmscale.training.device import resolve_device

try:
    import lm_eval.models  # noqa: F401  the harness's own models, registered before ours (lazily, cheap)
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
except ImportError:  # the adapter is only importable with the harness installed
    raise LmscaleError("the lm-evaluation-harness adapter needs lm-eval: pip install 'lmscale[harness]'") from None

MODEL_NAME = "lmscale"
DEFAULT_MAX_GEN_TOKS = 256


def _as_int(value: Any, name: str, default: int) -> int:
    if value is None or value == "auto" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LmscaleError(f"--model_args {name}={value!r}: expected an integer") from None


@dataclass(frozen=True)
class TokenizerInfo:
    """The special tokens the harness records in its results (`tokenizer_eos_token`, ...)."""

    pad_token: str | None
    pad_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    bos_token: str | None
    bos_token_id: int | None

    @classmethod
    def of(cls, tok: Any) -> "TokenizerInfo":
        def named(i: int | None) -> tuple[str | None, int | None]:
            return (None, None) if i is None else (tok.id_to_token(i), i)

        return cls(*named(getattr(tok, "pad_id", None)), *named(getattr(tok, "eos_id", None)),
                   *named(getattr(tok, "bos_id", None)))


class LmscaleLM(LM):
    """An lmscale checkpoint as an lm-evaluation-harness model (`--model lmscale`)."""

    def __init__(self, pretrained: str, device: str | None = None, batch_size: Any = None,
                 max_batch_size: Any = None, batch_tokens: Any = 2048, max_gen_toks: Any = DEFAULT_MAX_GEN_TOKS,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise LmscaleError(f"--model_args: unknown argument(s) {', '.join(sorted(unknown))} for --model lmscale "
                               "(known: pretrained, device, batch_size, batch_tokens, max_gen_toks)")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"  # the harness's default device is cuda; its own models fall back the same way
        device = str(resolve_device(device))
        model, tok = load(pretrained, device=device)
        if tok is None:
            raise LmscaleError(f"{pretrained}: no tokenizer saved with the model")
        max_batch = _as_int(batch_size, "batch_size", 32)
        self.scorer: ScoringLM = scoring_lm(model, tok, batch_tokens=_as_int(batch_tokens, "batch_tokens", 2048),
                                            max_batch=max_batch, name=f"lmscale:{Path(str(pretrained)).name}")
        self.max_gen_toks = _as_int(max_gen_toks, "max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        self.tokenizer = TokenizerInfo.of(tok)
        self._device = device

    # ------------------------------------------------------------------ what the harness reads
    @property
    def eot_token_id(self) -> int | None:
        return self.scorer.tok.doc_separator_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def tokenizer_name(self) -> str:
        return self.scorer.name

    # ------------------------------------------------------------------ requests
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        scores = self.scorer.loglikelihood(pairs)
        out = [(s.logprob, s.greedy) for s in scores]
        for pair, res in zip(pairs, out):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            (text,) = r.args
            ll = self._rolling(text)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
            out.append(ll)
        return out

    def _rolling(self, text: str) -> float:
        sc = self.scorer
        ids = sc.tok.encode(text)
        if not ids:
            return 0.0
        W = sc.max_length
        if sc.scoring == "causal":
            prefix = sc.tok.doc_separator_id
            if prefix is None:
                raise LmscaleError("rolling log-likelihood needs an end-of-text token to predict the first token from")
            windows = [lm_eval_utils.make_disjoint_window(w)
                       for w in lm_eval_utils.get_rolling_token_windows(ids, prefix, W, 1)]
            return float(sum(s.logprob for s in sc.loglikelihood_tokens(windows)))
        if sc.scoring == "seq2seq":
            nll, _, _ = seq2seq_nll(sc.model, sc.tok, ids, W, default_stride(sc.family, W), None)
        else:
            nll, _, _ = encoder_pll(sc.model, sc.tok, ids, W, default_stride(sc.family, W), sc.max_batch, None)
        return -float(nll)

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = []
        limit = context_limit(self.scorer.model)
        for r in requests:
            context, gen_kwargs = r.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = _as_int(kw.pop("max_gen_toks", None), "max_gen_toks", self.max_gen_toks)
            if limit is not None:
                max_new = max(1, min(max_new, limit - 1))
            text, _ = self.scorer.greedy_until(context, until, max_new, self._sampling(kw))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    @staticmethod
    def _sampling(kw: dict[str, Any]) -> SamplingConfig | None:
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0) or 0.0)
        if not do_sample or temperature <= 0.0:
            return None
        return SamplingConfig(temperature=temperature, top_p=float(kw.pop("top_p", 1.0) or 1.0),
                              top_k=int(kw.pop("top_k", 0) or 0), seed=kw.pop("seed", None))


def register() -> None:
    """Make `--model lmscale` known to the harness (idempotent)."""
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=LmscaleLM)


register()


def main(argv: list[str] | None = None) -> None:
    """The harness's command line with `--model lmscale` registered (`lmscale-lm-eval`)."""
    from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415  optional dependency (lmscale[harness])

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except LmscaleError as exc:  # a checkpoint or input lmscale refuses: one line, as every lmscale command
        print(f"lmscale-lm-eval: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
