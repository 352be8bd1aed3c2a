"""Hostile but fair inputs through the command line: every bad file, flag or value is a one-line
error that names it (exit code 2), and a refused command writes and deletes nothing.

The fixtures are tiny (a 1-layer, 32-wide model trained for 2 steps), so the whole file runs in
well under a minute on two cores. Most cases call `lmscale.cli.main.main` in-process; the
two-writers test and the orphaned-child test start real processes, as they must.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lmscale.cli.main import main
from lmscale.io import atomic_write_json, dumps_json
from lmscale.io.locks import DirectoryLock, LockedError, lock_holder

WORDS = ("the cat sat on a mat while dogs were running over lazy foxes and birds sang in quick "
         "brown trees near rivers under bright skies").split()
TINY = ["--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2", "--model.d_ff", "64",
        "--model.vocab_size", "300", "--tokenizer.vocab_size", "300", "--train.seq_len", "32",
        "--train.batch_size", "4", "--train.eval_every", "0", "--train.eval_batches", "1"]
RUNS_CSV = "N,D,loss\n" + "".join(f"{n:g},{d:g},{2 + 30 / n ** 0.3 + 30 / d ** 0.3}\n"
                                  for n in (1e5, 3e5, 1e6, 3e6) for d in (1e6, 3e6, 1e7))


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Scipy's L-BFGS-B on tiny fits is several times slower with a BLAS thread pool on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def cli(*argv, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run `lmscale ARGV` in-process: (exit code, stdout, stderr); an exception escapes as itself."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def refused(result: tuple[int, str, str], *names: str) -> str:
    """The command failed with exit code 2 and one line on stderr that names each of `names`."""
    rc, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert "error:" in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` (links not followed) with its kind, a hash of its content (a link:
    its target), size and modification time: any change anywhere shows."""
    def entry(p: Path) -> tuple:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(p), 0, st.st_mtime_ns)
        if stat.S_ISREG(st.st_mode):
            return ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
        return ("dir" if stat.S_ISDIR(st.st_mode) else "other", "", 0, st.st_mtime_ns)

    return {str(p.relative_to(root)): entry(p) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A corpus, a GPT run with two checkpoints, a BERT run, a fine-tuning run on a task, the GPT
    exported as a transformers directory; built once."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hostile")
    r = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 60))) + ".\n\n"
                              for _ in range(120)))
    base = ["--corpus", corpus, "--max-steps", "2", "--no-progress", "--json", *TINY]
    assert cli("pretrain", "--preset", "gpt-tiny", "--out", root / "gpt", "--checkpoint-every", "1", *base)[0] == 0
    assert cli("pretrain", "--preset", "bert-tiny", "--out", root / "bert", *base)[0] == 0
    task = root / "task"
    task.mkdir()
    for split, n in (("train", 40), ("dev", 12)):
        rows = [f"{' '.join(r.choice(WORDS) for _ in range(5))}\t{i % 2}" for i in range(n)]
        (task / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    assert cli("finetune", root / "bert", "--task", task, "--out", root / "ft", "--max-steps", "1",
               "--batch-size", "8", "--device", "cpu", "--json")[0] == 0
    assert cli("convert", "--to-hf", root / "gpt", "--out", root / "hf", "--json")[0] == 0
    yield {"root": root, "C": corpus, "G": root / "gpt", "B": root / "bert", "FT": root / "ft", "T": task,
           "HF": root / "hf", "TOK": root / "gpt" / "tokenizer"}
    torch.set_num_threads(old)


def _write(rel: str, data: str | bytes):
    def setup(sandbox: Path, fx: dict) -> None:
        p = sandbox / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _copy(key: str, rel: str):
    def setup(sandbox: Path, fx: dict) -> None:
        shutil.copytree(fx[key], sandbox / rel)
    return setup


def _both(*setups):
    def setup(sandbox: Path, fx: dict) -> None:
        for s in setups:
            s(sandbox, fx)
    return setup


def _drop_key(rel: str, key: str):
    def setup(sandbox: Path, fx: dict) -> None:
        p = sandbox / rel
        p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != key}))
    return setup


def _remove(*rels: str):
    def setup(sandbox: Path, fx: dict) -> None:
        for rel in rels:
            (sandbox / rel).unlink(missing_ok=True)
    return setup


def _truncate(rel: str, keep: int):
    def setup(sandbox: Path, fx: dict) -> None:
        p = sandbox / rel
        p.write_bytes(p.read_bytes()[:keep])
    return setup


FOREIGN = _write("d/important.txt", "mine")
A_FILE = _write("corpus.txt", "a text of mine\n")
BINARY = bytes(range(256)) * 4
BAD_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")
RUNS = _write("runs.csv", RUNS_CSV)
SAME_N = _write("runs.csv", "N,D,loss\n" + "".join(f"1e6,{d:g},{2 + 30 / d ** 0.3}\n"
                                                   for d in (1e6, 2e6, 3e6, 5e6, 1e7, 2e7)))
TASK_JSONL = _write("t.jsonl", '{"input": "1 + 1 =", "target": "2"}\n')
PPL = ["eval", "perplexity", "{G}", "--corpus", "{C}", "--split", "train"]


def _quoted_task(sandbox: Path, fx: dict) -> None:
    """A TSV whose row 11 opens a quote that the next quote, 40 rows later, closes."""
    rows = [f"word{i} cat sat\t{i % 2}" for i in range(100)]
    rows[10] = '"an unbalanced start\t1'
    rows[50] = 'a "quoted" word\t0'
    (sandbox / "t").mkdir()
    (sandbox / "t" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (sandbox / "t" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:8] + rows[60:70]) + "\n")


def _labelled_task(stray_in: str):
    def setup(sandbox: Path, fx: dict) -> None:
        rows = [f"word{i} cat sat\t{i % 2}" for i in range(150)]
        train, dev = list(rows), rows[:10]
        if stray_in == "train":
            train[10] = "word x\tbanana"
        else:
            dev[3] = "word y\tbanana"
        (sandbox / "t").mkdir()
        (sandbox / "t" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(train) + "\n")
        (sandbox / "t" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(dev) + "\n")
    return setup


def _user_dotfiles(sandbox: Path, fx: dict) -> None:
    """A user's directory holding names lmscale's temporaries also use: `.X.tmp` and `.X.old`."""
    for rel, data in ((".backup.old/b", "b"), (".cache.tmp/c", "c"), (".photos.old/p", "p"), (".notes.tmp", "n"),
                      ("mine.txt", "x")):
        _write(f"OV/{rel}", data)(sandbox, fx)


