"""GPT: a causal language model (GPT-1 post-LN, GPT-2/3 pre-LN, or modern RoPE/RMSNorm/SwiGLU)."""
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
    add_positions,
    check_length,
    embed_tokens,
    init_weights,
    layer_inputs,
    make_norm,
    padding_mask,
    readout_multiplier,
)
from lmscale.models.kernels import cross_entropy, linear_cross_entropy
from lmscale.models.spec import family_spec


class DecoderModel(LMBase):
    """Token (+ position) embeddings, causal blocks, final norm (pre-LN), LM head.

    `labels` has the shape of `input_ids`; the model shifts internally (position t predicts
    labels[t+1]) and ignores -100, so a batch builder never has to shift. In a CPU training step
    with labels, `logits` is None (the loss is fused with the output projection).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not family_spec(cfg).causal:
            raise ValueError(f"DecoderModel needs a causal family (decoder), got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model) if cfg.position == "learned" else None
        self.rotary = Rotary.from_config(cfg) if cfg.position == "rope" else None
        self.rel_bias = RelativeBias(cfg, bidirectional=False) if cfg.position == "relative" else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else None
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.readout_mult = readout_multiplier(cfg)
        init_weights(self, cfg)

    def _embedding_params(self) -> list[nn.Parameter]:
        out = [self.tok_emb.weight]
        if self.pos_emb is not None:
            out.append(self.pos_emb.weight)
        if self.lm_head is not None:
            out.append(self.lm_head.weight)
        return out

    def _position_ids(
        self,
        attention_mask: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        past_len: int,
        k_len: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Positions of the new tokens: given, counted from the mask (left padding takes no
        positions), or past_len .. k_len - 1; learned positions are checked against their limit."""
        cfg = self.config
        if position_ids is None and attention_mask is None:
            check_length(cfg, k_len)
            return torch.arange(past_len, k_len, device=device)[None]
        from_mask = position_ids is None
        if from_mask:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        if cfg.position == "learned" and position_ids.numel():
            if position_ids.device.type == "cpu":
                check_length(cfg, int(position_ids.max()) + 1)
            elif from_mask:
                # no host sync on an accelerator: positions from the mask stay below k_len
                check_length(cfg, k_len)
        return position_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        past_key_values: Optional[list[tuple[torch.Tensor, ...]]] = None,
        use_cache: bool = False,
        position_ids: Optional[torch.Tensor] = None,
    ) -> ModelOutput:
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        k_len = past_len + input_ids.shape[1]
        if attention_mask is not None and attention_mask.shape[-1] != k_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens but past + input is {k_len}")
        attention_mask = padding_mask(attention_mask)
        position_ids = self._position_ids(attention_mask, position_ids, past_len, k_len, input_ids.device)

        x = embed_tokens(self.tok_emb, input_ids, self.config)
        x = self.drop(add_positions(x, position_ids, self.config, self.pos_emb))
        mask, is_causal, rope = layer_inputs(
            x, position_ids, attention_mask, True, self.rotary, self.rel_bias, past_len
        )

        presents = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            x, present = layer(x, mask, is_causal, rope, past, use_cache)
            if use_cache:
                presents.append(present)
        if self.norm is not None:
            x = self.norm(x)
        h = x * self.readout_mult if self.readout_mult is not None else x  # muP readout
        logits = loss = None
        if labels is not None:
            shifted = torch.full_like(labels, -100)
            shifted[:, :-1] = labels[:, 1:]
            if self._fused_loss(h):
                loss = linear_cross_entropy(h, self._output_weight(), None, shifted)
            else:
                logits = self._lm_logits(h)
                loss = cross_entropy(logits, shifted)
        else:
            logits = self._lm_logits(h)
        return ModelOutput(logits=logits, loss=loss, hidden_states=x, past_key_values=presents)
