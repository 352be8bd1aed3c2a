"""A body with a sequence-classification head, exported as `transformers`' own head class.

`BertForSequenceClassification` reads BERT's pooler (tanh dense on `[CLS]`) into `classifier`;
`GPT2ForSequenceClassification` applies `score` (no bias) to the last non-padding token's final
hidden state. The same functions as ours where the head maps: an encoder fine-tuned with
`--pooling pooler`, a decoder with its last-token head. A decoder head's bias has no place in
`score`, so it is folded into the final LayerNorm's bias (`b' = b + pinv(W) c`, exact when the
head's rows are independent, as for fewer classes than `d_model`); a regression head's target
scaling is folded into the weights. Anything else is refused with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from lmscale.errors import CheckpointError
from lmscale.io import atomic_directory, atomic_write_json
from lmscale.models.hf import hf_state_dict
from lmscale.models.hf.common import write_hf_tokenizer

__all__ = ["to_hf_classifier"]


def _classifier_config(base: dict, labels: Sequence[str], regression: bool) -> dict:
    names = list(labels) if labels else []
    n = 1 if regression else len(names)
    c = {**base, "num_labels": n,
         "problem_type": "regression" if regression else "single_label_classification"}
    if not regression:
        c["id2label"] = {str(i): name for i, name in enumerate(names)}
        c["label2id"] = {name: i for i, name in enumerate(names)}
    return c


def _fold_bias(norm_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A LayerNorm bias b' with W b' = W b + c, so `score` without a bias computes W h + c."""
    w, c = weight.double(), bias.double()
    shift = torch.linalg.pinv(w) @ c
    if not torch.allclose(w @ shift, c, atol=1e-6 * max(1.0, float(c.abs().max()))):
        raise CheckpointError("GPT2ForSequenceClassification has no bias in `score`, and this head's bias cannot "
                              "be moved into the final LayerNorm (its rows are not independent)")
    return (norm_bias.double() + shift).to(norm_bias.dtype)


def to_hf_classifier(body: nn.Module, tokenizer: Any, weight: torch.Tensor, bias: torch.Tensor,
                     out_dir: str | Path, *, pooling: str, labels: Sequence[str], regression: bool = False,
                     target_mean: float = 0.0, target_std: float = 1.0, pad_token_id: Optional[int] = None) -> str:
    """Write `body` + the linear head (`weight` [num_outputs, d_model], `bias`) as a `transformers`
    sequence classifier; returns the architecture name."""
    arch, base, tensors = hf_state_dict(body)
    weight, bias = weight.detach().cpu().float(), bias.detach().cpu().float()
    if regression:  # ours predicts (y - mean) / std; transformers' regression head predicts y
        weight, bias = weight * target_std, bias * target_std + target_mean
    if arch in ("BertForMaskedLM", "BertForPreTraining"):
        if pooling != "pooler":
            raise CheckpointError(
                f"BertForSequenceClassification reads the pooler (tanh dense on [CLS]); this model was "
                f"fine-tuned with pooling={pooling!r}: fine-tune with --pooling pooler (a body with "
                "model.pooler true) to export it")
        out_arch = "BertForSequenceClassification"
        state = {k: v for k, v in tensors.items() if k.startswith("bert.")}
        state["classifier.weight"], state["classifier.bias"] = weight.contiguous(), bias.contiguous()
    elif arch == "GPT2LMHeadModel":
        out_arch = "GPT2ForSequenceClassification"
        state = {k: v for k, v in tensors.items() if k.startswith("transformer.")}
        state["score.weight"] = weight.contiguous()
        state["transformer.ln_f.bias"] = _fold_bias(state["transformer.ln_f.bias"], weight, bias).contiguous()
    else:
        raise CheckpointError(
            f"the body exports as {arch}, and lmscale writes sequence classifiers only as "
            "BertForSequenceClassification (encoder, post-LN, --pooling pooler) and GPT2ForSequenceClassification "
            "(pre-LN decoder with learned positions); use `lmscale predict` for this model")
    base = {k: v for k, v in base.items() if k != "architectures"}
    config = _classifier_config(base, labels, regression)
    config["architectures"] = [out_arch]
    if pad_token_id is not None:
        config["pad_token_id"] = int(pad_token_id)
    with atomic_directory(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, body.config)
    return out_arch