def _cut_zst(sandbox: Path, fx: dict) -> None:
    import zstandard

    text = "".join(f"document {i} about cats and dogs\n\n" for i in range(20000)).encode()
    packed = zstandard.ZstdCompressor().compress(text)
    (sandbox / "cut.txt.zst").write_bytes(packed[:len(packed) // 2])


def _fifo(rel: str):
    def setup(sandbox: Path, fx: dict) -> None:
        os.mkfifo(sandbox / rel)
    return setup


def _llama_with_a_misshaped_k_proj(sandbox: Path, fx: dict) -> None:
    """A tiny Llama saved by transformers, then its layer-0 k_proj rewritten with one row too many."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    c = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(c).save_pretrained(sandbox / "llama", safe_serialization=True)
    shutil.copytree(sandbox / "llama", sandbox / "bad")
    f = sandbox / "bad" / "model.safetensors"
    state = load_file(str(f))
    k = state["model.layers.0.self_attn.k_proj.weight"]
    assert tuple(k.shape) == (8, 16)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(9, 16)
    save_file(state, str(f), metadata={"format": "pt"})


def _ranks(rel: str, first: int = 0):
    """A `.tiktoken` file of the 256 single bytes, ranked from `first`."""
    import base64

    return _write(rel, "".join(f"{base64.b64encode(bytes([i])).decode()} {i + first}\n" for i in range(256)))


DEEP_YAML = "a: " + "[" * 100_000
ALIAS_BOMB = "train:\n  report_to: &a [x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
PRETRAIN = ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--max-steps", "1"]

# (id, argv, setup, words the one-line message must contain)
CASES = [
    # ownership: decided by lmscale's own record and the whole content, never by a name or first byte
    ("data-prepare-users-index-json", ["data", "prepare", "--corpus", "{C}", "--tokenizer", "{TOK}", "--out", "{S}/F"],
     _both(_write("F/keep.txt", "keep"), _write("F/index.json", '{"mine": 1}')), ["--out", "/F"]),
    ("data-prepare-out-under-a-file", ["data", "prepare", "--corpus", "{C}", "--tokenizer", "{TOK}",
                                       "--out", "{S}/corpus.txt/sub"], A_FILE, ["--out", "is a file"]),
    ("pretrain-overwrite-missing-corpus", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{S}/nope.txt",
                                           "--out", "{S}/OV", "--overwrite", "--max-steps", "1"], _user_dotfiles,
     ["--out", "/OV", "did not write", "not even with --overwrite"]),
    ("pretrain-overwrite-run-missing-corpus", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{S}/nope.txt",
                                               "--out", "{S}/g", "--overwrite", "--max-steps", "1"], _copy("G", "g"),
     ["nope.txt"]),
    ("pretrain-into-run-a-user-added-to", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/g",
                                           "--max-steps", "1"], _both(_copy("G", "g"), _write("g/notes.txt", "mine")),
     ["--out", "notes.txt"]),
    ("convert-into-output-a-user-added-to", ["convert", "--to-hf", "{G}", "--out", "{S}/hf", "--overwrite"],
     _both(_copy("HF", "hf"), _write("hf/notes.txt", "mine")), ["--out", "notes.txt", "manifest"]),
    ("data-prepare-into-shards-a-user-added-to", ["data", "prepare", "--corpus", "{C}", "--tokenizer", "{TOK}",
                                                  "--out", "{S}/g/shards"],
     _both(_copy("G", "g"), _write("g/shards/notes.txt", "mine")), ["--out", "/shards"]),
    ("predict-out-is-its-input", ["predict", "{FT}", "--input", "{S}/d.jsonl", "--out", "{S}/d.jsonl"],
     _write("d.jsonl", '{"sentence": "a cat"}\n'), ["--out", "--input"]),
    ("fit-out-is-a-users-json", ["fit", "{S}/runs.csv", "--bootstrap", "0", "--out", "{S}/mine.json"],
     _both(RUNS, _write("mine.json", '{"mine": 1}\n')), ["--out", "mine.json", "--overwrite"]),
    ("fit-out-is-its-csv", ["fit", "{S}/runs.csv", "--bootstrap", "0", "--out", "{S}/runs.csv", "--overwrite"],
     RUNS, ["--out", "runs.csv", "input"]),
    ("report-out-is-its-csv", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/runs.csv", "--overwrite"],
     RUNS, ["--out", "runs.csv", "input"]),
    # damaged or endless inputs
    ("data-prepare-cut-zst", ["data", "prepare", "--corpus", "{S}/cut.txt.zst", "--tokenizer", "{TOK}",
                              "--out", "{S}/z"], _cut_zst, ["cut.txt.zst", "truncated"]),
    ("tiktoken-fifo", ["tokenizer", "encode", "hi", "--tokenizer", "{S}/x.tiktoken"], _fifo("x.tiktoken"),
     ["x.tiktoken", "not a regular file"]),
    ("tiktoken-named-after-a-larger-encoding", ["tokenizer", "encode", "hi", "--tokenizer",
                                                "{S}/cl100k_base.tiktoken"], _ranks("cl100k_base.tiktoken"),
     ["cl100k_base.tiktoken", "256 ranks"]),
    ("tiktoken-negative-rank", ["tokenizer", "encode", "hi", "--tokenizer", "{S}/n.tiktoken"], _ranks("n.tiktoken", -1),
     ["n.tiktoken", "ranks"]),
    ("config-alias-bomb", ["pretrain", "--config", "{S}/c.yaml", "--out", "{S}/r"], _write("c.yaml", ALIAS_BOMB),
     ["c.yaml", "alias"]),
    ("config-nested-too-deeply", ["pretrain", "--config", "{S}/c.yaml", "--out", "{S}/r"], _write("c.yaml", DEEP_YAML),
     ["c.yaml", "nested"]),
    ("override-nested-too-deeply", [*PRETRAIN, "--out", "{S}/r", "--train.report_to", "[" * 100_000], None,
     ["--train.report_to", "nested"]),
    ("predict-jsonl-nested-too-deeply", ["predict", "{FT}", "--input", "{S}/d.jsonl"],
     _write("d.jsonl", '{"sentence": ' + "[" * 200_000 + "\n"), ["d.jsonl:1", "nested"]),
    # values no run or allocation can use
    ("allocate-flops-below-one-parameter-token", ["allocate", "--flops", "1e-10"], None, ["flops", "6"]),
    ("pretrain-seed-too-large", [*PRETRAIN, "--out", "{S}/r", "--seed", str(10 ** 23)], None, ["--seed"]),
    ("pretrain-train-seed-too-large", [*PRETRAIN, "--out", "{S}/r", "--train.seed", str(10 ** 23)], None,
     ["train.seed"]),
    ("finetune-seed-too-large", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--seed", str(10 ** 23)],
     None, ["--seed"]),
    ("pretrain-tracker-param-nan", [*PRETRAIN, "--out", "{S}/r", "--train.tracker_params", "{a: .nan}"], None,
     ["tracker_params"]),
    ("fewshot-jsonl-nested-too-deeply", ["eval", "fewshot", "{G}", "--task", "{S}/t.jsonl"],
     _write("t.jsonl", '{"context": ' + "[" * 200_000 + "\n"), ["t.jsonl", "nested"]),
    # writing commands never delete or replace what they did not write
    ("convert-to-hf-foreign-dir", ["convert", "--to-hf", "{G}", "--out", "{S}/d"], FOREIGN, ["--out", "/d"]),
    ("convert-to-hf-out-is-file", ["convert", "--to-hf", "{G}", "--out", "{S}/corpus.txt"], A_FILE,
     ["--out", "corpus.txt", "is a file"]),
    ("convert-from-hf-foreign-dir", ["convert", "--from-hf", "{HF}", "--out", "{S}/d"], FOREIGN, ["--out"]),
    ("convert-out-is-the-source", ["convert", "--to-hf", "{S}/g", "--out", "{S}/g"], _copy("G", "g"), ["--out"]),
    ("convert-out-is-a-run-dir", ["convert", "--to-hf", "{G}", "--out", "{S}/g"], _copy("G", "g"),
     ["--out", "run output"]),
    ("tokenizer-train-foreign-dir", ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", "{C}",
                                     "--out", "{S}/d"], FOREIGN, ["--out"]),
    ("tokenizer-train-out-is-file", ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", "{C}",
                                     "--out", "{S}/corpus.txt"], A_FILE, ["--out", "is a file"]),
    ("pretrain-foreign-dir", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--max-steps", "1",
                              "--out", "{S}/d"], FOREIGN, ["--out", "did not write"]),
    ("pretrain-out-is-file", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--max-steps", "1",
                              "--out", "{S}/corpus.txt"], A_FILE, ["--out", "is a file"]),
    ("finetune-foreign-dir", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/d", "--max-steps", "1"], FOREIGN,
     ["--out"]),
    ("finetune-out-is-file", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/corpus.txt", "--max-steps", "1"],
     A_FILE, ["--out", "is a file"]),
    ("eval-out-is-dir", [*PPL, "--max-tokens", "50", "--out", "{S}/d"], FOREIGN, ["--out", "is a directory"]),
    ("eval-out-under-a-file", [*PPL, "--max-tokens", "50", "--out", "{S}/corpus.txt/r.json"], A_FILE,
     ["--out", "is a file"]),
    ("fit-out-is-dir", ["fit", "{S}/runs.csv", "--bootstrap", "0", "--out", "{S}/d"], _both(RUNS, FOREIGN),
     ["--out", "is a directory"]),
    ("fit-out-is-a-foreign-file", ["fit", "{S}/runs.csv", "--bootstrap", "0", "--out", "{S}/corpus.txt"],
     _both(RUNS, A_FILE), ["--out", "corpus.txt", "--overwrite"]),
    ("report-out-is-dir", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/d"], _both(RUNS, FOREIGN),
     ["--out", "is a directory"]),
    ("report-out-is-a-foreign-file", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/corpus.txt"],
     _both(RUNS, A_FILE), ["--out", "corpus.txt"]),
    ("report-png-dir-foreign", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/r.html",
                                "--png-dir", "{S}/d"], _both(RUNS, FOREIGN), ["--png-dir"]),
    ("plot-out-foreign", ["plot", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/d"], _both(RUNS, FOREIGN),
     ["--out"]),
    ("predict-out-is-dir", ["predict", "{FT}", "a cat", "--out", "{S}/d"], FOREIGN, ["--out", "is a directory"]),
    ("predict-out-is-a-foreign-file", ["predict", "{FT}", "a cat", "--out", "{S}/corpus.txt"], A_FILE, ["--out"]),
    ("sweep-run-foreign-dir", ["sweep", "run", "--demo", "--out", "{S}/d"], FOREIGN, ["--out"]),
    # task files: no silent data loss
    ("finetune-unbalanced-quote", ["finetune", "{B}", "--task", "{S}/t", "--out", "{S}/o", "--max-steps", "1"],
     _quoted_task, ["train.tsv:12", "line 52", "quote"]),
    ("predict-unbalanced-quote", ["predict", "{FT}", "--input", "{S}/t/train.tsv"], _quoted_task,
     ["train.tsv:12", "line 52", "quote"]),
    ("finetune-rare-train-label", ["finetune", "{B}", "--task", "{S}/t", "--out", "{S}/o", "--max-steps", "1"],
     _labelled_task("train"), ["train.tsv:12", "banana", "--labels"]),
    ("finetune-unknown-dev-label", ["finetune", "{B}", "--task", "{S}/t", "--out", "{S}/o", "--max-steps", "1"],
     _labelled_task("dev"), ["dev.tsv:5", "banana"]),
    # fits that cannot be made
    ("fit-every-run-same-n", ["fit", "{S}/runs.csv", "--bootstrap", "0"], SAME_N, ["runs.csv", "same N"]),
    # non-finite and out-of-range values
    ("pretrain-lr-inf", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r", "--max-steps",
                         "2", "--train.lr", "inf"], None, ["train.lr"]),
    ("pretrain-lr-1e30", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r", "--max-steps",
                          "2", "--train.lr", "1e30"], None, ["train.lr"]),
    ("pretrain-lr-nan", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r", "--max-steps",
                         "2", "--train.lr", "nan"], None, ["train.lr"]),
    ("pretrain-max-flops-nan", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r",
                                "--train.max_flops", "nan"], None, ["train.max_flops"]),
    ("pretrain-max-flops-inf", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r",
                                "--train.max_flops", "inf"], None, ["train.max_flops"]),
    ("pretrain-max-time-nan", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r",
                               "--train.max_time_s", "nan"], None, ["train.max_time_s"]),
    ("pretrain-beta2-one", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r",
                            "--max-steps", "2", "--train.beta2", "1"], None, ["train.beta2"]),
    ("pretrain-device-banana", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{C}", "--out", "{S}/r",
                                "--max-steps", "1", "--train.device", "banana"], None, ["train.device", "banana"]),
    # configs that are not YAML files
    ("pretrain-config-is-dir", ["pretrain", "--config", "{S}/cfg", "--out", "{S}/r"], _write("cfg/x", "x"),
     ["cfg", "directory"]),
    ("pretrain-config-binary", ["pretrain", "--config", "{S}/c.yaml", "--out", "{S}/r"], _write("c.yaml", BINARY),
     ["c.yaml", "UTF-8"]),
    ("count-config-is-dir", ["count", "{S}/cfg.yaml"], _write("cfg.yaml/x", "x"), ["cfg.yaml", "directory"]),
    ("count-config-binary", ["count", "{S}/c.yaml"], _write("c.yaml", BINARY), ["c.yaml", "UTF-8"]),
    ("cost-config-is-dir", ["cost", "--config", "{S}/cfg.yaml", "--tokens", "1e9"], _write("cfg.yaml/x", "x"),
     ["cfg.yaml", "directory"]),
    ("cost-config-binary", ["cost", "--config", "{S}/c.yaml", "--tokens", "1e9"], _write("c.yaml", BINARY),
     ["c.yaml", "UTF-8"]),
    ("sweep-config-is-dir", ["sweep", "run", "{S}/cfg.yaml", "--dry-run"], _write("cfg.yaml/x", "x"),
     ["cfg.yaml", "directory"]),
    ("sweep-config-binary", ["sweep", "run", "{S}/c.yaml", "--dry-run"], _write("c.yaml", BINARY),
     ["c.yaml", "UTF-8"]),
    *[(f"sweep-config-{name}", ["sweep", "run", "{S}/s.yaml", "--dry-run"],
       _write("s.yaml", "name: s\npreset: gpt-tiny\n" + body), ["s.yaml", key])
      for name, body, key in [
          ("size-not-a-number", "sizes: [abc]\ntokens: [1e5]\n", "sizes"),
          ("sizes-not-a-list", "sizes: 5e5\ntokens: [1e5]\n", "sizes"),
          ("base-not-a-mapping", "base: 5\nsizes: [5e5]\ntokens: [1e5]\n", "base"),
          ("seeds-not-a-list", "seeds: 3\nsizes: [5e5]\ntokens: [1e5]\n", "seeds"),
          ("size-span-nan", "design: isoflop\nflops: [1e12]\nsize_span: .nan\n", "size_span")]],
    ("sweep-config-a-list", ["sweep", "run", "{S}/s.yaml", "--dry-run"], _write("s.yaml", "- 1\n- 2\n"),
     ["s.yaml", "mapping"]),
    ("pretrain-d-model-too-large-for-memory", [*PRETRAIN, "--out", "{S}/r", "--model.d_model", "100000000"], None,
     ["would need", "GB", "--model.d_model"]),
    ("pretrain-batch-too-large-for-memory", [*PRETRAIN, "--out", "{S}/r", "--train.batch_size", "99999999999"],
     None, ["would need", "GB", "--train.batch_size"]),
    ("fewshot-hf-pickled-weights", ["eval", "fewshot", "--hf", "{S}/hf", "--task", "{S}/t.json"],
     _both(_write("hf/config.json", '{"model_type": "gpt2"}'), _write("hf/pytorch_model.bin", b"\x80\x02"),
           _write("t.json", '{"examples": [{"input": "1 + 1 =", "target_scores": {"2": 1, "3": 0}}]}')),
     ["pytorch_model.bin", "pickle"]),
    ("pretrain-rope-factor-inf", [*PRETRAIN, "--out", "{S}/r", "--model.position", "rope",
                                  "--model.rope_scaling", "{type: linear, factor: .inf}"], None, ["factor"]),
    ("pretrain-rope-beta-fast-text", [*PRETRAIN, "--out", "{S}/r", "--model.position", "rope",
                                      "--model.rope_scaling", "{type: yarn, factor: 4, beta_fast: abc}"], None,
     ["beta_fast"]),
    # damaged files
    ("convert-from-hf-truncated", ["convert", "--from-hf", "{S}/hf", "--out", "{S}/o"],
     _both(_copy("HF", "hf"), _truncate("hf/model.safetensors", 200)), ["hf/model.safetensors"]),
    ("convert-from-hf-config-a-list", ["convert", "--from-hf", "{S}/hf", "--out", "{S}/o"],
     _both(_copy("HF", "hf"), _write("hf/config.json", "[1]")), ["config.json", "object"]),
    ("convert-from-hf-binary-vocab-txt", ["convert", "--from-hf", "{S}/hf", "--out", "{S}/o"],
     _both(_copy("HF", "hf"), _remove("hf/tokenizer.json", "hf/vocab.json"), _write("hf/vocab.txt", BINARY)),
     ["vocab.txt"]),
    ("convert-from-hf-broken-tokenizer-config", ["convert", "--from-hf", "{S}/hf", "--out", "{S}/o"],
     _both(_copy("HF", "hf"), _remove("hf/tokenizer.json", "hf/vocab.json"),
           _write("hf/vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n"),
           _write("hf/tokenizer_config.json", "{")), ["tokenizer_config.json"]),
    ("convert-from-hf-llama-misshaped-k-proj", ["convert", "--from-hf", "{S}/bad", "--out", "{S}/o"],
     _llama_with_a_misshaped_k_proj, ["bad", "model.layers.0.self_attn.k_proj.weight", "(9, 16)"]),
    ("predict-truncated-head", ["predict", "{S}/ft", "a cat"],
     _both(_copy("FT", "ft"), _truncate("ft/best/head.safetensors", 50)), ["head.safetensors"]),
    ("predict-truncated-finetune-json", ["predict", "{S}/ft", "a cat"],
     _both(_copy("FT", "ft"), _truncate("ft/best/finetune.json", 30)), ["finetune.json"]),
    ("predict-finetune-json-without-mode", ["predict", "{S}/ft", "a cat"],
     _both(_copy("FT", "ft"), _drop_key("ft/best/finetune.json", "mode")), ["finetune.json", "mode"]),
    ("fit-binary-csv", ["fit", "{S}/runs.csv", "--bootstrap", "0"], _write("runs.csv", BINARY),
     ["runs.csv", "UTF-8"]),
    ("report-binary-csv", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/r.html"],
     _write("runs.csv", BINARY), ["runs.csv", "UTF-8"]),
    ("emergence-compare-binary-csv", ["emergence", "compare", "{S}/runs.csv", "--task", "t"],
     _write("runs.csv", BINARY), ["runs.csv", "UTF-8"]),
    ("emergence-ladder-bad-step", ["emergence", "ladder", "{S}/p.csv", "--task", "t", "--fit-below", "1e9",
                                   "--predict", "6.9e9"],
     _write("p.csv", "model,deduped,n_layers,d_model,step,tokens,task,metric,value\nm,0,2,64,abc,1e9,t,acc,0.5\n"),
     ["p.csv", "step"]),
    ("report-icl-empty-object", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/r.html", "--icl",
                                 "{S}/icl.json"], _both(RUNS, _write("icl.json", "{}")), ["--icl", "icl.json"]),
    ("report-icl-a-list", ["report", "{S}/runs.csv", "--bootstrap", "0", "-o", "{S}/r.html", "--icl",
                           "{S}/icl.json"], _both(RUNS, _write("icl.json", "[1]")), ["--icl", "icl.json"]),
    ("report-fake-sqlite", ["report", "{S}/x.sqlite", "-o", "{S}/r.html"], _write("x.sqlite", "not a db " * 20),
     ["x.sqlite", "SQLite"]),
    ("sweep-status-fake-sqlite", ["sweep", "status", "{S}/x.sqlite"], _write("x.sqlite", "not a db " * 20),
     ["x.sqlite", "registry"]),
    # arguments that are not UTF-8
    ("encode-non-utf8", ["tokenizer", "encode", "ab" + BAD_UTF8, "--tokenizer", "{TOK}"], None, ["UTF-8"]),
    ("fill-mask-non-utf8", ["fill-mask", "{B}", "a [MASK] " + BAD_UTF8], None, ["UTF-8"]),
    ("generate-non-utf8", ["generate", "{G}", "a " + BAD_UTF8], None, ["UTF-8"]),
    ("predict-non-utf8", ["predict", "{FT}", "a " + BAD_UTF8], None, ["UTF-8"]),
    # devices
    ("generate-device-banana", ["generate", "{G}", "a", "--device", "banana"], None, ["--device", "banana"]),
    ("fill-mask-device-banana", ["fill-mask", "{B}", "a [MASK]", "--device", "banana"], None, ["--device"]),
    ("eval-device-banana", [*PPL, "--device", "banana"], None, ["--device"]),
    ("finetune-device-banana", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--device", "banana"], None,
     ["--device"]),
    ("predict-device-banana", ["predict", "{FT}", "a cat", "--device", "banana"], None, ["--device"]),
    # counts and sizes
    ("fewshot-limit-negative", ["eval", "fewshot", "{G}", "--task", "{S}/t.jsonl", "--limit", "-2"], TASK_JSONL,
     ["--limit"]),
    ("fewshot-limit-zero", ["eval", "fewshot", "{G}", "--task", "{S}/t.jsonl", "--limit", "0"], TASK_JSONL,
     ["--limit"]),
    ("eval-batch-size-zero", [*PPL, "--batch-size", "0"], None, ["--batch-size"]),
    ("predict-batch-size-zero", ["predict", "{FT}", "a cat", "--batch-size", "0"], None, ["--batch-size"]),
    ("finetune-batch-size-zero", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--batch-size", "0"], None,
     ["--batch-size"]),
    ("generate-batch-size-zero", ["generate", "{G}", "a", "--batch-size", "0"], None, ["--batch-size"]),
    ("fit-bootstrap-negative", ["fit", "{S}/runs.csv", "--bootstrap", "-1"], RUNS, ["--bootstrap"]),
    ("report-bootstrap-negative", ["report", "{S}/runs.csv", "--bootstrap", "-1", "-o", "{S}/r.html"], RUNS,
     ["--bootstrap"]),
    ("fit-n-holdout-zero", ["fit", "{S}/runs.csv", "--holdout", "largest", "--n-holdout", "0"], RUNS,
     ["--n-holdout"]),
    ("finetune-max-steps-negative", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--max-steps", "-3"], None,
     ["--max-steps"]),
    ("finetune-dropout-above-one", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--dropout", "1.5"], None,
     ["--dropout"]),
    ("finetune-lr-nan", ["finetune", "{B}", "--task", "{T}", "--out", "{S}/o", "--lr", "nan"], None, ["--lr"]),
    ("sweep-tokens-scale-nan", ["sweep", "run", "--demo", "--dry-run", "--tokens-scale", "nan"], None,
     ["--tokens-scale"]),
    ("sweep-tokens-scale-negative", ["sweep", "run", "--demo", "--dry-run", "--tokens-scale", "-1"], None,
     ["--tokens-scale"]),
    ("sweep-budget-under-one-step", ["sweep", "run", "--demo", "--dry-run", "--tokens-scale", "1e-6"], None,
     ["less than one optimizer step"]),
    ("generate-temperature-inf", ["generate", "{G}", "a", "--temperature", "inf"], None, ["--temperature"]),
    ("eval-window-zero", [*PPL, "--window", "0"], None, ["--window"]),
    ("eval-stride-zero", [*PPL, "--stride", "0"], None, ["--stride"]),
    ("eval-max-tokens-negative", [*PPL, "--max-tokens", "-1"], None, ["--max-tokens"]),
    ("cost-pue-below-one", ["cost", "--flops", "1e20", "--pue", "0.5"], None, ["--pue"]),
    ("cost-tokens-inf", ["cost", "--preset", "gpt-tiny", "--tokens", "inf"], None, ["--tokens"]),
    ("cost-flops-inf", ["cost", "--flops", "inf"], None, ["--flops"]),
    ("allocate-unique-tokens-negative", ["allocate", "--flops", "1e20", "--unique-tokens=-5"], None,
     ["--unique-tokens"]),
    ("allocate-flops-nan", ["allocate", "--flops", "nan"], None, ["--flops"]),
    ("fill-mask-targets-no-word", ["fill-mask", "{B}", "a [MASK] b", "--targets", ","], None, ["--targets"]),
    ("resume-longer-schedule", ["pretrain", "--resume", "{S}/g", "--max-steps", "210", "--no-progress"],
     _copy("G", "g"), ["--max-steps 210", "--resume"]),
    ("resume-other-lr", ["pretrain", "--resume", "{S}/g", "--train.lr", "0.5", "--no-progress"], _copy("G", "g"),
     ["--train.lr"]),
    ("resume-into-another-out", ["pretrain", "--resume", "{S}/g", "--out", "{S}/elsewhere", "--no-progress"],
     _copy("G", "g"), ["--out", "--resume"]),
    ("resume-on-another-corpus", ["pretrain", "--resume", "{S}/g", "--corpus", "{S}/corpus.txt", "--no-progress"],
     _both(_copy("G", "g"), A_FILE), ["--corpus", "--resume"]),
    ("pretrain-latin1-corpus", ["pretrain", "--preset", "gpt-tiny", "--corpus", "{S}/c.txt", "--out", "{S}/r",
                                "--max-steps", "1", *TINY], _write("c.txt", "caf\xe9 ".encode("latin-1") * 200),
     ["c.txt", "--data.errors replace"]),
    ("eval-latin1-corpus", ["eval", "perplexity", "{G}", "--corpus", "{S}/c.txt", "--split", "train"],
     _write("c.txt", "caf\xe9 ".encode("latin-1") * 200), ["c.txt", "--errors replace"]),
]


@pytest.mark.parametrize("argv,setup,words", [pytest.param(a, s, w, id=i) for i, a, s, w in CASES])
def test_bad_input_is_one_line_error_and_nothing_is_written(fx, tmp_path, argv, setup, words):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    if setup is not None:
        setup(sandbox, fx)
    fixtures_before = tree(fx["root"])
    before = tree(sandbox)
    subs = {"{S}": str(sandbox), **{f"{{{k}}}": str(v) for k, v in fx.items() if k != "root"}}
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--out", "-o")), None)
    new_out = out is not None and not Path(out).exists()
    refused(cli(*args, cwd=sandbox), *words)
    after = tree(sandbox)
    if new_out:  # a new output directory is the command's own (a run that failed to start records why there)
        own = str(Path(out).relative_to(sandbox))
        after = {k: v for k, v in after.items() if k != own and not k.startswith(own + "/")}
    assert after == before  # nothing else is written, changed or deleted
    assert tree(fx["root"]) == fixtures_before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_any_work(fx, tmp_path):
    refused(cli("generate", fx["G"], "a", "--device", "cuda"), "--device", "CUDA is not available")
    refused(cli("eval", "perplexity", fx["G"], "--corpus", fx["C"], "--device", "cuda:1"), "--device")
    refused(cli("pretrain", "--preset", "gpt-tiny", "--corpus", fx["C"], "--out", tmp_path / "r", "--max-steps", "1",
                "--train.device", "cuda"), "train.device=cuda", "CUDA is not available")
    assert not (tmp_path / "r" / "shards").exists() and not (tmp_path / "r" / "tokenizer").exists()


# ----------------------------------------------------------------------------- what still works

def test_a_resume_never_records_a_users_file_as_lmscales(fx, tmp_path):
    run = tmp_path / "g"
    shutil.copytree(fx["G"], run)
    (run / "notes.txt").write_text("mine")
    rc, _, err = cli("pretrain", "--resume", run, "--no-progress")
    assert rc == 0, err
    assert "notes.txt" not in json.loads((run / ".lmscale").read_text())["entries"]
    refused(cli("convert", "--to-hf", fx["G"], "--out", run, "--overwrite"), "--out", "notes.txt")
    assert (run / "notes.txt").read_text() == "mine"


def test_writers_reuse_their_own_output_and_overwrite_only_when_asked(fx, tmp_path):
    out = tmp_path / "hf"
    assert cli("convert", "--to-hf", fx["G"], "--out", out)[0] == 0
    assert cli("convert", "--to-hf", fx["G"], "--out", out)[0] == 0  # its own output: replaced
    manifest = json.loads((out / ".lmscale").read_text())
    assert manifest["kind"] == "model" and "model.safetensors" in manifest["entries"]
    foreign = tmp_path / "d"
    foreign.mkdir()
    (foreign / "important.txt").write_text("mine")
    refused(cli("convert", "--to-hf", fx["G"], "--out", foreign, "--overwrite"), "--out", "important.txt")
    assert [e.name for e in foreign.iterdir()] == ["important.txt"]
    assert (foreign / "important.txt").read_text() == "mine"
    tok = tmp_path / "tok"
    for _ in range(2):
        assert cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--input", fx["C"], "--out", tok,
                   "--json")[0] == 0
    # --overwrite lets a command replace lmscale's output of another kind, and only that
    refused(cli("convert", "--to-hf", fx["G"], "--out", tok), "--out", "tokenizer output", "--overwrite")
    assert cli("convert", "--to-hf", fx["G"], "--out", tok, "--overwrite")[0] == 0
    assert json.loads((tok / ".lmscale").read_text())["kind"] == "model"
    fit = tmp_path / "fit.json"
    (tmp_path / "runs.csv").write_text(RUNS_CSV)
    for _ in range(2):  # a fit JSON lmscale wrote is replaced without --overwrite
        assert cli("fit", tmp_path / "runs.csv", "--bootstrap", "0", "--grid", "coarse", "--out", fit)[0] == 0


def test_rare_label_listed_with_labels_trains_and_predictions_carry_their_row(fx, tmp_path):
    _labelled_task("train")(tmp_path, fx)
    rc, _, err = cli("finetune", fx["B"], "--task", tmp_path / "t", "--out", tmp_path / "o", "--max-steps", "1",
                     "--labels", "0,1,banana", "--device", "cpu", "--json")
    assert rc == 0, err
    inputs = tmp_path / "in.tsv"
    inputs.write_text("sentence\n\nfirst one\nsecond one\n")
    rc, out, err = cli("predict", tmp_path / "o", "--input", inputs, "--json", "--out", tmp_path / "p.jsonl")
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["row"], r["line"]) for r in rows] == [(1, 3), (2, 4)]
    assert [json.loads(line)["row"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [1, 2]


def _strict_json(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_json_even_when_a_number_is_not_finite(fx, tmp_path):
    rc, out, err = cli("cost", "--flops", "1e30", "--utilisation", "1e-300", "--json")
    assert rc == 0, err
    assert _strict_json(out)["non_finite"]
    nan_run = tmp_path / "g"
    shutil.copytree(fx["G"], nan_run)
    from safetensors.torch import load_file, save_file

    for weights in nan_run.rglob("model.safetensors"):
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    rc, out, err = cli(*[a.replace("{G}", str(nan_run)).replace("{C}", str(fx["C"])) for a in PPL],
                       "--max-tokens", "50", "--json")
    assert rc == 0, err
    _strict_json(out)


def test_sampling_at_extreme_temperature_and_penalty_still_picks_tokens(fx):
    for flag in ("--temperature", "--repetition-penalty"):
        rc, out, err = cli("generate", fx["G"], "a", flag, "1e-300", "--max-new-tokens", "3", "--seed", "0")
        assert rc == 0, err


def test_rows_end_at_newlines_only(fx, tmp_path):
    """A form feed or U+2028 inside a row is text, not a row break (`str.splitlines` splits there)."""
    tsv = tmp_path / "in.tsv"
    tsv.write_text("sentence\nthe cat\x0csat\r\na dog\u2028ran\n", encoding="utf-8")
    rc, out, err = cli("predict", fx["FT"], "--input", tsv, "--json")
    assert rc == 0, err
    assert [r["row"] for r in json.loads(out)] == [1, 2]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"sentence": "a cat\u2028sat"}\n{"sentence": "b\u2029c"}\n', encoding="utf-8")
    rc, out, err = cli("predict", fx["FT"], "--input", jsonl, "--json")
    assert rc == 0, err
    assert [r["line"] for r in json.loads(out)] == [1, 2]
    task = tmp_path / "t.jsonl"
    task.write_text('{"context": "1 +\u2028 1 =", "answer": "2"}\n', encoding="utf-8")
    rc, out, err = cli("eval", "fewshot", fx["G"], "--task", task, "--json")
    assert rc == 0, err


def test_a_run_cleans_only_its_own_temporaries(fx, tmp_path):
    run = tmp_path / "g"
    shutil.copytree(fx["G"], run)
    mine = [run / ".notes.tmp", run / ".photos.old", run / "checkpoints" / ".keep.tmp"]
    for p in mine:
        p.write_text("mine")
    (run / ".metrics.jsonl.a1b2.tmp").write_text("half")
    rc, _, err = cli("pretrain", "--resume", run, "--no-progress", "--json")
    assert rc == 0, err
    assert all(p.read_text() == "mine" for p in mine)
    assert not (run / ".metrics.jsonl.a1b2.tmp").exists()


def test_fit_and_report_drop_the_same_rows_and_say_which(tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text(RUNS_CSV + "1e5,1e6,nan\n-5,1e6,3.0\n")
    rc, out, err = cli("fit", csv, "--law", "power-n", "--bootstrap", "0", "--json")
    assert rc == 0, err
    dropped = json.loads(out)["dropped"]
    assert len(dropped) == 2 and "loss is missing" in dropped[0] and "N is -5" in dropped[1]
    rc, out, err = cli("report", csv, "--bootstrap", "0", "--holdout", "none", "--grid", "small",
                       "-o", tmp_path / "r.html", "--json")
    assert rc == 0, err
    assert json.loads(out)["dropped"] == dropped
    assert "dropped 2 run(s)" in (tmp_path / "r.html").read_text()


def test_an_unidentified_law_is_flagged_and_gives_no_silent_allocation(tmp_path):
    # wide intervals on the exponents: the runs do not determine them
    fit = {"law": "chinchilla", "converged": True,
           "params": {"E": 1.5, "A": 400.0, "B": 400.0, "alpha": 0.5, "beta": 0.3},
           "ci95": {"E": [1.4, 1.6], "A": [3e1, 5e9], "B": [300, 500], "alpha": [0.02, 7.0], "beta": [0.25, 0.35]}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    rc, out, err = cli("allocate", "--flops", "1e21", "--fit", path)
    assert rc == 0, err
    assert out.startswith("UNIDENTIFIED LAW") and "alpha" in out.splitlines()[0]
    rc, out, _ = cli("allocate", "--flops", "1e21", "--fit", path, "--json")
    res = json.loads(out)
    assert res["identified"] is False and "alpha" in res["unidentified"]
    # a sweep whose irreducible loss is zero: the fit pins E at its bound, and the report says so
    csv = tmp_path / "runs.csv"
    r = random.Random(1)
    csv.write_text("N,D,loss\n" + "".join(
        f"{n:g},{d:g},{(400 / n ** 0.34 + 410 / d ** 0.28) * math.exp(r.gauss(0, 0.01))}\n"
        for n in (1e5, 3e5, 1e6) for d in (1e6, 3e6, 1e7)))
    rc, out, err = cli("report", csv, "--bootstrap", "10", "--holdout", "none", "--grid", "small",
                       "-o", tmp_path / "r.html")
    assert rc == 0, err
    assert "UNIDENTIFIED LAW" in out
    assert "Unidentified law" in (tmp_path / "r.html").read_text()


def test_json_never_holds_nan_or_infinity(tmp_path):
    path = atomic_write_json(tmp_path / "s.json", {"final_val_loss": float("nan"), "curve": [1.0, float("inf")]})

    def refuse(token):
        raise ValueError(token)

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["final_val_loss"] is None and data["curve"] == [1.0, None]
    assert data["non_finite"] == {"final_val_loss": "nan", "curve[1]": "inf"}
    assert dumps_json([float("-inf")]) == "[null]"


def test_perplexity_cap_cuts_a_huge_document_before_tokenizing_it(fx, tmp_path):
    from lmscale.evaluation.perplexity import token_stream

    class Counting:
        doc_separator_id = 0
        longest = 0

        def encode(self, text):
            Counting.longest = max(Counting.longest, len(text))
            return list(range(len(text.split())))

    doc = "word " * 2_000_000  # one 10 MB line
    ids, n_words, n_bytes, _ = token_stream(Counting(), [doc], max_tokens=3000)
    assert Counting.longest <= 16 * 3000 and len(ids) >= 3000 and n_words == len(ids) - 2
    big = tmp_path / "one-line.txt"
    big.write_text("the cat sat on a mat " * 200_000)  # 4 MB, one line
    rc, _, err = cli("eval", "perplexity", fx["G"], "--corpus", big, "--split", "train", "--max-tokens", "200",
                     "--json")
    assert rc == 0, err


# ----------------------------------------------------------------------------- run directories

def test_resume_falls_back_past_a_truncated_checkpoint(fx, tmp_path):
    run = tmp_path / "g"
    shutil.copytree(fx["G"], run)
    newest = run / "checkpoints" / "step_00000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    rc, _, err = cli("pretrain", "--resume", run, "--no-progress", "--json")
    assert rc == 0, err
    assert "step_00000002 is unreadable" in err and "resuming from step_00000001" in err
    for ck in (run / "checkpoints").glob("step_*"):
        p = ck / "model.safetensors"
        p.write_bytes(p.read_bytes()[:100])
    refused(cli("pretrain", "--resume", run, "--no-progress"), "no checkpoint reads back")


@pytest.mark.parametrize("field,value", [("step", "abc"), ("sampler", {"seed": "x", "epoch": 0, "position": 0}),
                                         ("optimizer", {"state": {}, "param_groups": []}), ("wall_s", None)])
def test_resume_falls_back_past_a_checkpoint_whose_trainer_state_is_damaged(fx, tmp_path, field, value):
    run = tmp_path / "g"
    shutil.copytree(fx["G"], run)
    state_file = run / "checkpoints" / "step_00000002" / "trainer_state.json"
    doc = json.loads(state_file.read_text())
    doc["state"][field] = value
    state_file.write_text(json.dumps(doc))
    rc, _, err = cli("pretrain", "--resume", run, "--no-progress", "--json")
    assert rc == 0, err
    assert "step_00000002 is unreadable" in err and field in err and "resuming from step_00000001" in err


def test_a_full_disk_is_named_in_one_line(fx, tmp_path):
    """A file-size limit makes every write past it fail as a full disk does (EFBIG; Python ignores
    SIGXFSZ), wherever the command is: the message says so instead of a traceback."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        result = cli("pretrain", "--preset", "gpt-tiny", "--corpus", fx["C"], "--max-steps", "2", "--out",
                     tmp_path / "r", "--checkpoint-every", "1", "--no-progress", *TINY)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    refused(result, "disk full")


def test_disk_full_is_recognised_in_an_exception_chain():
    from lmscale.cli.main import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "f.bin")) == "f.bin: No space left on device"
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as inner:
            raise RuntimeError("Error while serializing") from inner
    except RuntimeError as outer:
        assert disk_full(outer) == "File too large"
    assert disk_full(RuntimeError('IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'))
    assert disk_full(OSError(errno.ENOENT, "No such file or directory")) is None
    assert disk_full(ValueError("bad value")) is None


