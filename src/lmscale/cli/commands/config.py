"""`lmscale config show [PRESET_OR_FILE] [--section.key value ...]`: the fully resolved run config."""
from __future__ import annotations

import argparse

from lmscale.io import dumps_json

HELP = "print the fully resolved run config of a preset or YAML file, with overrides applied"
DESCRIPTION = (
    "Resolve a run config the way `lmscale pretrain` does (preset, then YAML file, then "
    "--section.key overrides) and print it as YAML that `lmscale pretrain --config FILE` reads back. "
    "Keys left null show what they resolve to as a comment."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="config_command", metavar="{show}")
    s = sub.add_parser("show", help="print the resolved config as YAML", description=DESCRIPTION)
    s.add_argument("target", metavar="PRESET_OR_FILE", nargs="?", default=None,
                   help="preset name (see `lmscale presets`) or run config YAML; default: the built-in defaults")
    s.add_argument("--section", choices=("model", "tokenizer", "data", "objective", "train"),
                   help="print only this section")
    s.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    s.set_defaults(_accepts_overrides=True)


def resolve(target: str | None, extra: list[str]):
    """A RunConfig from a preset name or a YAML file (or the defaults) and `--section.key` overrides."""
    from pathlib import Path

    from lmscale.config import ConfigError, compose, parse_override_args

    overrides = parse_override_args(list(extra))
    if target is None:
        return compose(overrides=overrides)
    if Path(target).is_file():
        return compose(files=[target], overrides=overrides)
    if target.endswith((".yaml", ".yml", ".json")) or "/" in target:
        raise ConfigError(f"config file {target} does not exist")
    return compose(target, overrides=overrides)  # an unknown preset: a did-you-mean error


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config_command", None) != "show":
        args._parser.print_help()
        return 2
    import yaml

    from lmscale.config import to_dict, to_yaml

    cfg = resolve(args.target, getattr(args, "_extra", []) or [])
    if args.json:
        data = to_dict(cfg)
        print(dumps_json(data[args.section] if args.section else data, indent=2))
    elif args.section:
        print(yaml.safe_dump({args.section: to_dict(cfg)[args.section]}, sort_keys=False), end="")
    else:
        print(to_yaml(cfg), end="")
    return 0
