"""Training the three tokenizer families with the Rust `tokenizers` trainers.

Each family is wired the way its original model was (GPT-2's byte-level BPE, BERT's WordPiece,
T5's SentencePiece-style Unigram), so a tokenizer trained here behaves like the published one
on unseen text: byte-level BPE never produces an unknown token, WordPiece marks continuations with
`##` and wraps inputs in `[CLS] ... [SEP]`, Unigram marks word starts with `▁` and ends inputs with `</s>`.

Training is deterministic: the same text gives the same tokenizer.json byte for byte in every
process. The Rust WordPiece and Unigram trainers are not (their word counts live in a hash map
whose order changes with each process: WordPiece gives `##` pieces ids in that order, and equal
pair counts are broken by id; Unigram sums its EM statistics in that order, and numbers the
characters it must add in it). So only BPE uses its Rust trainer as is. WordPiece runs the same
merges through the BPE trainer, whose ids come from its sorted alphabet, on words whose
continuation characters are spelled with private-use characters (one per character), and spells
the result back with `##`. Unigram is trained by SentencePiece, the trainer of the original T5
vocabulary, on the words counted here and sorted.
"""
from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from pathlib import Path
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
        n_seen = 0

        def counted() -> Iterator[list[str]]:
            nonlocal n_seen
            for batch in _batched(_texts(texts)):
                n_seen += sum(1 for t in batch if t.strip())
                yield batch

        backend.train_from_iterator(counted(), trainer=trainer)
        if n_seen == 0:
            raise _empty()
    elif kind == "wordpiece":
        _train_wordpiece(backend, _word_counts(backend, texts), vocab_size, min_frequency, show_progress)
    else:
        _train_unigram(backend, _word_counts(backend, texts), vocab_size, show_progress)
    _post_processor(kind, backend)
    return Tokenizer(backend, kind=kind, meta={"lowercase": bool(lowercase), "min_frequency": int(min_frequency),
                                                "requested_vocab_size": int(vocab_size)})


def _empty() -> DataError:
    return DataError("cannot train a tokenizer on empty input (no non-blank text)")


def _word_counts(backend: _Backend, texts: Iterable[str]) -> list[tuple[str, int]]:
    """The words the backend's normalizer and pre-tokenizer make of `texts`, with their counts,
    most frequent first (ties by the word): what the trainers count, in an order of our own."""
    counts: Counter[str] = Counter()
    norm, pre = backend.normalizer, backend.pre_tokenizer
    for text in _texts(texts):
        if text.strip():
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text) if norm else text))
    if not counts:
        raise _empty()
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))


def _private_use(n: int, taken: set[str]) -> list[str]:
    """`n` private-use characters that are not in `taken`, in code point order."""
    ranges = (range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE), range(0xE000, 0xF900))
    out = []
    for r in ranges:
        for cp in r:
            if chr(cp) not in taken:
                out.append(chr(cp))
                if len(out) == n:
                    return out
    raise DataError(f"too many distinct characters ({n}) to train a WordPiece tokenizer")


def _train_wordpiece(backend: _Backend, words: list[tuple[str, int]], vocab_size: int, min_frequency: int,
                     show_progress: bool) -> None:
    """WordPiece's training is BPE with `##` before continuation pieces; done here as plain BPE on
    words whose non-initial characters are private-use stand-ins, so every id the trainer assigns
    comes from its sorted alphabet (see the module docstring)."""
    alphabet = sorted({c for w, _ in words for c in w})
    inner = sorted({c for w, _ in words for c in w[1:]})
    marks = dict(zip(inner, _private_use(len(inner), set(alphabet))))
    unmark = {m: c for c, m in marks.items()}

    def marked() -> Iterator[list[str]]:
        batch, size = [], 0
        for w, n in words:
            batch.append((w[0] + "".join(marks[c] for c in w[1:]) + " ") * n)
            size += n
            if size >= 100_000:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    bpe = _Backend(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(WORDPIECE_SPECIALS), show_progress=show_progress,
                                  initial_alphabet=alphabet)
    bpe.train_from_iterator(marked(), trainer=trainer)
    vocab = {}
    for token, i in bpe.get_vocab(with_added_tokens=False).items():
        if token in WORDPIECE_SPECIALS:
            vocab[token] = i
        elif token[0] in unmark:
            vocab["##" + "".join(unmark[c] for c in token)] = i
        else:
            vocab[token[0] + "".join(unmark[c] for c in token[1:])] = i
    backend.model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    backend.add_special_tokens(list(WORDPIECE_SPECIALS))


def _train_unigram(backend: _Backend, words: list[tuple[str, int]], vocab_size: int, show_progress: bool) -> None:
    """SentencePiece's Unigram trainer on the counted words (each already starting with `▁`), set
    up as the Rust trainer was: all characters kept, pieces of up to 16 characters, no splits by
    script or digit, two EM sub-iterations a round, 25% pruned a round. The E-step is summed
    per thread in a fixed order, so the thread count is fixed too."""
    import sentencepiece as spm  # noqa: PLC0415  C++ extension, loaded only for Unigram training

    specials = UNIGRAM_SPECIALS + SENTINELS
    with tempfile.TemporaryDirectory(prefix="lmscale-unigram-") as tmp:
        path = Path(tmp) / "words.tsv"
        path.write_text("".join(f"{w}\t{n}\n" for w, n in words), encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            input=str(path), input_format="tsv", model_writer=model, model_type="unigram", vocab_size=vocab_size,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_by_unicode_script=False, split_by_number=False, split_digits=False, byte_fallback=False,
            character_coverage=1.0, max_sentencepiece_length=16, num_sub_iterations=2, shrinking_factor=0.75,
            hard_vocab_limit=False, max_sentence_length=max(4192, max(len(w.encode()) for w, _ in words) + 1),
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            user_defined_symbols=SENTINELS, num_threads=4, minloglevel=0 if show_progress else 2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    assert [p for p, _ in pieces[:len(specials)]] == specials
    backend.model = models.Unigram(pieces, specials.index("<unk>"), False)
    backend.add_special_tokens(specials)
