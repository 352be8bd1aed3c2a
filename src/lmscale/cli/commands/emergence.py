"""`lmscale emergence`: phase transitions, metric choice, capability extrapolation, synthetic ICL."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP, add_device_argument
from lmscale.io import dumps_json

HELP = ("emergence: sigmoid / broken-power-law fits, accuracy vs likelihood, extrapolation, two-step ladder "
        "prediction, synthetic ICL")
DESCRIPTION = """Emergence and phase transitions. `fit` fits a metric against log-compute with a sigmoid and
a broken power law and says whether there is a break; `compare` shows a task's discontinuous
metric (accuracy) next to its continuous one (perplexity) as Schaeffer et al. 2023 argue;
`extrapolate` answers "how much more compute / how many parameters to reach accuracy X" with an
interval, or refuses with the reason; `ladder` predicts a large model's accuracy in two steps,
(N, D) -> task loss -> accuracy (Bhagia et al. 2024), beside the one-step fit;
`icl` trains small decoders on synthetic in-context tasks
and records the abrupt rise of in-context accuracy. Sources: a Pythia-style evaluation CSV
(--task), any CSV of (scale, metric) rows, or a sweep registry."""


def _source(p: argparse.ArgumentParser, metric_default: str | None = "acc") -> None:
    p.add_argument("source", help="CSV (Pythia-style with --task, or any (scale, metric) rows) or sweep registry")
    p.add_argument("--task", help="Pythia-style CSV: the task (e.g. lambada_openai)")
    p.add_argument("--metric", default=metric_default, help="metric name (Pythia CSV) or column (plain CSV)")
    p.add_argument("--scale-col", help="plain CSV: compute column (FLOPs)")
    p.add_argument("--params-col", help="plain CSV: parameter column (with --tokens-col: C = 6ND)")
    p.add_argument("--tokens-col", help="plain CSV: token column")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="plain CSV row filter")
    p.add_argument("--deduped", action="store_true", help="Pythia CSV: the deduplicated-data models")
    p.add_argument("--chance", type=float, help="the metric's chance level (fixes the sigmoid's floor)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _load(args, metric: str | None = None):
    from lmscale.errors import DataError
    from lmscale.scaling.emergence import from_columns, read_pythia, read_scale_metric_csv
    from lmscale.scaling.runs import is_sqlite, read_runs

    metric = metric or args.metric
    if is_sqlite(args.source):
        metric = metric or "final_val_loss"
        return from_columns(read_runs(args.source, extra=[metric]), metric, group=True)
    if args.task:
        return read_pythia(args.source, args.task, metric, deduped=args.deduped)
    where = {}
    for w in args.where:
        if "=" not in w:
            raise DataError(f"--where {w!r}: use COL=VALUE")
        k, v = w.split("=", 1)
        where[k] = v
    return read_scale_metric_csv(args.source, metric, scale_col=args.scale_col, params_col=args.params_col,
                                 tokens_col=args.tokens_col, where=where or None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    f = sub.add_parser("fit", help="sigmoid and broken power law against log-compute; is there a break?")
    _source(f)
    f.add_argument("--lower-is-better", action="store_true", help="the metric falls with scale (loss, perplexity)")
    f.add_argument("--log-metric", action="store_true", help="fit log10 of the metric (perplexity)")
    f.add_argument("--plot", metavar="PNG", help="write the figure")

    c = sub.add_parser("compare", help="a discontinuous and a continuous metric of one task (Schaeffer et al. 2023)")
    _source(c)
    c.add_argument("--continuous", default="ppl", help="the continuous metric (lower is better; fitted in log10)")
    c.add_argument("--plot", metavar="PNG", help="write the side-by-side figure")

    e = sub.add_parser("extrapolate", help="compute / parameters to reach accuracy X, with an interval, or a refusal")
    _source(e)
    e.add_argument("--target", type=float, required=True, help="accuracy to reach")
    e.add_argument("--max-decades", type=float, default=2.0, help="furthest extrapolation allowed beyond the data")
    e.add_argument("--bootstrap", type=int, default=200)
    e.add_argument("--tokens-per-param", type=float, default=20.0, help="compute-optimal D/N for the parameter answer")

    lad = sub.add_parser("ladder", help="two-step downstream prediction: (N, D) -> task loss -> accuracy "
                                        "(Bhagia et al. 2024), beside the one-step fit")
    lad.add_argument("source", help="Pythia-style evaluation CSV (model, n_layers, d_model, step, tokens, task, "
                                    "metric, value)")
    lad.add_argument("--task", required=True, help="the task whose accuracy is predicted (e.g. lambada_openai)")
    lad.add_argument("--metric", default="acc", help="the accuracy metric")
    lad.add_argument("--loss-task", help="task whose ln(perplexity) is the loss (default: --task; a task without a "
                                         "perplexity column needs a proxy such as lambada_openai)")
    lad.add_argument("--loss-metric", default="ppl", help="the perplexity metric of --loss-task")
    lad.add_argument("--fit-below", type=float, required=True, help="fit on models whose nominal size is below this")
    lad.add_argument("--predict", required=True, help="comma-separated sizes to predict (e.g. 6.9e9,1.2e10); a size "
                                                      "matching a model in the file is checked against its final "
                                                      "checkpoint")
    lad.add_argument("--tokens", type=float, help="training tokens for a predicted size not in the file "
                                                  "(default: the largest seen)")
    lad.add_argument("--loss-law", choices=("nd", "compute"), default="nd",
                     help="step 1: E + A/N^a + B/D^b, or E + A/C^a")
    lad.add_argument("--loss-min-fraction", type=float, default=0.1,
                     help="step 1 uses checkpoints past this fraction of each model's tokens")
    lad.add_argument("--chance", type=float, help="the accuracy floor (fixes both sigmoids' floor)")
    lad.add_argument("--deduped", action="store_true", help="the deduplicated-data models")
    lad.add_argument("--bootstrap", type=int, default=200, help="resamples of checkpoints for the intervals")
    lad.add_argument("--seed", type=int, default=0)
    lad.add_argument("--json", action="store_true", help="machine-readable output")

    i = sub.add_parser("icl", help="train small decoders on synthetic in-context tasks; watch the abrupt rise")
    i.add_argument("--out", required=True, help="directory for icl.json and icl.png")
    i.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    i.add_argument("--small", action="store_true", help="the seconds-long setting (machinery check)")
    i.add_argument("--widths", type=int, nargs="+", help="model widths (d_model), 2 layers each")
    i.add_argument("--steps", type=int, help="training steps per model")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--json", action="store_true")
    add_device_argument(i)


def _print_analysis(a) -> None:
    s = a.sigmoid
    unit = "" if a.higher_is_better else " (log10 of the metric)"
    print(f"{a.label}: {a.n_points} points{unit}")
    print(f"  sigmoid: floor {s['lo']:.3g}, ceiling {s['hi']:.3g}, midpoint 10^{s['x0']:.2f} FLOPs, "
          f"10-90% rise over {a.transition_width_decades:.2f} decades of compute")
    print(f"  break: {'yes at %.3g FLOPs' % a.break_compute if a.break_detected else 'no'} ({a.break_reason})")
    print(f"  log-log slope of the remaining error: {a.slopes['before']:.3f} before, {a.slopes['after']:.3f} after")


def run(args: argparse.Namespace) -> int:
    verbs = {"fit": _fit, "compare": _compare, "extrapolate": _extrapolate, "icl": _icl, "ladder": _ladder}
    return verbs[args.verb](args) if args.verb in verbs else 2


def _fit(args: argparse.Namespace) -> int:
    from lmscale.scaling import emergence as em

    data = _load(args)
    a = em.analyze(data, higher_is_better=not args.lower_is_better, chance=args.chance, log_metric=args.log_metric)
    if args.plot:
        from lmscale.scaling.plots import plot_emergence, save

        save(plot_emergence(data, a, log_metric=args.log_metric), args.plot)
    print(dumps_json(a.to_dict(), indent=2)) if args.json else _print_analysis(a)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lmscale.scaling import emergence as em

    disc, cont = _load(args), _load(args, args.continuous)
    da = em.analyze(disc, chance=args.chance)
    ca = em.analyze(cont, higher_is_better=False, log_metric=True)
    cmp = em.compare_metrics(disc, cont)
    if args.plot:
        from lmscale.scaling.plots import plot_metric_pair, save

        save(plot_metric_pair(disc, da, cont, ca, cmp), args.plot)
    if args.json:
        print(dumps_json({"discontinuous": da.to_dict(), "continuous": ca.to_dict(), "comparison": cmp}, indent=2))
        return 0
    _print_analysis(da)
    _print_analysis(ca)
    d, c = cmp["discontinuous"], cmp["continuous"]
    print(f"normalised 10-90% rise: {d['width_decades']:.2f} decades ({d['label']}) vs "
          f"{c['width_decades']:.2f} ({c['label']}); midpoints 10^{d['midpoint_log10_compute']:.2f} vs "
          f"10^{c['midpoint_log10_compute']:.2f} FLOPs")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from lmscale.scaling import emergence as em

    data = _load(args)
    r = em.extrapolate(data, args.target, chance=args.chance, max_decades=args.max_decades,
                       n_bootstrap=args.bootstrap, tokens_per_param=args.tokens_per_param)
    if args.json:
        print(dumps_json(r.to_dict(), indent=2))
    elif r.ok and r.extra_compute_factor == 1.0:
        print(f"{data.label}: {args.target} is already reached at C = {r.compute:.3g} FLOPs (observed)")
    elif r.ok:
        lo, hi = r.compute_ci95
        print(f"{data.label}: accuracy {args.target} at C = {r.compute:.3g} FLOPs (95% CI {lo:.3g} - {hi:.3g}), "
              f"{r.extra_compute_factor:.3g}x the largest observed ({r.observed_max_compute:.3g}); "
              f"compute-optimal N = {r.params:.3g} parameters (95% CI {r.params_ci95[0]:.3g} - "
              f"{r.params_ci95[1]:.3g}) at {r.tokens_per_param:g} tokens/parameter")
    else:
        print(f"{data.label}: cannot say how much compute reaches {args.target}: {r.reason}")
    return 0 if r.ok else 3


def _fmt_params(title: str, tab: dict) -> str:
    parts = []
    for k, v in tab.items():
        lo, hi = v["ci95"]
        if v["identified"]:
            parts.append(f"{k} {v['value']:.3g} [{lo:.3g}, {hi:.3g}]")
        else:
            parts.append(f"{k} not identified ({v['value']:.3g}; {100 * v['at_bound_fraction']:.0f}% of refits on a "
                         "bound)")
    return f"  {title}: " + "; ".join(parts)


def _ladder(args: argparse.Namespace) -> int:
    from lmscale.errors import DataError
    from lmscale.scaling import emergence as em

    try:
        sizes = [float(s) for s in args.predict.split(",") if s.strip()]
    except ValueError:
        raise DataError(f"--predict {args.predict!r}: use comma-separated sizes, e.g. 6.9e9,1.2e10") from None
    data = em.read_pythia_ladder(args.source, args.task, args.metric, loss_task=args.loss_task,
                                 loss_metric=args.loss_metric, deduped=args.deduped)
    r = em.ladder_predict(data, args.fit_below, sizes, chance=args.chance, loss_form=args.loss_law,
                          n_bootstrap=args.bootstrap, seed=args.seed, tokens=args.tokens,
                          loss_min_fraction=args.loss_min_fraction)
    if args.json:
        print(dumps_json(r.to_dict(), indent=2))
        return 0
    print(f"{r.task} {args.metric}: fitted on {', '.join(r.fit_models)} ({r.n_fit_rows} checkpoints; "
          f"{r.n_loss_rows} for the loss law); loss = {r.loss_source}")
    print(_fmt_params(f"step 1 ({r.loss_form}), rmse {r.loss_rmse_log:.3f} in ln L", r.loss_law))
    print(_fmt_params(f"step 2 acc(-L), rmse {r.acc_vs_loss_rmse:.3f}", r.acc_vs_loss))
    print(_fmt_params(f"one step acc(log10 C), rmse {r.one_step_rmse:.3f}", r.one_step))
    print(f"  95% intervals: bootstrap over checkpoints ({r.n_bootstrap} resamples within each model)")
    head = f"{'model':<14}{'N':>9}{'D':>9}{'task loss':>23}{'obs':>7}{'two-step':>22}{'one-step':>22}{'observed':>10}"
    print(head)
    for p in r.predictions:
        def ci(v, c):
            return f"{v:.3f} [{c[0]:.3f},{c[1]:.3f}]"

        obs_l = "" if p.loss_observed is None else f"{p.loss_observed:.3f}"
        obs = "" if p.acc_observed is None else f"{p.acc_observed:.3f}"
        print(f"{p.model:<14}{p.N:>9.3g}{p.D:>9.3g}{ci(p.loss_pred, p.loss_ci95):>23}{obs_l:>7}"
              f"{ci(p.acc_two_step, p.acc_two_step_ci95):>22}{ci(p.acc_one_step, p.acc_one_step_ci95):>22}{obs:>10}")
        if p.acc_observed is not None:
            print(f"{'':<14}absolute error: two-step {p.abs_err_two_step:.3f}, one-step {p.abs_err_one_step:.3f}; "
                  f"step 2 at the observed loss gives {p.acc_at_observed_loss:.3f}")
    return 0


def _icl(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lmscale.experiments.icl_tasks import ICLConfig, run_icl
    from lmscale.io import atomic_write_json
    from lmscale.io.outputs import check_output_dir, mark_output_dir
    from lmscale.scaling.plots import plot_icl, save

    names = ("icl.json", "icl.png")
    check_output_dir(args.out, "--out", overwrite=args.overwrite, kinds=("icl",), names=names,
                     ours=lambda d: {e.name for e in d.iterdir()} <= set(names))
    cfg = ICLConfig.small() if args.small else ICLConfig()
    if args.widths:
        cfg.widths = args.widths
    if args.steps:
        cfg.steps = args.steps
    cfg.seed = args.seed
    cfg.device = args.device
    res = run_icl(cfg, log=None if args.json else (lambda s: print(s, flush=True)))
    out = Path(args.out)
    mark_output_dir(out, "icl", names=names)
    atomic_write_json(out / "icl.json", res)
    save(plot_icl(res), out / "icl.png")
    if args.json:
        print(dumps_json(res, indent=2))
        return 0
    for m in res["models"]:
        for task, t in m["transition"].items():
            desc = (f"accuracy {t['accuracy_before']:.2f} -> {t['accuracy_after']:.2f}, half the rise by "
                    f"{t['tokens_at_half_rise']:.3g} tokens, largest jump {t['largest_jump']:.2f} "
                    f"({100 * t['jump_fraction']:.0f}% of the rise in one evaluation interval)"
                    ) if t.get("risen") else "no rise above chance"
            print(f"d_model={m['d_model']} (N={m['params_non_embedding']:,} non-embedding) {task}: {desc}")
    print(f"wrote {out / 'icl.json'} and {out / 'icl.png'}")
    return 0
