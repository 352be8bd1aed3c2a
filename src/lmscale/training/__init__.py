"""Pretraining: building a run, its step loop, batches, optimizer and schedules, checkpoints,
metrics and data parallelism.

`lmscale.training.loop.pretrain(run_config)` is the library entry point behind `lmscale pretrain`.
"""
