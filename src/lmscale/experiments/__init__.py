"""Orchestration over the library: scaling sweeps (local processes or Slurm), the in-context
learning emergence experiment, the pretraining-effect experiment and the quickstart. Everything here
composes the layers below; none of it is imported by them."""
