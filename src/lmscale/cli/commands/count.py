"""`lmscale count PRESET_OR_CONFIG`: exact parameters and training FLOPs per token, instantly."""
from __future__ import annotations

import argparse

from lmscale.cli.argtypes import positive_int, unit_interval
from lmscale.io import dumps_json

HELP = "count parameters and training FLOPs/token of a preset or config (no model is built)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="preset name (see `lmscale presets`), a YAML/JSON config file, or a model directory")
    p.add_argument("--seq-len", type=positive_int, default=None, help="context length for the FLOP conventions "
                   "(default: train.seq_len of the config, else model.max_positions)")
    p.add_argument("--mlm-fraction", type=unit_interval, default=0.15,
                   help="share of positions with an MLM loss (encoders; exact convention)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(_accepts_overrides=True)


def load_model_config(target: str, overrides: dict | None = None):
    """(ModelConfig, seq_len or None, published params or None) from a preset name or a file."""
    from pathlib import Path

    from lmscale.config import ConfigError, compose, load_yaml, model_config_from_dict, preset_info

    path = Path(target)
    published = None
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"  # a saved model directory
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{target} is a directory without config.json: not a model directory or a config file")
    if path.exists() and path.is_file():
        data = load_yaml(path)
        if not data:
            raise ConfigError(f"config file {path} is empty: expected a run config or a model config")
        if "model" in data and isinstance(data["model"], dict) and "format" in data:
            data = data["model"]  # a model directory's config.json
        if "model" in data or "preset" in data:
            run = compose(files=[data], overrides=overrides)
            return run.model, run.train.seq_len, published
        model_over = {k.split(".", 1)[1]: v for k, v in (overrides or {}).items() if k.startswith("model.")}
        other = [k for k in (overrides or {}) if not k.startswith("model.")]
        if other:
            raise ConfigError(f"a bare model config accepts only --model.* overrides, got --{other[0]}")
        cfg = model_config_from_dict({**data, **model_over})
        return cfg, None, published
    if path.suffix in (".yaml", ".yml", ".json") or "/" in target:
        raise ConfigError(f"config file {target} does not exist")
    run = compose(target, overrides=overrides)  # an unknown preset: a did-you-mean error
    published = preset_info(target).get("published_params")
    return run.model, run.train.seq_len, published


def run(args: argparse.Namespace) -> int:
    from lmscale.config import ConfigError, parse_override_args
    from lmscale.scaling.counting import count_parameters, flops_per_token

    overrides = parse_override_args(getattr(args, "_extra", []) or [])
    cfg, seq_len, published = load_model_config(args.target, overrides)
    t = args.seq_len if args.seq_len is not None else (seq_len or cfg.max_positions)
    if t <= 0:
        raise ConfigError(f"--seq-len={t} must be positive")
    try:
        flops = flops_per_token(cfg, seq_len=t, mlm_fraction=args.mlm_fraction)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = dict(count_parameters(cfg))
    out["flops_per_token"] = flops
    if args.json:
        print(dumps_json(out, indent=2))
        return 0
    from rich.markup import escape
    from rich.table import Table

    from lmscale.io import console

    con = console()
    tab = Table(title=f"{args.target} ({cfg.family}, seq_len {t})")
    tab.add_column("quantity")
    tab.add_column("value", justify="right")
    for k in ("params_total", "params_embedding", "params_non_embedding"):
        tab.add_row(k, f"{out[k]:,}")
    if published:
        tab.add_row("published", f"{published:,.0f} ({out['params_total'] / published - 1:+.2%})")
    for k, v in flops.items():
        tab.add_row(escape(f"FLOPs/token [{k}]"), f"{v:.4g}")
    con.print(tab)
    return 0
