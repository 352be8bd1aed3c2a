"""The experiment trackers a run's metrics are mirrored to: TensorBoard, Weights & Biases, MLflow.

`metrics.jsonl` stays the record; a tracker receives the same scalars: every finite number of
every record, named `{event}/{field}` (`train/loss`, `eval/val_loss`, ...) at the record's step.
Each tracker is an optional package, imported only when `train.report_to` names it, and reads its
own settings the way its users expect (`WANDB_MODE=offline`, `WANDB_PROJECT`, `WANDB_DIR`,
`MLFLOW_TRACKING_URI`). Runs are named after their run directory and carry the resolved config
(plus `train.tracker_params`, where a sweep puts the run's N, D and C) as parameters.

A resumed run continues its tracker runs: their ids are kept in `RUN_DIR/trackers.json`. The
steps an interrupted run logged past its last checkpoint are hidden in TensorBoard (a purge
step); W&B and MLflow keep them, so a step there can appear twice after a resume.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any, Optional

from lmscale.config import TrainConfig
from lmscale.errors import ConfigError, one_line
from lmscale.io import atomic_write_json

TRACKERS_FILE = "trackers.json"
_MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit on parameters in one log_batch
_MLFLOW_PARAM_CHARS = 6000  # and on one parameter's value


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracker scalars of one metrics.jsonl record: its finite numbers under `{event}/{field}`."""
    event = record.get("event", "train")
    out = {}
    for k, v in record.items():
        if k in ("event", "step") or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        out[f"{event}/{k}"] = v
    return out


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted parameters (`train.lr`), lists joined by commas."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = ",".join(str(x) for x in v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_trackers(report_to: list[str]) -> None:
    """Refuse, before any work, a tracker whose package (of the tracker's name) is missing;
    tensorboard is mirrored when installed, else skipped."""
    for name in report_to:
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to names {name}, which is not installed: pip install "
                              f"'lmscale[trackers]' (or {name}), or drop it from train.report_to")


def _wait_for_a_later_event_file_name(tb_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second it
    was created in, then compares process id and a counter as text: a writer opened within the
    same second as the interrupted run's could sort before it, and its purge would then be read
    before the events it hides. Waiting for the next second (at most 2 s) keeps the order."""
    stamps = []
    for f in tb_dir.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(f.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if stamps:
        wait = min(max(stamps) + 1 - time.time(), 2.0)
        if wait > 0:
            time.sleep(wait)


class TensorBoardTracker:
    """`RUN_DIR/tensorboard`; a resumed run purges the events past its checkpoint."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, resume_step: Optional[int]) -> None:
        self.writer = None
        if importlib.util.find_spec("tensorboard") is None:
            return
        tb_dir = run_dir / "tensorboard"
        try:
            summary = importlib.import_module("torch.utils.tensorboard")
            purge = None if resume_step is None else resume_step + 1
            if purge is not None:
                _wait_for_a_later_event_file_name(tb_dir)
            self.writer = summary.SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
        except Exception:  # tensorboard is optional; a broken install must not stop training
            self.writer = None

    def state(self) -> dict[str, Any]:
        return {}

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker:
    """One W&B run per lmscale run (offline with WANDB_MODE=offline); its files go under
    RUN_DIR/wandb unless WANDB_DIR says otherwise. Our step is the x-axis of every chart."""

    name = "wandb"

    def __init__(self, run_dir: Path, cfg: TrainConfig, params: dict[str, Any], state: dict[str, Any]) -> None:
        wandb = importlib.import_module("wandb")
        run_id = state.get("id") or secrets.token_hex(4)  # W&B's own id form: 8 lowercase letters or digits
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or cfg.tracker_project,
                name=cfg.tracker_run_name or run_dir.name, group=cfg.tracker_group, id=run_id, resume="allow",
                dir=os.environ.get("WANDB_DIR") or str(run_dir), config=params,
            )
        except Exception as exc:  # no API key, no network, a bad setting: a one-line reason
            raise ConfigError(f"train.report_to=wandb: wandb.init failed ({one_line(exc)}); WANDB_MODE=offline "
                              "logs without an account") from None
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = run_id

    def state(self) -> dict[str, Any]:
        return {"id": self.id}

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, "step": step})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "early_stopped", "time_cap") else 1)


