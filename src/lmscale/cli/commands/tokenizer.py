"""`lmscale tokenizer train|encode|explain`: train the three tokenizer families, inspect them, and
walk through the classic byte-pair-encoding algorithm step by step."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP, nonnegative_int, positive_int
from lmscale.io import dumps_json

HELP = "train a tokenizer (bpe | wordpiece | unigram), encode text, or explain BPE step by step"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    t = sub.add_parser("train", help="train a tokenizer on files or a catalog corpus",
                       description="Train a byte-level BPE (GPT), WordPiece (BERT) or Unigram (T5) tokenizer "
                                   "and save it as tokenizer.json + tokenizer_meta.json.")
    t.add_argument("--kind", required=True, choices=["bpe", "wordpiece", "unigram"])
    t.add_argument("--vocab-size", type=positive_int, required=True, help="vocabulary size including special tokens")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="corpus files (.txt, .jsonl, .json, .tsv, .parquet, optionally .gz/.zst), directories, "
                        "or a catalog corpus name (its train split)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)
    t.add_argument("--lowercase", action="store_true")
    t.add_argument("--min-frequency", type=nonnegative_int, default=2,
                   help="bpe/wordpiece: minimum pair/piece frequency")
    t.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="undecodable bytes: fail naming the file and offset, or replace and count them")
    t.add_argument("--text-field", default="text",
                   help="field of JSON/Parquet/datasets records that holds the text (dotted path; default text)")
    t.add_argument("--json", action="store_true", help="machine-readable output")

    eos = sub.add_parser("set-eos", help="choose a BPE tokenizer's end-of-text (document separator) token",
                         description="Make TOKEN, already in the vocabulary, the end-of-text token that ends every "
                                     "document in the token shards and stops generation (BPE tokenizers; "
                                     "WordPiece uses [SEP] and Unigram </s>). tokenizer.json is unchanged; the "
                                     "choice is saved in tokenizer_meta.json.")
    eos.add_argument("tokenizer", help="tokenizer directory (tokenizer.json [+ tokenizer_meta.json])")
    eos.add_argument("--token", required=True, help='e.g. "</s>"')
    eos.add_argument("--json", action="store_true", help="machine-readable output")

    e = sub.add_parser("encode", help="print the tokens and ids of a text")
    e.add_argument("text")
    e.add_argument("--tokenizer", required=True,
                   help="tokenizer dir, tokenizer.json, GPT-2 vocab.json+merges.txt dir, or a .tiktoken file")
    e.add_argument("--special", action="store_true", help="add the family's special tokens ([CLS] ... [SEP], </s>)")
    e.add_argument("--json", action="store_true", help="machine-readable output")

    x = sub.add_parser("explain", help="the classic BPE algorithm step by step (aaabdaaabac)",
                       description="Start from characters and repeatedly replace the most frequent adjacent "
                                   "pair by a new symbol, printing each step. With --words, learn merges over "
                                   "a word-frequency table with an end-of-word marker (Sennrich et al. 2016) "
                                   "and split rare words with them.")
    x.add_argument("text", nargs="?", help="the text (or use --file)")
    x.add_argument("--file", help="read the text from a file")
    x.add_argument("--merges", type=nonnegative_int, default=3, help="number of merges (default 3)")
    x.add_argument("--words", action="store_true", help="subword BPE over words (Sennrich et al. 2016)")
    x.add_argument("--split", action="append", default=[], metavar="WORD",
                   help="with --words: word to segment with the learned merges (default: the rarest words)")
    x.add_argument("--json", action="store_true", help="machine-readable output")


def _train_inputs(inputs: list[str], errors: str, text_field: str = "text"):
    from pathlib import Path

    from lmscale.data import catalog
    from lmscale.data.readers import iter_texts

    names = {c["name"] for c in catalog.list_corpora()}
    for item in inputs:
        if item in names and not Path(item).exists():
            corpus = catalog.resolve_corpus(item, errors=errors)
            for doc in corpus.iter_documents("train"):
                yield from doc.splitlines()
        else:
            yield from iter_texts(item, errors=errors, text_field=text_field)


def _train(args: argparse.Namespace) -> int:
    import sys
    import time
    import warnings

    from lmscale.io import heartbeat
    from lmscale.io.outputs import check_output_dir, mark_output_dir
    from lmscale.tokenization import train_tokenizer

    t0 = time.perf_counter()
    # before training: the tokenizer goes into a new or empty directory, or one holding a tokenizer
    names = ("tokenizer.json", "tokenizer_meta.json")  # what `Tokenizer.save` writes
    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("tokenizer",), names=names)
    mark_output_dir(args.out, "tokenizer", names=names)
    with warnings.catch_warnings(record=True) as caught, heartbeat(f"training a {args.kind} tokenizer"):
        warnings.simplefilter("always")
        tok = train_tokenizer(args.kind, _train_inputs(args.input, args.errors, args.text_field), args.vocab_size,
                              lowercase=args.lowercase, min_frequency=args.min_frequency,
                              show_progress=sys.stderr.isatty() and not args.json)
    tok.save(args.out)
    info = {"out": str(args.out), "kind": tok.kind, "vocab_size": tok.vocab_size, "hash": tok.hash,
            "seconds": round(time.perf_counter() - t0, 3), "warnings": [str(w.message) for w in caught]}
    if args.json:
        print(dumps_json(info))
    else:
        for w in info["warnings"]:
            print(f"lmscale tokenizer: warning: {w}", file=sys.stderr)
        print(f"trained {tok.kind} tokenizer: {tok.vocab_size} tokens in {info['seconds']:.2f}s -> {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from lmscale.tokenization import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    enc = tok.backend.encode(args.text, add_special_tokens=args.special)
    if args.json:
        print(dumps_json({"tokens": enc.tokens, "ids": enc.ids}))
        return 0
    from rich.table import Table

    from lmscale.io import console

    table = Table(title=f"{len(enc.ids)} tokens ({tok.kind}, vocab {tok.vocab_size})")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("id", justify="right")
    for i, (t, k) in enumerate(zip(enc.tokens, enc.ids)):
        table.add_row(str(i), repr(t)[1:-1], str(k))
    console().print(table)
    print("ids:", " ".join(map(str, enc.ids)))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from lmscale.errors import LmscaleError
    from lmscale.tokenization.explain import explain_chars, explain_words, format_explanation

    if args.file:
        from lmscale.data.readers import read_text

        text, _ = read_text(args.file)
    elif args.text is not None:
        text = args.text
    else:
        raise LmscaleError("give a TEXT to explain (or --file PATH)")
    if args.merges < 0:
        raise LmscaleError(f"--merges must be >= 0, got {args.merges}")
    if not text.strip():
        raise LmscaleError("the text to explain is empty")
    result = explain_words(text, args.merges, args.split) if args.words else explain_chars(text, args.merges)
    print(dumps_json(result, ensure_ascii=False) if args.json else format_explanation(result))
    return 0


def _set_eos(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmscale.errors import DataError
    from lmscale.tokenization import Tokenizer

    d = Path(args.tokenizer)
    if not (d / "tokenizer.json").is_file():
        raise DataError(f"{d}: not a tokenizer directory (no tokenizer.json)")
    tok = Tokenizer.load(d)
    tok.set_eos(args.token)
    tok.save(d)
    if args.json:
        print(dumps_json({"tokenizer": str(d), "eos_token": args.token, "eos_id": tok.eos_id}))
    else:
        print(f"{d}: end-of-text token {args.token!r} (id {tok.eos_id}); shards made before are rebuilt "
              f"by the next data prepare")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "encode": _encode, "explain": _explain, "set-eos": _set_eos}[args.verb](args)
