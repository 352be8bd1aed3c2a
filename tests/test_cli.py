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
