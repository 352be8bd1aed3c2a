"""Experiment trackers: `train.report_to` mirrors metrics.jsonl to W&B (offline) and MLflow (a
local file store), read back with each tool's own client or file format; a resume continues the
same tracker runs; a sweep logs one tracker run per run with its N, D and C."""
from __future__ import annotations

import json
import random
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from lmscale.config import ConfigError, TrainConfig, apply_overrides, load_run_config
from lmscale.training import loop
from lmscale.training import trackers as trk

WORDS = "the cat sat on a mat while dogs were running over lazy foxes and birds sang near rivers".split()
TINY = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.d_ff": 64, "model.vocab_size": 300}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lmscale.data.shards import prepare
    from lmscale.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("trackers-data")
    r = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 60))) + ".\n\n"
                              for _ in range(200)))
    tok = train_tokenizer("bpe", [corpus.read_text()], 300)
    tok.save(root / "tok")
    prepare(str(corpus), tok, root / "shards", workers=1, progress=False)
    return {"corpus": corpus, "tokenizer": root / "tok", "shards": root / "shards"}


@pytest.fixture
def offline_stores(tmp_path, monkeypatch):
    """W&B offline and an MLflow file store under tmp_path; nothing reaches the network."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def make_cfg(data, run_dir: Path, **overrides):
    ov = {**TINY, "data.tokenizer": str(data["tokenizer"]), "data.shards": str(data["shards"]), "out": str(run_dir),
          "train.seq_len": 32, "train.batch_size": 8, "train.max_steps": 4, "train.eval_every": 2,
          "train.eval_batches": 2, "train.log_every": 1, "train.warmup_steps": 1, "train.checkpoint_every": 2}
    ov.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_run_config(preset="gpt-tiny", overrides=ov)


def expected_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What every tracker must hold: each record's scalars, by name, in step order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):  # JSON holds no NaN
                out.setdefault(f"{rec['event']}/{k}", []).append((rec["step"], v))
    return out


def wandb_records(path: Path) -> list:
    """The records of a `.wandb` file (W&B's append-only log: 32 KiB blocks of CRC-checked
    chunks holding protobuf `Record`s), parsed with W&B's own protobuf classes."""
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    raw = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def wandb_run(run_dir: Path, run_id: str, settle_s: float = 60.0) -> tuple[list[dict], dict, list]:
    """(history rows, config, run records) over every offline session of W&B run `run_id`. W&B's
    own service process writes the offline log after `finish()` returns; on a busy machine the
    history can land a moment later, so the log is read again until it holds some (or `settle_s`)."""
    deadline = time.monotonic() + settle_s
    while True:
        rows, config, runs = _read_wandb_run(run_dir, run_id)
        if rows or time.monotonic() > deadline:
            return rows, config, runs
        time.sleep(0.5)


def _read_wandb_run(run_dir: Path, run_id: str) -> tuple[list[dict], dict, list]:
    rows, config, runs = [], {}, []
    for f in sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "run":
                runs.append(rec.run)
                for item in rec.run.config.update:
                    config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "config":
                for item in rec.config.update:
                    config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config, runs


