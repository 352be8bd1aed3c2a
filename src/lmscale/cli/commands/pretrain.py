"""`lmscale pretrain`: train an encoder (MLM), decoder (causal LM) or encoder-decoder (span corruption)."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from lmscale.cli.argtypes import OVERWRITE_DIR_HELP, add_device_argument, seed

HELP = "pretrain a BERT/GPT/T5-style model from a corpus or token shards (also under torchrun)"
DESCRIPTION = (
    "Pretrain from a config file or a preset. Any config field can be overridden with "
    "--section.key value (e.g. --train.lr 3e-4 --model.n_layers 2). Budgets: --max-steps, "
    "--train.max_tokens, --train.max_flops or --train.max_time_s; the LR schedule length follows the "
    "budget. Data parallel: torchrun --nproc_per_node N -m lmscale pretrain ... (--train.parallel fsdp "
    "for FSDP2); several nodes: the same command on each node with --nnodes M --rdzv_backend c10d "
    "--rdzv_endpoint HOST:29500. The global batch, the schedule and the inputs do not change with "
    "the number of processes."
)


def _sections_epilog() -> str:
    """The config sections and their keys, for --help (each settable as --section.key VALUE)."""
    from lmscale.config import config_sections

    lines = ["config sections (set any key as --section.key VALUE, e.g. --train.lr 3e-4; print the resolved",
             "config with `lmscale config show PRESET [--section.key VALUE ...]` or add --print-config here):"]
    for section, keys in config_sections().items():
        lines += textwrap.wrap(", ".join(keys), width=100, initial_indent=f"  {section}: ",
                               subsequent_indent=" " * (len(section) + 4))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = "\n".join(textwrap.wrap(DESCRIPTION, width=100))
    p.epilog = _sections_epilog()
    p.add_argument("--config", metavar="FILE.yaml", help="run config (sections model/tokenizer/data/objective/train)")
    p.add_argument("--preset", help="start from a preset (see `lmscale presets`), e.g. gpt-tiny")
    p.add_argument("--corpus", help="catalog name (wikitext-2) or a local text file/directory")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory; trained on the corpus when omitted")
    p.add_argument("--shards", metavar="DIR", help="token shard directory (default RUN_DIR/shards)")
    p.add_argument("--init-from", metavar="DIR",
                   help="continued pretraining: a new run (new optimizer and schedule, step 0) from the weights, "
                        "model config and tokenizer of a run, model or transformers directory")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (metrics, checkpoints, summary.json)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (the schedule length)")
    p.add_argument("--seed", type=seed, help="seed for initialisation, data order and masking")
    add_device_argument(p, default=None, resolve=False,
                        help="train.device: auto (CUDA when present, the default), cpu, cuda or cuda:N")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every K steps (0 = only at the end)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR exactly from its newest checkpoint")
    p.add_argument("--branch-from", metavar="RUN_DIR",
                   help="start a cooldown branch of a wsd run from its stable-phase checkpoint at --at-tokens, "
                        "into --out (the parent is only read)")
    p.add_argument("--at-tokens", type=float, metavar="D",
                   help="the parent's checkpoint a branch starts from, in tokens")
    p.add_argument("--decay-fraction", type=float, metavar="F", default=0.2,
                   help="a branch's cooldown trains F x D more tokens, decaying to the floor (default 0.2)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="resume an older checkpoint whose pickled trainer_state.pt needs the full unpickler "
                        "(it can run code from the file: only for run directories you trust)")
    p.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config as YAML and exit (no training; as `lmscale config show`)")
    p.set_defaults(_accepts_overrides=True)


def _shortcut_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for flag, key in (("corpus", "data.corpus"), ("tokenizer", "data.tokenizer"), ("shards", "data.shards"),
                      ("out", "out"), ("max_steps", "train.max_steps"), ("seed", "train.seed"),
                      ("checkpoint_every", "train.checkpoint_every"), ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    return out


def _init_from_config(args: argparse.Namespace, overrides: dict):
    """The config of a run that starts from `--init-from`: training settings from the preset, file
    and overrides; the model from the checkpoint (model keys asked for must agree with it)."""
    from lmscale.config import compose, load_yaml
    from lmscale.training.init_from import child_config

    asked = dict((load_yaml(args.config).get("model") or {}) if args.config else {})
    asked.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("model.")})
    rest = {k: v for k, v in overrides.items() if not k.startswith("model.")}
    return child_config(compose(args.preset, [args.config] if args.config else [], rest), args.init_from, asked)


def run(args: argparse.Namespace) -> int:
    from lmscale.config import ConfigError, apply_overrides, compose, parse_override_args

    overrides = parse_override_args(list(getattr(args, "_extra", []) or []))
    overrides.update(_shortcut_overrides(args))
    resume = args.resume is not None
    if getattr(args, "init_from", None) is not None and (resume or getattr(args, "branch_from", None)):
        raise ConfigError("--init-from starts a new run from a checkpoint's weights; --resume and --branch-from "
                          "continue a run's own training: give one of them")
    if getattr(args, "branch_from", None) is not None:
        if resume or args.config or args.preset:
            raise ConfigError("--branch-from continues its parent's config; drop --config/--preset/--resume")
        if args.at_tokens is None or args.out is None:
            raise ConfigError("--branch-from needs --at-tokens D and --out NEW_RUN_DIR")
        from lmscale.training.rundir import RunDir

        overrides["train.branch"] = {"parent": args.branch_from, "at_tokens": int(args.at_tokens),
                                     "decay_fraction": args.decay_fraction}
        cfg = apply_overrides(RunDir(args.branch_from).load_config(), overrides)
    elif resume:
        from lmscale.training.rundir import RunDir, check_resume_overrides

        if args.config or args.preset:
            raise ConfigError("--resume continues a run with its own config; drop --config/--preset")
        if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--out {args.out}: --resume continues {args.resume} in place; drop --out (or start "
                              "a new run there with --branch-from/--init-from)")
        saved = RunDir(args.resume).load_config()
        overrides["out"] = args.resume
        cfg = apply_overrides(saved, overrides)
        check_resume_overrides(saved, cfg)  # pretrain checks it too; here it also guards --print-config
    else:
        init_from = getattr(args, "init_from", None)
        if not args.config and not args.preset and init_from is None:
            raise ConfigError("give --config FILE.yaml or --preset NAME (see `lmscale presets`), or --resume RUN_DIR")
        if init_from is not None:
            cfg = _init_from_config(args, overrides)
        else:
            cfg = compose(args.preset, [args.config] if args.config else [], overrides)
    if getattr(args, "print_config", False):
        from lmscale.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    if cfg.out is None:
        raise ConfigError("no run directory: add --out RUN_DIR")

    from lmscale.io import dumps_json
    from lmscale.training.distributed import launch_rank
    from lmscale.training.loop import pretrain

    summary = pretrain(cfg, resume=resume, progress=not (args.no_progress or args.json),
                       trust_checkpoint=args.trust_checkpoint, overwrite=args.overwrite)
    if launch_rank() == 0:  # under torchrun only the first process prints
        if args.json:
            print(dumps_json(summary))
        else:
            print(f"{summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
                  f"val_loss {summary['final_val_loss']}, run dir {cfg.out}")
            if summary.get("error"):
                print(f"lmscale pretrain: {summary['error']}", file=sys.stderr)
    return 0 if summary["status"] == "finished" else 1
