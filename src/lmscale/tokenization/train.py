"""Training the three tokenizer families with the Rust `tokenizers` trainers.

Each family is wired the way its original model was (GPT-2's byte-level BPE, BERT's WordPiece,
T5's SentencePiece-style Unigram), so a tokenizer trained here behaves like the published one
on unseen text: byte-level BPE never produces an unknown token, WordPiece marks continuations with
`##` and wraps inputs in `[CLS] ... [SEP]`, Unigram marks word starts with `▁` and ends inputs with `</s>`.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

from lmscale.errors import DataError
from lmscale.tokenization.tokenizer import BPE_EOS, KINDS, SENTINELS, UNIGRAM_SPECIALS, WORDPIECE_SPECIALS, Tokenizer

_BATCH = 1000


def _min_vocab(kind: str) -> int:
    return {"bpe": 256 + 1, "wordpiece": len(WORDPIECE_SPECIALS) + 1,
            "unigram": len(UNIGRAM_SPECIALS) + len(SENTINELS) + 1}[kind]


def build_untrained(kind: str, lowercase: bool = False) -> _Backend:
    """An empty backend of the given family, wired as the family's published tokenizer."""
    if kind == "bpe":
        backend = _Backend(models.BPE())
        if lowercase:
            backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    elif kind == "wordpiece":
        backend = _Backend(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None if not lowercase else True,
                                                        lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
    elif kind == "unigram":
        backend = _Backend(models.Unigram())
        norms = [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        if lowercase:
            norms.append(normalizers.Lowercase())
        backend.normalizer = normalizers.Sequence(norms)
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    else:
        raise DataError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return backend


def _post_processor(kind: str, backend: _Backend) -> None:
    tid = backend.token_to_id
    if kind == "wordpiece":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tid("[CLS]")), ("[SEP]", tid("[SEP]"))])
    elif kind == "unigram":
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tid("</s>"))])


def _texts(texts: Iterable[str]) -> Iterator[str]:
    for item in texts:
        if not isinstance(item, str):
            hint = " (lmscale.data.readers.iter_texts reads files)" if isinstance(item, os.PathLike) else ""
            raise DataError(f"cannot train a tokenizer on {type(item).__name__} items; give strings{hint}")
        yield item


def _batched(it: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in it:
        batch.append(text)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, lowercase: bool = False,
                    min_frequency: int = 2, show_progress: bool = False) -> Tokenizer:
    """Train a tokenizer of family `kind` ("bpe" | "wordpiece" | "unigram") to `vocab_size` entries.

    `texts` is an iterable of strings (a list, a generator, a corpus's documents); to train on
    files, pass `lmscale.data.readers.iter_texts(paths)`. `vocab_size` counts the special tokens.
    The result may be smaller than asked when the text has too few distinct pieces.
    """
    if isinstance(texts, (str, bytes, os.PathLike)):
        raise DataError(
            f"train_tokenizer takes an iterable of texts, got a single {type(texts).__name__} "
            f"({str(texts)[:60]!r}); to train on files give lmscale.data.readers.iter_texts(path), "
            "to train on one text give [text]"
        )
    if kind not in KINDS:
        raise DataError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if int(vocab_size) < _min_vocab(kind):
        raise DataError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer "
                        f"(needs at least {_min_vocab(kind)} for its alphabet/special tokens)")
    backend = build_untrained(kind, lowercase)
    if kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=[BPE_EOS], show_progress=show_progress,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(WORDPIECE_SPECIALS), show_progress=show_progress,
                                            continuing_subword_prefix="##")
    else:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=UNIGRAM_SPECIALS + SENTINELS,
                                          unk_token="<unk>", show_progress=show_progress, max_piece_length=16,
                                          n_sub_iterations=2, shrinking_factor=0.75)
    n_seen = 0

    def counted() -> Iterator[list[str]]:
        nonlocal n_seen
        for batch in _batched(_texts(texts)):
            n_seen += sum(1 for t in batch if t.strip())
            yield batch

    backend.train_from_iterator(counted(), trainer=trainer)
    if n_seen == 0:
        raise DataError("cannot train a tokenizer on empty input (no non-blank text)")
    _post_processor(kind, backend)
    return Tokenizer(backend, kind=kind, meta={"lowercase": bool(lowercase), "min_frequency": int(min_frequency),
                                                "requested_vocab_size": int(vocab_size)})
