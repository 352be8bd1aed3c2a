"""`lmscale quickstart --fast` end to end on the real catalog corpora, as a newcomer runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from lmscale.cli import main
from lmscale.experiments.quickstart import (
    STAGES,
    Check,
    Context,
    PretrainResult,
    StageUnavailable,
    all_checks,
    load_profile,
    print_checks,
    render_report,
    run_quickstart,
)

STAGE_NAMES = ["data", "tokenizers", "pretrain", "use", "finetune", "scaling", "emergence", "report"]


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
    for stage in STAGE_NAMES:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    results = {s: json.loads((out / "stages" / f"{s}.json").read_text())["result"] for s in STAGE_NAMES}
    # every family was pretrained and produced a loadable checkpoint used in stage 4
    assert set(results["pretrain"]) == {"encoder", "decoder", "encoder-decoder"}
    for run in results["pretrain"].values():
        assert run["summary"]["status"] == "finished" and run["summary"]["final_val_loss"] > 0
        # token budgets, not wall-clock: the run is exactly as long as the profile says
        family = next(f for f, r in results["pretrain"].items() if r is run)
        assert run["summary"]["tokens"] >= load_profile("cpu", True)["pretrain"]["runs"][family]["max_tokens"]
    # the cpu profile pretrains on movie reviews, so its fill-mask prompts are about films; the lecture's
    # Minnesota prompt is shown with the rank of a place name, not judged
    prompts = [item["prompt"] for item in results["use"]["fill_mask"]]
    assert "This movie was ___." in prompts
    minnesota = next(c for c in results["use"]["checks"] if "place name" in c["check"])
    assert minnesota["ok"] is None and "out of reach" in minnesota["target"]
    assert len(results["use"]["infills"]) == 3
    for item in results["use"]["fill_mask"]:
        probs = [p["probability"] for p in item["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert set(results["finetune"]["tables"]["accuracy"]) >= {"pretrained", "random"}
    assert set(results["scaling"]["fit"]["params"]) >= {"E", "A", "B", "alpha", "beta"}
    assert results["scaling"]["compute_decades"] > 1.0 and results["scaling"]["frontier"]["params"]["alpha"] > 0
    assert set(results["emergence"]["switches"]) == {"32", "64"}
    checks = [c["check"] for s in STAGE_NAMES for c in results[s].get("checks", [])]
    assert any("place name" in c for c in checks) and any("induction" in c for c in checks)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "This movie was" in html and "data:image/png;base64," in html
    assert "cpu profile" in html and "What each stage shows" in html
    # the BPE walk-through is the textbook example
    assert "ZabdZabac" in results["tokenizers"]["bpe_explain_text"]
    # a second run skips every finished stage
    again = _run(["--fast", "--out", str(out)], env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done earlier, skipped") == len(STAGE_NAMES)


def test_profiles_are_readable_presets_with_token_budgets():
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
    assert rec["mode"] == "gpu-full" and {r["family"] for r in rec["result"]["runs"]} == {"encoder", "decoder"}
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


def _png(path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(path, format="png")
    return str(path)


def _records(tmp_path) -> dict[str, dict]:
    """One record per stage in the layout the quickstart writes (`OUT/stages/<name>.json`'s result)."""
    check = {"check": "a <b>check</b>", "target": ">= 1", "measured": "2 of 2", "ok": True}
    summary = {"status": "finished", "params": {"total": 1_880_000}, "steps": 10, "tokens": 40960,
               "tokens_per_s": 1234.5, "best_val_loss": 6.5, "final_val_loss": 6.6}
    run = {"preset": "bert-tiny", "run_dir": str(tmp_path / "runs/encoder"), "objective": "mlm",
           "model_dir": str(tmp_path / "runs/encoder/best"), "summary": summary,
           "curve": {"step": [1, 2], "loss": [9.0, 8.0], "eval_step": [2], "val_loss": [8.5]}}
    table = {"pretrained": {"100": {"mean": 0.6, "std": 0.01, "n": 2}, "all": {"mean": 0.7, "std": 0.0, "n": 1}},
             "random": {"100": {"mean": 0.5, "std": 0.02, "n": 2}}}
    lead = {"100": {"margin": 0.1, "std": 0.02, "ahead": True}}
    sw = {"switched": True, "from_step": 10, "to_step": 20, "step_fraction": 0.1, "accuracy_from": 0.05,
          "accuracy_to": 0.95, "low": 0.1, "high": 0.9}
    return {
        "data": {"corpus": "wikitext-2", "splits": {"train": [str(tmp_path / "t.txt")]}, "bytes": 2_000_000},
        "tokenizers": {"tokenizers": {k: {"dir": str(tmp_path / k), "vocab_size": 2000, "train_s": 1.0}
                                      for k in ("bpe", "wordpiece", "unigram")},
                       "rare_words": {k: {"photosynthesis": ["photo", "synthesis"]} for k in ("bpe", "wordpiece",
                                                                                             "unigram")},
                       "bpe_explain": {"merges": []}, "bpe_explain_text": "aaabdaaabac -> ZabdZabac"},
        "pretrain": {"encoder": run, "decoder": {**run, "objective": "causal"}},
        "use": {"fill_mask": [{"prompt": "Paris is <the> capital of ___.",
                               "predictions": [{"token": "france", "token_id": 7, "probability": 0.5}]}],
                "generation": [{"prompt": "The album", "mode": "greedy", "text": " was & is"}],
                "infills": [{"prompt": "Thank you <X> me", "spans": ["for inviting"],
                             "text": "Thank you for inviting me"}],
                "checks": [check]},
        "finetune": {"runs": [{"family": family, "task": task, "tables": {"accuracy": table}, "ahead": lead,
                               "transfer": [{"labels": 100, "score": 0.6, "random_score": 0.5,
                                             "equivalent_labels": 400.0, "transferred": 300.0, "factor": 4.0,
                                             "how": "interpolated"}],
                               "plot": _png(tmp_path / f"{family}-{task}.png"), "results": str(tmp_path / "r.json")}
                              for family in ("encoder", "decoder") for task in ("sentiment-movies", "imdb")],
                     "tables": {"accuracy": table},
                     "minilm_probe": {"rows": [], "table": table, "ahead": lead}, "checks": [check]},
        "scaling": {"registry": str(tmp_path / "registry.sqlite"),
                    "fit": {"params": {"E": 1.0, "A": 2.0, "B": 3.0, "alpha": 0.3, "beta": 0.3}, "ci95": {}},
                    "frontier": {"params": {"L0": 5.0, "alpha": 0.05}, "C0": 1e12,
                                 "ci95": {"L0": [4.9, 5.1], "alpha": [0.04, 0.06]}, "frontier": [0, 1, 2],
                                 "interval_ratio": {"L0": 1.04, "alpha": 1.5}, "identified": True},
                    "counts": {"finished": 9}, "compute_decades": 1.6, "sweep_s": 10.0, "workers": 2,
                    "law_identified": False, "checks": [{**check, "ok": False}],
                    "report": str(tmp_path / "sweep/report.html"), "figures": [_png(tmp_path / "loss_vs_compute.png")],
                    "allocation_note": "no allocation"},
        "emergence": {"config": {"widths": [32, 64]}, "models": [], "switches": {"32": sw, "64": {
            "switched": False, "max_accuracy": 0.4}}, "checks": [{**check, "ok": None}],
            "plot": _png(tmp_path / "icl.png")},
        "report": {"report": str(tmp_path / "report.html")},
    }


def test_stage_records_load_into_typed_results_and_write_back_unchanged(tmp_path):
    records = _records(tmp_path)
    assert [s.name for s in STAGES] == STAGE_NAMES == list(records)
    for stage in STAGES:
        result = stage.result.from_dict(records[stage.name])
        assert result.to_dict() == records[stage.name], stage.name
    # records of the single-task layout still load (one run per family)
    old_ft = {"tables": {"accuracy": {}}, "plot": "p.png", "results": "r.json", "encoder_ahead": {},
              "decoder_tables": {"accuracy": {}}, "decoder_ahead": {}, "checks": []}
    assert [r.family for r in STAGES[4].result.from_dict(old_ft).runs] == ["encoder", "decoder"]
    old_use = {"fill_mask": [], "generation": [], "infill": {"prompt": "p", "spans": ["a"], "text": "t"}}
    assert STAGES[3].result.from_dict(old_use).infill.spans == ["a"]
    pre = PretrainResult.from_dict(records["pretrain"])
    # later stages read typed fields: the best checkpoint and its validation loss
    assert pre.model_dir("encoder").endswith("best") and pre.models["encoder"].val_loss == 6.5
    with pytest.raises(StageUnavailable, match="encoder-decoder"):
        pre.model_dir("encoder-decoder")


def test_report_is_one_escaped_offline_page_headed_by_every_stage_check(tmp_path):
    records = _records(tmp_path)
    results = {s.name: s.result.from_dict(records[s.name]) for s in STAGES if s.name != "report"}
    html = render_report(results, fast=True, profile="cpu", device="cpu")
    assert "What each stage shows (cpu profile)" in html and "cpu profile, fast, cpu" in html
    # text from the stages is escaped, never markup
    assert "Paris is &lt;the&gt; capital" in html and "a &lt;b&gt;check&lt;/b&gt;" in html and "<b>check" not in html
    # the checks table is the stages' checks, in stage order, before any stage section
    checks = all_checks(results)
    assert [c.met for c in checks] == ["yes", "yes", "no", "-"]
    assert html.index("phenomenon") < html.index("<h2>1. Data</h2>")
    # figures embedded, none linked: pretraining curves, one per fine-tuning run (2 families x 2
    # tasks), a sweep figure, emergence
    assert html.count("data:image/png;base64,") == 7 and "src=\"http" not in html and "file:" not in html
    for heading in ("1. Data", "2. Tokenizers", "3. Pretraining", "4. Using", "5. Fine-tuning", "6. Scaling",
                    "7. Emergence"):
        assert f"<h2>{heading}" in html
    assert "100 labels" in html and html.index("100 labels") < html.index("all labels")


def test_checks_table_prints_each_check_and_whether_it_was_met():
    console = Console(record=True, width=200)
    print_checks(console, [Check("place name", "in the top 5", "none", False), Check("range", ">= 1", 2.5, True),
                           Check("leads", "at every size", "-", None)], "cpu")
    text = console.export_text()
    assert "What this stage shows (cpu profile)" in text
    rows = [line.split("│") for line in text.splitlines() if "│" in line]
    assert [r[-2].strip() for r in rows] == ["no", "yes", "-"]


def test_a_rerun_loads_every_finished_stage_and_rebuilds_the_report(tmp_path):
    records = _records(tmp_path)
    out = tmp_path / "qs"
    (out / "stages").mkdir(parents=True)
    for name, result in records.items():
        if name != "report":
            (out / "stages" / f"{name}.json").write_text(json.dumps({"stage": name, "mode": "cpu-fast",
                                                                    "result": result}))
    console = Console(record=True, width=200)
    assert run_quickstart(out=out, fast=True, profile="cpu", device="cpu", console=console) == 0
    text = console.export_text()
    assert text.count("done earlier, skipped") == 7 and "report written to" in text
    assert "no allocation" not in text  # a loaded stage is not printed again; its checks are, once, at the end
    assert text.count("a <b>check</b>") == 4
    assert "Paris is &lt;the&gt;" in (out / "report.html").read_text(encoding="utf-8")
    saved = json.loads((out / "stages" / "report.json").read_text())
    assert saved["mode"] == "cpu-fast" and saved["result"] == {"report": str(out / "report.html")}


def test_a_stage_whose_inputs_are_missing_says_which_stage_to_run(tmp_path):
    ctx = Context(out=tmp_path, profile_name="cpu", profile=load_profile("cpu", True), fast=True,
                  corpus="wikitext-2", device="cpu", console=Console(record=True))
    with pytest.raises(StageUnavailable, match="'pretrain' stage"):
        ctx.need(PretrainResult)
    console = Console(record=True, width=200)
    assert run_quickstart(out=tmp_path / "o", fast=True, profile="cpu", device="cpu", only=["use"],
                          console=console) == 1
    text = console.export_text()
    assert "cannot run" in text and "--only pretrain" in text
