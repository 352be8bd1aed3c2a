"""`lmscale quickstart --fast` end to end on real WikiText-2, as a newcomer runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmscale.cli import main
from lmscale.experiments.quickstart import load_profile

STAGES = ["data", "tokenizers", "pretrain", "use", "finetune", "scaling", "emergence", "report"]


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
        # token budgets, not wall-clock: the run is exactly as long as the profile says
        family = next(f for f, r in results["pretrain"].items() if r is run)
        assert run["summary"]["tokens"] >= load_profile("cpu", True)["pretrain"]["runs"][family]["max_tokens"]
    prompts = [item["prompt"] for item in results["use"]["fill_mask"]]
    assert "University of Minnesota is located in ___, Minnesota." in prompts
    for item in results["use"]["fill_mask"]:
        probs = [p["probability"] for p in item["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert set(results["finetune"]["tables"]["accuracy"]) >= {"pretrained", "random"}
    assert set(results["scaling"]["fit"]["params"]) >= {"E", "A", "B", "alpha", "beta"}
    assert results["scaling"]["compute_decades"] > 1.0 and results["scaling"]["frontier"]["params"]["alpha"] > 0
    assert set(results["emergence"]["switches"]) == {"32", "64"}
    checks = [c["check"] for s in STAGES for c in results[s].get("checks", [])]
    assert any("place name" in c for c in checks) and any("induction" in c for c in checks)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "University of Minnesota" in html and "data:image/png;base64," in html
    assert "cpu profile" in html and "What each stage shows" in html
    # the BPE walk-through is the textbook example
    assert "ZabdZabac" in results["tokenizers"]["bpe_explain_text"]
    # a second run skips every finished stage
    again = _run(["--fast", "--out", str(out)], env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done earlier, skipped") == len(STAGES)


def test_profiles_are_readable_presets_with_token_budgets():
    from lmscale.experiments.quickstart import load_profile

    for name in ("cpu", "gpu"):
        for fast in (False, True):
            p = load_profile(name, fast)
            for run in p["pretrain"]["runs"].values():
                assert int(run["max_tokens"]) > 0
            assert p["sweep"]["tokens"] and p["emergence"]["steps"] > 0
    assert load_profile("cpu", True)["pretrain"]["runs"]["decoder"]["max_tokens"] < \
        load_profile("cpu")["pretrain"]["runs"]["decoder"]["max_tokens"]


@pytest.mark.slow
def test_gpu_profile_runs_on_the_cpu_with_tiny_budgets(shared_data, tmp_path, monkeypatch):
    """The gpu profile's own stages (wider models, early stopping, the decoder's pretraining effect,
    the MiniLM probe when its package is at hand) with budgets cut to seconds, forced onto the CPU.
    Its sweep and emergence stages run the cpu profile's code with other sizes (the fast test)."""
    from lmscale.experiments.quickstart import run_quickstart

    monkeypatch.setenv("LMSCALE_DATA_DIR", str(shared_data))
    tiny = {"tokenizers": {"vocab_size": 2000, "max_bytes": 1000000},
            "pretrain": {"eval_every": 20, "runs": {f: {"max_tokens": 30000, "overrides": {
                "train.batch_size": 16, "model.d_model": 64, "model.d_ff": 128, "model.n_heads": 2}}
                for f in ("encoder", "decoder")} | {"encoder-decoder": {"max_tokens": 30000, "overrides": {
                    "train.batch_size": 16, "model.d_model": 64, "model.d_ff": 128, "model.d_head": 32}}}},
            "finetune": {"sizes": [50], "seeds": 2, "epochs": 1, "min_steps": 4, "max_steps": 4, "evaluations": 1,
                         "regression": False, "minilm_probe": False, "probe_max_train": 100}}
    code = run_quickstart(out=tmp_path / "qs", profile="gpu", device="cpu", overrides=tiny,
                          only=["data", "tokenizers", "pretrain", "use", "finetune", "report"])
    assert code == 0
    rec = json.loads((tmp_path / "qs" / "stages" / "finetune.json").read_text())
    assert rec["mode"] == "gpu-full" and "decoder_ahead" in rec["result"]
    pre = json.loads((tmp_path / "qs" / "stages" / "pretrain.json").read_text())["result"]
    assert all(r["summary"]["status"] in ("finished", "early_stopped") for r in pre.values())


def test_device_and_profile_flags_are_checked(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path), "--device", "banana"]) == 2
    assert "--device 'banana'" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["quickstart", "--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


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


def test_quickstart_refuses_a_foreign_output_directory(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["quickstart", "--fast", "--out", str(foreign)]) == 2
    assert "--out" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
