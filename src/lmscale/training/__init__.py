"""Pretraining: the loop, optimizer and schedules, checkpoints, metrics and data parallelism.

`lmscale.training.loop.pretrain(run_config)` is the library entry point behind `lmscale pretrain`.
"""
