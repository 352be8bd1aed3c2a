"""Tokenizers for the three model families (byte-level BPE, WordPiece, Unigram) and the classic BPE explainer."""
from __future__ import annotations

from lmscale.tokenization.explain import explain_bpe, explain_chars, explain_words, format_explanation
from lmscale.tokenization.tokenizer import Tokenizer, load_tokenizer
from lmscale.tokenization.train import train_tokenizer

__all__ = ["Tokenizer", "load_tokenizer", "train_tokenizer", "explain_bpe", "explain_chars", "explain_words",
           "format_explanation"]
