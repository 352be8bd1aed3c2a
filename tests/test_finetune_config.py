"""FinetuneConfig: unknown keys are configuration errors with a suggestion, and fine-tuning and the ICL
experiment follow pretraining's learning-rate schedule (`lmscale.training.optim.lr_at`)."""
from __future__ import annotations

import pytest

from lmscale.errors import ConfigError
from lmscale.experiments.icl_tasks import ICLConfig, train_config
from lmscale.finetune.trainer import FinetuneConfig, total_steps
from lmscale.training.optim import lr_at


def test_unknown_keys_are_rejected_with_the_nearest_key():
    cfg = FinetuneConfig.from_dict({"lr": "3e-4", "epochs": 2, "pooling": "mean"})
    assert cfg.lr == 3e-4 and cfg.epochs == 2 and cfg.pooling == "mean"
    with pytest.raises(ConfigError, match="unknown config key 'warmup_fractoin'; did you mean 'warmup_fraction'"):
        FinetuneConfig.from_dict({"warmup_fractoin": 0.2})
    with pytest.raises(ConfigError, match="valid keys"):
        FinetuneConfig.from_dict({"zzz": 1})


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="padding_side"):
        FinetuneConfig(padding_side="middle")
    with pytest.raises(ConfigError, match="lr=0"):
        FinetuneConfig(lr=0)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        FinetuneConfig(warmup_fraction=1.5)


@pytest.mark.parametrize("total", [1, 7, 40, 150])
def test_finetuning_schedule_is_linear_warmup_then_linear_decay_to_zero(total):
    cfg = FinetuneConfig(lr=1e-3, warmup_fraction=0.1)
    sched = cfg.schedule(total)
    warm = int(0.1 * total)
    for step in range(total):
        expected = (step + 1) / warm if step < warm else (total - step) / (total - warm)
        assert lr_at(step, total, sched) == pytest.approx(1e-3 * expected, rel=1e-12)


def test_total_steps_repeats_small_sets_and_caps_large_ones():
    assert total_steps(FinetuneConfig(epochs=3, batch_size=32), 100) == 12
    assert total_steps(FinetuneConfig(epochs=1, batch_size=10, min_steps=25), 20) == 26
    assert total_steps(FinetuneConfig(epochs=3, batch_size=10, max_steps=5), 100) == 5


def test_icl_schedule_is_warmup_then_cosine_to_a_tenth():
    cfg = ICLConfig.small()
    sched = train_config(cfg)
    assert lr_at(cfg.warmup_steps - 1, cfg.steps, sched) == pytest.approx(cfg.lr)
    assert lr_at(0, cfg.steps, sched) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lr_at(cfg.steps, cfg.steps, sched) == pytest.approx(0.1 * cfg.lr)
