"""Streaming `data prepare` on a generated JSON Lines corpus: peak memory and MB/s against the
previous, read-everything-first path, in the same run.

The corpus is generated here (records `{"id", "text", "meta": {"source", "n_words"}}`, documents of
Zipf-distributed words, about 2 KB each) to `--mb` megabytes. Both sides tokenize it with the same
tokenizer (GPT-2's byte-level BPE from the local data mirror when present, else an 8k BPE trained
on a sample) into shards with a held-out validation share, each in its own process:

- previous: `lmscale.data.shards.prepare` of the lmscale source tree at `--baseline-ref` (a git
  revision of this repository, unpacked with `git archive`), which reads every document of every
  file into memory before tokenizing;
- streaming: the working tree's `prepare`, which reads files in blocks and keeps a bounded number
  of chunks in flight.

CPU time (the process and its worker processes) is reported beside wall time, since wall time
on a shared machine follows the other jobs' load; with `--repeats` the sides alternate and the
fastest run counts. Memory is the peak, sampled every 0.2 s, of the summed proportional set
size (PSS: shared pages split between the processes sharing them) of the process and its worker
processes, plus the main process's own peak RSS (`ru_maxrss`). The script checks that both write identical token
files. Prints a table and writes benchmarks/results/data_prep_stream.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

RUN = r"""
import json, resource, sys, time
from lmscale.data.shards import prepare
from lmscale.tokenization import Tokenizer
corpus, tok, out, workers = sys.argv[1:5]
t0 = time.perf_counter()
idx = prepare(corpus, Tokenizer.load(tok), out, workers=int(workers), progress=False)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_kb": me.ru_maxrss,
                  "cpu_seconds": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "splits": {k: v["num_tokens"] for k, v in idx.data["splits"].items()}}))
"""


def _mirror() -> Path | None:
    for c in (os.environ.get("LMSCALE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if c and (Path(c) / "gpt2-tokenizer" / "vocab.json").is_file():
            return Path(c)
    return None


def generate(path: Path, mb: float, seed: int = 0) -> int:
    """A JSON Lines corpus of about `mb` megabytes, written in blocks; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "to", "ri", "mu", "sel", "an", "dor", "pi", "ve", "lo", "gra", "en", "th", "qu", "is", "ne"]
    vocab = ["".join(rng.choice(syll, size=int(rng.integers(1, 4)))) for _ in range(20000)]
    vocab += ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", ",", ".", "1990", "café", "—"]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    target = int(mb * 1e6)
    written, i = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            words = rng.choice(len(vocab), size=(256, 330), p=p)
            lines = []
            for row in words:
                text = " ".join(vocab[w] for w in row) + "."
                lines.append(json.dumps({"id": i, "text": text, "meta": {"source": "generated", "n_words": len(row)}},
                                        ensure_ascii=False))
                i += 1
            block = "\n".join(lines) + "\n"
            fh.write(block)
            written += len(block.encode("utf-8"))
    return path.stat().st_size


def _tree_pss(proc) -> tuple[int, int]:
    import psutil

    total_pss = total_rss = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for q in procs:
        try:
            m = q.memory_full_info()
            total_pss += m.pss
            total_rss += m.rss
        except psutil.Error:
            pass
    return total_pss, total_rss


def run_side(src: Path, corpus: Path, tok: Path, out: Path, workers: int) -> dict:
    import psutil

    env = dict(os.environ, PYTHONPATH=str(src), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", RUN, str(corpus), str(tok), str(out), str(workers)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = psutil.Process(p.pid)
    peak_pss = peak_rss = 0
    while p.poll() is None:
        pss, rss = _tree_pss(proc)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.2)
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{src}: prepare failed:\n{stderr[-2000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(wall=time.perf_counter() - t0, peak_tree_pss=peak_pss, peak_tree_rss=peak_rss)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=1000.0, help="corpus size in MB (default 1000)")
    ap.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    ap.add_argument("--baseline-ref", default="8a090e9",
                    help="git revision holding the previous prepare (default: the last one before streaming)")
    ap.add_argument("--skip-baseline", action="store_true", help="measure the streaming side only")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each side (fastest counts)")
    ap.add_argument("--out", default=str(HERE / "results" / "data_prep_stream.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from lmscale.data.shards import default_workers
    from lmscale.tokenization import Tokenizer, train_tokenizer

    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="lmscale-stream-") as tmp:
        t = Path(tmp)
        corpus = t / "corpus.jsonl"
        t0 = time.perf_counter()
        size = generate(corpus, args.mb)
        print(f"generated {size / 1e6:.1f} MB of JSON Lines in {time.perf_counter() - t0:.1f}s", flush=True)
        mirror = _mirror()
        if mirror is not None:
            tok, tok_name = Tokenizer.load(mirror / "gpt2-tokenizer"), "GPT-2 byte-level BPE (50,257)"
        else:
            with open(corpus, encoding="utf-8") as fh:
                sample = [json.loads(next(fh))["text"] for _ in range(2000)]
            tok, tok_name = train_tokenizer("bpe", sample, 8192), "BPE 8k trained on a sample"
        tok.save(t / "tok")
        sides = {"streaming": REPO / "src"}
        if not args.skip_baseline:
            old = t / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_ref, "src/lmscale"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            sides["previous"] = old / "src"
        results: dict[str, dict] = {}
        runs: dict[str, list] = {name: [] for name in sides}
        for rep in range(args.repeats):  # alternating order, fastest run counts, memory is the largest peak
            for name in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
                print(f"{name}: preparing ...", flush=True)
                shutil.rmtree(t / f"shards-{name}", ignore_errors=True)  # a fresh build every run
                r = run_side(sides[name], corpus, t / "tok", t / f"shards-{name}", workers)
                runs[name].append(r)
                print(f"{name}: {r['wall']:.1f}s wall, {r['cpu_seconds']:.1f}s CPU, "
                      f"{size / 1e6 / r['seconds']:.2f} MB/s, peak PSS {r['peak_tree_pss'] / 2**20:.0f} MiB "
                      f"(main RSS {r['maxrss_kb'] / 1024:.0f} MiB), load {os.getloadavg()[0]:.1f}", flush=True)
        for name, rs in runs.items():
            best = min(rs, key=lambda r: r["seconds"])
            results[name] = {**best, "peak_tree_pss": max(r["peak_tree_pss"] for r in rs),
                             "maxrss_kb": max(r["maxrss_kb"] for r in rs),
                             "all_seconds": [r["seconds"] for r in rs], "all_cpu": [r["cpu_seconds"] for r in rs]}
        if "previous" in results:
            for split in ("train", "valid"):
                a = (t / "shards-streaming" / f"{split}.bin").read_bytes()
                b = (t / "shards-previous" / f"{split}.bin").read_bytes()
                assert a == b, f"{split}: token files differ"
            print("identical token files: yes")
    out = {"corpus_bytes": size, "tokenizer": tok_name, "workers": workers, "baseline_ref": args.baseline_ref,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg": os.getloadavg()},
           "results": {k: {**v, "mb_per_s": size / 1e6 / v["seconds"]} for k, v in results.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["results"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
