"""Task heads on top of a pretrained body, one per family, as in the lecture.

- encoder: `[CLS]` representation (or the mean over real tokens, or BERT's pooler) -> Linear;
- decoder: the hidden state of the last non-padding token h_T, y = A·h_T + b (left or right
  padding both work: the index comes from the attention mask, not from the length);
- encoder-decoder: mean of the encoder states -> Linear (text-to-text needs no new head).

The head is randomly initialised; the body keeps its weights and, unless frozen (a linear
probe), trains with it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lmscale.models.spec import family_spec


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, for right padding (1 1 1 0 0) and left (0 0 1 1 1)."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def masked_mean(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def body_features(body: nn.Module, family: str, pooling: str, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One vector per sequence from the body's final hidden states, read as the family's head says."""
    head = family_spec(family).head
    if head == "encoder-decoder":
        h = body.encode(input_ids, attention_mask)
        return h[:, 0] if pooling == "first" else masked_mean(h, attention_mask)
    if head == "cls":
        tt = token_type_ids if getattr(body.config, "type_vocab_size", 0) else None
        h = body.encode(input_ids, attention_mask, tt)
        if pooling == "pooler":
            if getattr(body, "pooler", None) is None:
                raise ValueError("pooling='pooler' needs a model with a pooler (model.pooler=true)")
            return torch.tanh(body.pooler(h[:, 0]))
        return h[:, 0] if pooling == "cls" else masked_mean(h, attention_mask)
    h = decoder_hidden_states(body, input_ids, attention_mask)
    idx = last_token_index(attention_mask)
    return h[torch.arange(h.shape[0], device=h.device), idx]


def decoder_hidden_states(body: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states of a decoder without the vocabulary projection, which would cost
    more than the whole body of a tiny model and is not used by a classification head."""
    body._lm_logits = _no_logits
    try:
        return body(input_ids, attention_mask=attention_mask).hidden_states
    finally:
        del body._lm_logits


def _no_logits(h: torch.Tensor) -> None:
    return None


class SequenceHead(nn.Module):
    """Body + pooling + dropout + Linear. `forward` returns logits [B, num_outputs].

    `n_views` groups consecutive rows of the batch: 2 views of a symmetric pair have their
    representations added (GPT similarity); K views of a multiple-choice example each get one
    score and the K scores become the logits of a softmax over the choices.
    """

    def __init__(self, body: nn.Module, family: str, num_outputs: int, pooling: Optional[str] = None,
                 dropout: float = 0.1, multiple_choice: bool = False):
        super().__init__()
        spec = family_spec(family)
        pooling = pooling or spec.default_pooling
        if pooling not in spec.poolings:
            raise ValueError(f"pooling {pooling!r} is not available for {family} models "
                             f"(choose from {', '.join(spec.poolings)})")
        self.body = body
        self.family = family
        self.pooling = pooling
        self.multiple_choice = multiple_choice
        self.dropout = nn.Dropout(dropout)
        d = body.config.d_model
        self.head = nn.Linear(d, 1 if multiple_choice else num_outputs)
        nn.init.normal_(self.head.weight, std=getattr(body.config, "init_std", 0.02))
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: Optional[torch.Tensor] = None, n_views: int = 1) -> torch.Tensor:
        f = body_features(self.body, self.family, self.pooling, input_ids, attention_mask, token_type_ids)
        if n_views > 1 and not self.multiple_choice:
            f = f.view(-1, n_views, f.shape[-1]).sum(dim=1)
        return f

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None, n_views: int = 1) -> torch.Tensor:
        f = self.features(input_ids, attention_mask, token_type_ids, n_views)
        logits = self.head(self.dropout(f))
        if self.multiple_choice:
            logits = logits.view(-1, n_views)
        return logits
