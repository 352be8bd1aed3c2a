"""Runs tables: finished runs as arrays, read the same way from every source.

A source is a sweep registry (SQLite), its CSV export (`lmscale sweep export`), or any CSV of
runs (the Chinchilla paper's published runs among them). `lmscale fit`, `report`, `plot` and
`emergence` all read through `read_runs`, so one table gives every command the same N, D, C and
loss.

Column resolution. For each quantity the first of these that the table has is used (names
match exactly):

1. the column the caller names (`--n-col`, `--d-col`, `--c-col`, `--loss-col`, `--u-col`);
2. the registry export's own column: N `params_non_embedding` (`params_total` with
   `params="total"`), D `tokens`, C `flops`, loss `final_val_loss`;
3. the short name: `N`, `D`, `C`, `loss`, `U`;
4. the other spellings, in the order of `COLUMNS` (for N the registry's other count,
   `params_total` or `params_non_embedding`, comes last).

Then D = C / 6N when there is no D column, and C = 6ND when there is no C column. Rows of a
table with a `status` column are kept only when finished, and a WSD sweep's stable runs (role
`stable`, whose cooldown branches are the points) never. A registry is read with the same
rule: its runs carry exactly the export's columns.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from lmscale.errors import DataError
from lmscale.scaling.registry import Registry

QUANTITIES = ("N", "D", "C", "loss", "U")
PARAM_COUNTS = {"non_embedding": "params_non_embedding", "total": "params_total"}
# rule 2 and 3 first, then rule 4, per quantity (N's registry count is added by `candidates`)
COLUMNS: dict[str, tuple[str, ...]] = {
    "N": ("N", "n", "params", "parameters", "n_params", "Model Size", "model_size"),
    "D": ("tokens", "D", "n_tokens", "training_tokens", "Training Tokens"),
    "C": ("flops", "C", "compute", "FLOPs", "training_flops", "Training FLOP"),
    "loss": ("final_val_loss", "loss", "Loss", "L", "final_loss", "val_loss", "best_val_loss"),
    "U": ("U", "unique_tokens", "Unique Tokens"),
}
N_KINDS = {"params_non_embedding": "non-embedding", "params_total": "total"}


def candidates(quantity: str, params: str = "non_embedding") -> tuple[str, ...]:
    """Column names tried for `quantity` when the caller names none, in order."""
    if quantity != "N":
        return COLUMNS[quantity]
    if params not in PARAM_COUNTS:
        raise DataError(f"params={params!r} must be one of {', '.join(PARAM_COUNTS)}")
    other = [c for k, c in PARAM_COUNTS.items() if k != params]
    return (PARAM_COUNTS[params], *COLUMNS["N"], *other)


def is_sqlite(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


@dataclass
class RunColumns:
    """Numeric columns of a runs table, one entry per kept row.

    `values` maps a quantity (N, D, C, loss, U) or an extra column to its values; `columns` says
    which column each quantity came from ("C/6N" and "6ND" when derived).
    """

    values: dict[str, np.ndarray]
    columns: dict[str, str]
    names: list[str]
    source: str
    header: list[str] = field(default_factory=list)
    curves: list[list[list[float]]] = field(default_factory=list)  # per run [step, tokens, val_loss]
    text: dict[str, list[str]] = field(default_factory=dict)  # raw cells of the text columns asked for
    dropped: list[str] = field(default_factory=list)  # rows left out before any value was read, and why

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_kind(self) -> str:
        """"non-embedding" or "total" when N is a registry count, else ""."""
        return N_KINDS.get(self.columns.get("N", ""), "")


def _derive(values: dict[str, np.ndarray], columns: dict[str, str]) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        if "D" not in values and "C" in values and "N" in values:
            values["D"] = values["C"] / (6.0 * values["N"])
            columns["D"] = "C/6N"
        if "C" not in values and "N" in values and "D" in values:
            values["C"] = 6.0 * values["N"] * values["D"]
            columns["C"] = "6ND"


def _number(raw: str | None, path: Path, line: int, column: str) -> float:
    try:
        return float((raw or "").strip())
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r} has {raw!r}, not a number") from None


def read_csv_dicts(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a UTF-8 CSV; a binary or malformed file is a one-line error naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte offset {exc.start}); is it a CSV?") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


def read_runs_csv(path: str | os.PathLike, columns: Mapping[str, str | None] | None = None,
                  params: str = "non_embedding", extra: Sequence[str] = (), text: Sequence[str] = (),
                  where: Mapping[str, Any] | None = None) -> RunColumns:
    """The runs of a CSV, columns resolved as the module docstring says.

    `columns` names columns per quantity (None: resolve); `extra` are further numeric columns
    and `text` raw ones, read by their exact names; `where` keeps the rows whose cells equal
    the given values. A cell that is not a number is an error naming its line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    header, rows = read_csv_dicts(path)
    if not header:
        raise DataError(f"{path}: empty CSV (no header)")
    given = {q: c for q, c in (columns or {}).items() if c}
    missing = [c for c in [*given.values(), *extra, *text, *(where or {})] if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; columns are {header}")
    resolved = {q: given.get(q) or next((c for c in candidates(q, params) if c in header), None)
                for q in QUANTITIES}
    resolved = {q: c for q, c in resolved.items() if c is not None}
    kept = [(i, r) for i, r in enumerate(rows, start=2)
            if r.get("status", "") in ("finished", "") and r.get("role", "") != "stable"
            and all(r[k] == str(v) for k, v in (where or {}).items())]
    if "U" in resolved and not given.get("U") and all(r[resolved["U"]] == "" for _, r in kept):
        del resolved["U"]  # a registry export of runs that did not record their unique tokens
    numeric = {**resolved, **{c: c for c in extra}}
    # an unrecorded unique-token count (an export's empty cell) is unknown, not an error
    values = {key: np.array([math.nan if key == "U" and r[col] == "" else _number(r[col], path, i, col)
                             for i, r in kept], dtype=float)
              for key, col in numeric.items()}
    used = dict(resolved)
    _derive(values, used)
    return RunColumns(values, used, [r.get("name") or f"row{i}" for i, r in kept], str(path), header,
                      text={c: [r[c] for _, r in kept] for c in text})


def records_columns(records: Iterable[Any], params: str = "non_embedding", extra: Sequence[str] = (),
                    source: str = "") -> RunColumns:
    """The finished runs of registry records, read as the same columns their CSV export has.

    A value the run did not record (None) is NaN.
    """
    # a WSD sweep's stable runs end at the stable learning rate: their branches are the points
    rows = [r for r in records if r.status == "finished" and getattr(r, "role", None) != "stable"]
    rows, not_best, _ = best_hyperparameters(rows)
    n_col = candidates("N", params)[0]

    def col(name: str) -> np.ndarray:
        return np.array([math.nan if getattr(r, name, None) is None else float(getattr(r, name)) for r in rows])

    resolved = {"N": n_col, "D": "tokens", "C": "flops", "loss": "final_val_loss"}
    values = {q: col(c) for q, c in resolved.items()}
    unique = col("unique_tokens")
    if unique.size and np.isfinite(unique).any():  # recorded by sweeps since registry schema v2
        values["U"], resolved["U"] = unique, "unique_tokens"
    values.update({c: col(c) for c in extra})
    return RunColumns(values, resolved, [r.name for r in rows], source, curves=[r.loss_curve for r in rows],
                      dropped=not_best)


def run_learning_rate(record: Any) -> Optional[float]:
    """The peak learning rate a registry record trained with (its config's `train.lr`)."""
    try:
        return float(record.config["train"]["lr"])
    except (TypeError, KeyError, ValueError):
        return None


def run_batch_size(record: Any) -> Optional[int]:
    """The batch size (sequences per optimizer step) a registry record trained with."""
    try:
        return int(record.config["train"]["batch_size"])
    except (TypeError, KeyError, ValueError):
        return None


def _setting_label(st: tuple, with_batch: bool) -> str:
    return f"lr {st[0]:g}, batch {st[1]}" if with_batch else f"lr {st[0]:g}"


def best_hyperparameters(records: Sequence[Any]) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """Per (N, D, seed) point trained at several learning rates and/or batch sizes (a sweep's `lrs`
    and `batch_sizes` axes), the run with the lowest final loss: the law of a sweep is the law of
    its tuned runs, each size at its own best settings (Porian et al. 2024 tune lr and batch per
    size). Returns the kept records (in order), why each other one is left out, and per point the
    losses of its settings and the best ones (empty without an axis). A point whose runs all failed
    keeps them, for the usual invalid-row accounting."""
    def setting(r: Any) -> tuple:
        return run_learning_rate(r), run_batch_size(r)

    groups: dict[tuple, list[Any]] = {}
    for r in records:
        groups.setdefault((r.params_non_embedding, r.tokens, r.seed), []).append(r)
    losers: set[int] = set()
    dropped: list[str] = []
    best: list[dict[str, Any]] = []
    for (n, d, seed), rs in groups.items():
        settings = {setting(r) for r in rs}
        if len(settings) < 2:
            continue
        scored = [r for r in rs if r.final_val_loss is not None and math.isfinite(r.final_val_loss)]
        if not scored:
            continue
        lrs = sorted({st[0] for st in settings if st[0] is not None})
        batches = sorted({st[1] for st in settings if st[1] is not None})
        both = len(batches) > 1
        win = min(scored, key=lambda r: (r.final_val_loss, r.name))
        w = setting(win)
        for r in rs:
            if r is not win:
                losers.add(id(r))
                dropped.append(f"{r.name}: {_setting_label(setting(r), both)} is not its point's best setting "
                               f"({_setting_label(w, both)})")
        ordered = sorted(scored, key=lambda r: (setting(r)[0] or 0.0, setting(r)[1] or 0))
        losses = {(_setting_label(setting(r), both) if both else f"{setting(r)[0]:g}"): r.final_val_loss
                  for r in ordered}
        edge = (len(lrs) > 1 and w[0] in (lrs[0], lrs[-1])) or (both and w[1] in (batches[0], batches[-1]))
        best.append({"N": n, "D": d, "seed": seed, "best_lr": w[0], "best_batch_size": w[1],
                     "loss": win.final_val_loss, "losses": losses, "at_grid_edge": bool(edge)})
    return [r for r in records if id(r) not in losers], dropped, best


def read_runs(source: str | os.PathLike, columns: Mapping[str, str | None] | None = None,
              params: str = "non_embedding", sweep: str | None = None, extra: Sequence[str] = (),
              text: Sequence[str] = (), where: Mapping[str, Any] | None = None) -> RunColumns:
    """The finished runs of a registry (SQLite; `sweep` picks one) or a CSV (`columns`, `text`
    and `where` apply to CSVs), columns resolved as the module docstring says."""
    p = Path(source)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    if p.is_dir():
        raise DataError(f"{p} is a directory; give a registry file (registry.sqlite) or a CSV of runs")
    if p.suffix.lower() in (".sqlite", ".sqlite3", ".db") and not is_sqlite(p):
        raise DataError(f"{p} is not an SQLite run registry (the file does not start with SQLite's header)")
    if not is_sqlite(p):
        return read_runs_csv(p, columns, params=params, extra=extra, text=text, where=where)
    reg = Registry(p)
    try:
        return records_columns(reg.runs(sweep), params=params, extra=extra, source=str(p))
    finally:
        reg.close()


def invalid_rows(values: Mapping[str, np.ndarray], keys: Sequence[str], names: Sequence[str],
                 columns: Mapping[str, str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Which rows to keep (a mask), and why each other row is dropped: a quantity in `keys` that is
    missing (NaN), infinite or not positive. `fit` and `report` both read runs through this, so
    they keep the same rows and say the same about the others."""
    n = len(names)
    keep = np.ones(n, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for k in keys:
        if k not in values:
            continue
        v = np.asarray(values[k], dtype=float)
        col = (columns or {}).get(k, k)
        label = k if col == k else f"{k} ({col})"
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(v) | (v <= 0)
        for i in np.flatnonzero(bad):
            what = "missing" if np.isnan(v[i]) else f"{v[i]:g}, not a positive number"
            reasons.setdefault(int(i), []).append(f"{label} is {what}")
        keep &= ~bad
    dropped = [f"{names[i] if i < len(names) else f'row {i}'}: {'; '.join(r)}" for i, r in sorted(reasons.items())]
    return keep, dropped


def below_top_loss(loss: np.ndarray, k: int) -> np.ndarray:
    """Indices (in order) of all rows but the `k` with the highest loss (ties: the later rows go)."""
    n = int(np.asarray(loss).size)
    if not 0 <= k < n:
        raise DataError(f"--exclude-top-loss {k}: must be between 0 and {n - 1} (there are {n} runs)")
    return np.sort(np.argsort(loss, kind="stable")[: n - k])


def dropped_note(dropped: Sequence[str], limit: int = 5) -> str:
    """'dropped 2 of 14 runs: row13: N is -5, ...; row14: loss is missing' (the first `limit`)."""
    if not dropped:
        return ""
    shown = "; ".join(dropped[:limit]) + (f"; and {len(dropped) - limit} more" if len(dropped) > limit else "")
    return f"dropped {len(dropped)} run(s) without a positive, finite value: {shown}"


@dataclass
class RunsTable:
    """Finished runs as arrays: N (parameters), D (tokens), loss; optional names and curves.

    Rows without a positive, finite N, D and loss are dropped, and listed in `dropped` (why each).
    """

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    names: list[str] = field(default_factory=list)
    curves: list[list[list[float]]] = field(default_factory=list)  # per run [step, tokens, val_loss]
    n_kind: str = "non-embedding"
    source: str = ""
    dropped: list[str] = field(default_factory=list)  # why each dropped row was dropped
    columns: dict[str, str] = field(default_factory=dict)  # which column each quantity came from

    def __post_init__(self) -> None:
        self.N, self.D, self.loss = (np.asarray(a, dtype=float) for a in (self.N, self.D, self.loss))
        names = self.names or [f"run{i}" for i in range(len(self.N))]
        ok, dropped = invalid_rows({"N": self.N, "D": self.D, "loss": self.loss}, ("N", "D", "loss"), names,
                                   self.columns)
        self.dropped = list(self.dropped) + dropped
        if not ok.all():
            keep = np.flatnonzero(ok)
            self.N, self.D, self.loss = self.N[keep], self.D[keep], self.loss[keep]
            self.names = [self.names[i] for i in keep] if self.names else []
            self.curves = [self.curves[i] for i in keep] if self.curves else []
        if not self.names:
            self.names = [f"run{i}" for i in range(len(self.N))]

    @property
    def C(self) -> np.ndarray:
        return 6.0 * self.N * self.D

    def without_top_loss(self, k: int) -> "RunsTable":
        """The table less its `k` highest-loss runs (outliers a published fit leaves out), each
        listed in `dropped`."""
        if not k:
            return self
        keep = below_top_loss(self.loss, k)
        gone = sorted(set(range(len(self))) - set(keep.tolist()))
        return dataclasses.replace(
            self, N=self.N[keep], D=self.D[keep], loss=self.loss[keep], names=[self.names[i] for i in keep],
            curves=[self.curves[i] for i in keep] if self.curves else [],
            dropped=[*self.dropped, *(f"{self.names[i]}: among the {k} highest losses (--exclude-top-loss)"
                                      for i in gone)])

    def __len__(self) -> int:
        return len(self.N)

    @classmethod
    def from_columns(cls, cols: RunColumns) -> "RunsTable":
        if not {"N", "D", "loss"} <= set(cols.values):
            raise DataError(f"{cols.source}: need parameter, token (or compute) and loss columns; columns are "
                            f"{cols.header} (name them with --n-col/--d-col/--c-col/--loss-col)")
        v = cols.values
        return cls(v["N"], v["D"], v["loss"], cols.names, cols.curves, n_kind=cols.n_kind, source=cols.source,
                   dropped=list(cols.dropped), columns=dict(cols.columns))

    @classmethod
    def from_csv(cls, path: str | os.PathLike, n_col: str | None = None, d_col: str | None = None,
                 c_col: str | None = None, loss_col: str | None = None,
                 params: str = "non_embedding") -> "RunsTable":
        """A CSV of runs, columns resolved as the module docstring says."""
        cols = read_runs_csv(path, {"N": n_col, "D": d_col, "C": c_col, "loss": loss_col}, params=params)
        return cls.from_columns(cols)


def load_runs(source: str | os.PathLike, sweep: str | None = None, params: str = "non_embedding",
              **csv_cols: str | None) -> RunsTable:
    """Finished runs of a registry (SQLite) or a CSV of runs; at least two.

    `csv_cols` are `n_col`, `d_col`, `c_col`, `loss_col` (CSV only).
    """
    names = {"n_col": "N", "d_col": "D", "c_col": "C", "loss_col": "loss"}
    bad = set(csv_cols) - set(names)
    if bad:
        raise TypeError(f"load_runs: unknown column argument(s) {sorted(bad)}")
    columns = {names[k]: v for k, v in csv_cols.items()}
    table = RunsTable.from_columns(read_runs(source, columns, params=params, sweep=sweep))
    if len(table) < 2:
        note = dropped_note(table.dropped)
        raise DataError(f"{source}: fewer than 2 finished runs to report on" + (f" ({note})" if note else ""))
    return table
