"""Data preparation throughput: `lmscale data prepare` against a single-process tokenizer loop.

Both sides tokenize the same WikiText-2 train articles with the same tokenizer (GPT-2's real
byte-level BPE from the local mirror when present, else a 8k BPE trained on the train split):

- baseline: one process looping `Tokenizer.encode_batch` over batches of articles. Measured twice:
  with the Rust library's thread pool off (`TOKENIZERS_PARALLELISM=false`, one core: the plain
  single-process loop), and with it on (the library's own threads inside that one process).
- lmscale: `lmscale.data.shards.prepare` end to end (read, split into articles, checksum,
  tokenize with all cores, write the memory-mapped shard and its index).

Each side runs `--repeats` times alternately and the fastest run counts, which damps the noise of
a machine shared with other jobs. Prints a table and writes benchmarks/results/data_prep.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _mirror() -> Path | None:
    for c in (os.environ.get("LMSCALE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if c and (Path(c) / "wikitext-2" / "wiki.train.raw").is_file():
            return Path(c)
    return None


def _cpu() -> float:
    """CPU seconds of this process and its finished children (pool workers): load-independent cost."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def _baseline(tok, docs: list[str], batch: int, threads: bool) -> tuple[float, np.ndarray]:
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
    try:
        t0 = time.perf_counter()
        out: list[np.ndarray] = []
        sep = tok.doc_separator_id
        for i in range(0, len(docs), batch):
            for ids in tok.encode_batch(docs[i:i + batch]):
                ids.append(sep)
                out.append(np.asarray(ids, dtype=np.uint16))
        arr = np.concatenate(out)
        return time.perf_counter() - t0, arr
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="articles per encode_batch call in the baseline")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "data_prep.json"))
    args = ap.parse_args()

    from lmscale.data.catalog import Corpus, resolve_corpus
    from lmscale.data.readers import iter_texts
    from lmscale.data.shards import TokenDataset, default_workers, prepare
    from lmscale.tokenization import Tokenizer, train_tokenizer

    mirror = _mirror()
    if mirror is not None:
        train_file = mirror / "wikitext-2" / "wiki.train.raw"
    else:
        train_file = resolve_corpus("wikitext-2").splits["train"][0]
    corpus = Corpus("wikitext-2-train", {"train": [train_file]}, doc_format="wikitext", valid_fraction=0.0)
    docs = corpus.documents("train")
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if mirror is not None and (mirror / "gpt2-tokenizer" / "vocab.json").is_file():
        tok, tok_name = Tokenizer.load(mirror / "gpt2-tokenizer"), "GPT-2 byte-level BPE (50,257)"
    else:
        tok = train_tokenizer("bpe", iter_texts(train_file), 8192)
        tok_name = "byte-level BPE trained on the split (8,192)"
    workers = args.workers or default_workers()
    load_before = os.getloadavg()

    runs: dict[str, list[float]] = {"single": [], "threads": [], "prepare": []}
    cpu: dict[str, list[float]] = {"single": [], "threads": [], "prepare": []}
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for _ in range(args.repeats):
            c0 = _cpu()
            dt, arr = _baseline(tok, docs, args.batch, threads=False)
            runs["single"].append(dt)
            reference = arr
            c1 = _cpu()
            dt, _ = _baseline(tok, docs, args.batch, threads=True)
            runs["threads"].append(dt)
            c2 = _cpu()
            idx = prepare(corpus, tok, Path(tmp) / "shards", valid_fraction=0.0, workers=workers,
                          progress=False, force=True)
            runs["prepare"].append(idx.seconds)
            c3 = _cpu()
            for k, a, b in (("single", c0, c1), ("threads", c1, c2), ("prepare", c2, c3)):
                cpu[k].append(b - a)
        ours = TokenDataset.open(Path(tmp) / "shards", "train").tokens
        same = bool(np.array_equal(np.asarray(ours), reference))
    load_after = os.getloadavg()

    best = {k: min(v) for k, v in runs.items()}
    mbps = {k: n_bytes / 1e6 / v for k, v in best.items()}
    result = {
        "benchmark": "data_prep",
        "corpus": "WikiText-2 train (raw)", "articles": len(docs), "megabytes": round(n_bytes / 1e6, 3),
        "tokens": int(reference.shape[0]), "tokenizer": tok_name, "identical_tokens": same,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "workers": workers, "repeats": args.repeats,
        "seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "mb_per_s": {k: round(v, 3) for k, v in mbps.items()},
        "speedup_vs_single_process": round(best["single"] / best["prepare"], 3),
        "speedup_vs_single_process_rust_threads": round(best["threads"] / best["prepare"], 3),
        "target_speedup": 1.6, "prepare_train_seconds": round(best["prepare"], 3), "target_seconds": 10.0,
    }
    print(f"WikiText-2 train: {len(docs)} articles, {n_bytes / 1e6:.2f} MB, {result['tokens']:,} tokens; {tok_name}")
    bcpu = {k: min(v) for k, v in cpu.items()}
    print(f"{'method':<52}{'best s':>8}{'MB/s':>8}{'CPU s':>8}")
    print(f"{'baseline: encode_batch loop, 1 process, 1 thread':<52}{best['single']:>8.2f}{mbps['single']:>8.2f}"
          f"{bcpu['single']:>8.2f}")
    print(f"{'baseline: encode_batch loop, 1 process, Rust threads':<52}{best['threads']:>8.2f}{mbps['threads']:>8.2f}"
          f"{bcpu['threads']:>8.2f}")
    print(f"{f'lmscale data prepare ({workers} workers, end to end)':<52}{best['prepare']:>8.2f}{mbps['prepare']:>8.2f}"
          f"{bcpu['prepare']:>8.2f}")
    print(f"speed-up vs single process: {result['speedup_vs_single_process']:.2f}x "
          f"(vs the same with Rust threads: {result['speedup_vs_single_process_rust_threads']:.2f}x); "
          f"target >= 1.6x; train prepared in {best['prepare']:.1f}s (target < 10 s); identical tokens: {same}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores")
    out = Path(args.out)
    sys.path.insert(0, str(REPO / "src"))
    from lmscale.io import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
