"""`lmscale quickstart --fast` end to end on real WikiText-2, as a newcomer runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmscale.cli import main

STAGES = ["data", "tokenizers", "pretrain", "use", "finetune", "scaling", "report"]


def _run(args: list[str], env_extra: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "lmscale", "quickstart", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
def test_fast_quickstart_runs_every_stage_and_resumes(shared_data, tmp_path):
    out = tmp_path / "qs"
    env = {"LMSCALE_DATA_DIR": str(shared_data)}
    proc = _run(["--fast", "--out", str(out)], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    results = {s: json.loads((out / "stages" / f"{s}.json").read_text())["result"] for s in STAGES}
    # every family was pretrained and produced a loadable checkpoint used in stage 4
    assert set(results["pretrain"]) == {"encoder", "decoder", "encoder-decoder"}
    for run in results["pretrain"].values():
        assert run["summary"]["status"] == "finished" and run["summary"]["final_val_loss"] > 0
    prompts = [item["prompt"] for item in results["use"]["fill_mask"]]
    assert "University of Minnesota is located in ___, Minnesota." in prompts
    for item in results["use"]["fill_mask"]:
        probs = [p["probability"] for p in item["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert set(results["finetune"]["tables"]["accuracy"]) >= {"pretrained", "random"}
    assert set(results["scaling"]["fit"]["params"]) >= {"E", "A", "B", "alpha", "beta"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "University of Minnesota" in html and "data:image/png;base64," in html
    # the BPE walk-through is the textbook example
    assert "ZabdZabac" in results["tokenizers"]["bpe_explain_text"]
    # a second run skips every finished stage
    again = _run(["--fast", "--out", str(out)], env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done earlier, skipped") == len(STAGES)


def test_missing_corpus_says_how_to_use_local_text(tmp_path, capsys):
    code = main(["quickstart", "--fast", "--out", str(tmp_path / "o"), "--corpus", str(tmp_path / "nope")])
    assert code == 1
    out = capsys.readouterr().out
    assert "cannot run" in out and "--corpus path/to/texts/" in out
    assert not (tmp_path / "o" / "stages" / "data.json").exists()


def test_empty_corpus_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["quickstart", "--fast", "--out", str(tmp_path / "o"), "--corpus", str(empty)])
    assert code == 1
    assert not (tmp_path / "o" / "stages" / "tokenizers.json").exists()


def test_unknown_stage_is_a_clear_error(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--only", "pretrian"]) == 2
    assert "unknown stage 'pretrian'" in capsys.readouterr().err
