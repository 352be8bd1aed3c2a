"""`lmscale quickstart`: eight stages, one module each, every stage returning a typed result that
later stages read, that is recorded as JSON (so a re-run skips it), and that renders itself for the
console and for report.html."""
from lmscale.experiments.quickstart.core import (
    PROFILE_DIR,
    PROFILES,
    Check,
    Context,
    Stage,
    StageResult,
    StageUnavailable,
    all_checks,
    default_profile,
    load_profile,
)
from lmscale.experiments.quickstart.data import DataResult
from lmscale.experiments.quickstart.emergence import EmergenceResult
from lmscale.experiments.quickstart.finetune import FinetuneResult, Lead, ProbeResult
from lmscale.experiments.quickstart.pretrain import LossCurve, PretrainedModel, PretrainResult
from lmscale.experiments.quickstart.report import ReportResult, render_report, write_report
from lmscale.experiments.quickstart.runner import STAGES, print_checks, run_quickstart
from lmscale.experiments.quickstart.scaling import ScalingResult
from lmscale.experiments.quickstart.tokenizers import TokenizersResult, TrainedTokenizer
from lmscale.experiments.quickstart.use import UseResult, distinct_n, repeated_ngram

__all__ = [
    "PROFILES", "PROFILE_DIR", "STAGES", "Check", "Context", "DataResult", "EmergenceResult", "FinetuneResult",
    "Lead", "LossCurve", "PretrainResult", "PretrainedModel", "ProbeResult", "ReportResult", "ScalingResult",
    "Stage", "StageResult", "StageUnavailable", "TokenizersResult", "TrainedTokenizer", "UseResult", "all_checks",
    "default_profile", "distinct_n", "load_profile", "print_checks", "render_report", "repeated_ngram",
    "run_quickstart", "write_report",
]