class MlflowTracker:
    """One MLflow run per lmscale run in experiment `train.tracker_project`, at the tracking URI
    MLflow itself resolves (MLFLOW_TRACKING_URI, else its default store)."""

    name = "mlflow"

    # MLflow's own defaults retry an unreachable server for minutes before the run may start; a
    # user's settings of these variables win
    HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

    def __init__(self, run_dir: Path, cfg: TrainConfig, params: dict[str, Any], state: dict[str, Any]) -> None:
        for key, value in self.HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        tracking = importlib.import_module("mlflow.tracking")
        entities = importlib.import_module("mlflow.entities")
        self._metric, self._param = entities.Metric, entities.Param
        try:
            # the store the run started in, on resume; else where MLflow's own settings point
            self.uri = state.get("tracking_uri") or importlib.import_module("mlflow").get_tracking_uri()
            self.client = tracking.MlflowClient(tracking_uri=self.uri)
            if state.get("run_id"):
                self.run_id = state["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                exp = self.client.get_experiment_by_name(cfg.tracker_project)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.tracker_project)
                tags = {"lmscale.run_dir": str(run_dir)}
                if cfg.tracker_group:
                    tags["lmscale.group"] = cfg.tracker_group
                run = self.client.create_run(exp_id, run_name=cfg.tracker_run_name or run_dir.name, tags=tags)
                self.run_id = run.info.run_id
                self._log_params(params)
        except Exception as exc:  # an unreachable server, a store MLflow refuses: a one-line reason
            hint = "" if os.environ.get("MLFLOW_TRACKING_URI") else (
                "; MLFLOW_TRACKING_URI picks the store: a server (http://HOST:5000), a file store (file:./mlruns, "
                "with MLFLOW_ALLOW_FILE_STORE=true on MLflow 3), or sqlite:///mlflow.db with the full mlflow package")
            raise ConfigError(f"train.report_to=mlflow: {one_line(exc)}{hint}") from None

    def _log_params(self, params: dict[str, Any]) -> None:
        items = [self._param(k, ("" if v is None else str(v))[:_MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), _MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + _MLFLOW_PARAMS_PER_CALL])

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def log(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, float(v), ts, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        final = {"finished": "FINISHED", "early_stopped": "FINISHED", "time_cap": "FINISHED",
                 "stopped": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=final)


def saved_tracker_ids(path: Path) -> dict[str, dict[str, Any]]:
    """Tracker name -> its saved run ids; a missing or damaged record gives new tracker runs
    instead of failing the resume."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in saved.items() if isinstance(v, dict)} if isinstance(saved, dict) else {}


def open_trackers(run_dir: Path, cfg: TrainConfig, params: dict[str, Any],
                  resume_step: Optional[int]) -> list[Any]:
    """The trackers `cfg.report_to` names, opened for this run (continuing the tracker runs of
    `trackers.json` when `resume_step` is set: a resumed run), and their ids saved."""
    path = run_dir / TRACKERS_FILE
    saved = saved_tracker_ids(path) if resume_step is not None else {}
    opened: list[Any] = []
    try:
        for name in cfg.report_to:
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run_dir, resume_step))
            elif name == "wandb":
                opened.append(WandbTracker(run_dir, cfg, params, saved.get("wandb", {})))
            elif name == "mlflow":
                opened.append(MlflowTracker(run_dir, cfg, params, saved.get("mlflow", {})))
    except Exception:
        for t in opened:
            t.close("failed")
        raise
    ids = {t.name: t.state() for t in opened if t.state()}
    if ids or path.exists():
        atomic_write_json(path, ids)
    return opened
