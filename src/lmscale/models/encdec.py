"""Encoder-decoder: T5 (v1.0 and v1.1 conventions) and the original post-LN Transformer."""
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


class Stack(nn.Module):
    """The blocks of one side (encoder or decoder) with their own positions and final norm.

    With `position == "relative"`, the stack owns one T5 bias table shared by all its layers.
    """

    def __init__(self, cfg: ModelConfig, n_layers: int, is_decoder: bool) -> None:
        super().__init__()
        self.config = cfg
        self.is_decoder = is_decoder
        self.pos_emb = nn.Embedding(cfg.max_positions, cfg.d_model) if cfg.position == "learned" else None
        self.rotary = Rotary.from_config(cfg) if cfg.position == "rope" else None
        self.rel_bias = RelativeBias(cfg, bidirectional=not is_decoder) if cfg.position == "relative" else None
        self.layers = nn.ModuleList(Block(cfg, cross=is_decoder) for _ in range(n_layers))
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[list[tuple[torch.Tensor, ...]]] = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Optional[list[tuple[torch.Tensor, ...]]]]:
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        k_len = past_len + x.shape[1]
        check_length(self.config, k_len, "decoder input" if self.is_decoder else "input")
        positions = torch.arange(past_len, k_len, device=x.device)[None]
        x = self.drop(add_positions(x, positions, self.config, self.pos_emb))
        mask, is_causal, rope = layer_inputs(
            x, positions, padding_mask(attention_mask), self.is_decoder, self.rotary, self.rel_bias, past_len
        )
        memory_mask = padding_mask(memory_mask)
        cross_mask = memory_mask.bool()[:, None, None, :] if memory_mask is not None else None
        presents = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            x, present = layer(x, mask, is_causal, rope, past, use_cache, memory, cross_mask)
            if use_cache:
                presents.append(present)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x), presents


class EncoderDecoderModel(LMBase):
    """Shared token embedding, encoder stack, decoder stack with cross-attention, LM head.

    T5 v1.0 (relative positions, tied head) scales the decoder output by d_model**-0.5 before the
    tied head; v1.1 has an untied head and no scaling (`transformers` 5 ties its head and leaves the
    scaling off: `model.scale_output` false). The original Transformer (post-LN,
    sinusoidal) multiplies embeddings by sqrt(d_model) instead (`embedding_scale`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not family_spec(cfg).is_encoder_decoder:
            raise ValueError(f"EncoderDecoderModel needs an encoder-decoder family, got {cfg.family!r}")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layers, is_decoder=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, is_decoder=True)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.output_scale = cfg.d_model ** -0.5 if cfg.output_scaled else None
        mult = readout_multiplier(cfg)  # muP readout, folded into the output scale
        if mult is not None:
            self.output_scale = mult if self.output_scale is None else self.output_scale * mult
        init_weights(self, cfg)

    def _embedding_params(self) -> list[nn.Parameter]:
        out = [self.tok_emb.weight]
        for m in (self.encoder.pos_emb, self.decoder.pos_emb, self.lm_head):
            if m is not None:
                out.append(m.weight)
        return out

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.tok_emb, ids, self.config)

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder hidden states [B, S, d]; pass them back as `encoder_hidden_states` to decode
        repeatedly without re-encoding."""
        x, _ = self.encoder(self._embed(input_ids), attention_mask)
        return x

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs: start token, then labels[:-1]; -100 becomes pad."""
        cfg = self.config
        out = torch.empty_like(labels)
        out[:, 0] = cfg.decoder_start_token_id
        out[:, 1:] = labels[:, :-1]
        return out.masked_fill(out == -100, cfg.pad_token_id)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.Tensor] = None,
        decoder_attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        past_key_values: Optional[list[tuple[torch.Tensor, ...]]] = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        need_memory = not past_key_values
        if encoder_hidden_states is None and need_memory:
            if input_ids is None:
                raise ValueError("give input_ids or encoder_hidden_states")
            encoder_hidden_states = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        h, presents = self.decoder(
            self._embed(decoder_input_ids),
            decoder_attention_mask,
            memory=encoder_hidden_states,
            memory_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        scaled = h * self.output_scale if self.output_scale is not None else h
        logits = loss = None
        if labels is not None and self._fused_loss(scaled):
            loss = linear_cross_entropy(scaled, self._output_weight(), None, labels)
        else:
            logits = self._lm_logits(scaled)
            loss = cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(
            logits=logits, loss=loss, hidden_states=h, past_key_values=presents,
            encoder_hidden_states=encoder_hidden_states,
        )
