"""The built-in families: BERT-style encoder, GPT-style decoder, T5-style encoder-decoder.

Each is a `FamilySpec` over its model class and its `transformers` adapters; an extra
architecture registers its own spec the same way (see docs/adding-a-model.md).
"""
from __future__ import annotations

from lmscale.models.decoder import DecoderModel
from lmscale.models.encdec import EncoderDecoderModel
from lmscale.models.encoder import EncoderModel
from lmscale.models.hf import bert, gpt2, gpt_neox, llama, openai_gpt, t5
from lmscale.models.spec import FamilySpec, register_family

ENCODER = register_family(FamilySpec(
    name="encoder", model_class=EncoderModel, objective="mlm", tokenizer_kind="wordpiece", causal=False,
    head="cls", scoring="pseudo-likelihood", poolings=("cls", "mean", "pooler"),
    hf_adapters=(bert.ADAPTER,), description="bidirectional encoder (BERT)",
))
DECODER = register_family(FamilySpec(
    name="decoder", model_class=DecoderModel, objective="causal", tokenizer_kind="bpe", causal=True,
    head="last_token", scoring="causal", poolings=("last",),
    hf_adapters=(gpt2.ADAPTER, openai_gpt.ADAPTER, llama.ADAPTER, gpt_neox.ADAPTER),
    description="causal decoder (GPT)",
))
ENCODER_DECODER = register_family(FamilySpec(
    name="encoder-decoder", model_class=EncoderDecoderModel, objective="span", tokenizer_kind="unigram",
    causal=False, is_encoder_decoder=True, head="encoder-decoder", scoring="seq2seq", poolings=("mean", "first"),
    hf_adapters=(t5.ADAPTER,), description="encoder-decoder with cross-attention (T5)",
))
