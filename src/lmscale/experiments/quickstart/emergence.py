"""Stage 7: 2-layer decoders of several widths trained on synthetic in-context tasks, and whether
induction switches on abruptly (accuracy from at most 0.1 to at least 0.9 within a fifth of the steps)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from rich.console import Console

from lmscale.experiments.icl_tasks import ICLConfig, run_icl, switch
from lmscale.experiments.quickstart.core import Check, Context, StageResult, checks_from_dicts, checks_to_dicts
from lmscale.experiments.quickstart.fragments import file_figure, render
from lmscale.io import atomic_write_json
from lmscale.scaling.plots import plot_icl, save

TASK = "induction"
QUICK_FRACTION = 0.2  # a switch within this share of the steps counts as abrupt
MIN_WIDTHS = 2  # widths that must switch abruptly
_OWN_KEYS = ("switches", "checks", "plot")


@dataclass
class EmergenceResult(StageResult):
    stage: ClassVar[str] = "emergence"
    icl: dict[str, Any]  # run_icl's result: config, chance levels, every width's evaluations
    switches: dict[Any, dict[str, Any]]  # d_model -> icl_tasks.switch's verdict
    checks: list[Check] = field(default_factory=list)
    plot: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d = {**self.icl, "switches": self.switches, "checks": checks_to_dicts(self.checks)}
        if self.plot is not None:
            d["plot"] = self.plot
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmergenceResult:
        return cls(icl={k: v for k, v in d.items() if k not in _OWN_KEYS}, switches=d.get("switches", {}),
                   checks=checks_from_dicts(d.get("checks")), plot=d.get("plot"))

    def render_console(self, console: Console, ctx: Context) -> None:
        for width, sw in self.switches.items():
            console.print(f"d_model={width}: " + (
                f"induction accuracy {sw['accuracy_from']:.2f} at step {sw['from_step']} -> {sw['accuracy_to']:.2f} "
                f"at step {sw['to_step']} ({sw['step_fraction']:.0%} of the steps)" if sw["switched"]
                else f"no switch (best accuracy {sw['max_accuracy']:.2f})"))

    def render_html(self) -> str:
        return render("emergence.html.j2", r=self, figure=file_figure(
            self.plot or "", "In-context accuracy and answer log-probability per training step."))


def _checks(switches: dict[Any, dict[str, Any]]) -> list[Check]:
    quick = [w for w, sw in switches.items() if sw["switched"] and sw["step_fraction"] <= QUICK_FRACTION]
    return [Check(f"induction switches on (accuracy <= 0.1 to >= 0.9 within {QUICK_FRACTION:.0%} of the steps)",
                  f">= {MIN_WIDTHS} widths", f"{len(quick)} of {len(switches)} widths ({quick})",
                  len(quick) >= MIN_WIDTHS)]


def run(ctx: Context) -> EmergenceResult:
    spec = ctx.profile["emergence"]
    cfg = ICLConfig(widths=list(spec["widths"]), steps=int(spec["steps"]), eval_every=int(spec["eval_every"]),
                    device=ctx.device)
    ctx.console.print(f"in-context learning: 2-layer decoders of width {cfg.widths}, {cfg.steps} steps each")
    icl = run_icl(cfg, log=None)
    switches = {m["d_model"]: switch(m["evals"], cfg.steps, TASK) for m in icl["models"]}
    result = EmergenceResult(icl=icl, switches=switches, checks=_checks(switches))
    atomic_write_json(ctx.path("emergence", "icl.json"), result.to_dict())
    result.plot = str(save(plot_icl(result.to_dict()), ctx.path("emergence", "icl.png")))
    return result
