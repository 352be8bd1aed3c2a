"""What every model family shares: the output record, parameter accounting, vocabulary resizing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from lmscale.config import ModelConfig
from lmscale.models.kernels import fused_loss_applies


@dataclass
class ModelOutput:
    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None
    past_key_values: Optional[list[tuple[torch.Tensor, ...]]] = None
    encoder_hidden_states: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    nsp_logits: Optional[torch.Tensor] = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class LMBase(nn.Module):
    """Common behaviour. Subclasses return their embedding-type parameters from `_embedding_params`
    (token, learned position, segment, untied output projection); everything else is
    non-embedding, matching `ModelConfig.parameter_counts`."""

    config: ModelConfig
    tok_emb: nn.Embedding

    def _embedding_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def num_parameters(self) -> dict[str, int]:
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        emb_ids: set[int] = set()
        embedding = 0
        for p in self._embedding_params():
            if id(p) not in emb_ids:
                emb_ids.add(id(p))
                embedding += p.numel()
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def _resize_embedding(self, old: nn.Embedding, n: int) -> nn.Embedding:
        new = nn.Embedding(n, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        nn.init.normal_(new.weight, 0.0, self.config.init_std)
        k = min(n, old.num_embeddings)
        with torch.no_grad():
            new.weight[:k] = old.weight[:k]
        return new

    def _resize_linear(self, old: nn.Linear, n: int) -> nn.Linear:
        new = nn.Linear(old.in_features, n, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        nn.init.normal_(new.weight, 0.0, self.config.init_std)
        k = min(n, old.out_features)
        with torch.no_grad():
            new.weight[:k] = old.weight[:k]
            if new.bias is not None:
                new.bias.zero_()
                new.bias[:k] = old.bias[:k]
        return new

    def resize_token_embeddings(self, n: int) -> nn.Embedding:
        """Grow (fine-tuning adds tokens) or shrink the vocabulary; new rows are freshly
        initialised, existing rows keep their trained values, tied heads follow."""
        self.tok_emb = self._resize_embedding(self.tok_emb, n)
        if getattr(self, "lm_head", None) is not None:
            self.lm_head = self._resize_linear(self.lm_head, n)
        self._resize_extra(n)
        self.config.vocab_size = n
        return self.tok_emb

    def _resize_extra(self, n: int) -> None:
        pass

    def _output_weight(self) -> torch.Tensor:
        return self.lm_head.weight if getattr(self, "lm_head", None) is not None else self.tok_emb.weight

    def _fused_loss(self, h: torch.Tensor) -> bool:
        """Training steps on CPU fuse the output projection into the loss; `logits` is then None
        (the [B, T, vocab] tensor is the largest in a small model's step and the loss does not
        need it). Evaluation, inference and GPU training return logits as usual."""
        return self.training and fused_loss_applies(h)

    def _lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        if getattr(self, "lm_head", None) is not None:
            return self.lm_head(h)
        return torch.nn.functional.linear(h, self.tok_emb.weight)