def test_damaged_tracker_ids_start_new_tracker_runs(tmp_path):
    from lmscale.training.trackers import saved_tracker_ids

    for text in ("[1]", '{"wandb": 5, "mlflow": {"run_id": "r"}}', "{", "[" * 100_000):
        (tmp_path / "trackers.json").write_text(text)
        ids = saved_tracker_ids(tmp_path / "trackers.json")
        assert isinstance(ids, dict) and all(isinstance(v, dict) for v in ids.values())
    assert saved_tracker_ids(tmp_path / "trackers.json") == {}
    (tmp_path / "trackers.json").write_text('{"wandb": 5, "mlflow": {"run_id": "r"}}')
    assert saved_tracker_ids(tmp_path / "trackers.json") == {"mlflow": {"run_id": "r"}}


def test_resume_works_from_another_directory_and_cleans_stale_temporaries(fx, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    shutil.copy(fx["C"], here / "corpus.txt")
    shutil.copytree(fx["TOK"], here / "tok")
    rc, _, err = cli("pretrain", "--preset", "gpt-tiny", "--corpus", "corpus.txt", "--tokenizer", "tok",
                     "--out", "run", "--max-steps", "2", "--checkpoint-every", "1", "--no-progress", "--json", *TINY,
                     cwd=here)
    assert rc == 0, err
    (here / "run" / "summary.json").unlink()  # as a run killed before its end leaves it
    shutil.rmtree(here / "run" / "checkpoints" / "step_00000002")
    stale = here / "run" / ".shards.abc123.tmp"
    stale.mkdir()
    (stale / "part.bin").write_bytes(b"\0" * 1000)
    (here / "run" / ".config.yaml.x1.tmp").write_text("half")
    rc, out, err = cli("pretrain", "--resume", here / "run", "--no-progress", "--json", cwd=elsewhere)
    assert rc == 0, err
    assert json.loads(out)["steps"] == 2
    assert not stale.exists() and not (here / "run" / ".config.yaml.x1.tmp").exists()


def test_directory_lock_one_holder_and_a_dead_holders_lock_is_free(tmp_path):
    d = tmp_path / "run"
    with DirectoryLock(d, "run directory"):
        assert lock_holder(d)["pid"] == os.getpid()
        with pytest.raises(LockedError, match="is in use"):
            DirectoryLock(d, "run directory").acquire()
    assert lock_holder(d) is None
    # a lock file left by a process that died: only its pid is reported, nothing blocks
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (d / ".lock").write_text(f"{dead.stdout.strip()} somehost\n")
    assert lock_holder(d) is None
    with DirectoryLock(d):
        pass


def test_two_writers_of_one_run_directory(fx, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "lmscale", "pretrain", "--preset", "gpt-tiny", "--corpus", str(fx["C"]),
         "--tokenizer", str(fx["TOK"]), "--out", str(run), "--max-steps", "100000", "--no-progress", *TINY],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "metrics.jsonl").exists() and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        assert lock_holder(run)["pid"] == first.pid
        config_written = (run / "config.yaml").stat().st_mtime_ns
        # this process is the second writer: a fresh start (another seed) and a resume are refused
        line = refused(cli("pretrain", "--preset", "gpt-tiny", "--corpus", fx["C"], "--tokenizer", fx["TOK"],
                           "--out", run, "--max-steps", "3", "--seed", "7", "--no-progress", *TINY),
                       str(run), "is in use", f"process {first.pid}")
        assert "wait for it" in line
        refused(cli("pretrain", "--resume", run, "--no-progress"), "is in use", f"process {first.pid}")
        assert (run / "config.yaml").stat().st_mtime_ns == config_written and not (run / "summary.json").exists()
        assert first.poll() is None  # the first writer was not disturbed
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(60)
    assert lock_holder(run) is None


