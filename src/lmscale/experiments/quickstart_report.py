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


def _checks_html(results: dict[str, Any], profile: str) -> str:
    checks = [c for r in results.values() if isinstance(r, dict) for c in r.get("checks", [])]
    if not checks:
        return ""
    rows = [[c["check"], c["target"], c["measured"], "-" if c["ok"] is None else ("yes" if c["ok"] else "no")]
            for c in checks]
    return (f"<h2>What each stage shows ({_esc(profile)} profile)</h2>"
            + _table(rows, ["phenomenon", "target", "measured", "met"]))


def render(results: dict[str, Any], fast: bool, profile: str = "cpu", device: str = "cpu") -> str:
    mode = f"{profile} profile{', fast' if fast else ''}, {device}"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lmscale quickstart report</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>lmscale quickstart report ({_esc(mode)})</h1>",
             f"<p>Every figure on this page was made by the {_esc(profile)} profile "
             f"(<code>presets/quickstart/{_esc(profile)}.yaml</code>): token and step budgets and fixed seeds, "
             "so a re-run of the same profile gives the same numbers.</p>",
             _checks_html(results, profile)]
    data = results.get("data")
    if data:
        parts.append("<h2>1. Data</h2>")
        parts.append(f"<p>Corpus <b>{_esc(data['corpus'])}</b>, {data['bytes'] / 1e6:.1f} MB in "
                     f"{len(data['splits'])} splits ({_esc(', '.join(data['splits']))}).</p>")
    tok = results.get("tokenizers")
    if tok:
        parts.append("<h2>2. Tokenizers</h2>")
        kinds = list(tok["tokenizers"])
        words = list(next(iter(tok["rare_words"].values())))
        rows = [[w] + [" ".join(tok["rare_words"][k][w]) for k in kinds] for w in words]
        parts.append(_table(rows, ["word"] + [f"{k} ({tok['tokenizers'][k]['vocab_size']})" for k in kinds]))
        parts.append("<h3>Classic byte-pair encoding, step by step</h3>")
        parts.append(f"<pre>{_esc(tok.get('bpe_explain_text', ''))}</pre>")
    pre = results.get("pretrain")
    if pre:
        parts.append("<h2>3. Pretraining</h2>")
        rows = []
        for family, run in pre.items():
            if not isinstance(run, dict):
                continue
            s = run["summary"]
            rows.append([family, run["preset"], run["objective"], f"{s['params']['total']:,}", s["steps"],
                         f"{s['tokens']:,}", f"{s['tokens_per_s']:.0f}",
                         f"{s['final_val_loss']:.3f}" if s.get("final_val_loss") is not None else "-"])
        parts.append(_table(rows, ["family", "preset", "objective", "parameters", "steps", "tokens",
                                   "tokens/s", "validation loss"]))
        png = _curves_png(pre)
        if png:
            parts.append(_img_bytes(png, "pretraining curves", "Training and validation loss per optimizer step."))
    use = results.get("use")
    if use:
        parts.append("<h2>4. Using the pretrained models</h2><h3>Fill-mask (encoder)</h3>")
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
    ft = results.get("finetune")
    if ft:
        parts.append("<h2>5. Fine-tuning: pretrained vs random initialisation</h2>")
        for metric, table in (ft.get("tables") or {}).items():
            sizes = sorted({size for init in table.values() for size in init}, key=lambda x: (x == "all", str(x)))
            rows = []
            for init, by_size in table.items():
                rows.append([init] + [
                    f"{by_size[s]['mean']:.3f} ± {by_size[s]['std']:.3f}" if s in by_size else "-" for s in sizes])
            parts.append(f"<h3>dev {_esc(metric)} (mean ± std over seeds)</h3>")
            parts.append(_table(rows, ["initialisation"] + [f"{s} labels" for s in sizes]))
        parts.append(_img_file(ft.get("plot", ""), "Dev metric against the number of labelled examples."))
    sc = results.get("scaling")
    if sc:
        parts.append("<h2>6. Scaling</h2>")
        fit = sc.get("fit") or {}
        if fit.get("params"):
            ci = fit.get("ci95", {})
            parts.append(_table([[k, f"{fit['params'][k]:.4g}",
                                  f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "-"]
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
    parts.append("<h2>What tiny CPU models can and cannot do</h2><p class='note'>These models have about "
                 "2 million parameters and saw a few million tokens for a few minutes on a CPU; the lecture's "
                 "BERT-Large has 340 million parameters and saw 3.3 billion words for days on TPUs. Expect "
                 "fill-mask guesses dominated by frequent words, repetitive greedy text and small fine-tuning "
                 "gains: the pipeline is the same, the scale is not. The scaling sweep shows how loss falls "
                 "with parameters and tokens, which is the way from here to there.</p>")
    parts.append("<details><summary>raw results (JSON)</summary><pre>"
                 + _esc(json.dumps(results, indent=1, default=str)[:200_000]) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_report(out: str | Path, results: dict[str, Any], fast: bool = False, profile: str = "cpu",
                 device: str = "cpu") -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, render(results, fast, profile, device))
    return path
