"""A pretraining run directory's layout: the one place that names its files and parses them.

```
RUN_DIR/config.yaml                 the resolved config the run started with (what --resume continues)
RUN_DIR/summary.json                the outcome of the last session (`RunSummary`)
RUN_DIR/metrics.jsonl               one JSON record per event
RUN_DIR/.lock                       held by the one process writing the run (`lmscale.io.locks`)
RUN_DIR/checkpoints/step_00000100/  a resumable checkpoint (written by `lmscale.training.checkpoint`)
RUN_DIR/checkpoints/best/           the model dir of the best validation loss
```

It lives below the model and training layers so that loading a model from a run directory and
training one agree on the names without either importing the other. Checkpoints are deleted and
replaced in place, so a symbolic link there (or at the lock) is refused rather than followed:
deleting through it would remove files lmscale did not write.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lmscale.errors import LmscaleError
from lmscale.io import atomic_write_json
from lmscale.io.locks import LOCK_FILE, DirectoryLock

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
_STEP_RE = re.compile(r"step_(\d+)")


def step_dir_name(step: int) -> str:
    """Zero-padded, so the names also sort in step order."""
    return f"step_{int(step):08d}"


def parse_step_dir(name: str) -> Optional[int]:
    """The step of a `step_N` checkpoint name, or None for any other name."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


class RunDirError(LmscaleError):
    """A run directory that lmscale may not write as it is (a symbolic link where it deletes)."""


@dataclass
class RunSummary:
    """What `summary.json` says about a session that ended (or failed to start)."""

    status: str  # finished | failed | stopped | time_cap | early_stopped
    steps: Optional[int] = None  # None: not recorded (a summary another writer left)
    tokens: Optional[int] = None
    flops: Optional[float] = None
    wall_s: Optional[float] = None
    final_val_loss: Optional[float] = None
    best_val_loss: Optional[float] = None
    params: Optional[dict[str, int]] = None
    tokens_per_s: Optional[float] = None
    error: Optional[str] = None
    branch: Optional[dict[str, Any]] = None  # a cooldown branch's {parent, at_tokens, decay_fraction}

    # sessions that trained to an outcome of their own; a failed later start must not replace it
    OUTCOMES = ("finished", "early_stopped", "time_cap")

    @property
    def is_outcome(self) -> bool:
        return self.status in self.OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        """Known keys only (other writers add their own); a missing status reads as "unknown"."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("status", "unknown")
        return cls(**values)


class RunLayout:
    """Paths of one run directory, and the reads and writes that need no training code."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST_DIR

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / step_dir_name(step)

    def step_dirs(self) -> list[tuple[int, Path]]:
        """Every `checkpoints/step_N` directory (complete or not), oldest first; links are not followed."""
        if not self.checkpoints.is_dir():
            return []
        out = []
        for d in self.checkpoints.iterdir():
            step = parse_step_dir(d.name)
            if step is not None and d.is_dir() and not d.is_symlink():
                out.append((step, d))
        return sorted(out)

    def is_checkpoint_entry(self, path: Path) -> bool:
        """Whether `path` (in `checkpoints/`) is a step checkpoint or `best`: what a fresh start clears."""
        return path.name == BEST_DIR or parse_step_dir(path.name) is not None

    def symlink_problem(self) -> Optional[str]:
        """Why the checkpoints cannot be written here (a symbolic link that deleting or replacing a
        checkpoint would reach through), or None."""
        ck = self.checkpoints
        if ck.is_symlink():
            return f"{ck} is a symbolic link"
        if not ck.is_dir():
            return None
        for entry in sorted(ck.iterdir()):
            if entry.is_symlink() and self.is_checkpoint_entry(entry):
                return f"{entry} is a symbolic link"
        return None

    def check_no_symlinks(self) -> None:
        """Refuse, before anything is deleted, a run directory whose checkpoints reach through a link."""
        problem = self.symlink_problem()
        if problem:
            raise RunDirError(f"{problem}; lmscale replaces and deletes checkpoints there and never does so "
                              f"through a link: move it away, or choose another run directory")

    def lock(self, what: str = "run directory") -> DirectoryLock:
        return DirectoryLock(self.root, what)

    def read_summary(self) -> Optional[RunSummary]:
        """The last session's summary; None when there is none or it does not parse."""
        try:
            data = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        try:
            return RunSummary.from_dict(data)
        except TypeError:
            return None

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_json(self.summary_path, summary.to_dict())

    def remove_summary(self) -> None:
        self.summary_path.unlink(missing_ok=True)