FAKE_PRETRAIN = textwrap.dedent('''
    import json, os, sys, time, yaml
    from pathlib import Path
    args = sys.argv[1:]
    if "--resume" in args:
        run = Path(args[args.index("--resume") + 1])
    else:
        run = Path(yaml.safe_load(open(args[args.index("--config") + 1]))["out"])
    run.mkdir(parents=True, exist_ok=True)
    (run / "pid").write_text(str(os.getpid()))
    for step in range(1, 10 ** 6):
        time.sleep(0.05)
        with open(run / "alive", "w") as f:
            f.write(str(step))
''')


def test_killing_a_sweep_kills_its_training_child_and_leaves_no_log_temporaries(tmp_path):
    script = tmp_path / "fake_pretrain.py"
    script.write_text(FAKE_PRETRAIN)
    out = tmp_path / "out"
    sweep = {"name": "t", "design": "grid", "preset": "gpt-tiny", "sizes": [2e4], "tokens": [640], "seeds": [0],
             "base": {"train": {"batch_size": 2, "seq_len": 16}, "model": {"vocab_size": 256}}}
    code = textwrap.dedent(f'''
        import sys
        from lmscale.experiments.sweep import SweepConfig, run_sweep
        cmd = lambda c, r, resume: [sys.executable, {str(script)!r}, "--config", str(c)]
        run_sweep(SweepConfig.from_dict({sweep!r}), {str(out)!r}, command=cmd, prepare=False, heartbeat_s=0.5)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env())
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("runs/*/alive")):
        time.sleep(0.05)
    (pid_file,) = out.glob("runs/*/pid")
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)  # the sweep alone: its child is in no process group that dies with it
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the training child outlived its sweep")
    assert not list((out / "logs").glob(".*.tmp"))
    assert list((out / "logs").glob("*.log"))


def test_a_run_whose_directory_is_locked_is_not_started_again(tmp_path):
    from lmscale.experiments.sweep import SweepConfig, plan, run_sweep
    from lmscale.scaling.registry import Registry

    sweep = SweepConfig.from_dict({"name": "t", "design": "grid", "preset": "gpt-tiny", "sizes": [2e4],
                                   "tokens": [640], "seeds": [0],
                                   "base": {"train": {"batch_size": 2, "seq_len": 16}, "model": {"vocab_size": 256}}})
    out = tmp_path / "out"
    (spec,) = plan(sweep, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lmscale.io.locks import DirectoryLock; "
         f"DirectoryLock({spec.config.out!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = []
        res = run_sweep(sweep, out, command=lambda c, r, resume: started.append(r) or [sys.executable, "-c", ""],
                        prepare=False)
        (o,) = res.outcomes
        assert o.status == "skipped" and "still writing" in o.error and not started
        (rec,) = Registry(res.registry).runs("t")
        assert rec.status == "running" and rec.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
