"""The command line: every documented subcommand is registered and `presets` lists the table."""
from __future__ import annotations

import json

from lmscale.cli.main import COMMANDS, build_parser, main


def test_every_documented_subcommand_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_presets_json_lists_gpt3_175b(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["gpt3-175b"]["layers"] == "96"
    assert by_name["gpt3-175b"]["d_model"] == 12288


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "presets" in capsys.readouterr().out


def test_version(capsys):
    import pytest

    from lmscale import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmscale {__version__}"


def test_config_show_prints_the_resolved_yaml_that_reads_back(tmp_path, capsys):
    import yaml

    from lmscale.config import RunConfig, from_dict, load_run_config

    assert main(["config", "show", "llama-tiny", "--model.d_model", "64", "--train.lr=3e-4"]) == 0
    text = capsys.readouterr().out
    assert "  d_head: null  # 16\n" in text and "  kind: null  # bpe\n" in text
    shown = from_dict(RunConfig, yaml.safe_load(text))
    assert shown == load_run_config(preset="llama-tiny", overrides={"model.d_model": 64, "train.lr": 3e-4})
    (tmp_path / "run.yaml").write_text(text)  # what it prints is a config file pretrain reads
    assert load_run_config(tmp_path / "run.yaml") == shown
    assert main(["config", "show", str(tmp_path / "run.yaml"), "--section", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lr"] == 3e-4
    assert main(["config", "show", "gpt-tiny", "--train.learning_rate", "1e-3"]) == 2
    assert "did you mean --train.lr?" in capsys.readouterr().err
    assert main(["config", "show", "gpt-tinyy"]) == 2
    assert "did you mean 'gpt-tiny'" in capsys.readouterr().err
    assert main(["config"]) == 2


def test_pretrain_print_config_and_help_lists_the_sections(capsys):
    assert main(["pretrain", "--preset", "pythia-70m", "--model.n_layers", "2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  n_layers: 2\n" in out and "  rotary_fraction: 0.25\n" in out and "preset: pythia-70m" in out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices["pretrain"].format_help()
    assert "lmscale config show" in text and "--print-config" in text
    for section, key in (("model", "n_kv_heads"), ("tokenizer", "min_frequency"), ("data", "corpus"),
                         ("objective", "noise_density"), ("train", "warmup_steps")):
        line = next(x for x in text.splitlines() if x.startswith(f"  {section}: "))
        assert key in text[text.index(line):], section


def _device_flags(parser, prog=""):
    """(command path, --device action) of every (sub)command that has one."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _device_flags(sub, f"{prog} {name}".strip())
        elif "--device" in action.option_strings:
            yield prog, action


def test_device_flag_is_one_argument_everywhere(capsys, monkeypatch):
    """Every `--device` (except cost's, a hardware name) is `add_device_argument`'s: the spelling is
    checked while parsing (one line, exit 2); resolving commands get the device this machine has."""
    import torch

    from lmscale.cli.argtypes import resolve_device_argument

    flags = dict(_device_flags(build_parser()))
    assert {"quickstart", "pretrain", "generate", "fill-mask", "eval perplexity", "eval fewshot", "finetune",
            "predict", "experiment pretraining-effect", "emergence icl", "sweep run"} <= set(flags)
    assert {type(a).__name__ for cmd, a in flags.items() if cmd != "cost"} == {"_DeviceSpelling"}
    assert main(["generate", "ckpt", "a", "--device", "cuda:x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device 'cuda:x' is not a device" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = build_parser().parse_args(["generate", "ckpt", "a"])
    resolve_device_argument(args)
    assert args.device == "cpu"
    args = build_parser().parse_args(["quickstart"])  # the quickstart picks its profile from `auto`
    resolve_device_argument(args)
    assert args.device == "auto"
    assert main(["fill-mask", "ckpt", "a [MASK]", "--device", "cuda"]) == 2
    assert "--device=cuda but CUDA is not available" in capsys.readouterr().err
