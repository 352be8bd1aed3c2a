"""Stage 3: an encoder (masked LM), a decoder (causal LM) and an encoder-decoder (span corruption)
pretrained on token budgets; an interrupted run resumes from its checkpoints."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from lmscale.config import load_run_config
from lmscale.experiments.quickstart.core import Context, StageResult, StageUnavailable
from lmscale.experiments.quickstart.fragments import png_figure, render
from lmscale.experiments.quickstart.tokenizers import TokenizersResult
from lmscale.training.loop import pretrain
from lmscale.training.metrics import read_metrics
from lmscale.training.rundir import RunDir


@dataclass
class LossCurve:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    @classmethod
    def read(cls, run_dir: Path) -> LossCurve:
        """Training and validation loss from the run's metrics records."""
        curve = cls()
        for rec in read_metrics(run_dir):
            if rec.get("event") == "train" and rec.get("loss") is not None:
                curve.step.append(rec["step"])
                curve.loss.append(rec["loss"])
            elif rec.get("event") == "eval" and rec.get("val_loss") is not None:
                curve.eval_step.append(rec["step"])
                curve.val_loss.append(rec["val_loss"])
        return curve

    def to_dict(self) -> dict[str, list]:
        return {"step": self.step, "loss": self.loss, "eval_step": self.eval_step, "val_loss": self.val_loss}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> LossCurve:
        return cls(d["step"], d["loss"], d["eval_step"], d["val_loss"])


@dataclass
class PretrainedModel:
    """One family's run: where its checkpoint is, and the training summary it wrote."""
    preset: str
    run_dir: str
    objective: str
    model_dir: str  # the best checkpoint when one was kept, else the run directory
    summary: dict[str, Any]
    curve: LossCurve

    @property
    def val_loss(self) -> Optional[float]:
        """Validation loss of the checkpoint later stages use."""
        return self.summary.get("best_val_loss" if self.model_dir != self.run_dir else "final_val_loss")

    @property
    def status(self) -> str:
        status = self.summary["status"]
        return status + (" (capped: numbers not reproducible)" if status == "time_cap" else "")

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "run_dir": self.run_dir, "objective": self.objective,
                "model_dir": self.model_dir, "summary": self.summary, "curve": self.curve.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainedModel:
        return cls(preset=d["preset"], run_dir=d["run_dir"], objective=d["objective"], model_dir=d["model_dir"],
                   summary=d["summary"], curve=LossCurve.from_dict(d["curve"]))


@dataclass
class PretrainResult(StageResult):
    stage: ClassVar[str] = "pretrain"
    models: dict[str, PretrainedModel]  # family (encoder, decoder, encoder-decoder) -> its run

    def model_dir(self, family: str) -> str:
        if family not in self.models:
            raise StageUnavailable(f"the pretrain stage has no {family!r} model; the profile's pretrain.runs "
                                   f"name {', '.join(self.models) or 'none'}")
        return self.models[family].model_dir

    def to_dict(self) -> dict[str, Any]:
        return {family: m.to_dict() for family, m in self.models.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainResult:
        return cls(models={family: PretrainedModel.from_dict(m) for family, m in d.items()})

    def render_console(self, console: Console, ctx: Context) -> None:
        table = Table(title=f"Pretraining ({ctx.profile_name} profile: token budgets, {ctx.device})")
        for col in ("family", "objective", "params", "steps", "tokens", "tokens/s", "val loss", "val ppl",
                    "status"):
            table.add_column(col)
        for family, m in self.models.items():
            s, val = m.summary, m.val_loss
            table.add_row(family, m.objective, f"{s['params']['total'] / 1e6:.2f}M", str(s["steps"]),
                          f"{s['tokens']:,}", f"{s['tokens_per_s'] or 0:.0f}",
                          f"{val:.3f}" if val is not None else "-", f"{math.exp(min(val, 50)):.1f}" if val else "-",
                          m.status)
        console.print(table)

    def curves_png(self) -> Optional[bytes]:
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        drawn = False
        for family, m in self.models.items():
            if m.curve.step:
                ax.plot(m.curve.step, m.curve.loss, label=f"{family} ({m.objective}) train")
                drawn = True
            if m.curve.eval_step:
                ax.plot(m.curve.eval_step, m.curve.val_loss, "o--", label=f"{family} validation")
        if not drawn:
            return None
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats per predicted token)")
        ax.set_title("Pretraining curves")
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    def render_html(self) -> str:
        png = self.curves_png()
        figure = png_figure(png, "pretraining curves", "Training and validation loss per optimizer step.") \
            if png else None
        return render("pretrain.html.j2", r=self, figure=figure)


def _config(ctx: Context, family: str, spec: dict[str, Any]):
    p = ctx.profile["pretrain"]
    tok = ctx.need(TokenizersResult).tokenizers[spec["tokenizer"]]
    overrides = {
        "data.corpus": ctx.corpus, "data.tokenizer": tok.dir,
        "data.shards": str(ctx.out / "shards" / spec["tokenizer"]), "model.vocab_size": tok.vocab_size,
        "train.max_tokens": int(spec["max_tokens"]), "train.time_cap_s": p.get("time_cap_s"),
        "train.eval_every": p["eval_every"], "train.eval_batches": p["eval_batches"],
        "train.log_every": p["log_every"], "train.seed": p["seed"], "train.device": ctx.device,
        "train.early_stopping": p.get("early_stopping", 0), "out": str(ctx.out / "runs" / family),
    }
    overrides.update(spec.get("overrides") or {})
    return load_run_config(preset=spec["preset"], overrides=overrides)


def run(ctx: Context) -> PretrainResult:
    models: dict[str, PretrainedModel] = {}
    for family, spec in ctx.profile["pretrain"]["runs"].items():
        cfg = _config(ctx, family, spec)
        run_dir = Path(cfg.out)
        layout = RunDir(run_dir)
        resume = layout.checkpoints.is_dir() and not layout.summary_path.exists()
        ctx.console.print(f"[bold]{spec['preset']}[/] ({family}, {cfg.objective_kind} objective, "
                          f"{int(spec['max_tokens']):,} tokens)" + (" - resuming" if resume else ""))
        summary = pretrain(cfg, resume=resume)
        if summary.get("status") == "failed":
            raise StageUnavailable(f"pretraining {spec['preset']} failed: {summary.get('error')}")
        best = layout.best
        models[family] = PretrainedModel(preset=spec["preset"], run_dir=str(run_dir), objective=cfg.objective_kind,
                                         model_dir=str(best if best.is_dir() else run_dir), summary=summary,
                                         curve=LossCurve.read(run_dir))
    return PretrainResult(models=models)