def wandb_points(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_") and k != "step":
                out.setdefault(k, []).append((row["step"], v))
    return out


def mlflow_points(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    names = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in names}


def assert_same_points(got, want):
    assert set(got) == set(want)
    for k in want:
        assert [s for s, _ in got[k]] == [s for s, _ in want[k]], k
        assert [v for _, v in got[k]] == pytest.approx([v for _, v in want[k]], rel=1e-9), k


def test_wandb_and_mlflow_hold_the_metrics_file_scalars_and_a_resume_continues_their_runs(
        data, tmp_path, offline_stores):
    pytest.importorskip("wandb")
    tracking = pytest.importorskip("mlflow.tracking")
    run = tmp_path / "run"
    cfg = make_cfg(data, run, train__report_to="wandb,mlflow", train__tracker_project="trackers-test")
    loop.pretrain(cfg, progress=False)
    ids = json.loads((run / trk.TRACKERS_FILE).read_text())
    want = expected_points(run)
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/val_loss", "end/wall_s"} <= set(want)

    rows, config, runs = wandb_run(run, ids["wandb"]["id"])
    assert_same_points(wandb_points(rows), want)
    assert runs[0].project == "trackers-test" and runs[0].display_name == "run"
    assert config["train.lr"] == cfg.train.lr and config["params.non_embedding"] > 0

    client = tracking.MlflowClient(tracking_uri=offline_stores)
    rid = ids["mlflow"]["run_id"]
    assert_same_points(mlflow_points(client, rid), want)
    info = client.get_run(rid)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert float(info.data.params["train.lr"]) == cfg.train.lr and info.data.params["model.family"] == "decoder"
    assert client.get_experiment(info.info.experiment_id).name == "trackers-test"

    # killed after step 4 before its checkpoint: the resume logs steps 3-4 again, to the same runs
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    loop.pretrain(cfg, progress=False, resume=True)
    assert json.loads((run / trk.TRACKERS_FILE).read_text()) == ids
    again = mlflow_points(client, rid)["train/loss"]
    assert [s for s, _ in again] == [1, 2, 3, 4, 3, 4]
    assert [v for _, v in again][-2:] == pytest.approx([v for s, v in expected_points(run)["train/loss"][-2:]])
    assert client.get_run(rid).info.status == "FINISHED"
    rows, _, runs = wandb_run(run, ids["wandb"]["id"])
    assert len(runs) == 2 and [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 3, 4]

    # a fresh start in the same directory is a new tracker run
    loop.pretrain(make_cfg(data, run, train__report_to="mlflow", train__max_steps=2), progress=False)
    fresh = json.loads((run / trk.TRACKERS_FILE).read_text())
    assert set(fresh) == {"mlflow"} and fresh["mlflow"]["run_id"] != rid


def test_report_to_parses_lists_and_refuses_unknown_or_missing_trackers(data, tmp_path, monkeypatch, capsys):
    cfg = TrainConfig()
    assert cfg.report_to == ["tensorboard"]
    assert apply_overrides(load_run_config(preset="gpt-tiny"), {"train.report_to": "wandb, mlflow,wandb"}
                           ).train.report_to == ["wandb", "mlflow"]
    assert apply_overrides(load_run_config(preset="gpt-tiny"), {"train.report_to": "none"}).train.report_to == []
    with pytest.raises(ConfigError, match="report_to='comet' is not a tracker"):
        apply_overrides(load_run_config(preset="gpt-tiny"), {"train.report_to": ["comet"]})

    # a tracker that is not installed stops the run before it writes anything
    real = trk.importlib.util.find_spec
    monkeypatch.setattr(trk.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    from lmscale.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--preset", "gpt-tiny", "--corpus", str(data["corpus"]), "--out", str(run),
            "--max-steps", "2", "--train.report_to", "wandb", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "train.report_to names wandb, which is not installed" in err and len(err.splitlines()) == 1
    assert not (run / "metrics.jsonl").exists() and not (run / "shards").exists()


def test_a_tracker_that_cannot_start_is_a_one_line_error(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ConfigError) as exc:
        trk.open_trackers(tmp_path, TrainConfig(report_to=["wandb"]), {}, None)
    assert "wandb.init failed (UsageError: api_key not configured" in str(exc.value)
    assert "WANDB_MODE=offline" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow
def test_a_sweep_logs_one_tracker_run_per_run_with_its_n_d_and_c(data, tmp_path, offline_stores):
    tracking = pytest.importorskip("mlflow.tracking")
    pytest.importorskip("wandb")
    from lmscale.experiments.sweep import SweepConfig, plan, run_sweep
    from lmscale.scaling.registry import Registry

    base = {"model": {"vocab_size": 320, "max_positions": 32}, "tokenizer": {"vocab_size": 320},
            "data": {"corpus": str(data["corpus"]), "valid_fraction": 0.1},
            "train": {"seq_len": 32, "batch_size": 4, "eval_batches": 2, "device": "cpu",
                      "report_to": ["wandb", "mlflow"], "tracker_project": "sweep-test"}}
    sweep = SweepConfig.from_dict({"name": "trk", "preset": "gpt-tiny", "design": "grid", "sizes": [2e4, 6e4],
                                   "tokens": [512], "evals_per_run": 2, "base": base})
    out = tmp_path / "sweep"
    quiet = dict(sweep.base)
    quiet["train"] = {k: v for k, v in base["train"].items() if k not in ("report_to", "tracker_project")}
    # where a run is reported does not change which run it is
    assert [s.run_id for s in plan(sweep, out)] == [
        s.run_id for s in plan(SweepConfig.from_dict({**sweep.to_dict(), "base": quiet}), out)]
    result = run_sweep(sweep, out, workers=1, threads_per_worker=1, heartbeat_s=2)
    assert result.counts["finished"] == 2, [o.error for o in result.outcomes]
    client = tracking.MlflowClient(tracking_uri=offline_stores)
    exp = client.get_experiment_by_name("sweep-test")
    found = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    reg = Registry(Path(result.registry))
    records = reg.runs("trk")
    reg.close()
    assert set(found) == {r.name for r in records}
    for rec in records:
        params = found[rec.name].data.params
        assert float(params["N"]) == rec.params_non_embedding and params["N_counts"] == "non_embedding"
        assert float(params["D"]) == rec.tokens and float(params["C"]) == pytest.approx(rec.flops)
        assert params["sweep"] == "trk" and found[rec.name].data.tags["lmscale.group"] == "trk"
        ids = json.loads((Path(rec.run_dir) / trk.TRACKERS_FILE).read_text())
        assert ids["mlflow"]["run_id"] == found[rec.name].info.run_id
        _, config, runs = wandb_run(Path(rec.run_dir), ids["wandb"]["id"])
        assert runs[0].run_group == "trk" and config["N"] == rec.params_non_embedding and config["C"] == rec.flops


def test_the_tracker_scalars_are_the_metrics_file_numbers():
    rec = {"event": "train", "step": 3, "loss": 2.5, "lr": 1e-3, "mfu": None, "tokens": 96, "ok": True,
           "grad_norm": float("nan"), "path": "x"}
    assert trk.scalars(rec) == {"train/loss": 2.5, "train/lr": 1e-3, "train/tokens": 96}
    assert trk.flat_params({"train": {"lr": 1e-3, "report_to": ["wandb", "mlflow"]}, "out": None}) == {
        "train.lr": 1e-3, "train.report_to": "wandb,mlflow", "out": None}


def test_an_mlflow_store_that_cannot_open_names_the_setting(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "nosuchscheme://store")
    with pytest.raises(ConfigError) as exc:
        trk.open_trackers(tmp_path / "run", TrainConfig(report_to=["mlflow"]), {}, None)
    msg = str(exc.value)
    assert msg.startswith("train.report_to=mlflow: ") and "MLFLOW_TRACKING_URI picks the store" in msg
    assert "\n" not in msg and list(tmp_path.iterdir()) == []
