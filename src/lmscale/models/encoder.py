"""BERT: a bidirectional encoder with a masked-LM head, pooler and next-sentence head."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lmscale.config import ModelConfig
from lmscale.models.base import LMBase, ModelOutput
from lmscale.models.blocks import (
    Block,
    RelativeBias,
    Rotary,
    activation_fn,
    add_positions,
    check_length,
    embed,
    embed_tokens,
    host_item,
    init_weights,
    layer_inputs,
    make_norm,
    padding_mask,
)
from lmscale.models.kernels import cross_entropy, linear_cross_entropy
from lmscale.models.spec import family_spec


class MLMHead(nn.Module):
    """(dense + activation + norm) then the vocabulary projection (tied or not) plus a bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.d_model) if cfg.mlm_transform else None
        self.act = activation_fn(cfg.activation)
        self.norm = make_norm(cfg) if cfg.mlm_transform else None
        self.decoder = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, tied_weight: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            h = self.norm(self.act(self.transform(h)))
        w = self.decoder.weight if self.decoder is not None else tied_weight
        return torch.nn.functional.linear(h, w, self.bias)


class EncoderModel(LMBase):
    """Embeddings (+ segment, + embedding norm), bidirectional blocks, MLM head, pooler, NSP.

    With `labels`, the MLM head runs only where labels != -100 (about 15% of positions, as
    cramming does) and `logits` is [n_selected, vocab] (None in a CPU training step, where the
    loss is fused with the vocabulary projection); without labels it covers every position.
    In training mode with labels, the last layer itself runs only at the labelled positions (and
    [CLS] when there is a pooler): nothing else reads its output, so the loss and gradients are
    unchanged, and `hidden_states` is None.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if family_spec(cfg).head != "cls":
            raise ValueError(f"EncoderModel needs an encoder family (encoder), got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model) if cfg.position == "learned" else None
        self.seg_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.emb_norm = make_norm(cfg) if cfg.embedding_norm else None
        self.rotary = Rotary.from_config(cfg) if cfg.position == "rope" else None
        self.rel_bias = RelativeBias(cfg, bidirectional=True) if cfg.position == "relative" else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else None
        self.mlm = MLMHead(cfg)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        self.nsp = nn.Linear(cfg.d_model, 2) if cfg.nsp_head else None
        init_weights(self, cfg)

    def _embedding_params(self) -> list[nn.Parameter]:
        out = [self.tok_emb.weight]
        for m in (self.pos_emb, self.seg_emb, self.mlm.decoder):
            if m is not None:
                out.append(m.weight)
        return out

    def _resize_extra(self, n: int) -> None:
        old = self.mlm.bias
        new = torch.zeros(n, device=old.device, dtype=old.dtype)
        k = min(n, old.numel())
        new[:k] = old.detach()[:k]
        self.mlm.bias = nn.Parameter(new)
        if self.mlm.decoder is not None:
            self.mlm.decoder = self._resize_linear(self.mlm.decoder, n)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, d]."""
        return self._layers(*self._embed(input_ids, attention_mask, token_type_ids, position_ids))

    def _layers(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor],
        rope: Optional[tuple[torch.Tensor, torch.Tensor]],
        rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Every layer and the final norm; with `rows`, the last layer runs at those rows only."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, mask, False, rope, rows=rows if i == last else None)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def _embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        token_type_ids: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """Embedded input, the attention mask every layer shares, rotary tables (or None)."""
        cfg = self.config
        t = input_ids.shape[1]
        check_length(cfg, t)
        attention_mask = padding_mask(attention_mask)
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)[None]
        x = add_positions(embed_tokens(self.tok_emb, input_ids, cfg), position_ids, cfg, self.pos_emb)
        if self.seg_emb is not None:
            if token_type_ids is None:
                x = x + self.seg_emb.weight[0]
            else:
                x = x + embed(self.seg_emb, token_type_ids)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.drop(x)
        mask, _, rope = layer_inputs(x, position_ids, attention_mask, False, self.rotary, self.rel_bias)
        return x, mask, rope

    def _encode_rows(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        token_type_ids: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        keep: torch.Tensor,
    ) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Final hidden states only where `keep` [B, T] is true, the last layer run at those
        rows alone (`Block(..., rows=)`). Returns (hidden [B, M, d], rows [B, M] in increasing
        position order, valid [B, M]); rows past a sequence's own count are filler positions
        whose outputs are ignored. None when nothing is kept or there is no layer."""
        counts = keep.sum(1)
        m = int(host_item(counts.max())) if keep.numel() else 0
        if m == 0 or len(self.layers) == 0:
            return None
        t = keep.shape[1]
        pos = torch.arange(t, device=keep.device)
        rows = torch.where(keep, pos, pos + t).sort(dim=1).indices[:, :m]
        valid = torch.arange(m, device=keep.device)[None] < counts[:, None]
        x = self._layers(*self._embed(input_ids, attention_mask, token_type_ids, position_ids), rows=rows)
        return x, rows, valid

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm(hidden, self.tok_emb.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        next_sentence_label: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> ModelOutput:
        loss = None
        sparse = None
        if labels is not None and self.training:
            keep = labels != -100
            if self.pooler is not None:
                keep = keep.clone()
                keep[:, 0] = True
            sparse = self._encode_rows(input_ids, attention_mask, token_type_ids, position_ids, keep)
        if sparse is not None:
            x, rows, valid = sparse
            row_labels = labels.gather(1, rows)
            selected = valid & (row_labels != -100)
            picked, targets = x[selected], row_labels[selected]
            first = x[:, 0]
            x = None
        else:
            x = self.encode(input_ids, attention_mask, token_type_ids, position_ids)
            first = x[:, 0]
            if labels is not None:
                selected = labels != -100
                picked, targets = x[selected], labels[selected]
        if labels is not None:
            if self._fused_loss(picked):
                logits = None
                h = picked
                if self.mlm.transform is not None:
                    h = self.mlm.norm(self.mlm.act(self.mlm.transform(h)))
                w = self.mlm.decoder.weight if self.mlm.decoder is not None else self.tok_emb.weight
                loss = linear_cross_entropy(h, w, self.mlm.bias, targets)
            else:
                logits = self.mlm_logits(picked)
                loss = cross_entropy(logits, targets)
        else:
            logits = self.mlm_logits(x)
        pooled = nsp_logits = None
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(first))
            if self.nsp is not None:
                nsp_logits = self.nsp(pooled)
                if next_sentence_label is not None:
                    nsp_loss = cross_entropy(nsp_logits, next_sentence_label)
                    loss = nsp_loss if loss is None else loss + nsp_loss
        return ModelOutput(logits=logits, loss=loss, hidden_states=x, pooled=pooled, nsp_logits=nsp_logits)
