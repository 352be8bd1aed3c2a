"""The quickstart's `report.html`: every stage's results on one self-contained, offline page."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lmscale.io import atomic_write_text

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.8em;overflow-x:auto}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img_bytes(png: bytes, alt: str, caption: str = "") -> str:
    b64 = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{_esc(alt)}' src='data:image/png;base64,{b64}'>{cap}</figure>"


def _img_file(path: str | Path, caption: str = "") -> str:
    p = Path(path)
    if not p.is_file():
        return ""
    return _img_bytes(p.read_bytes(), p.stem, caption)


def _curves_png(pretrain: dict[str, Any]) -> bytes | None:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    drawn = False
    for family, run in pretrain.items():
        if not isinstance(run, dict):
            continue
        c = run.get("curve") or {}
        if c.get("step"):
            ax.plot(c["step"], c["loss"], label=f"{family} ({run['objective']}) train")
            drawn = True
        if c.get("eval_step"):
            ax.plot(c["eval_step"], c["val_loss"], "o--", label=f"{family} validation")
    if not drawn:
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per predicted token)")
    ax.set_title("Pretraining curves")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def all_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage's checks against its targets, in stage order."""
    return [c for r in results.values() if isinstance(r, dict) for c in r.get("checks", [])]


def _checks_html(results: dict[str, Any], profile: str) -> str:
    checks = all_checks(results)
    if not checks:
        return ""
    rows = [[c["check"], c["target"], c["measured"], "-" if c["ok"] is None else ("yes" if c["ok"] else "no")]
            for c in checks]
    return (f"<h2>What each stage shows ({_esc(profile)} profile)</h2>"
            + _table(rows, ["phenomenon", "target", "measured", "met"]))


def _data_html(data: dict[str, Any]) -> list[str]:
    return ["<h2>1. Data</h2>",
            f"<p>Corpus <b>{_esc(data['corpus'])}</b>, {data['bytes'] / 1e6:.1f} MB in "
            f"{len(data['splits'])} splits ({_esc(', '.join(data['splits']))}).</p>"]


def _tokenizers_html(tok: dict[str, Any]) -> list[str]:
    kinds = list(tok["tokenizers"])
    words = list(next(iter(tok["rare_words"].values())))
    rows = [[w] + [" ".join(tok["rare_words"][k][w]) for k in kinds] for w in words]
    return ["<h2>2. Tokenizers</h2>",
            _table(rows, ["word"] + [f"{k} ({tok['tokenizers'][k]['vocab_size']})" for k in kinds]),
            "<h3>Classic byte-pair encoding, step by step</h3>",
            f"<pre>{_esc(tok.get('bpe_explain_text', ''))}</pre>"]


def _pretrain_html(pre: dict[str, Any]) -> list[str]:
    rows = []
    for family, run in pre.items():
        s = run["summary"]
        val = s.get("best_val_loss") if s.get("best_val_loss") is not None else s.get("final_val_loss")
        rows.append([family, run["preset"], run["objective"], f"{s['params']['total']:,}", s["steps"],
                     f"{s['tokens']:,}", f"{s['tokens_per_s'] or 0:.0f}", f"{val:.3f}" if val is not None else "-",
                     s["status"]])
    parts = ["<h2>3. Pretraining</h2>",
             _table(rows, ["family", "preset", "objective", "parameters", "steps", "tokens", "tokens/s",
                           "best validation loss", "status"])]
    png = _curves_png(pre)
    if png:
        parts.append(_img_bytes(png, "pretraining curves", "Training and validation loss per optimizer step."))
    return parts


def _use_html(use: dict[str, Any]) -> list[str]:
    parts = ["<h2>4. Using the pretrained models</h2><h3>Fill-mask (encoder)</h3>"]
    for item in use["fill_mask"]:
        parts.append(f"<p><b>{_esc(item['prompt'])}</b></p>")
        parts.append(_table([[p["token"], f"{p['probability']:.4f}"] for p in item["predictions"]],
                            ["candidate", "probability"]))
    parts.append("<h3>Generation (decoder)</h3>")
    parts.append(_table([[g["mode"], g["prompt"], g["text"]] for g in use["generation"]],
                        ["mode", "prompt", "continuation"]))
    inf = use.get("infill")
    if inf:
        parts.append("<h3>Span infilling (encoder-decoder)</h3>")
        parts.append(_table([[inf["prompt"], " | ".join(inf["spans"]), inf["text"]]],
                            ["input", "filled spans", "reassembled"]))
    return parts


def _mean_std_table(table: dict[str, Any], title: str) -> list[str]:
    sizes = sorted({size for init in table.values() for size in init}, key=lambda x: (x == "all", str(x)))
    rows = [[init] + [f"{by_size[s]['mean']:.3f} ± {by_size[s]['std']:.3f}" if s in by_size else "-"
                      for s in sizes] for init, by_size in table.items()]
    return [f"<h3>{_esc(title)}</h3>", _table(rows, ["initialisation"] + [f"{s} labels" for s in sizes])]


