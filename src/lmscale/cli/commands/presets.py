"""`lmscale presets`: the published architectures and tiny CPU presets."""
from __future__ import annotations

import argparse

from lmscale.io import dumps_json

HELP = "list model presets (BERT, GPT, GPT-2, GPT-3, T5, Transformer, Pythia, Llama, tiny CPU models)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from lmscale.config import load_preset, preset_info, preset_names

    rows = []
    order = {"transformer": 0, "bert": 1, "gpt1": 2, "gpt2": 3, "gpt3": 4, "t5": 5, "pythia": 6, "tinyllama": 7,
             "gpt-": 8, "llama": 9}

    def key(name: str) -> tuple:
        family = next((v for k, v in order.items() if name.startswith(k)), 10)
        pub = preset_info(name).get("published_params") or 0
        return (name.endswith("-tiny"), family, pub, name)

    for name in sorted(preset_names(), key=key):
        m = load_preset(name).model
        info = preset_info(name)
        layers = f"{m.n_layers}+{m.decoder_layers}" if m.n_decoder_layers is not None else str(m.n_layers)
        rows.append({
            "name": name, "family": m.family, "layers": layers, "d_model": m.d_model,
            "n_heads": m.n_heads, "n_kv_heads": m.kv_heads, "d_head": m.head_dim, "d_ff": m.ffn_dim,
            "vocab_size": m.vocab_size,
            "n_ctx": m.max_positions, "published_params": info.get("published_params"),
            "description": info.get("description", ""),
        })
    if args.json:
        print(dumps_json(rows, indent=2))
        return 0
    from rich.table import Table

    from lmscale.io import console

    table = Table(title="lmscale presets")
    for col in ("name", "family", "layers", "d_model", "heads", "d_head", "d_ff", "vocab", "n_ctx", "published"):
        table.add_column(col, justify="right" if col not in ("name", "family") else "left", no_wrap=True)
    for r in rows:
        pub = r["published_params"]
        pub_s = "-" if not pub else (f"{pub / 1e9:.1f}B" if pub >= 1e9 else f"{pub / 1e6:.0f}M")
        # grouped-query attention shows as query/key-value heads, e.g. 32/4
        heads = str(r["n_heads"]) if r["n_kv_heads"] == r["n_heads"] else f"{r['n_heads']}/{r['n_kv_heads']}"
        table.add_row(r["name"], r["family"], r["layers"], str(r["d_model"]), heads,
                      str(r["d_head"]), str(r["d_ff"]), str(r["vocab_size"]), str(r["n_ctx"]), pub_s)
    console().print(table)
    return 0