def _finetune_html(ft: dict[str, Any]) -> list[str]:
    parts = ["<h2>5. Fine-tuning: pretrained vs random initialisation</h2>"]
    for metric, table in (ft.get("tables") or {}).items():
        parts += _mean_std_table(table, f"own encoder, dev {metric} (mean ± std over seeds)")
    for metric, table in (ft.get("decoder_tables") or {}).items():
        parts += _mean_std_table(table, f"own decoder (last-token head), dev {metric} (mean ± std over seeds)")
    probe = ft.get("minilm_probe")
    if probe:
        parts += _mean_std_table(probe["table"], "all-MiniLM-L6-v2 vs its random twin: frozen features, "
                                                 "ridge probe, dev accuracy (mean ± std over seeds)")
    parts.append(_img_file(ft.get("plot", ""), "Dev metric against the number of labelled examples."))
    return parts


def _scaling_html(sc: dict[str, Any]) -> list[str]:
    parts = ["<h2>6. Scaling</h2>",
             f"<p>{sc.get('counts', {}).get('finished', 0)} runs spanning {sc.get('compute_decades', 0):.2f} "
             "decades of compute.</p>"]
    fit = sc.get("fit") or {}
    if fit.get("params"):
        ci = fit.get("ci95", {})
        parts.append(_table([[k, f"{fit['params'][k]:.4g}", f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "-"]
                             for k in ("E", "A", "B", "alpha", "beta")],
                            ["Chinchilla parameter", "value", "95% bootstrap interval"]))
    front = sc.get("frontier")
    if front:
        p, ci = front["params"], front["ci95"]
        parts.append(f"<p>Compute frontier (the reduced law; E fixed at 0): L(C) = {p['L0']:.4f} "
                     f"(C / {front['C0']:.3g})<sup>-{p['alpha']:.4f}</sup>, 95% intervals L0 "
                     f"[{ci['L0'][0]:.4f}, {ci['L0'][1]:.4f}], alpha [{ci['alpha'][0]:.4f}, "
                     f"{ci['alpha'][1]:.4f}].</p>")
    if sc.get("allocation_note"):
        parts.append(f"<p class='note'>Note: {_esc(sc['allocation_note'])}.</p>")
    alloc = sc.get("allocation")
    if alloc:
        parts.append(f"<p>Compute-optimal allocation at C = {alloc['flops']:.0e} FLOPs: "
                     f"N_opt = {alloc['N_opt']:.3g}, D_opt = {alloc['D_opt']:.3g} "
                     f"({alloc['tokens_per_param']:.1f} tokens per parameter); the 20-tokens-per-parameter "
                     f"rule gives N = {alloc['rule_of_thumb_20']['N']:.3g}.</p>")
    for png in sc.get("figures", []):
        parts.append(_img_file(png, Path(png).stem.replace("_", " ")))
    return parts


def _emergence_html(em: dict[str, Any]) -> list[str]:
    rows = []
    for width, sw in em.get("switches", {}).items():
        rows.append([width, f"{sw['accuracy_from']:.2f} at step {sw['from_step']}" if sw["switched"] else "-",
                     f"{sw['accuracy_to']:.2f} at step {sw['to_step']}" if sw["switched"] else
                     f"never (best {sw['max_accuracy']:.2f})",
                     f"{sw['step_fraction']:.0%}" if sw["switched"] else "-"])
    return ["<h2>7. Emergence: in-context induction switches on</h2>",
            _table(rows, ["d_model", "last accuracy <= 0.1", "first accuracy >= 0.9", "share of the steps"]),
            _img_file(em.get("plot", ""), "In-context accuracy and answer log-probability per training step.")]


SECTIONS = (("data", _data_html), ("tokenizers", _tokenizers_html), ("pretrain", _pretrain_html),
            ("use", _use_html), ("finetune", _finetune_html), ("scaling", _scaling_html),
            ("emergence", _emergence_html))


def render(results: dict[str, Any], fast: bool, profile: str = "cpu", device: str = "cpu") -> str:
    mode = f"{profile} profile{', fast' if fast else ''}, {device}"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lmscale quickstart report</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>lmscale quickstart report ({_esc(mode)})</h1>",
             f"<p>Every figure on this page was made by the {_esc(profile)} profile "
             f"(<code>presets/quickstart/{_esc(profile)}.yaml</code>): token and step budgets and fixed seeds, "
             "so a re-run of the same profile gives the same numbers.</p>",
             _checks_html(results, profile)]
    for name, section in SECTIONS:
        if results.get(name):
            parts += section(results[name])
    parts.append("<details><summary>raw results (JSON)</summary><pre>"
                 + _esc(json.dumps(results, indent=1, default=str)[:200_000]) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_report(out: str | Path, results: dict[str, Any], fast: bool = False, profile: str = "cpu",
                 device: str = "cpu") -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, render(results, fast, profile, device))
    return path
